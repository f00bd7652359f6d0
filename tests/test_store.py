"""The pod cache: newest wins, deletions keep the final state until handled, relists
turn absences into deletions."""

from __future__ import annotations

import dataclasses
import math

from sniffer.podview import OUTCOME_FINALIZER, PodView, project
from tests.fixtures.clock import FakeClock
from watch.store import PodStore, SettledPod


def pod(name: str, rv: int, *, uid: str = "u1", phase: str = "Running",
        ns: str = "a") -> PodView:
    return project({"metadata": {"name": name, "namespace": ns, "uid": uid,
                                 "resourceVersion": str(rv),
                                 "creationTimestamp": "2026-01-01T00:00:00Z",
                                 "labels": {"sniffer.io/run-id": f"run-{name}"}},
                    "spec": {"containers": [{"name": "main"}]},
                    "status": {"phase": phase}})


def test_an_older_resource_version_never_overwrites_a_newer_one():
    store = PodStore(("a",))
    assert store.upsert(pod("p", 5, phase="Succeeded"))
    assert not store.upsert(pod("p", 4, phase="Running"))
    assert store.get("a/p").phase == "Succeeded"


def test_a_recreated_pod_with_a_new_uid_replaces_the_old_one():
    store = PodStore(("a",))
    store.upsert(pod("p", 9, uid="old"))
    assert store.upsert(pod("p", 3, uid="new"))
    assert store.get("a/p").uid == "new"


def test_deleted_pod_stays_readable_as_a_tombstone_until_forgotten():
    store = PodStore(("a",))
    store.upsert(pod("p", 1, phase="Running"))
    store.delete(pod("p", 2, phase="Succeeded"), now=100.0)
    tomb = store.get("a/p")
    assert tomb is not None
    assert store.is_deleted("a/p")
    assert tomb.phase == "Succeeded"
    assert tomb.deletion_timestamp == 100.0
    assert len(store) == 0
    store.forget_tombstone("a/p", tomb)
    assert store.get("a/p") is None


def test_forgetting_a_stale_tombstone_keeps_the_newer_one():
    store = PodStore(("a",))
    store.delete(pod("p", 1), now=1.0)
    old = store.get("a/p")
    assert old is not None
    store.upsert(pod("p", 2, uid="u2"))
    store.delete(pod("p", 3, uid="u2"), now=2.0)
    store.forget_tombstone("a/p", old)
    assert store.get("a/p") is not None


def test_relist_reports_new_changed_and_vanished_pods_only_in_its_namespace():
    store = PodStore(("a", "b"))
    store.upsert(pod("same", 1))
    store.upsert(pod("changes", 1))
    store.upsert(pod("vanishes", 1))
    store.upsert(pod("other-ns", 1, ns="b"))
    changed = store.replace("a", [pod("same", 1), pod("changes", 2), pod("new", 3)], now=5.0)
    assert sorted(changed) == ["a/changes", "a/new", "a/vanishes"]
    assert store.is_deleted("a/vanishes")
    assert store.get("b/other-ns") is not None
    assert not store.is_deleted("b/other-ns")


def test_synced_only_after_every_namespace_was_listed():
    store = PodStore(("a", "b"))
    store.replace("a", [], now=0.0)
    assert not store.has_synced
    store.replace("b", [], now=0.0)
    assert store.has_synced


# --- a standby's tombstones ---------------------------------------------------------------


class Standby:
    """A `watch.store.TombstonePolicy` as watch.app builds it from the elector: a standby
    keeps no tombstone of a finalized pod, and lets go of those a live leader has seen."""

    def __init__(self) -> None:
        self.leading = False
        self.before = -math.inf

    def keep_finalized(self) -> bool:
        return self.leading

    def seen_before(self) -> float:
        return -math.inf if self.leading else self.before


def standby_store() -> tuple[PodStore, FakeClock, Standby]:
    clock, policy = FakeClock(0.0), Standby()
    return PodStore(("a",), tombstones=policy, clock=clock), clock, policy


