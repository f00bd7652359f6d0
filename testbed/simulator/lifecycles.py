"""The catalogue of pod lifecycles the simulator plays, and what the platform should show.

Contract:

* Pure data and pure functions: no I/O, no clock, no randomness.
* A `Lifecycle` is a sequence of `Step`s, each one change somebody makes to a pod: the
  kubelet starting the pod (`Op.START`, expanded by `expand` into its start-up statuses),
  the kubelet or the scheduler writing a status shape (`Op.STATUS`), the scheduler binding the
  pod (`Op.BIND`), a user cancelling on the platform (`Op.CANCEL`), somebody deleting the
  pod behind the platform's back (`Op.DELETE`), the Eviction API (`Op.EVICT`) or the
  scheduler preempting it (`Op.PREEMPT`). A deletion of a pod bound to a node is finished
  by the kubelet (`Shape.TERMINATED_ON_DELETION`, then `Shape.DELETED`); the catalogue does
  not list those two steps, the driver adds them.
* `expected_state(lifecycle, step, kind, before)` is this module's own oracle: the platform state
  a correct Sniffer reports once it has seen that step. It is written from the platform's
  point of view (queued until a main container runs, running while one does, terminal per
  the outcome) and is independent of ``sniffer/states.py``.
* `Lifecycle.outcome(kind)` is the run's expected final `Expectation`. An `exit_code` of
  None means the lifecycle does not determine one (a deletion: whether the platform sees
  the containers' exit codes depends on which pod update it sees first).
* The oracle assumes the platform's time-based failure rules (stuck image pulls, long
  crash loops, stuck pending pods) do not fire: keep durations under a minute, or tell it
  the stuck-image-pull rule (`under_policy`). It assumes a crash loop fails the run at
  `CRASHLOOP_FAILURE_RESTARTS` restarts.
* `DEFAULT_MIX` gives every lifecycle a positive weight; its weights add up to 100.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """The workload kinds of the `sniffer.io/kind` label."""

    JOB = "job"
    NOTEBOOK = "notebook"
    APP = "app"


class State(StrEnum):
    """A platform run state."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Shape(StrEnum):
    """The name of a status shape (what the pod looks like after a step)."""

    CREATED = "created"                       # API server defaults: phase Pending, no node
    CREATED_ON_NODE = "created-on-node"       # created bound to a node, no status yet
    UNSCHEDULABLE = "unschedulable"           # scheduler: PodScheduled False Unschedulable
    SCHEDULED = "scheduled"                   # binding: nodeName set, PodScheduled True
    CONTAINER_CREATING = "container-creating"
    INIT_RUNNING = "init-running"
    ERR_IMAGE_PULL = "err-image-pull"
    IMAGE_PULL_BACKOFF = "image-pull-backoff"
    RUNNING = "running"
    CRASH_LOOP_BACKOFF = "crash-loop-backoff"
    RESTARTED = "restarted"                   # running again after a crash (restartCount > 0)
    SUCCEEDED = "succeeded"
    FAILED_ERROR = "failed-error"
    OOM_KILLED = "oom-killed"
    DEADLINE_EXCEEDED = "deadline-exceeded"
    EVICTED = "evicted"                       # kubelet node-pressure eviction
    NODE_SHUTDOWN = "node-shutdown"
    INIT_ERROR = "init-error"
    DISRUPTION_TARGET = "disruption-target"   # scheduler marks a preemption victim
    CANCEL_ANNOTATED = "cancel-annotated"
    TERMINATING = "terminating"               # deletionTimestamp set
    EVICTING = "evicting"                     # Eviction API: DisruptionTarget + terminating
    TERMINATED_ON_DELETION = "terminated-on-deletion"
    DELETED = "deleted"                       # final grace-0 delete (gone, or held by finalizers)
    DELETED_WHEN_FINISHED = "deleted-when-finished"
    RUN_CREATED = "run-created"               # platform: POST /api/v1/runs
    RUN_CANCEL_REQUESTED = "run-cancel-requested"


class Op(StrEnum):
    STATUS = "status"
    BIND = "bind"
    CANCEL = "cancel"
    DELETE = "delete"
    EVICT = "evict"
    PREEMPT = "preempt"
    START = "start"     # the kubelet starts the pod: expanded by `expand` into start-up steps


class Wait(StrEnum):
    """How long the driver waits before a step."""

    NONE = "none"
    STEP = "step"     # one start-up step delay (SimConfig.step_delay)
    RUN = "run"       # `share` of the pod's drawn duration (SimConfig.duration)


CRASHLOOP_FAILURE_RESTARTS = 5
"""The platform fails a crash-looping run at this many restarts (Sniffer's default policy)."""

TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the platform should finally record for a run."""

    state: State
    reason: str | None
    """None: the lifecycle does not fix the reason."""
    exit_code: int | None
    """None: the lifecycle does not fix the exit code."""

    def to_json(self) -> dict[str, object]:
        return {"state": self.state.value, "reason": self.reason, "exit_code": self.exit_code}


@dataclass(frozen=True, slots=True)
class Step:
    op: Op
    shape: Shape | None = None
    wait: Wait = Wait.STEP
    share: float = 1.0
    restarts: int = 0
    """For crash-loop shapes: the container's restartCount after this step."""
    extra_s: float = 0.0
    """Seconds added to the wait (a platform timeout the step must outlast)."""
    actor: str | None = None
    """Who makes the change, when not the op's usual actor (a reaping platform deletes)."""


@dataclass(frozen=True, slots=True)
class Lifecycle:
    name: str
    description: str
    kinds: tuple[Kind, ...]
    steps: tuple[Step, ...]
    outcomes: Mapping[Kind, Expectation]
    scheduled: bool = True
    """Created with spec.nodeName (as if already scheduled); False leaves it to the scheduler."""
    needs_init: bool = False
    """The pod template must have a regular init container."""
    deadline: bool = False
    """The pod sets spec.activeDeadlineSeconds."""
    broken_image: bool = False
    """The main container's image reference cannot be pulled."""

    def outcome(self, kind: Kind) -> Expectation:
        return self.outcomes[kind]


def _same(expectation: Expectation, kinds: tuple[Kind, ...]) -> dict[Kind, Expectation]:
    return dict.fromkeys(kinds, expectation)


JOBS = (Kind.JOB,)
SERVERS = (Kind.NOTEBOOK, Kind.APP)
ALL_KINDS = (Kind.JOB, Kind.NOTEBOOK, Kind.APP)
_F, _C, _S = State.FAILED, State.CANCELLED, State.SUCCEEDED
_CANCELLED = Expectation(_C, "Cancelled", None)
_START = Step(Op.START)
_LOOPS = CRASHLOOP_FAILURE_RESTARTS + 1


def _crash_loop(restarts: int, share: float) -> tuple[Step, ...]:
    steps: list[Step] = []
    for n in range(1, restarts + 1):
        steps.append(Step(Op.STATUS, Shape.CRASH_LOOP_BACKOFF, Wait.RUN, share, restarts=n))
        if n < restarts:
            steps.append(Step(Op.STATUS, Shape.RESTARTED, Wait.STEP, restarts=n))
    return tuple(steps)


def _status(shape: Shape, wait: Wait = Wait.RUN, share: float = 1.0) -> Step:
    return Step(Op.STATUS, shape, wait, share)


