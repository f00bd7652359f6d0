// Command kubelet is the upstream kubelet at the same Kubernetes version as kube-testbed.
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	// A nil context panics inside the command; Background is what upstream passes.
	os.Exit(cli.Run(app.NewKubeletCommand(context.Background())))
}
