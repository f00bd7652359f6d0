"""The reference Platform API server (contract: docs/platform-api.yaml).

A real HTTP server over SQLite that behaves as the job platform promises: states move only
forward, every write needs a precondition, repeats are no-op successes, and every applied
state change is logged with its arrival time. Faults (latency, errors, outages, resets,
slow or malformed bodies) can be switched on through ``/admin/faults``.

Modules: ``rules`` (pure transition rules), ``wire`` (JSON in/out), ``store`` (SQLite),
``auth`` (bearer tokens), ``faults`` (fault injection), ``app`` (routes), ``__main__``
(command line), ``launcher`` (start/stop it from tests, benchmarks and the simulator).
"""
