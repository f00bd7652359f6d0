"""Results JSON (``python -m tests.reliability``) → the tables of docs/reliability.md.

* `render(document)` is the whole Markdown document: how it was produced, the scenario
  table (scenario, load, faults, outcome: lost / regressed / finalizers left, time to
  consistency), the notes per scenario and, if present, the soak's table.
* `summary(document)` is a short plain-text verdict for the terminal.
* ``python -m tests.reliability.report RESULTS.json [--fast DIR] [OUT.md]`` re-renders
  saved results (with the fast tests' result files from DIR, e.g.
  ``.testbed/reliability/fast``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

INTRO = """# Reliability: the fault matrix

Sniffer exists because the system before it dropped state changes. Each scenario below runs
`sniffer watch` as real processes (finalizer mode on unless stated) against the testbed's
kube-apiserver and the reference platform, drives at least 1,000 workloads through the
simulator (its default mix of 16 lifecycles: successes, failures, OOM kills, evictions,
preemptions, cancels, crash loops, deletions...), injects its faults on a schedule, and ends
with the same checks (`tests/reliability/harness.py`):

* **lost**: runs whose platform state, reason or exit code differs from what their pod
  reached (`testbed.verdict.mismatches` against the simulator's expectations). Two
  adjustments, only for pods whose end fell in a *watcher gap* (every watcher killed,
  stopped, or cut off from the API server): a pod created *and* deleted in the gap, which
  never carried the finalizer (an independent watch of the namespace says so), is honestly
  reported "pod lost" by `sniffer reconcile` (column *pod lost*); a pod whose deletion was
  requested and completed in the gap, or before the snapshot of the `sniffer reconcile`
  pass that reported it, is judged by state only (column *state only*: the kubelet's
  final grace-0 DELETE moves `deletionTimestamp` past the containers' end, so the object
  no longer says whether the deletion or the workload ended it; only the watcher, which
  saw the pod deleting while it ran, knows);
* **regressed**: updates in the platform's update log that moved a run backwards
  (`testbed.verdict.regressions`);
* **finalizers left**: pods still carrying `sniffer.io/outcome` at the end;
* no traceback or unhandled exception in any watcher log, and a clean exit (0) on SIGTERM;
* the faults visibly happened (log lines, the platform's fault counters, reconcile reports);
* **time to consistency**: from the end of the last fault to the platform update that made
  the platform consistent (from its update log); *lag* is the same measured from the later
  of the last fault's end and the last pod change, i.e. how long the platform trailed the
  cluster once both the faults and the load were over.

One scenario, **job-retries** (issue 14), drives 1,000 *Job-backed* runs instead of pods:
each run is a batch/v1 Job (backoffLimit 3) whose attempt pods the **real Job controller**
creates (`testbed/jobcontroller.py`: kube-controller-manager with only its Job controller
and garbage collector, no node), and the simulator plays each attempt pod's kubelet part
(`testbed/simulator/jobdriver.py`: Running, then the planned exit). About 30% of the runs
succeed first time, 45% fail once or twice and then succeed, 15% exhaust their retries
(failed BackoffLimitExceeded, with the last attempt's exit code, each attempt's code
distinct) and 10% are cancelled (the platform's cancel, then the Job deleted), while the
watch streams are cut four times and the watcher is SIGKILLed once and restarted. Its
*regressed* also counts every update that ended a run in another terminal state than its
Job's, or before the change that ended its Job was even sent
(`tests/reliability/joboracle.py`): a retried attempt's failure must never reach the
platform as the run's. No Job may keep Sniffer's finalizer at the end (the Jobs carry it,
not their pods; *finalizers left* counts pods).

Settings are the production defaults except where a scenario's faults say otherwise, and:
leader election is off where a proxy sits between the watcher and the API server (the
fault is meant for the streams, not the Lease; leader loss has scenarios of its own); the
fast `process-kills` uses a 10 s lease; `sniffer reconcile` passes use a 5 s grace period
after the load and 30 s while racing a live load. The *p99 latency* column is the
end-to-end latency (API server accepted the change → platform received the update) of
every update, faults included, so an outage shows in it.

Not reproduced on the testbed: a 410 Gone *mid-stream*. The API server, even without its
watch cache, kept a frozen stream alive through an etcd compaction instead of ending it
with an ERROR 410; the reflector's handling of that event is exercised with a scripted
stream (`tests/test_fuzz_watch.py`), and the real 410 at open by `gone-and-restart`.

RBAC least privilege is checked on the API server by `tests/test_deploy.py` (sufficient and
minimal permissions, can-i refusals); non-root and read-only root filesystem by the same
module's restricted Pod Security dry run; tokens in outputs by `tests/test_security.py`
(a full run with DEBUG logs, OTLP export, a Prometheus scrape, platform faults, a token
rotation and a reconcile pass, grepped end to end); hostile watch input and settings by
`tests/test_fuzz_watch.py` and `tests/test_fuzz_config.py`.
"""


FINDINGS = """## Findings

What the matrix, the bad-input tests and the soak found in Sniffer, with the test that
reproduces each (tests/reliability/test_findings.py unless named otherwise):

1. **A pod stopped by its deletion was reported by its SIGTERM exit** — fixed (bf5410d,
   9311b61, f7d060a). The kubelet ends a graceful deletion with a grace-0 DELETE that moves
   `deletionTimestamp` to that moment, so "did the deletion end the pod?" could no longer
   be read from the object. A watcher whose first view of a pod came after that DELETE (a
   half-open stream, a reopened watch, lag under load: the work queue coalesces a key's
   updates) reported cancelled jobs failed/Error (exit 143), stopped notebooks
   succeeded/Completed, preempted servers succeeded: `stream-faults` got 18 of 1,000 runs
   wrong. Then a tombstone lost the store's "seen deleting while active" mark (the
   DELETED event's object replaced the cached view), so jobs created *and* stopped while
   the stream was silent still ended failed/Error (5 of 1,000): fixed in
   `watch.store.PodStore.delete` (f7d060a).
2. **A crash loop past the restart limit, reaped later, was reported Stopped** — fixed
   (9311b61): a watcher keeping up reports failed/CrashLoopBackOff at the 5th restart; one
   seeing the pod first after the reaping reported cancelled/Stopped.
3. **A response body cut short escaped as aiohttp's `ClientPayloadError`** — fixed in
   `sniffer.kube.KubeClient.request_json` (da0510a): `stream-faults` cut a finalizer
   patch mid-body and the handler logged "handler failed" with a traceback (the change
   was retried); a LIST page cut the same way would have ended the reflector's loop, which
   catches only `KubeError`, and with it the watcher.
4. **A kubeconfig with `insecure-skip-tls-verify: true` turned TLS verification off
   silently** — fixed in `sniffer.kube` (621127a): it is now logged like
   `kube.verify_tls=false` (tests/test_security.py).
5. **Settings Kubernetes refuses started the watcher anyway** — fixed (cef8250): a
   namespace, lease namespace or lease name that is not a DNS name, a `kube.kubeconfig`
   that does not exist, a health or Prometheus port already in use made `sniffer watch`
   retry a 404 forever or die with a traceback; now each is one message naming the
   setting and exit 2 (tests/test_fuzz_config.py).
6. **A standby grew with every pod the cluster deleted** — fixed (4485437, then 08685a2): a
   standby queued every changed key and kept a tombstone of every deleted pod, which only
   a leader's controller forgets. The first fix dropped every tombstone on a standby, and
   `leader-sigkill` then left 109 of 1,000 runs queued: pods created, finished and deleted
   while the leader was dead and its lease not yet expired were seen by the standby only.
   Now a standby drops just the tombstones of pods that carried Sniffer's finalizer (their
   outcome was acknowledged before the leader released it) and keeps the others for
   when it takes over (`test_a_new_leader_reports_a_pod_deleted_while_nobody_led`,
   `test_a_standby_does_not_grow_with_the_pods_the_leader_handled`). The others (pods
   deleted before the leader had finalized them, about 0.7% of pods in the first soak,
   and every pod with finalizer mode off) were then kept forever: fixed (43104bd). A
   standby now watches the Lease and forgets such a tombstone once the same leader has
   kept renewing for 4 lease durations after the deletion (it has seen the deletion by
   then; a gap in renewals longer than renew deadline + retry period restarts the
   count), so with the default 15 s lease a standby holds about a minute of deletions
   (`test_a_standby_forgets_the_tombstones_a_live_leader_has_seen`; in the soak above the
   standby's tombstones peaked at 23 and settled back to 0, where the first soak ended
   with 30 and rising). The trade: a leader
   that dies with such a deletion unhandled for longer than that leaves the run to
   `sniffer reconcile`.
7. **Changes "dropped after retries" during a platform outage though nothing is lost** —
   fixed (a423f27): a busy pod's key was re-added by every update, bypassing the pending
   Retry-After retry, and each failure counted against `workers.max_retries`, so a 30 s
   outage logged errors and counted `dropped` for changes that the pending retry
   delivered afterwards. Now a key waiting out a rate-limited retry is held: adds merge
   into that retry, which handles the pod's latest view, so the platform is asked again
   only when its "wait" is over and `dropped` counts only changes given up with no retry
   pending (`test_a_busy_pods_outcome_survives_a_platform_outage` asserts dropped 0;
   tests/test_workqueue_holds.py). This departs from client-go, whose `Add` skips ahead
   of a pending `AddRateLimited`; the queue's contract says so.
8. **The reconciler reported a job stopped by a completed deletion by its exit** — fixed
   (cbdbfbd): a snapshot has no history, so a job whose deletion was requested *and*
   completed before the pass was written failed/Error (exit 143) where the watcher,
   which saw it deleting while it ran, writes failed/Deleted. Now the reconciler leaves
   a finished pod whose deletion completed less than its grace period ago (counted from
   `deletionTimestamp`) to the watcher whenever the two readings differ; after the grace
   period it writes what the object says (the watcher is evidently not reporting, and a
   pod that says Succeeded may have finished its work). Runs that the reconciler writes
   after the grace period are still judged by state only.
"""


def current_commit() -> str | None:
    """The checked-out commit (with "+changes" if the tree differs), so a result names
    the code it judged."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def _when(epoch: float | None) -> str:
    if not epoch:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))


