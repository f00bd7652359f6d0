// Package node holds the testbed's real node programs: kubelet, kube-controller-manager and
// kube-scheduler, built from the same k8s.io/kubernetes version and replaces as
// ../apiserver (see testbed/nodebuild.py). There is no code here besides the three mains.
package node