CATALOGUE: dict[str, Lifecycle] = {lc.name: lc for lc in (
    Lifecycle("succeeded", "runs, then every container exits 0", JOBS,
              (_START, _status(Shape.SUCCEEDED)), _same(Expectation(_S, "Completed", 0), JOBS)),
    Lifecycle("failed", "runs, then the main container exits 1 (Error)", JOBS,
              (_START, _status(Shape.FAILED_ERROR)), _same(Expectation(_F, "Error", 1), JOBS)),
    Lifecycle("oom", "runs, then the main container is OOMKilled (137)", JOBS,
              (_START, _status(Shape.OOM_KILLED)), _same(Expectation(_F, "OOMKilled", 137), JOBS)),
    Lifecycle("deadline", "runs past spec.activeDeadlineSeconds; the kubelet kills it", JOBS,
              (_START, _status(Shape.DEADLINE_EXCEEDED)),
              _same(Expectation(_F, "DeadlineExceeded", 137), JOBS), deadline=True),
    Lifecycle("evicted", "the kubelet evicts it under memory pressure", ALL_KINDS,
              (_START, _status(Shape.EVICTED)), _same(Expectation(_F, "Evicted", 137), ALL_KINDS)),
    Lifecycle("node-shutdown", "the node shuts down gracefully; the kubelet terminates it",
              ALL_KINDS, (_START, _status(Shape.NODE_SHUTDOWN)),
              {Kind.JOB: Expectation(_F, "Terminated", 143),
               Kind.NOTEBOOK: Expectation(_F, "Terminated", None),
               Kind.APP: Expectation(_F, "Terminated", None)}),
    Lifecycle("init-error", "an init container exits 1; the pod fails before it runs", JOBS,
              (Step(Op.STATUS, Shape.CONTAINER_CREATING),
               Step(Op.STATUS, Shape.INIT_RUNNING), _status(Shape.INIT_ERROR)),
              _same(Expectation(_F, "Error", 1), JOBS),
              needs_init=True),
    Lifecycle("preempted", "the scheduler preempts it for a higher-priority pod", ALL_KINDS,
              (_START, Step(Op.PREEMPT, wait=Wait.RUN)),
              _same(Expectation(_F, "PreemptionByScheduler", None), ALL_KINDS)),
    Lifecycle("evicted-api", "drained through the Eviction API", ALL_KINDS,
              (_START, Step(Op.EVICT, wait=Wait.RUN)),
              _same(Expectation(_F, "EvictionByEvictionAPI", None), ALL_KINDS)),
    Lifecycle("cancelled", "a user cancels the running run on the platform", ALL_KINDS,
              (_START, Step(Op.CANCEL, wait=Wait.RUN)), _same(_CANCELLED, ALL_KINDS)),
    Lifecycle("stopped", "somebody deletes the running pod without the platform", ALL_KINDS,
              (_START, Step(Op.DELETE, wait=Wait.RUN)),
              {Kind.JOB: Expectation(_F, "Deleted", None),
               Kind.NOTEBOOK: Expectation(_C, "Stopped", None),
               Kind.APP: Expectation(_C, "Stopped", None)}),
    Lifecycle("unschedulable", "never fits a node; the user cancels it while pending",
              ALL_KINDS,
              (_status(Shape.UNSCHEDULABLE, Wait.STEP), Step(Op.CANCEL, wait=Wait.RUN)),
              _same(_CANCELLED, ALL_KINDS), scheduled=False),
    Lifecycle("late-scheduled", "unschedulable for a while, then bound, runs and succeeds",
              JOBS,
              (_status(Shape.UNSCHEDULABLE, Wait.STEP), Step(Op.BIND, wait=Wait.RUN, share=0.5),
               _START, _status(Shape.SUCCEEDED, share=0.5)),
              _same(Expectation(_S, "Completed", 0), JOBS), scheduled=False),
    Lifecycle("image-pull", "its image cannot be pulled; the user cancels it while pending",
              ALL_KINDS,
              (_status(Shape.CONTAINER_CREATING, Wait.STEP),
               _status(Shape.ERR_IMAGE_PULL, Wait.STEP),
               _status(Shape.IMAGE_PULL_BACKOFF, Wait.STEP),
               _status(Shape.ERR_IMAGE_PULL, share=0.5),
               _status(Shape.IMAGE_PULL_BACKOFF, Wait.STEP),
               Step(Op.CANCEL, wait=Wait.RUN, share=0.5)),
              _same(_CANCELLED, ALL_KINDS), broken_image=True),
    Lifecycle("crashloop", "the server crash-loops until the platform fails it; then reaped",
              SERVERS,
              # The platform's runtime reaps the pod a whole duration after the last crash,
              # time for the platform to have recorded the failure.
              (_START, *_crash_loop(_LOOPS, 1 / _LOOPS),
               Step(Op.DELETE, wait=Wait.RUN, actor="platform")),
              _same(Expectation(_F, "CrashLoopBackOff", 1), SERVERS)),
    Lifecycle("flaky", "crashes once, recovers, keeps running until the user stops it",
              SERVERS,
              (_START, *_crash_loop(1, 0.3), Step(Op.STATUS, Shape.RESTARTED, restarts=1),
               Step(Op.CANCEL, wait=Wait.RUN, share=0.7)),
              _same(_CANCELLED, SERVERS)),
)}

DEFAULT_MIX: dict[str, float] = {
    "succeeded": 50, "failed": 8, "oom": 4, "deadline": 2, "evicted": 2, "node-shutdown": 1,
    "init-error": 2, "preempted": 2, "evicted-api": 2, "cancelled": 10, "stopped": 3,
    "unschedulable": 2, "late-scheduled": 2, "image-pull": 3, "crashloop": 4, "flaky": 3,
}

DEFAULT_KINDS: dict[Kind, float] = {Kind.JOB: 70, Kind.NOTEBOOK: 15, Kind.APP: 15}

_SHAPE_STATE: dict[Shape, State] = {
    Shape.CREATED: State.QUEUED, Shape.CREATED_ON_NODE: State.QUEUED,
    Shape.UNSCHEDULABLE: State.QUEUED, Shape.SCHEDULED: State.QUEUED,
    Shape.CONTAINER_CREATING: State.QUEUED, Shape.INIT_RUNNING: State.QUEUED,
    Shape.ERR_IMAGE_PULL: State.QUEUED, Shape.IMAGE_PULL_BACKOFF: State.QUEUED,
    Shape.RUN_CREATED: State.QUEUED,
    Shape.RUNNING: State.RUNNING, Shape.RESTARTED: State.RUNNING,
    Shape.DISRUPTION_TARGET: State.RUNNING,
    Shape.SUCCEEDED: State.SUCCEEDED,
    Shape.FAILED_ERROR: State.FAILED, Shape.OOM_KILLED: State.FAILED,
    Shape.DEADLINE_EXCEEDED: State.FAILED, Shape.EVICTED: State.FAILED,
    Shape.NODE_SHUTDOWN: State.FAILED, Shape.INIT_ERROR: State.FAILED,
}
_DELETION_SHAPES = frozenset({Shape.TERMINATING, Shape.EVICTING, Shape.TERMINATED_ON_DELETION,
                              Shape.DELETED})