def scenario_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| scenario | load | faults | lost | regressed | finalizers left | pod lost "
             "(reconcile) | state only | time to consistency s | lag s | p99 latency ms | "
             "result |", "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in results:
        p99 = (r.get("latency_ms") or {}).get("p99")
        lines.append(
            f"| {r['scenario']} | {r['load']} | {r['faults']} | {r['lost']} | "
            f"{r['regressed']} | {r['finalizers_left']} | {r['reported_as_pod_lost']} | "
            f"{r.get('reason_unknowable', 0)} | "
            f"{_fmt(r.get('time_to_consistency_s'))} | "
            f"{_fmt(r.get('lag_after_last_change_s'))} | {_fmt(p99)} | "
            f"{'pass' if r['ok'] else 'FAIL'} |")
    return lines


def _notes(r: dict[str, Any]) -> list[str]:
    notes = list(r.get("notes") or [])
    if r.get("dropped"):
        notes.append(f"the watcher dropped {r['dropped']} change(s) after retries")
    passes = r.get("reconcile_passes") or []
    if passes:
        killed = sum(1 for p in passes if p["killed"])
        repaired = sum(sum((p.get("repaired") or {}).values()) for p in passes)
        notes.append(f"{len(passes)} `sniffer reconcile` pass(es)"
                     + (f", {killed} SIGKILLed mid-pass" if killed else "")
                     + f", {repaired} repair(s) in total")
    if not r.get("settled_by_watcher") and r.get("ok"):
        notes.append("consistent only after `sniffer reconcile` (planned for this scenario)")
    counts = r.get("log_counts") or {}
    shown = {k: v for k, v in counts.items() if k in (
        "stalled", "expired", "watch_errors", "conflicts", "dropped", "lease_lost")}
    if shown:
        notes.append("watcher log: " + ", ".join(f"{k} {v}" for k, v in sorted(shown.items())))
    if r.get("platform_faults"):
        notes.append("platform injected: " + ", ".join(
            f"{k} {v}" for k, v in sorted(r["platform_faults"].items())))
    if r.get("problems"):
        notes.extend(f"**problem**: {p}" for p in r["problems"])
    return notes