def test_a_standby_forgets_only_tombstones_recorded_before_the_leader_saw_them():
    store, clock, policy = standby_store()
    for name, at in (("early", 10.0), ("late", 20.0)):
        store.upsert(pod(name, 1))
        clock.now = at
        store.delete(pod(name, 2, phase="Succeeded"), now=at)
    assert store.tombstones == 2
    policy.before = 15.0
    assert store.tombstones == 1
    assert store.get("a/early") is None
    assert store.is_deleted("a/late")
    policy.before = 20.5
    assert store.tombstones == 0
    assert store._deleted_at == {}


def test_a_leader_keeps_its_tombstones_until_its_handler_forgets_them():
    store, clock, policy = standby_store()
    policy.leading, policy.before = True, 99.0
    store.delete(pod("p", 2), now=1.0)
    clock.now = 100.0
    assert store.tombstones == 1
    assert store.is_deleted("a/p")


def test_a_standby_keeps_no_tombstone_of_a_pod_that_carried_the_finalizer():
    store, _, _ = standby_store()
    finalized = project({"metadata": {"name": "f", "namespace": "a", "uid": "u1",
                                      "resourceVersion": "1", "finalizers": [OUTCOME_FINALIZER],
                                      "creationTimestamp": "2026-01-01T00:00:00Z",
                                      "labels": {"sniffer.io/run-id": "run-f"}},
                         "spec": {"containers": [{"name": "main"}]},
                         "status": {"phase": "Running"}})
    store.upsert(finalized)
    store.delete(pod("f", 2, phase="Succeeded"), now=1.0)
    assert store.tombstones == 0


def test_a_tombstone_replaced_or_handled_is_not_forgotten_twice():
    store, clock, policy = standby_store()
    store.delete(pod("p", 1), now=1.0)
    store.upsert(pod("p", 2, uid="u2"))  # the name was taken by a new pod
    clock.now = 5.0
    store.delete(pod("q", 1), now=5.0)
    tomb = store.get("a/q")
    assert tomb is not None
    store.forget_tombstone("a/q", tomb)
    policy.before = 10.0
    assert store.tombstones == 0
    assert store.get("a/p") is not None
    assert not store.is_deleted("a/p")
    assert store._deleted_at == {}


def test_a_pod_deleted_again_keeps_the_tombstones_in_clock_order():
    """Expiry pops from the front of the recording order; a re-deleted key moves to the
    end, so a later tombstone is never dropped while an earlier one stays."""
    store, clock, policy = standby_store()
    store.delete(pod("p", 1), now=1.0)
    clock.now = 2.0
    store.delete(pod("q", 1), now=2.0)
    clock.now = 3.0
    store.delete(pod("p", 2), now=3.0)  # p's second deletion (no upsert between)
    policy.before = 2.5
    assert store.is_deleted("a/p")
    assert not store.is_deleted("a/q")


# --- settled pods: compact records ----------------------------------------------------------


class Acks:
    """A `watch.store.CompactionPolicy` (the run ledger's part): runs acknowledged
    terminal."""

    def __init__(self, *runs: str) -> None:
        self.terminal = set(runs)

    def terminal_acknowledged(self, pod: PodView) -> bool:
        return pod.run_id in self.terminal


def settling_store(*runs: str) -> PodStore:
    return PodStore(("a",), compaction=Acks(*runs))


def finalized(name: str, rv: int, phase: str = "Succeeded") -> PodView:
    return dataclasses.replace(pod(name, rv, phase=phase), finalizers=(OUTCOME_FINALIZER,))


def test_a_finished_pod_whose_run_is_acknowledged_terminal_is_kept_as_a_record():
    store = settling_store("run-p")
    assert store.upsert(pod("p", 7, phase="Succeeded"))
    record = store.get("a/p")
    assert isinstance(record, SettledPod)
    assert (record.uid, record.rv, record.run_id, record.phase) == ("u1", 7, "run-p", "Succeeded")
    assert record.resource_version == "7"
    assert store.settled == 1
    assert len(store) == 1


