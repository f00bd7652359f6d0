"""What each Job-backed run of a Job simulation will do: plans, drawn once, pure.

A Job-backed run is one batch/v1 Job (``backoffLimit`` retries, one completion, as the
platform submits them) whose attempt pods the real Job controller creates; the simulator
plays only each attempt pod's kubelet part. A plan fixes, before anything runs, how every
attempt of its Job ends, so the run's final state is known in advance.

Contract:

* `draw_job_plans(jobs, seed, prefix, namespace, mix=, backoff_limit=)` returns `jobs`
  plans, the same for the same arguments (all randomness comes from `seed`), in creation
  order (`JobPlan.index`), with run ids ``<prefix>-<n>`` and distinct Job names
  ``job-<prefix>-<n>`` (the prefix cut to 45 characters: DNS labels of at most 63).
* A plan's `attempts` are the exit codes of its attempts in order; 0 means that attempt
  succeeds, and only the last may be 0. The lifecycles (`JOB_LIFECYCLES`):
  - ``first-try``: one attempt, exit 0;
  - ``retry-once`` / ``retry-twice``: one or two failed attempts, then exit 0 (within the
    backoff limit: the Job succeeds);
  - ``exhausted``: ``backoff_limit + 1`` failed attempts, each with its own exit code, so
    the Job fails BackoffLimitExceeded with the last one's;
  - ``cancelled``: one attempt that runs until the platform's cancel deletes the Job
    (`JobPlan.cancel`; it never ends on its own).
* `JobPlan.expectation` is what the platform must finally record (`Expectation`):
  succeeded "Completed" 0; failed "BackoffLimitExceeded" with the last exit code;
  cancelled "Cancelled" (no exit code).
* Exit codes of failed attempts are in 1..99: never 137 or 143, which a kill gives.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from testbed.simulator.lifecycles import Expectation, State

JOB_LIFECYCLES = ("first-try", "retry-once", "retry-twice", "exhausted", "cancelled")
DEFAULT_JOB_MIX: Mapping[str, float] = {"first-try": 30, "retry-once": 25, "retry-twice": 20,
                                        "exhausted": 15, "cancelled": 10}
DEFAULT_BACKOFF_LIMIT = 3


@dataclass(frozen=True, slots=True)
class JobPlan:
    """One Job-backed run, decided in advance."""

    index: int
    run_id: str
    namespace: str
    job_name: str
    lifecycle: str
    backoff_limit: int
    attempts: tuple[int, ...]
    """Exit code of each attempt, in order; 0 (succeeds) only last."""
    durations: tuple[float, ...]
    """Seconds each attempt runs before it ends (a cancelled attempt: before the cancel)."""
    node: str

    @property
    def cancel(self) -> bool:
        """The platform cancels the run (and deletes the Job) while its attempt runs."""
        return self.lifecycle == "cancelled"

    @property
    def expectation(self) -> Expectation:
        if self.cancel:
            return Expectation(State.CANCELLED, "Cancelled", None)
        if self.attempts[-1] == 0:
            return Expectation(State.SUCCEEDED, "Completed", 0)
        return Expectation(State.FAILED, "BackoffLimitExceeded", self.attempts[-1])


def draw_job_plans(jobs: int, seed: int, prefix: str, namespace: str, *,
                   mix: Mapping[str, float] = DEFAULT_JOB_MIX,
                   backoff_limit: int = DEFAULT_BACKOFF_LIMIT, nodes: int = 3,
                   duration_s: tuple[float, float] = (0.5, 3.0)) -> list[JobPlan]:
    """`jobs` plans (see the module docstring); `duration_s` bounds each attempt's run."""
    unknown = set(mix) - set(JOB_LIFECYCLES)
    if unknown:
        raise ValueError(f"unknown Job lifecycles {sorted(unknown)}; "
                         f"known: {', '.join(JOB_LIFECYCLES)}")
    if backoff_limit < 2:
        raise ValueError(f"backoff_limit must be at least 2 (retry-twice), not {backoff_limit}")
    rng = random.Random(seed)
    names = [n for n in JOB_LIFECYCLES if mix.get(n, 0) > 0]
    weights = [mix[n] for n in names]
    plans = []
    for i in range(jobs):
        lifecycle = rng.choices(names, weights)[0]
        attempts = _attempts(rng, lifecycle, backoff_limit)
        plans.append(JobPlan(
            index=i, run_id=f"{prefix}-{i}", namespace=namespace,
            job_name=f"job-{prefix[:45].rstrip('-')}-{i}", lifecycle=lifecycle,
            backoff_limit=backoff_limit, attempts=attempts,
            durations=tuple(round(rng.uniform(*duration_s), 3) for _ in attempts),
            node=f"sim-node-{rng.randrange(nodes)}"))
    return plans


def _attempts(rng: random.Random, lifecycle: str, backoff_limit: int) -> tuple[int, ...]:
    failures = {"first-try": 0, "retry-once": 1, "retry-twice": 2, "cancelled": 0,
                "exhausted": backoff_limit + 1}[lifecycle]
    codes = tuple(rng.sample(range(1, 100), failures))
    if lifecycle == "exhausted":
        return codes
    return (*codes, 0)