def soak_table(soak: dict[str, Any]) -> list[str]:
    lines = [f"Soak run {_when(soak.get('started_at'))}: {soak['minutes']:g} minutes, "
             f"{soak['jobs_created']} jobs at "
             f"{soak['rate']:g}/s steady, faults every {soak['fault_every_s']:g} s "
             f"({', '.join(soak['fault_kinds'])}); {'pass' if soak['ok'] else 'FAIL'}.",
             "",
             "Two replicas (leader and standby, leader election on), every pod deleted the "
             "moment it finishes (a steady population, as in production). Each replica is "
             "sampled every 10 s after a 2-minute warm-up: RSS (`/proc/<pid>/status`), open "
             "file descriptors (`/proc/<pid>/fd`) split into TCP connections to the "
             "platform (`platform_conns`), to the API server (`kube_conns`) and the rest "
             "(`other_fds`), and from `/healthz` its asyncio tasks, tombstones and "
             "work-queue depth. A client's pool grows while a fault or burst ties "
             "connections up and, reusing the oldest first, stays at that size under "
             "steady load; it is judged by its maximum against its cap "
             f"({soak.get('pool_caps', 'the settings')}): *bounded*. "
             "No fault starts in the last 90 s, so the run ends quiet: what a fault holds "
             "for a while is gone, what leaks is not. *Flat* means the late median (of "
             "the samples from 30 s after the last fault, else of the last quarter) is at "
             "most the first quarter's times a factor plus a margin (RSS x1.25 + 8 MiB; "
             "other file descriptors and tasks +8; tombstones and queue depth +50).",
             "",
             "| watcher | measure | first quarter (median) | late (median) | max | "
             "verdict |", "|---|---|--:|--:|--:|---|"]
    for row in soak["trends"]:
        lines.append(f"| {row['watcher']} | {row['measure']} | {row['early']:g} | "
                     f"{row['late']:g} | {row['max']:g} | {row['verdict']} |")
    lines += ["", f"End of soak: lost {soak['lost']}, regressed {soak['regressed']}, "
              f"finalizers left {soak['finalizers_left']}, tracebacks {soak['tracebacks']}."]
    if soak.get("problems"):
        lines += [f"* **problem**: {p}" for p in soak["problems"]]
    return lines