def expand(lifecycle: Lifecycle, *, has_init: bool) -> tuple[Step, ...]:
    """The lifecycle's steps with `Op.START` replaced by the kubelet's start-up statuses:
    ContainerCreating (PodInitializing with init containers), init containers running
    (iff the pod has any), then all containers running."""
    steps: list[Step] = []
    for step in lifecycle.steps:
        if step.op is not Op.START:
            steps.append(step)
            continue
        steps.append(_status(Shape.CONTAINER_CREATING, Wait.STEP))
        if has_init:
            steps.append(_status(Shape.INIT_RUNNING, Wait.STEP))
        steps.append(_status(Shape.RUNNING, Wait.STEP))
    return tuple(steps)


def shape_state(shape: Shape, *, restarts: int = 0, before: State | None = None,
                outcome: Expectation | None = None) -> State:
    """The platform state a pod in `shape` should map to.

    `before` is the expected state before this step (for steps that change nothing the
    platform sees: a cancel annotation, a platform cancel request); `outcome` is the
    lifecycle's final expectation (for deletion shapes)."""
    if shape is Shape.CRASH_LOOP_BACKOFF:
        return State.FAILED if restarts >= CRASHLOOP_FAILURE_RESTARTS else State.RUNNING
    if shape in _SHAPE_STATE:
        return _SHAPE_STATE[shape]
    if shape in _DELETION_SHAPES or shape is Shape.DELETED_WHEN_FINISHED:
        if outcome is None:
            raise ValueError(f"shape {shape.value} needs the lifecycle outcome")
        return outcome.state
    if before is None:
        raise ValueError(f"shape {shape.value} needs the state before it")
    return before


def expected_state(lifecycle: Lifecycle, step: Step, kind: Kind, before: State) -> State:
    """The platform state once `step` of `lifecycle` (for a pod of `kind`) has been seen.

    A terminal state never changes (`before` wins once terminal)."""
    if before in TERMINAL:
        return before
    outcome = lifecycle.outcome(kind)
    if step.op is Op.STATUS:
        assert step.shape is not None
        return shape_state(step.shape, restarts=step.restarts, before=before, outcome=outcome)
    if step.op in (Op.BIND, Op.START):
        return State.QUEUED
    return outcome.state


def under_policy(lifecycle: Lifecycle, *,
                 image_pull_failure_after_s: float | None) -> Lifecycle:
    """The lifecycle as played against a platform whose stuck-image-pull rule is known.

    With ``image_pull_failure_after_s`` set, ``image-pull`` pods stay in ImagePullBackOff
    that long plus their drawn duration (so the rule has fired, whatever the load), are
    expected to fail (reason ErrImagePull or ImagePullBackOff: whichever the rule saw, so
    not fixed), and are then reaped by the platform's runtime. Other lifecycles, and
    ``image-pull`` without a known rule (the user cancels it first), are unchanged."""
    if lifecycle.name != "image-pull" or image_pull_failure_after_s is None:
        return lifecycle
    if not image_pull_failure_after_s >= 0:
        raise ValueError(f"image_pull_failure_after_s must be >= 0, "
                         f"got {image_pull_failure_after_s!r}")
    return Lifecycle(
        lifecycle.name, "its image cannot be pulled; the platform fails it, then reaps it",
        lifecycle.kinds,
        (_status(Shape.CONTAINER_CREATING, Wait.STEP), _status(Shape.ERR_IMAGE_PULL, Wait.STEP),
         _status(Shape.IMAGE_PULL_BACKOFF, Wait.STEP),
         Step(Op.DELETE, wait=Wait.RUN, extra_s=image_pull_failure_after_s, actor="platform")),
        _same(Expectation(_F, None, None), lifecycle.kinds), broken_image=True)


def check_mix(mix: Mapping[str, float]) -> None:
    """Raise ValueError naming the first unknown lifecycle or bad weight."""
    for name, weight in mix.items():
        if name not in CATALOGUE:
            raise ValueError(f"unknown lifecycle {name!r} (known: {', '.join(CATALOGUE)})")
        if not weight >= 0:
            raise ValueError(f"weight of {name!r} must be >= 0, got {weight!r}")
    if not any(weight > 0 for weight in mix.values()):
        raise ValueError("the mix needs at least one lifecycle with a positive weight")