def test_a_pod_still_needing_the_handler_is_kept_in_full():
    store = settling_store("run-running", "run-held")
    store.upsert(pod("running", 1, phase="Running"))      # may still change state
    store.upsert(finalized("held", 1))                     # the finalizer is to be released
    store.upsert(pod("open", 1, phase="Succeeded"))        # run not acknowledged terminal
    store.upsert(project({"metadata": {"name": "untracked", "namespace": "a", "uid": "u9",
                                       "creationTimestamp": "2026-01-01T00:00:00Z"},
                          "status": {"phase": "Succeeded"}}))
    assert all(isinstance(store.get(f"a/{name}"), PodView)
               for name in ("running", "held", "open", "untracked"))
    assert store.settled == 0


def test_without_a_compaction_policy_nothing_is_compacted():
    store = PodStore(("a",))
    store.upsert(pod("p", 1, phase="Succeeded"))
    assert isinstance(store.get("a/p"), PodView)


def test_a_newer_version_replaces_the_record_and_is_judged_afresh():
    store = settling_store("run-p")
    store.upsert(pod("p", 1, phase="Succeeded"))
    assert store.upsert(finalized("p", 2))  # someone put the finalizer back: handle it
    assert isinstance(store.get("a/p"), PodView)
    assert store.upsert(pod("p", 3, phase="Succeeded"))
    assert isinstance(store.get("a/p"), SettledPod)
    assert not store.upsert(pod("p", 2, phase="Running")), "an older version is ignored"
    assert store.get("a/p").rv == 3


def test_a_pod_recreated_under_the_name_of_a_record_replaces_it():
    store = settling_store("run-p")
    store.upsert(pod("p", 9, phase="Succeeded"))
    assert store.upsert(pod("p", 3, uid="u2", phase="Running"))
    current = store.get("a/p")
    assert isinstance(current, PodView)
    assert current.uid == "u2"


def test_a_relist_of_the_same_version_keeps_the_record_and_reports_no_change():
    store = settling_store("run-p")
    store.replace("a", [pod("p", 4, phase="Succeeded")], now=1.0)
    record = store.get("a/p")
    assert isinstance(record, SettledPod)
    assert store.replace("a", [pod("p", 4, phase="Succeeded")], now=2.0) == []
    assert store.get("a/p") is record


def test_a_record_vanished_from_a_relist_is_its_own_tombstone():
    store = settling_store("run-p")
    store.upsert(pod("p", 4, phase="Succeeded"))
    assert store.replace("a", [], now=50.0) == ["a/p"]
    tomb = store.get("a/p")
    assert isinstance(tomb, SettledPod)
    assert store.is_deleted("a/p")
    assert tomb.deletion_timestamp == 50.0
    store.forget_tombstone("a/p", tomb)
    assert store.get("a/p") is None


def test_a_deletion_seen_while_running_survives_compaction():
    store = settling_store("run-p")
    store.upsert(dataclasses.replace(pod("p", 1, phase="Running"), deletion_timestamp=5.0))
    store.upsert(dataclasses.replace(pod("p", 2, phase="Failed"), deletion_timestamp=5.0))
    record = store.get("a/p")
    assert isinstance(record, SettledPod)
    assert record.deleted_while_active
    store._compaction = Acks()  # e.g. a fresh store's judgement; history must stay
    store.upsert(dataclasses.replace(pod("p", 3, phase="Failed"), deletion_timestamp=5.0))
    view = store.get("a/p")
    assert isinstance(view, PodView)
    assert view.deleted_while_active


