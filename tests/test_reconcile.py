"""The reconciler on the testbed: a real kube-apiserver and the reference Platform.

No watcher runs unless a test starts one: pods "move on" or are deleted by the test
(status patches in the kubelet's shapes from tests/test_reconcile_diff.py), runs are
edited through the Platform API, and then a pass must repair exactly what is wrong.
Races are injected deterministically through `RepairHooks`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from config import Settings, load_settings
from reconcile.app import Reconciler
from reconcile.mismatch import Mismatch, MismatchKind
from reconcile.repair import RepairHooks, RepairOutcome
from reconcile.report import PassReport, render_table
from sniffer.kube import KubeClient
from sniffer.kubedecode import KubeError, NotFound
from sniffer.platform import PlatformClient
from sniffer.platform_model import StateUpdate
from sniffer.podview import OUTCOME_FINALIZER
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer
from tests.fixtures.kubehttp import MERGE_PATCH
from tests.test_reconcile_diff import kubelet_status, manifest

REPO = Path(__file__).resolve().parents[1]
SNIFFER = str(Path(sys.executable).with_name("sniffer"))
MEMORY_PODS = int(os.environ.get("RECONCILE_MEMORY_PODS", "3000"))
HELD_BYTES_PER_POD_LIMIT = 1536  # a projection is ~1 KiB; a kept raw pod costs ~15 KiB
PAGE_BYTES_PER_POD_LIMIT = 24 * 1024  # one raw page in flight: ~4 KiB text + ~15 KiB dicts
_ids = itertools.count()


def new_run_id() -> str:
    return f"rc-{secrets.token_hex(4)}-{next(_ids)}"


def env_for(apiserver: ApiServer, platform: PlatformServer, namespace: str,
            **extra: str) -> dict[str, str]:
    return {"SNIFFER_PLATFORM_URL": platform.url,
            "SNIFFER_PLATFORM_TOKEN_FILE": str(platform.token_file),
            "SNIFFER_KUBE_KUBECONFIG": str(apiserver.kubeconfig),
            "SNIFFER_KUBE_NAMESPACES": namespace,
            "SNIFFER_RECONCILE_GRACE_PERIOD_S": "0",
            "SNIFFER_LEADER_ENABLED": "false", "SNIFFER_HEALTH_PORT": "0",
            "SNIFFER_TELEMETRY_LOG_LEVEL": "WARNING", **extra}


class Bed:
    """Arranges pods and runs of one test namespace, and runs passes over it."""

    def __init__(self, apiserver: ApiServer, platform: PlatformServer, namespace: str,
                 kube: KubeClient, api: PlatformClient) -> None:
        self.apiserver = apiserver
        self.platform = platform
        self.ns = namespace
        self.kube = kube
        self.api = api
        self.settings = load_settings(env=env_for(apiserver, platform, namespace))

    # --- pods ----------------------------------------------------------------------------

    async def pod(self, name: str, run_id: str | None, phase: str = "Running", *,
                  finalizer: bool = True, kind: str = "job", cancel: bool = False) -> str:
        """Create a pod and let "the kubelet" bring it to `phase`; returns its uid."""
        created = await self.kube.request_json(
            "POST", KubeClient.pods_path(self.ns),
            body=manifest(name, run_id, namespace=self.ns, finalizer=finalizer, kind=kind,
                          cancel=cancel))
        await self.status(name, phase)
        return str(created["metadata"]["uid"])

    async def status(self, name: str, phase: str, **kw: Any) -> None:
        await self.kube.request_json(
            "PATCH", KubeClient.pods_path(self.ns, name) + "/status",
            body={"status": kubelet_status(phase, time.time() - 60, **kw)},
            content_type=MERGE_PATCH)

    async def delete(self, name: str, *, grace: int | None = None) -> None:
        """Delete as a user would (graceful: the pod turns Terminating); `grace=0` with no
        finalizer removes it at once (node lost, force delete, pod GC)."""
        query = {} if grace is None else {"gracePeriodSeconds": grace}
        await self.kube.request_json("DELETE", KubeClient.pods_path(self.ns, name),
                                     query=query)

    async def strip_finalizers(self, name: str) -> None:
        await self.kube.patch_pod(self.ns, name, {"metadata": {"finalizers": None}},
                                  content_type=MERGE_PATCH)

    async def get_pod(self, name: str) -> dict[str, Any] | None:
        try:
            return await self.kube.request_json("GET", KubeClient.pods_path(self.ns, name))
        except NotFound:
            return None

    async def finalizers(self, name: str) -> list[str]:
        pod = await self.get_pod(name)
        assert pod is not None, name
        return list(pod["metadata"].get("finalizers") or [])

    # --- runs ----------------------------------------------------------------------------

    def run(self, run_id: str, state: str = "queued", *, pod_name: str | None = None,
            pod_uid: str | None = None, reason: str | None = None) -> None:
        """Create a run and move it to `state` (bound to `pod_uid`), as the watcher would."""
        self.platform.create_run(run_id, pod_namespace=self.ns, pod_name=pod_name)
        if state != "queued":
            self.move(run_id, state, pod_uid=pod_uid, reason=reason)

    def move(self, run_id: str, state: str, *, pod_uid: str | None = None,
             reason: str | None = None) -> None:
        current = self.platform.get_run(run_id)
        assert current is not None
        fields: dict[str, Any] = {"state": state, "expected_state": current["state"]}
        if pod_uid:
            fields["pod_uid"] = pod_uid
        if reason:
            fields["reason"] = reason
        status, body = self.platform.patch_run(run_id, **fields)
        assert status == 200, body
        assert body["applied"], body

    def state(self, run_id: str) -> tuple[str, str | None, str | None]:
        run = self.platform.get_run(run_id)
        assert run is not None
        return run["state"], run["reason"], run["message"]

    def last_update(self) -> int:
        return int(self.platform.stats()["last_update_seq"])

    def updates_since(self, seq: int) -> list[dict[str, Any]]:
        return self.platform.updates(since=seq)

    # --- passes --------------------------------------------------------------------------

    def reconciler(self, hooks: RepairHooks | None = None,
                   settings: Settings | None = None,
                   clock: Callable[[], float] = time.time) -> Reconciler:
        return Reconciler(settings or self.settings, kube=self.kube, platform=self.api,
                          hooks=hooks, retry_delay_s=0.01, clock=clock)

    async def reconcile(self, *, dry_run: bool = False, only: tuple[str, ...] = (),
                        hooks: RepairHooks | None = None,
                        stop: asyncio.Event | None = None) -> PassReport:
        return await self.reconciler(hooks).run_pass(stop or asyncio.Event(),
                                                     dry_run=dry_run, only=only)


@pytest.fixture
async def bed(apiserver: ApiServer, platform: PlatformServer,
              namespace: str) -> AsyncIterator[Bed]:
    kube = await KubeClient.connect(kubeconfig=str(apiserver.kubeconfig), pool_size=64)
    api = PlatformClient(platform.url, platform.token_file)
    try:
        yield Bed(apiserver, platform, namespace, kube, api)
    finally:
        await api.close()
        await kube.close()


def by_run(report: PassReport) -> dict[str | None, list[tuple[MismatchKind, RepairOutcome]]]:
    out: dict[str | None, list[tuple[MismatchKind, RepairOutcome]]] = {}
    for r in report.results:
        out.setdefault(r.mismatch.run_id, []).append((r.mismatch.kind, r.outcome))
    return out


# --- each kind, for real ----------------------------------------------------------------------


async def test_each_mismatch_kind_is_repaired_with_the_right_state_or_reported(
        bed: Bed) -> None:
    ids = {k: new_run_id() for k in (
        "succeeded", "oom", "deleted", "lost", "lost_cancel", "left", "orphan",
        "unknown_phase", "foreign", "fine")}
    # The pod finished while no watcher ran.
    uid = await bed.pod("succeeded", ids["succeeded"])
    bed.run(ids["succeeded"], "running", pod_name="succeeded", pod_uid=uid)
    await bed.status("succeeded", "Succeeded")
    # Never reported at all: the run is still queued, the pod failed (OOMKilled).
    await bed.pod("oom", ids["oom"], "Failed", finalizer=False)
    bed.run(ids["oom"], pod_name="oom")
    # A user deleted the job's pod: it is Terminating, held by our finalizer.
    uid = await bed.pod("deleted", ids["deleted"])
    bed.run(ids["deleted"], "running", pod_name="deleted", pod_uid=uid)
    await bed.delete("deleted")
    # The node went away with the pod (no finalizer to hold it).
    uid = await bed.pod("lost", ids["lost"], finalizer=False)
    bed.run(ids["lost"], "running", pod_name="lost", pod_uid=uid)
    await bed.delete("lost", grace=0)
    # The same, for a run whose cancel the user requested on the platform.
    uid = await bed.pod("lost-cancel", ids["lost_cancel"], finalizer=False)
    bed.run(ids["lost_cancel"], "running", pod_name="lost-cancel", pod_uid=uid)
    bed.platform.cancel_run(ids["lost_cancel"])
    await bed.delete("lost-cancel", grace=0)
    # The platform has the outcome, but the finalizer was never released.
    uid = await bed.pod("left", ids["left"], "Succeeded")
    bed.run(ids["left"], "succeeded", pod_name="left", pod_uid=uid)
    # A pod whose run id the platform never heard of.
    await bed.pod("orphan", ids["orphan"])
    # A pod whose node stopped reporting.
    uid = await bed.pod("unknown-phase", ids["unknown_phase"])
    bed.run(ids["unknown_phase"], "running", pod_name="unknown-phase", pod_uid=uid)
    await bed.status("unknown-phase", "Unknown")
    # A run bound to another pod than the one carrying its id.
    await bed.pod("foreign", ids["foreign"], "Succeeded")
    bed.run(ids["foreign"], "running", pod_name="foreign", pod_uid="0000-another-pod")
    # And one that is fine.
    uid = await bed.pod("fine", ids["fine"])
    bed.run(ids["fine"], "running", pod_name="fine", pod_uid=uid)

    report = await bed.reconcile()

    R, K = RepairOutcome, MismatchKind
    assert by_run(report) == {
        ids["succeeded"]: [(K.POD_AHEAD, R.REPAIRED)],
        ids["oom"]: [(K.POD_AHEAD, R.REPAIRED)],
        ids["deleted"]: [(K.POD_AHEAD, R.REPAIRED)],
        ids["lost"]: [(K.POD_LOST, R.REPAIRED)],
        ids["lost_cancel"]: [(K.POD_LOST, R.REPAIRED)],
        ids["left"]: [(K.FINALIZER_LEFT, R.REPAIRED)],
        ids["orphan"]: [(K.ORPHAN_POD, R.REPORTED)],
        ids["unknown_phase"]: [(K.UNDERIVABLE, R.REPORTED)],
        ids["foreign"]: [(K.UID_MISMATCH, R.REPORTED)],
    }
    assert report.exit_code == 0
    assert bed.state(ids["succeeded"]) == ("succeeded", "Completed", None)
    assert bed.state(ids["oom"])[:2] == ("failed", "OOMKilled")
    assert bed.state(ids["deleted"]) == ("failed", "Deleted", "pod deleted before it finished")
    assert bed.state(ids["lost"]) == ("failed", "PodLost", "pod lost")
    assert bed.state(ids["lost_cancel"]) == ("cancelled", "Cancelled",
                                             "cancel requested; pod lost")
    assert bed.state(ids["unknown_phase"])[0] == "running"
    assert bed.state(ids["foreign"])[0] == "running"
    oom = bed.platform.get_run(ids["oom"])
    assert oom is not None
    assert oom["exit_code"] == 137
    assert oom["pod_name"] == "oom"
    # Finalizers: released where the outcome is now recorded, untouched elsewhere.
    assert await bed.finalizers("succeeded") == []
    assert await bed.finalizers("deleted") == []
    assert await bed.finalizers("left") == []
    assert await bed.finalizers("orphan") == [OUTCOME_FINALIZER]
    assert await bed.finalizers("unknown-phase") == [OUTCOME_FINALIZER]
    assert await bed.finalizers("foreign") == [OUTCOME_FINALIZER]
    assert await bed.finalizers("fine") == [OUTCOME_FINALIZER]

    again = await bed.reconcile()
    assert {r.mismatch.kind for r in again.results} == {
        K.ORPHAN_POD, K.UNDERIVABLE, K.UID_MISMATCH}
    assert {r.outcome for r in again.results} == {R.REPORTED}


async def test_a_second_pass_finds_nothing(bed: Bed) -> None:
    a, b, c = new_run_id(), new_run_id(), new_run_id()
    uid = await bed.pod("a", a)
    bed.run(a, "running", pod_name="a", pod_uid=uid)
    await bed.status("a", "Failed", reason="Error", exit_code=2)
    uid = await bed.pod("b", b, finalizer=False)
    bed.run(b, "running", pod_name="b", pod_uid=uid)
    await bed.delete("b", grace=0)
    await bed.pod("c", c, "Succeeded")
    bed.run(c, "queued", pod_name="c")

    first = await bed.reconcile()
    assert first.repaired == 3
    assert first.exit_code == 0
    seq = bed.last_update()
    second = await bed.reconcile()
    assert second.results == ()
    assert second.exit_code == 0
    assert bed.updates_since(seq) == []
    assert "result: consistent (exit 0)" in render_table(second)


async def test_a_fresh_run_without_pod_is_left_alone_during_the_grace_period(
        bed: Bed) -> None:
    run_id = new_run_id()
    bed.run(run_id, "queued", pod_name="not-yet")
    settings = load_settings(env=env_for(bed.apiserver, bed.platform, bed.ns,
                                         SNIFFER_RECONCILE_GRACE_PERIOD_S="3600"))
    report = await bed.reconciler(settings=settings).run_pass(asyncio.Event())
    assert report.results == ()
    assert bed.state(run_id)[0] == "queued"


async def test_a_job_stopped_by_a_completed_deletion_is_left_to_the_watcher_for_the_grace_period(
        bed: Bed) -> None:
    run_id = new_run_id()
    uid = await bed.pod("stopped", run_id)
    bed.run(run_id, "running", pod_name="stopped", pod_uid=uid)
    await bed.delete("stopped")  # a user stops the job: graceful, the pod turns Terminating
    # "The kubelet": SIGTERM ends the container (Error, exit 143), then the final DELETE.
    await bed.status("stopped", "Failed", reason="Error", exit_code=143)
    await bed.delete("stopped", grace=0)
    obj = await bed.get_pod("stopped")  # held by our finalizer
    assert obj is not None
    assert obj["metadata"]["deletionGracePeriodSeconds"] == 0
    grace = 600.0
    settings = load_settings(env=env_for(bed.apiserver, bed.platform, bed.ns,
                                         SNIFFER_RECONCILE_GRACE_PERIOD_S=str(grace)))

    report = await bed.reconciler(settings=settings).run_pass(asyncio.Event())
    assert report.results == ()
    assert bed.state(run_id)[0] == "running"
    assert await bed.finalizers("stopped") == [OUTCOME_FINALIZER]

    # A grace period later nobody has reported it (no watcher runs): the object's reading.
    later = bed.reconciler(settings=settings, clock=lambda: time.time() + grace)
    report = await later.run_pass(asyncio.Event())
    assert by_run(report) == {run_id: [(MismatchKind.POD_AHEAD, RepairOutcome.REPAIRED)]}
    assert bed.state(run_id)[:2] == ("failed", "Error")
    stopped = bed.platform.get_run(run_id)
    assert stopped is not None
    assert stopped["exit_code"] == 143
    assert await bed.get_pod("stopped") is None  # the finalizer was the last one


# --- the race: a change after the snapshot is never overwritten -------------------------


def once(action: Callable[[Mismatch], Awaitable[None]]) -> Callable[[Mismatch], Awaitable[None]]:
    done = False

    async def hook(m: Mismatch) -> None:
        nonlocal done
        if not done:
            done = True
            await action(m)

    return hook


async def watcher_reports(bed: Bed, run_id: str, state: str, reason: str) -> None:
    """What the watcher does: a conditional update from the state it knows."""
    run = await bed.api.get_run(run_id)
    assert run is not None
    result = await bed.api.update_state(StateUpdate(run_id, state, reason=reason),
                                        expected_state=run.state)
    assert result.outcome.value == "applied"


async def test_a_run_updated_between_snapshot_and_repair_is_never_overwritten(
        bed: Bed) -> None:
    run_id = new_run_id()
    uid = await bed.pod("p", run_id, finalizer=False)
    bed.run(run_id, "running", pod_name="p", pod_uid=uid)
    await bed.delete("p", grace=0)  # looks lost in the snapshot ...
    seq = bed.last_update()

    async def succeeded_meanwhile(m: Mismatch) -> None:  # ... but it had succeeded
        await watcher_reports(bed, run_id, "succeeded", "Completed")

    report = await bed.reconcile(hooks=RepairHooks(before_reread=once(succeeded_meanwhile)))

    assert by_run(report) == {run_id: [(MismatchKind.POD_LOST,
                                        RepairOutcome.ALREADY_CONSISTENT)]}
    assert bed.state(run_id) == ("succeeded", "Completed", None)
    assert [u["to_state"] for u in bed.updates_since(seq)] == ["succeeded"]


async def test_a_pod_that_appears_unreadable_after_the_snapshot_keeps_its_run_from_being_lost(
        bed: Bed) -> None:
    run_id = new_run_id()
    bed.run(run_id, "running", pod_name="p")  # no pod in the snapshot: looks lost ...
    seq = bed.last_update()

    async def unreadable_pod_meanwhile(m: Mismatch) -> None:  # ... but one turns up
        await bed.pod("p-retry", run_id, kind="no-such-kind")  # Sniffer cannot read it

    report = await bed.reconcile(hooks=RepairHooks(
        before_reread=once(unreadable_pod_meanwhile)))

    # As in the snapshot's own judgement, an unreadable pod of the run is for a human.
    assert by_run(report) == {run_id: [(MismatchKind.POD_LOST,
                                        RepairOutcome.ALREADY_CONSISTENT)]}
    assert "underivable" in report.results[0].action
    assert bed.state(run_id)[0] == "running"
    assert bed.updates_since(seq) == []


async def test_a_run_updated_between_reread_and_write_is_never_overwritten(
        bed: Bed) -> None:
    run_id = new_run_id()
    uid = await bed.pod("p", run_id, finalizer=False)
    bed.run(run_id, "running", pod_name="p", pod_uid=uid)
    await bed.delete("p", grace=0)
    seq = bed.last_update()

    async def succeeded_meanwhile(m: Mismatch) -> None:
        await watcher_reports(bed, run_id, "succeeded", "Completed")

    report = await bed.reconcile(hooks=RepairHooks(before_write=once(succeeded_meanwhile)))

    # Our "failed PodLost" met 409 (terminal); judged again, nothing was left to do.
    assert by_run(report) == {run_id: [(MismatchKind.POD_LOST, RepairOutcome.SKIPPED_RACE)]}
    assert report.exit_code == 0
    assert report.skipped == 1
    assert bed.state(run_id) == ("succeeded", "Completed", None)
    assert [u["to_state"] for u in bed.updates_since(seq)] == ["succeeded"]


async def test_a_run_moved_forward_meanwhile_is_judged_again_and_repaired(
        bed: Bed) -> None:
    run_id = new_run_id()
    await bed.pod("p", run_id, "Succeeded")
    bed.run(run_id, "queued", pod_name="p")
    seq = bed.last_update()

    async def running_meanwhile(m: Mismatch) -> None:
        await watcher_reports(bed, run_id, "running", "Started")

    report = await bed.reconcile(hooks=RepairHooks(before_write=once(running_meanwhile)))

    # 412 (we expected queued), judged again from running: still behind the pod.
    assert by_run(report) == {run_id: [(MismatchKind.POD_AHEAD, RepairOutcome.REPAIRED)]}
    assert bed.state(run_id)[:2] == ("succeeded", "Completed")
    assert [(u["from_state"], u["to_state"]) for u in bed.updates_since(seq)] == [
        ("queued", "running"), ("running", "succeeded")]
    assert await bed.finalizers("p") == []


async def test_a_run_that_keeps_moving_is_skipped_not_forced(bed: Bed) -> None:
    run_id = new_run_id()
    await bed.pod("p", run_id, "Succeeded", finalizer=False)
    bed.run(run_id, "queued", pod_name="p")
    moves = iter([("running", "Started"), ("cancelled", "Cancelled")])

    async def keeps_moving(m: Mismatch) -> None:
        state, reason = next(moves)
        await watcher_reports(bed, run_id, state, reason)

    report = await bed.reconcile(hooks=RepairHooks(before_write=keeps_moving))

    assert by_run(report) == {run_id: [(MismatchKind.POD_AHEAD, RepairOutcome.SKIPPED_RACE)]}
    assert bed.state(run_id)[:2] == ("cancelled", "Cancelled")


async def test_a_pod_replaced_under_its_name_before_the_release_is_left_alone(
        bed: Bed) -> None:
    run_id = new_run_id()
    uid = await bed.pod("p", run_id, "Succeeded")
    bed.run(run_id, "succeeded", pod_name="p", pod_uid=uid)  # only the finalizer is left

    async def replaced_meanwhile(m: Mismatch) -> None:
        await bed.strip_finalizers("p")
        await bed.delete("p", grace=0)
        await bed.pod("p", run_id)  # a new pod took the name (and got our finalizer)

    report = await bed.reconcile(hooks=RepairHooks(before_write=once(replaced_meanwhile)))

    # The release carries the old pod's uid; the API server refuses it with 422, which
    # means "replaced": nothing to do, not a failure.
    assert by_run(report) == {run_id: [(MismatchKind.FINALIZER_LEFT,
                                        RepairOutcome.ALREADY_CONSISTENT)]}, \
        report.results[0].error
    assert report.exit_code == 0
    pod = await bed.get_pod("p")
    assert pod is not None
    assert pod["metadata"]["uid"] != uid
    assert await bed.finalizers("p") == [OUTCOME_FINALIZER]


async def test_a_repair_retries_through_a_platform_outage(bed: Bed) -> None:
    run_id = new_run_id()
    await bed.pod("p", run_id, "Failed", finalizer=False)
    bed.run(run_id, "running", pod_name="p")

    async def outage_right_before_the_write(m: Mismatch) -> None:
        await asyncio.to_thread(bed.platform.set_faults, outage_s=1)

    report = await bed.reconcile(
        hooks=RepairHooks(before_write=once(outage_right_before_the_write)))

    # 503 with Retry-After: waited, read and judged again, then written.
    assert by_run(report) == {run_id: [(MismatchKind.POD_AHEAD, RepairOutcome.REPAIRED)]}
    assert bed.state(run_id)[:2] == ("failed", "OOMKilled")


async def test_reconcile_beside_a_running_watcher_never_regresses_a_run(
        bed: Bed) -> None:
    from watch.app import Watcher

    runs: list[str] = []
    for i in range(12):
        run_id = new_run_id()
        runs.append(run_id)
        uid = await bed.pod(f"p{i}", run_id)
        bed.run(run_id, "running", pod_name=f"p{i}", pod_uid=uid)
    for i in range(12):  # the pods move on while nothing watches
        await bed.status(f"p{i}", "Succeeded" if i % 2 else "Failed")
    seq = bed.last_update()
    stop = asyncio.Event()
    watcher = Watcher(bed.settings)
    watching = asyncio.create_task(watcher.run(stop), name="watcher")
    try:
        # Two passes and the watcher, all at once: whoever writes first wins, the others
        # find the run terminal (and free the finalizer if it is still held).
        reports = await asyncio.gather(bed.reconcile(), bed.reconcile())
    finally:
        stop.set()
        await watching
    for i in range(12):
        assert await bed.finalizers(f"p{i}") == []
    for i, run_id in enumerate(runs):
        assert bed.state(run_id)[0] == ("succeeded" if i % 2 else "failed")
    updates = bed.updates_since(seq)
    assert sorted(u["run_id"] for u in updates) == sorted(runs)  # one terminal write each
    assert all(r.failed == 0 for r in reports)


# --- modes --------------------------------------------------------------------------------


async def test_dry_run_reports_the_plan_and_changes_nothing(bed: Bed) -> None:
    a, b, c = new_run_id(), new_run_id(), new_run_id()
    uid = await bed.pod("a", a)
    bed.run(a, "running", pod_name="a", pod_uid=uid)
    await bed.status("a", "Succeeded")
    bed.run(b, "running", pod_name="gone")
    uid = await bed.pod("c", c, "Succeeded")
    bed.run(c, "succeeded", pod_name="c", pod_uid=uid)
    before = {name: await bed.get_pod(name) for name in ("a", "c")}
    seq = bed.last_update()

    report = await bed.reconcile(dry_run=True)

    assert by_run(report) == {a: [(MismatchKind.POD_AHEAD, RepairOutcome.PLANNED)],
                              b: [(MismatchKind.POD_LOST, RepairOutcome.PLANNED)],
                              c: [(MismatchKind.FINALIZER_LEFT, RepairOutcome.PLANNED)]}
    actions = {r.mismatch.run_id: r.action for r in report.results}
    assert actions[a] == f"would set succeeded (Completed); remove finalizer {OUTCOME_FINALIZER}"
    assert actions[b] == "would set failed (PodLost)"
    assert report.exit_code == 0
    assert bed.updates_since(seq) == []
    assert {name: await bed.get_pod(name) for name in ("a", "c")} == before
    assert [bed.state(r)[0] for r in (a, b, c)] == ["running", "running", "succeeded"]


async def test_only_limits_the_pass_to_the_named_runs(bed: Bed) -> None:
    a, b, terminal = new_run_id(), new_run_id(), new_run_id()
    bed.run(a, "running", pod_name="gone-a")
    bed.run(b, "running", pod_name="gone-b")
    uid = await bed.pod("t", terminal, "Succeeded")
    bed.run(terminal, "succeeded", pod_name="t", pod_uid=uid)

    report = await bed.reconcile(only=(a, terminal, "rc-never-heard-of"))

    assert by_run(report) == {a: [(MismatchKind.POD_LOST, RepairOutcome.REPAIRED)],
                              terminal: [(MismatchKind.FINALIZER_LEFT,
                                          RepairOutcome.REPAIRED)]}
    assert report.only == (a, terminal, "rc-never-heard-of")
    assert report.runs_listed == 0
    assert report.runs_looked_up == 3
    assert bed.state(a)[:2] == ("failed", "PodLost")
    assert bed.state(b)[0] == "running"


# --- stopping and resuming ------------------------------------------------------------------


async def lost_runs(bed: Bed, n: int) -> list[str]:
    runs = [new_run_id() for _ in range(n)]
    for i, run_id in enumerate(runs):
        bed.run(run_id, "running", pod_name=f"gone-{i}")
    return runs


async def test_a_stopped_pass_reports_what_it_did_and_a_rerun_completes_the_job(
        bed: Bed) -> None:
    runs = await lost_runs(bed, 6)
    settings = load_settings(env=env_for(bed.apiserver, bed.platform, bed.ns,
                                         SNIFFER_RECONCILE_CONCURRENCY="1"))
    stop = asyncio.Event()
    calls = 0

    async def sigterm_during_the_second_repair(m: Mismatch) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            stop.set()

    partial = await bed.reconciler(RepairHooks(before_reread=sigterm_during_the_second_repair),
                                   settings=settings).run_pass(stop)

    assert partial.interrupted
    assert partial.exit_code == 3
    assert partial.outcomes["repaired"] == 2  # the one in flight finished
    assert partial.outcomes["not_attempted"] == 4
    assert "INTERRUPTED" in render_table(partial)
    rerun = await bed.reconcile()
    assert rerun.repaired == 4
    assert rerun.exit_code == 0
    assert all(bed.state(r)[:2] == ("failed", "PodLost") for r in runs)
    assert (await bed.reconcile()).results == ()


async def test_a_pass_cancelled_mid_repair_leaves_nothing_running_and_a_rerun_completes(
        bed: Bed) -> None:
    runs = await lost_runs(bed, 5)
    reached = asyncio.Event()
    calls = 0

    async def hang_on_the_third(m: Mismatch) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            reached.set()
            await asyncio.Event().wait()

    settings = load_settings(env=env_for(bed.apiserver, bed.platform, bed.ns,
                                         SNIFFER_RECONCILE_CONCURRENCY="1"))
    passing = asyncio.create_task(bed.reconciler(RepairHooks(before_write=hang_on_the_third),
                                                 settings=settings).run_pass(asyncio.Event()))
    await reached.wait()
    passing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await passing
    assert sum(bed.state(r)[0] == "failed" for r in runs) == 2
    rerun = await bed.reconcile()
    assert rerun.repaired == 3
    assert all(bed.state(r)[0] == "failed" for r in runs)


def cli_env(env: dict[str, str]) -> dict[str, str]:
    """The test's environment without any SNIFFER_* setting of its own, plus `env`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SNIFFER_")}, **env}


