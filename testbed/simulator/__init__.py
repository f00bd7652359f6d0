"""The kubelet we don't have: creates platform runs and their pods, and drives each pod
through the status shapes a real kubelet (and scheduler) produce.

Public API: `simulate(kube, platform_url, token_file, config, progress=, records_path=)`
→ `SimResult`; `SimConfig`; `Kubelet` (finishes graceful deletions of simulated nodes'
pods); `Expectation`. The CLI is ``python -m testbed.simulator`` (`__main__.main`).

Modules: `lifecycles` (pure catalogue and oracle), `shapes` and `kubestatus` (pure
kubelet statuses), `workloads` (plans and pod manifests), `config` (SimConfig and option
parsers), `kubeapi` / `runs` (timed, bounded, retried Kubernetes and platform calls),
`kubelet` (status writes, graceful deletions), `records` (what happened and what to
expect), `driver` (`simulate`), `__main__` (the CLI). Job-backed runs, whose attempt
pods the real Job controller (`testbed.jobcontroller`) makes: `jobplans` (pure: each
run's attempts, decided in advance) and `jobdriver` (`simulate_jobs`).
"""

from testbed.simulator.config import Distribution, SimConfig
from testbed.simulator.driver import Progress, simulate
from testbed.simulator.kubeapi import PodApi
from testbed.simulator.kubelet import Kubelet
from testbed.simulator.lifecycles import CATALOGUE, Expectation
from testbed.simulator.records import Change, Error, Outcome, SimResult

__all__ = ["CATALOGUE", "Change", "Distribution", "Error", "Expectation", "Kubelet", "Outcome",
           "PodApi", "Progress", "SimConfig", "SimResult", "simulate"]