def test_a_view_acknowledged_since_it_was_written_is_compacted_when_read():
    """The handler's acknowledgement arrives after the pod's last event: the cache
    compacts the view at its next read, and only a version still cached."""
    acks = Acks()
    store = PodStore(("a",), compaction=acks)
    store.upsert(pod("p", 1, phase="Succeeded"))
    view = store.get("a/p")
    assert isinstance(view, PodView), "not acknowledged: kept in full"
    acks.terminal.add("run-p")
    record = store.get("a/p")
    assert isinstance(record, SettledPod)
    assert record.rv == 1
    assert store.get("a/p") is record
    assert store.settled == 1
    store.upsert(finalized("p", 2))
    assert isinstance(store.get("a/p"), PodView), "a held finalizer keeps the view"


def test_a_tombstone_is_never_compacted_on_read():
    """The handler forgets a tombstone by identity: reading must not replace it."""
    acks = Acks()
    store = PodStore(("a",), compaction=acks)
    store.delete(pod("p", 1, phase="Succeeded"), now=1.0)
    tomb = store.get("a/p")
    acks.terminal.add("run-p")
    assert store.get("a/p") is tomb


# --- a relist's deletions ------------------------------------------------------------------

def test_a_pod_a_relist_finds_gone_is_a_tombstone_whose_end_is_unknown():
    store = PodStore(("a",))
    store.upsert(pod("p", 1, phase="Running"))
    assert store.replace("a", [], now=100.0) == ["a/p"]
    tomb = store.get("a/p")
    assert isinstance(tomb, PodView)
    assert store.is_deleted("a/p")
    assert tomb.final_state_unknown
    assert tomb.deletion_timestamp == 100.0


def test_a_pod_seen_deleted_by_its_event_is_a_tombstone_with_its_end():
    store = PodStore(("a",))
    store.upsert(pod("p", 1, phase="Running"))
    store.delete(pod("p", 2, phase="Running"), now=100.0)
    tomb = store.get("a/p")
    assert isinstance(tomb, PodView)
    assert not tomb.final_state_unknown


def test_a_pod_last_seen_deleting_that_a_relist_finds_gone_keeps_its_deletion():
    store = PodStore(("a",))
    deleting = dataclasses.replace(pod("p", 1, phase="Running"), deletion_timestamp=50.0)
    store.upsert(deleting)
    store.replace("a", [], now=100.0)
    tomb = store.get("a/p")
    assert isinstance(tomb, PodView)
    assert not tomb.final_state_unknown
    assert tomb.deletion_timestamp == 50.0


# --- memory: `python -m tests.test_store [PODS]` --------------------------------------------


def _rss_per_pod(settle: bool, pods: int) -> float:
    """RSS growth per pod of a store filled as the reflector fills it (slim pages of 500,
    compacted as projected) from bench.decode's LIST: 90 % finished pods. `settle`: their
    runs are acknowledged terminal (the seed rule), else nothing is compacted."""
    import gc
    import time

    from bench.decode import _decoder, _rss, pages

    decode = _decoder("sniffer")
    assert decode is not None
    store = PodStore((None,), compaction=Acks(*(f"bench-{i:06d}" for i in range(pods)))
                     if settle else None)
    gc.collect()
    before = _rss()
    listed = [store.compact(project(item)) for body in pages(pods, 500)
              for item in decode(body)]
    store.replace(None, listed, now=time.time())
    del listed
    gc.collect()
    return (_rss() - before) / pods


if __name__ == "__main__":
    import subprocess
    import sys

    if sys.argv[1:2] == ["--child"]:
        print(f"{_rss_per_pod(sys.argv[2] == 'settled', int(sys.argv[3])):.0f}")
        raise SystemExit(0)
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(f"RSS per cached pod, {count:,} pods, 90 % finished (fresh process each):")
    for mode in ("full", "settled"):
        out = subprocess.run([sys.executable, "-m", "tests.test_store", "--child", mode,
                              str(count)], capture_output=True, text=True, check=True)
        print(f"  {mode:8} {out.stdout.strip():>6} bytes")
