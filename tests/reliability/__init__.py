"""Sniffer's fault matrix: scenarios at load on the testbed, each ending with the same checks.

Modules:
* `harness`: the machinery of one scenario (servers, `sniffer watch` processes, a fault
  proxy, the simulator, the end-of-scenario checks) and its JSON `Result`.
* `servers`: a kube-apiserver that can be restarted on its own data and ports, and a
  loopback TCP proxy running in a thread of its own.
* `scenarios`: the catalogue (what load, which faults, on which schedule), sized for
  ``make test`` (`FAST`) or for ``make soak`` (`FULL`).
* `soak`: the long steady run with periodic faults and resource sampling.
* `report`: results JSON → the table in docs/reliability.md.
* ``python -m tests.reliability``: run any of them from the command line.

The fast scenarios also run as pytest tests (`test_scenarios.py`), so ``make test`` runs
them; ``make soak`` runs the full-length catalogue and the soak.
"""
