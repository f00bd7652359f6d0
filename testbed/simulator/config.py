"""What a simulation does: `SimConfig`, and the parsers of its textual options.

Contract:

* `SimConfig` is immutable and validated on construction: a bad value raises `ValueError`
  naming the field and the value.
* `Distribution.parse` reads ``fixed:S`` (or a bare number ``S``), ``uniform:LO,HI`` and
  ``exp:MEAN``; samples are seconds >= 0, drawn from the `random.Random` the caller passes
  (so a seed reproduces a run).
* `parse_weights` reads ``name=weight,name=weight``; names are checked by the caller's
  validator (`parse_mix` against the lifecycle catalogue, `parse_kinds` against the kinds).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from testbed.simulator.lifecycles import (
    CATALOGUE,
    DEFAULT_KINDS,
    DEFAULT_MIX,
    Kind,
    check_mix,
)

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Distribution:
    """A distribution of durations in seconds."""

    kind: str
    """``fixed``, ``uniform`` or ``exp``."""
    a: float
    """fixed: the value; uniform: the low bound; exp: the mean."""
    b: float = 0.0
    """uniform: the high bound."""

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "exp"):
            raise ValueError(f"unknown distribution {self.kind!r} (fixed, uniform, exp)")
        if not (math.isfinite(self.a) and math.isfinite(self.b)) or self.a < 0 or self.b < 0:
            raise ValueError(f"{self}: parameters must be finite seconds >= 0")
        if self.kind == "uniform" and self.b < self.a:
            raise ValueError(f"uniform:{self.a:g},{self.b:g}: the high bound is below the low")

    @classmethod
    def parse(cls, text: str) -> Distribution:
        """``fixed:1``, ``1``, ``uniform:0.5,3`` or ``exp:2``; ValueError otherwise."""
        kind, sep, args = text.strip().partition(":")
        if not sep:
            kind, args = "fixed", kind
        try:
            values = [float(v) for v in args.split(",")] if args else []
        except ValueError:
            raise ValueError(f"{text!r}: parameters must be numbers") from None
        arity = {"fixed": 1, "uniform": 2, "exp": 1}.get(kind)
        if arity is None:
            raise ValueError(f"{text!r}: unknown distribution {kind!r} (fixed, uniform, exp)")
        if len(values) != arity:
            raise ValueError(f"{text!r}: {kind} takes {arity} parameter(s)")
        return cls(kind, *values)

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        return rng.expovariate(1 / self.a) if self.a > 0 else 0.0

    @property
    def mean(self) -> float:
        return (self.a + self.b) / 2 if self.kind == "uniform" else self.a

    def __str__(self) -> str:
        if self.kind == "uniform":
            return f"uniform:{self.a:g},{self.b:g}"
        return f"{self.kind}:{self.a:g}"


def parse_weights(text: str) -> dict[str, float]:
    """``a=70,b=10`` → {"a": 70.0, "b": 10.0}; ValueError naming the bad item."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{item!r}: expected name=weight")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"{item!r}: the weight is not a number") from None
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{item!r}: the weight must be a number >= 0")
        weights[name.strip()] = weight
    if not weights:
        raise ValueError(f"{text!r}: no name=weight items")
    return weights


def parse_mix(text: str) -> dict[str, float]:
    """The lifecycle mix (names from the catalogue); unnamed lifecycles get weight 0."""
    mix = parse_weights(text)
    check_mix(mix)
    return mix


def parse_kinds(text: str) -> dict[Kind, float]:
    kinds: dict[Kind, float] = {}
    for name, weight in parse_weights(text).items():
        try:
            kinds[Kind(name)] = weight
        except ValueError:
            raise ValueError(f"unknown kind {name!r} (job, notebook, app)") from None
    if not any(kinds.values()):
        raise ValueError("the kinds need at least one positive weight")
    return kinds


