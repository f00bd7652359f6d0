"""The kubelet we don't have: creates platform runs and their pods, and drives each pod
through the status shapes a real kubelet (and scheduler) produce.

Modules: `lifecycles` (pure catalogue and oracle), `shapes` (pure kubelet statuses),
`workloads` (plans and pod manifests), `config` (SimConfig and option parsers),
`kubeapi` / `runs` (timed, bounded, retried Kubernetes and platform calls), `kubelet`
(status writes, graceful deletions), `records` (what happened and what to expect),
`driver` (`simulate`), `__main__` (the CLI).
"""
