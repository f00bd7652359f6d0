// Command kubectl is upstream kubectl (with kustomize built in) at the same Kubernetes version
// as kube-testbed, so tests and scripts never depend on whatever kubectl a machine has.
package main

import (
	"os"

	// Registers the exec/OIDC client auth plugins a real kubeconfig may name.
	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	// -v is honoured while the command tree is built (plugins, .kuberc), i.e. before cobra
	// parses flags, so it is applied by hand first.
	_, _ = logs.GlogSetter(cmd.GetLogVerbosity(os.Args))
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