def _frozen(mapping: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class SimConfig:
    """One simulation: how many pods, how fast, which lifecycles, for how long."""

    jobs: int = 100
    """Runs (and pods) to create."""
    rate: float = 50.0
    """Pod creations per second; 0 creates as fast as `concurrency` allows."""
    duration: Distribution = field(default_factory=lambda: Distribution("uniform", 0.5, 3.0))
    """Time a pod spends in its long phase: running, or stuck pending (seconds)."""
    step_delay: Distribution = field(default_factory=lambda: Distribution("fixed", 0.05))
    """Time between a pod's start-up steps (ContainerCreating → init → running), and the
    time the kubelet takes to stop containers after a deletion."""
    mix: Mapping[str, float] = field(default_factory=lambda: _frozen(DEFAULT_MIX))
    """Lifecycle name → weight (see lifecycles.CATALOGUE)."""
    kinds: Mapping[Kind, float] = field(
        default_factory=lambda: MappingProxyType(dict(DEFAULT_KINDS)))
    """Kind → weight, among the kinds a drawn lifecycle allows."""
    seed: int | None = None
    """Seed of every random choice (lifecycles, kinds, durations); None: a random seed."""
    namespace: str = "sniffer-sim"
    """Namespace of the pods (created if missing)."""
    delete_finished: bool = False
    """Delete each pod the moment it reaches a terminal phase (finalizer-mode test)."""
    concurrency: int = 64
    """Most API requests (Kubernetes and platform together) in flight at once."""
    grace_period_s: int = 30
    """gracePeriodSeconds of the simulator's deletions (the simulated kubelet is quicker)."""
    nodes: int = 3
    """Simulated nodes: pods are bound to sim-node-0 ... sim-node-(N-1)."""
    run_prefix: str | None = None
    """Run ids are ``<prefix>-<n>``, pod names ``<kind>-<prefix>-<n>``; None: random."""
    progress_interval_s: float = 1.0
    """Seconds between progress callbacks."""
    image_pull_failure_after_s: float | None = None
    """The platform's stuck-image-pull rule (Sniffer: states.image_pull_failure_after_s),
    if the oracle should count on it: image-pull pods then stay stuck past it and are
    expected to fail. None: users cancel them first (see lifecycles.under_policy)."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"SimConfig.{name}: {why} (got {getattr(self, name)!r})")

        if self.jobs < 0:
            raise bad("jobs", "must be >= 0")
        if not (math.isfinite(self.rate) and self.rate >= 0):
            raise bad("rate", "must be a number >= 0")
        if self.concurrency < 1:
            raise bad("concurrency", "must be >= 1")
        if self.grace_period_s < 1:
            raise bad("grace_period_s", "must be >= 1 (0 would skip the kubelet)")
        if self.nodes < 1:
            raise bad("nodes", "must be >= 1")
        if not _NAME.fullmatch(self.namespace) or len(self.namespace) > 63:
            raise bad("namespace", "must be a DNS label")
        if self.run_prefix is not None and (not _NAME.fullmatch(self.run_prefix)
                                            or len(self.run_prefix) > 30):
            raise bad("run_prefix", "must be lowercase alphanumerics and '-', at most 30")
        if not self.progress_interval_s > 0:
            raise bad("progress_interval_s", "must be > 0")
        if self.image_pull_failure_after_s is not None and not (
                math.isfinite(self.image_pull_failure_after_s)
                and self.image_pull_failure_after_s >= 0):
            raise bad("image_pull_failure_after_s", "must be seconds >= 0")
        try:
            check_mix(self.mix)
        except ValueError as e:
            raise bad("mix", str(e)) from None
        if not any(w > 0 for k, w in self.kinds.items() if k in set(Kind)):
            raise bad("kinds", "needs at least one positive weight")
        reachable = [n for n, w in self.mix.items() if w > 0
                     and any(self.kinds.get(k, 0) > 0 for k in CATALOGUE[n].kinds)]
        if not reachable:
            raise bad("mix", "no lifecycle with a positive weight allows a kind with one")
