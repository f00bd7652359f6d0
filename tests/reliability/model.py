"""What a fault scenario is, and what running one gives.

* `Load`: the simulator's load (jobs, rate, durations, mix, instant deletion).
* `Scenario`: a load, a fault schedule (`inject`, run beside the simulator) or a `drive` of
  its own, the watchers' settings, the `evidence` that its faults happened, and any
  `regressions` rule of its own.
* `Result`: the verdict of one run, JSON-able (`to_json`); `ok` iff `problems` is empty.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from testbed.simulator.config import Distribution, SimConfig, parse_mix

if TYPE_CHECKING:
    from tests.reliability.context import Ctx


@dataclass(frozen=True)
class Load:
    """The simulator's load: `jobs` workloads created at `rate` per second."""

    jobs: int
    rate: float
    duration: str = "uniform:0.5,3"
    mix: str | None = None
    delete_finished: bool = False

    def config(self, namespace: str, prefix: str, seed: int) -> SimConfig:
        extra: dict[str, Any] = {}
        if self.mix:
            extra["mix"] = parse_mix(self.mix)
        return SimConfig(jobs=self.jobs, rate=self.rate, namespace=namespace, seed=seed,
                         run_prefix=prefix, duration=Distribution.parse(self.duration),
                         delete_finished=self.delete_finished, **extra)

    @property
    def planned_s(self) -> float:
        """Seconds the simulator takes to create every pod at `rate`."""
        return self.jobs / self.rate if self.rate > 0 else 0.0

    def describe(self) -> str:
        text = f"{self.jobs} jobs at {self.rate:g}/s"
        if self.delete_finished:
            text += ", deleted when finished"
        return text


Step = Callable[["Ctx"], Coroutine[Any, Any, None]]
Evidence = Callable[["Ctx"], list[str]]
Oracle = Callable[["Ctx", Sequence[Mapping[str, Any]]], list[str]]


@dataclass(frozen=True)
class Scenario:
    name: str
    faults: str
    """What goes wrong, for the results table."""
    load: Load
    inject: Step | None = None
    """The fault schedule, run beside the simulator (use `Ctx.at` and `Ctx.fault`)."""
    drive: Step | None = None
    """Replaces "simulate beside `inject`" for scenarios with phases (it calls
    `Ctx.simulate` itself)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra settings of every watcher (SNIFFER_* variables)."""
    replicas: int = 1
    leader_election: bool = True
    proxy: bool = False
    """Put a `ThreadedProxy` between the watchers and the API server."""
    own_apiserver: tuple[str, ...] | None = None
    """Run on a `RestartableApiServer` of its own with these extra kube-apiserver flags."""
    reconcile_after: bool = False
    """The scenario has a watcher gap: run `sniffer reconcile` once the watcher settled."""
    expect: Step | None = None
    """Adjust `Ctx.overrides` / `Ctx.allowed_reasons` after the simulation."""
    evidence: Evidence | None = None
    """Problems if the faults did not visibly happen (so a scenario cannot pass vacuously)."""
    regressions: Oracle | None = None
    """The scenario's own rule over the platform's update log: each line it returns is
    an update that moved a run wrongly (counted in `Result.regressed`, beside the updates
    that moved a run backwards)."""
    settle_bound_s: float = 240.0
    seed: int = 1


@dataclass
class Window:
    name: str
    start: float
    end: float | None = None


@dataclass
class Result:
    scenario: str
    faults: str
    load: str
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    jobs_created: int = 0
    runs_checked: int = 0
    sim_errors: int = 0
    lost: int = 0
    """Runs whose platform state differs from what their pod reached, after settling."""
    lost_examples: list[str] = field(default_factory=list)
    reported_as_pod_lost: int = 0
    """Runs accepted as "pod lost": created and deleted unseen during a watcher gap."""
    reason_unknowable: int = 0
    """Runs judged by state only: their pod was deleted and gone within a watcher gap."""
    failed_while_pending: int = 0
    """Runs failed by the pending rule although their pod started later: the API server
    held it Pending past the rule's threshold (the simulator lagged), so both are right."""
    regressed: int = 0
    finalizers_left: int = 0
    tracebacks: int = 0
    watcher_exit_codes: dict[str, list[int]] = field(default_factory=dict)
    faults_applied: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    last_fault_end: float | None = None
    last_pod_change: float | None = None
    consistent_at: float | None = None
    time_to_consistency_s: float | None = None
    """Last fault end → the platform's last update among this scenario's runs."""
    lag_after_last_change_s: float | None = None
    """max(last fault end, last pod change) → consistent."""
    settled_by_watcher: bool = False
    reconcile_passes: list[dict[str, Any]] = field(default_factory=list)
    dropped: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    platform_requests: dict[str, int] = field(default_factory=dict)
    platform_faults: dict[str, int] = field(default_factory=dict)
    log_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    started_at: float = 0.0
    duration_s: float = 0.0
    workdir: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def with_load(scenario: Scenario, **changes: Any) -> Scenario:
    """The scenario with its load changed (``jobs=``, ``rate=``...)."""
    return replace(scenario, load=replace(scenario.load, **changes))