def _at_commit(results: list[dict[str, Any]]) -> str:
    commits = {r.get("commit") for r in results}
    return f" at commit {commits.pop()}" if len(commits) == 1 and None not in commits else ""


def render(document: dict[str, Any], fast: list[dict[str, Any]] | None = None) -> str:
    """The whole page; `fast` adds the fast scenarios' last `make test` results."""
    results = document.get("scenarios") or []
    out = [INTRO, "## Results", "",
           f"Run {_when(document.get('started_at'))}"
           + (f" at commit {document['commit']}" if document.get("commit") else "")
           + f" on {document.get('machine', '?')}; "
           f"suite `{document.get('suite')}`. Produced by:", "",
           "```", document.get("command") or "python -m tests.reliability", "```", ""]
    if results:
        out += scenario_table(results)
        out += ["", "### Notes per scenario", ""]
        for r in results:
            notes = _notes(r)
            out.append(f"* **{r['scenario']}** ({r['duration_s']:.0f} s, "
                       f"{r['runs_checked']} runs judged): " + ("; ".join(notes) or "-"))
    if document.get("soak"):
        out += ["", "## Soak", "", *soak_table(document["soak"])]
    if fast:
        out += ["", "## The fast scenarios (`make test`)", "",
                "Five scenarios of 1,000 jobs cover the same faults in ``make test`` "
                "(tests/reliability/test_scenarios.py; faults of one side share a run, the "
                "platform outage lasts 30 s). Their last results "
                f"({_when(min(r['started_at'] for r in fast))}{_at_commit(fast)}, "
                f"{sum(r['duration_s'] for r in fast) / 60:.1f} minutes in all):", "",
                *scenario_table(fast)]
    out += ["", FINDINGS]
    return "\n".join(out) + "\n"


def summary(document: dict[str, Any]) -> str:
    lines = []
    for r in document.get("scenarios") or []:
        lines.append(f"{'pass' if r['ok'] else 'FAIL'} {r['scenario']:32s} lost {r['lost']} "
                     f"regressed {r['regressed']} finalizers left {r['finalizers_left']} "
                     f"ttc {_fmt(r.get('time_to_consistency_s'), ' s')} "
                     f"({r['duration_s']:.0f} s)")
        lines.extend(f"     problem: {p}" for p in r.get("problems") or [])
    soak = document.get("soak")
    if soak:
        lines.append(f"{'pass' if soak['ok'] else 'FAIL'} soak {soak['minutes']:g} min: "
                     + "; ".join(f"{t['watcher']} {t['measure']} {t['verdict']}"
                                 for t in soak["trends"]))
        lines.extend(f"     problem: {p}" for p in soak.get("problems") or [])
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``RESULTS.json [--fast DIR] [OUT.md]``: DIR holds the fast tests' result files."""
    fast: list[dict[str, Any]] | None = None
    if "--fast" in argv:
        i = argv.index("--fast")
        folder = Path(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
        from tests.reliability.scenarios import FAST
        fast = [json.loads((folder / f"{s.name}.json").read_text()) for s in FAST
                if (folder / f"{s.name}.json").exists()]
    document = json.loads(Path(argv[0]).read_text())
    text = render(document, fast)
    if len(argv) > 1:
        Path(argv[1]).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
