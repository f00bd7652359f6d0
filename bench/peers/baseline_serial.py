"""Benchmark peer: the design Sniffer replaces. One event at a time, one blocking call each.

The `kubernetes` client's synchronous `Watch` over typed models (`V1Pod`), and for every
event a blocking `requests` PATCH of the run, with the state the peer last saw acknowledged
as `expected_state` (initially "queued", the state runs are created in). No retries, no
cache, no queue: an error is logged and the event is gone. (A 412 is not an error but the
precondition protocol: the answer carries the run's state, and the update is sent once
more with it as `expected_state`.) Derivation is the simple one:
Pending → queued, Running → running, Succeeded/Failed → succeeded/failed with the main
container's terminated reason and exit code.

Environment: PEER_KUBECONFIG, PEER_NAMESPACE, PEER_PLATFORM_URL, PEER_PLATFORM_TOKEN_FILE.
Prints "watching" when the watch starts and its counters on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import requests
from kubernetes import client, config, watch

RUN_ID_LABEL = "sniffer.io/run-id"
PHASES = {"Pending": "queued", "Running": "running", "Succeeded": "succeeded",
          "Failed": "failed"}


def derive(pod: client.V1Pod) -> dict[str, Any] | None:
    run_id = (pod.metadata.labels or {}).get(RUN_ID_LABEL)
    state = PHASES.get(pod.status.phase or "")
    if not run_id or state is None:
        return None
    update: dict[str, Any] = {"run_id": run_id, "state": state}
    if state in ("succeeded", "failed"):
        if pod.status.reason:
            update["reason"] = pod.status.reason
        main = pod.spec.containers[0].name
        for cs in pod.status.container_statuses or ():
            if cs.name == main and cs.state and cs.state.terminated:
                update["exit_code"] = cs.state.terminated.exit_code
                update.setdefault("reason", cs.state.terminated.reason)
    return update


def main() -> int:
    config.load_kube_config(os.environ["PEER_KUBECONFIG"])
    namespace = os.environ["PEER_NAMESPACE"]
    base = os.environ["PEER_PLATFORM_URL"].rstrip("/")
    with open(os.environ["PEER_PLATFORM_TOKEN_FILE"]) as f:
        token = f.read().strip()
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    acked: dict[str, str] = {}
    counters = {"events": 0, "sent": 0, "errors": 0}

    def stop(signum: int, frame: Any) -> None:
        print(f"stopped {' '.join(f'{k}={v}' for k, v in counters.items())}", flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    v1 = client.CoreV1Api()
    print("watching", flush=True)
    for event in watch.Watch().stream(v1.list_namespaced_pod, namespace,
                                      label_selector=RUN_ID_LABEL):
        counters["events"] += 1
        if event["type"] not in ("ADDED", "MODIFIED"):
            continue
        update = derive(event["object"])
        if update is None:
            continue
        run_id = update.pop("run_id")
        expected = acked.get(run_id, "queued")
        try:
            for _attempt in range(2):
                counters["sent"] += 1
                response = session.patch(f"{base}/api/v1/runs/{run_id}",
                                         json={**update, "expected_state": expected}, timeout=10)
                body = response.json()
                if "run" not in body:
                    counters["errors"] += 1
                    break
                acked[run_id] = current = body["run"]["state"]
                # A failed precondition teaches the run's state: send once more from there.
                if response.status_code != 412 or current == update["state"]:
                    break
                expected = current
        except (requests.RequestException, ValueError, KeyError) as e:
            counters["errors"] += 1
            print(f"error {run_id}: {e}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
