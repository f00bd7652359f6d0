// Command kube-controller-manager is the upstream controller manager at the same Kubernetes
// version as kube-testbed (Jobs, ReplicaSets, pod GC, node lifecycle are the real ones).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	os.Exit(cli.Run(app.NewControllerManagerCommand()))
}
