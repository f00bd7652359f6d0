"""Sniffer's fault matrix: scenarios at load on the testbed, each ending with the same checks.

Modules:
* `model`: what a scenario is (`Load`, `Scenario`) and what a run gives (`Result`).
* `harness`: `run_scenario` — servers, watchers, faults, simulator, then the verdict.
* `context`: `Ctx`, what a scenario's steps use and record; `processes`: the watcher and
  reconcile processes and an independent observer of the namespace; `servers`: a
  kube-apiserver that restarts on its own data and ports, and a threaded fault proxy.
* `verdict`: the end-of-scenario checks; `faults`: the fault steps scenarios are made of.
* `scenarios`: the catalogue (what load, which faults, on which schedule), sized for
  ``make test`` (`FAST`) or for ``make soak`` (`FULL`); `jobscenario`: its Job-backed
  scenario (the real Job controller), judged also by `joboracle` (a run ends only when
  its Job does).
* `soak`: the long steady run with periodic faults and resource sampling.
* `report`: results JSON → docs/reliability.md.
* ``python -m tests.reliability``: run any of them from the command line.

The fast scenarios also run as pytest tests (`test_scenarios.py`), so ``make test`` runs
them; ``make soak`` runs the full-length catalogue and the soak.
"""
