"""The reference Platform API server (contract: docs/platform-api.yaml).

A real HTTP server over SQLite that behaves as the job platform promises: states move only
forward, every write needs a precondition, repeats are no-op successes, and every applied
state change is logged with its arrival time (and the caller's ``traceparent``). Faults
(latency, errors with Retry-After, outages, resets, slow or malformed bodies) can be
switched on through ``/admin/faults``.

Modules: ``rules`` (pure transition rules), ``wire`` (JSON in/out), ``store`` (SQLite),
``auth`` (bearer tokens), ``faults`` (fault injection), ``app`` (routes), ``__main__``
(command line), ``launcher`` (start/stop it from tests, benchmarks and the simulator),
``loadtest`` (update throughput).

Usage::

    python -m testbed.platform serve --db run/platform.db --token-file run/token \\
        [--host 127.0.0.1] [--port 0] [--ready-file run/ready.json] \\
        [--tls-cert cert.pem --tls-key key.pem]
    python -m testbed.platform.loadtest --runs 5000 --concurrency 64

    from testbed.platform.launcher import launch
    with launch(tmp_path) as server:       # server.url, server.token, server.token_file
        server.create_run("r1")
        server.set_faults(error_rate=0.2, error_status=429, retry_after_s=1)
        server.updates(since=0)
"""