def spawn(env: dict[str, str]) -> subprocess.Popen[str]:
    """`sniffer reconcile --output json` in the background."""
    return subprocess.Popen([SNIFFER, "reconcile", "--output", "json"], env=cli_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)


# Linux counts the resident pages a child inherits at fork in its peak RSS, so the pass is
# started by a small launcher process, not by this (big) test process.
_LAUNCHER = """
import json, os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
out = p.stdout.read()
_, status, usage = os.wait4(p.pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "out": out.decode(),
                  "max_rss_kib": usage.ru_maxrss}))
"""


def run_measured(env: dict[str, str]) -> tuple[int, str, float]:
    """Exit code, stdout and peak RSS (MiB) of one `sniffer reconcile --output json`."""
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, SNIFFER, "reconcile", "--output",
                           "json"], env=cli_env(env), capture_output=True, text=True,
                          check=True, cwd=REPO)
    result = json.loads(done.stdout)
    return result["code"], result["out"], result["max_rss_kib"] / 1024


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SNIFFER, "reconcile", *args], env=cli_env(env),
                          capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=REPO)


async def test_a_killed_cli_pass_rerun_completes_the_job(bed: Bed) -> None:
    runs = await lost_runs(bed, 8)
    env = env_for(bed.apiserver, bed.platform, bed.ns, SNIFFER_RECONCILE_CONCURRENCY="1")
    seq = bed.last_update()
    bed.platform.set_faults(latency_ms=300)  # each repair takes two slow platform calls
    proc = spawn(env)
    try:
        while not bed.updates_since(seq):  # the first repair landed: kill it half-way
            assert proc.poll() is None, proc.communicate()
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        bed.platform.clear_faults()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = sum(bed.state(r)[0] == "failed" for r in runs)
    assert 1 <= done < len(runs)

    rerun = cli(env, "--output", "json")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["repaired"]["pod_lost"] == len(runs) - done
    assert all(bed.state(r)[:2] == ("failed", "PodLost") for r in runs)
    assert json.loads(cli(env, "--output", "json").stdout)["items"] == []


