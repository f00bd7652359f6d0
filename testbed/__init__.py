"""Sniffer's testbed: real services to run Sniffer and its tests against.

* `testbed.build` builds the Go binaries (kube-testbed: etcd + kube-apiserver; kubectl) once per
  source version into a user cache.
* `testbed.apiserver` starts and stops a kube-apiserver on loopback.
* `testbed.platform` is the reference Platform API server.

Nothing in Sniffer proper imports this package.
"""