async def test_sigterm_stops_the_cli_with_a_partial_report_and_exit_3(bed: Bed) -> None:
    runs = await lost_runs(bed, 6)
    env = env_for(bed.apiserver, bed.platform, bed.ns, SNIFFER_RECONCILE_CONCURRENCY="1",
                  SNIFFER_SHUTDOWN_DRAIN_TIMEOUT_S="30")
    seq = bed.last_update()
    bed.platform.set_faults(latency_ms=300)  # each repair takes two slow platform calls
    proc = spawn(env)
    try:
        while not bed.updates_since(seq):
            assert proc.poll() is None, proc.communicate()
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        bed.platform.clear_faults()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, err
    report = json.loads(out)
    assert report["interrupted"]
    assert report["exit_code"] == 3
    assert report["outcomes"]["not_attempted"] >= 1
    assert report["outcomes"]["interrupted"] == 0  # the one in flight was drained
    assert report["repaired"]["pod_lost"] == sum(bed.state(r)[0] == "failed" for r in runs)


# --- the command line -----------------------------------------------------------------------


async def test_cli_exits_0_with_json_counts_when_it_repaired_everything(bed: Bed) -> None:
    a, b, orphan = new_run_id(), new_run_id(), new_run_id()
    uid = await bed.pod("a", a)
    bed.run(a, "running", pod_name="a", pod_uid=uid)
    await bed.status("a", "Succeeded")
    bed.run(b, "queued", pod_name="gone")
    await bed.pod("o", orphan)
    ok = await bed.pod("fine", None)  # an untracked-by-run pod is not looked at
    assert ok

    done = cli(env_for(bed.apiserver, bed.platform, bed.ns), "--output", "json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["exit_code"] == 0
    assert report["mismatches"] == {"pod_ahead": 1, "pod_lost": 1, "finalizer_left": 0,
                                    "orphan_pod": 1, "underivable": 0, "uid_mismatch": 0,
                                    "job_ahead": 0, "job_lost": 0, "app_ahead": 0,
                                    "app_lost": 0}
    assert report["repaired"] == {"pod_ahead": 1, "pod_lost": 1, "finalizer_left": 0,
                                  "job_ahead": 0, "job_lost": 0, "app_ahead": 0,
                                  "app_lost": 0}
    assert report["outcomes"]["reported"] == 1
    assert report["failed"] == 0
    assert report["pods_listed"] == 2
    assert report["scope"] == [bed.ns]
    items = {i["run_id"]: i for i in report["items"]}
    assert items[a]["action"] == (f"set succeeded (Completed), was running; "
                                  f"removed finalizer {OUTCOME_FINALIZER}")
    assert items[orphan]["outcome"] == "reported"


async def test_cli_exits_0_and_prints_one_summary_when_consistent(bed: Bed) -> None:
    run_id = new_run_id()
    uid = await bed.pod("a", run_id)
    bed.run(run_id, "running", pod_name="a", pod_uid=uid)

    done = cli(env_for(bed.apiserver, bed.platform, bed.ns))

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "result: consistent (exit 0)"
    assert "RUN" not in done.stdout


async def test_cli_exits_1_and_names_the_failure_when_a_repair_fails(bed: Bed) -> None:
    run_id = new_run_id()
    uid = await bed.pod("left", run_id, "Succeeded")
    bed.run(run_id, "succeeded", pod_name="left", pod_uid=uid)
    kubeconfig = await read_only_kubeconfig(bed)

    done = cli(env_for(bed.apiserver, bed.platform, bed.ns,
                       SNIFFER_KUBE_KUBECONFIG=str(kubeconfig)), "--output", "json")

    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert report["failed"] == 1
    [item] = report["items"]
    assert (item["kind"], item["outcome"]) == ("finalizer_left", "failed")
    assert "403" in item["error"]
    assert await bed.finalizers("left") == [OUTCOME_FINALIZER]

    table = cli(env_for(bed.apiserver, bed.platform, bed.ns,
                        SNIFFER_KUBE_KUBECONFIG=str(kubeconfig)))
    assert table.returncode == 1
    assert "result: FAILED: see the rows marked failed (exit 1)" in table.stdout


async def test_cli_exits_1_when_the_platform_cannot_be_listed(bed: Bed) -> None:
    bed.platform.set_faults(error_rate=1.0, error_status=503)
    try:
        done = cli(env_for(bed.apiserver, bed.platform, bed.ns), "--output", "json")
    finally:
        bed.platform.clear_faults()
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["error"].startswith("PlatformUnavailable")
    assert report["items"] == []


def test_cli_refuses_an_invalid_run_id_before_connecting(tmp_path: Path) -> None:
    done = cli({"SNIFFER_PLATFORM_URL": "http://127.0.0.1:1",
                "SNIFFER_KUBE_KUBECONFIG": str(tmp_path / "none")}, "--only", "bad id!")
    assert done.returncode == 2
    assert "not a valid run id" in done.stderr


async def read_only_kubeconfig(bed: Bed) -> Path:
    """A kubeconfig for a service account that may read pods (and Jobs) but not patch them."""
    ns, rbac = bed.ns, f"/apis/rbac.authorization.k8s.io/v1/namespaces/{bed.ns}"
    await bed.kube.request_json("POST", f"/api/v1/namespaces/{ns}/serviceaccounts",
                                body={"metadata": {"name": "reader"}})
    await bed.kube.request_json("POST", f"{rbac}/roles", body={
        "metadata": {"name": "read-pods"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                  {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list"]}]})
    await bed.kube.request_json("POST", f"{rbac}/rolebindings", body={
        "metadata": {"name": "reader-reads-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "read-pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]})
    issued = await bed.kube.request_json(
        "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/reader/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
              "spec": {"expirationSeconds": 3600}})
    config = yaml.safe_load(bed.apiserver.kubeconfig.read_text())
    config["users"][0]["user"] = {"token": issued["status"]["token"]}
    path = bed.apiserver.kubeconfig.with_name(f"reader-{ns}.kubeconfig")
    path.write_text(yaml.safe_dump(config))
    # The RBAC authorizer reads roles through an informer: wait until the grant is live.
    reader = await KubeClient.connect(kubeconfig=str(path))
    try:
        for _ in range(200):
            try:
                await reader.list_pods(ns, label_selector="", limit=1)
                break
            except KubeError:  # 403 until the authorizer has the role binding
                await asyncio.sleep(0.05)
    finally:
        await reader.close()
    return path


# --- a big pass: bounded memory ----------------------------------------------------------------


async def fill(bed: Bed, count: int) -> list[str]:
    """`count` pods like a busy cluster's: one in five of an open run (running, with the
    finalizer), the rest finished with their runs terminal. Created 64 at a time."""
    runs = [new_run_id() for _ in range(count)]
    gate = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with gate:
            name, run_id = f"w-{i}", runs[i]
            open_run = i % 5 == 0
            uid = await bed.pod(name, run_id, "Running" if open_run else "Succeeded",
                                finalizer=open_run)
            await bed.api.create_run(run_id, pod_namespace=bed.ns, pod_name=name)
            update = StateUpdate(run_id, "running" if open_run else "succeeded",
                                 reason=None if open_run else "Completed", pod_uid=uid,
                                 pod_name=name, pod_namespace=bed.ns)
            result = await bed.api.update_state(update, expected_state="queued")
            assert result.outcome.value == "applied"

    await asyncio.gather(*(one(i) for i in range(count)))
    return runs


async def test_a_pass_over_thousands_of_pods_keeps_memory_bounded(bed: Bed) -> None:
    count = MEMORY_PODS
    try:
        await fill(bed, count)
        await measure_a_big_pass(bed, count)
    finally:
        await empty(bed, count)


async def empty(bed: Bed, count: int) -> None:
    """Delete the pods 64 at a time (one collection DELETE of thousands would time out)."""
    gate = asyncio.Semaphore(64)

    async def one(name: str) -> None:
        async with gate:
            try:
                await bed.strip_finalizers(name)
                await bed.delete(name, grace=0)
            except NotFound:
                pass

    await asyncio.gather(*(one(f"w-{i}") for i in range(count)))


async def measure_a_big_pass(bed: Bed, count: int) -> None:

    started = time.perf_counter()
    timed = await bed.reconcile()
    elapsed = time.perf_counter() - started
    assert timed.pods_listed == count
    assert timed.results == ()
    assert timed.runs_looked_up == 0  # finished pods of terminal runs cost no request

    reconciler = bed.reconciler()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        report = await reconciler.run_pass(asyncio.Event())
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.pods_listed == count
    assert report.results == ()
    assert reconciler.snapshot is not None
    assert len(reconciler.snapshot.pods) == count
    peak_per_pod = (peak - before) / count
    retained_per_pod = (retained - before) / count

    env = env_for(bed.apiserver, bed.platform, bed.ns)
    code, out, max_rss_mib = await asyncio.to_thread(run_measured, env)
    assert code == 0
    assert json.loads(out)["pods_listed"] == count

    print(f"\nreconcile pass over {count} pods ({timed.runs_listed} open runs listed): "
          f"{elapsed:.2f}s in-process; tracemalloc peak {peak_per_pod:.0f} B/pod, "
          f"held after the pass {retained_per_pod:.0f} B/pod, one page in flight "
          f"{(peak - retained) / 2**20:.1f} MiB; "
          f"CLI process max RSS {max_rss_mib:.1f} MiB")
    # Bounded: what the pass holds is the projections, and what it needs on top is one
    # raw page, whatever the number of pods.
    assert retained_per_pod < HELD_BYTES_PER_POD_LIMIT
    page_size = bed.settings.kube.page_size
    assert peak - retained < page_size * PAGE_BYTES_PER_POD_LIMIT
