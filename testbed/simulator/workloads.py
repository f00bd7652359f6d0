"""Each simulated workload: its `Plan` (drawn from the seed) and its pod manifest.

Contract:

* `draw_plans(config, seed)` is pure: the same config and seed give the same plans (run
  ids, pod names, lifecycles, kinds, pod shapes and durations). Trace ids are the exception:
  `new_traceparent` is fresh on every call, as a real platform's would be.
* The mix is followed exactly, not sampled: lifecycles get `quotas` of the jobs (largest
  remainder; every lifecycle with a positive weight at least once when there are jobs
  enough), in an order shuffled by the seed. Kinds, pod shapes and durations are drawn.
* Run ids are ``<prefix>-<nnnnn>``, pod names ``<kind>-<prefix>-<nnnnn>``: valid run ids,
  label values and pod names.
* `pod_manifest(plan)` is a realistic pod: labels ``sniffer.io/run-id`` and
  ``sniffer.io/kind``, the ``sniffer.io/traceparent`` annotation; ``restartPolicy`` Never
  for jobs and Always for notebooks and apps; resources, a termination grace period;
  ``spec.nodeName`` when the lifecycle starts scheduled (so deletions are graceful, as on
  a real node); init containers and native sidecars as the plan's variant says. It never
  carries a finalizer (Sniffer's watcher adds its own).
"""

from __future__ import annotations

import math
import random
import secrets
from dataclasses import dataclass
from typing import Any

from sniffer.podview import KIND_LABEL, RUN_ID_LABEL, TRACEPARENT_ANNOTATION
from testbed.simulator.config import SimConfig
from testbed.simulator.lifecycles import (
    CATALOGUE,
    Kind,
    Lifecycle,
    Step,
    Wait,
    expand,
    under_policy,
)

LIFECYCLE_LABEL = "sim.sniffer.io/lifecycle"
MANAGED_BY = {"app.kubernetes.io/managed-by": "sniffer-simulator"}
VARIANTS = ("plain", "init", "sidecar", "init+sidecar")
_VARIANT_WEIGHTS = (40, 25, 20, 15)


@dataclass(frozen=True, slots=True)
class Plan:
    """One workload to simulate."""

    index: int
    run_id: str
    namespace: str
    pod_name: str
    kind: Kind
    lifecycle: Lifecycle
    variant: str
    node: str
    """The node the pod runs on (in spec.nodeName from creation iff the lifecycle starts
    scheduled; otherwise the scheduler binds it there, if ever)."""
    steps: tuple[Step, ...]
    """The lifecycle's steps, start-up expanded."""
    waits: tuple[float, ...]
    """Seconds to wait before each step."""
    grace_period_s: int
    termination_delay_s: float
    """How long the kubelet takes to stop the containers once the pod is being deleted."""

    @property
    def has_init(self) -> bool:
        return self.variant != "plain"

    @property
    def active_deadline_s(self) -> int | None:
        """Set iff the lifecycle ends by deadline: the seconds from the kubelet's first
        status to the DeadlineExceeded one (the deadline had passed when it fired)."""
        if not self.lifecycle.deadline:
            return None
        return max(1, math.floor(sum(self.waits[1:])))


def new_traceparent() -> str:
    """A fresh W3C traceparent (version 00, sampled)."""
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def _pick(rng: random.Random, weights: dict[Any, float]) -> Any:
    names = [name for name, w in weights.items() if w > 0]
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def quotas(mix: dict[str, float], jobs: int) -> list[str]:
    """`jobs` lifecycle names in the mix's proportions (largest remainder), each name with a
    positive weight at least once when there are jobs enough; in mix order."""
    names = [n for n, w in mix.items() if w > 0]
    if not names or jobs <= 0:
        return []
    total = sum(mix[n] for n in names)
    shares = {n: jobs * mix[n] / total for n in names}
    counts = {n: math.floor(shares[n]) for n in names}
    by_remainder = sorted(names, key=lambda n: (shares[n] - counts[n], mix[n]), reverse=True)
    for n in by_remainder[:jobs - sum(counts.values())]:
        counts[n] += 1
    if jobs >= len(names):
        for n in names:
            if counts[n] == 0:  # take one from the most played
                counts[max(names, key=lambda m: counts[m])] -= 1
                counts[n] = 1
    return [n for n in names for _ in range(counts[n])]


def draw_plans(config: SimConfig, seed: int, prefix: str) -> list[Plan]:
    """The `config.jobs` workloads of a simulation, reproducibly from `seed`."""
    rng = random.Random(seed)
    mix = {name: w for name, w in config.mix.items()
           if w > 0 and any(config.kinds.get(k, 0) > 0 for k in CATALOGUE[name].kinds)}
    names = quotas(mix, config.jobs)
    rng.shuffle(names)
    plans = []
    for index, name in enumerate(names):
        lifecycle = under_policy(CATALOGUE[name],
                                 image_pull_failure_after_s=config.image_pull_failure_after_s)
        kind = _pick(rng, {k: config.kinds.get(k, 0) for k in lifecycle.kinds})
        variant = _pick(rng, dict(zip(VARIANTS, _VARIANT_WEIGHTS, strict=True)))
        if lifecycle.needs_init and "init" not in variant:
            variant = "init"
        steps = expand(lifecycle, has_init=variant != "plain")
        running = config.duration.sample(rng)
        waits = tuple(s.extra_s + (0.0 if s.wait is Wait.NONE
                                   else running * s.share if s.wait is Wait.RUN
                                   else config.step_delay.sample(rng)) for s in steps)
        node = f"sim-node-{rng.randrange(config.nodes)}"
        run_id = f"{prefix}-{index:05d}"
        plans.append(Plan(index=index, run_id=run_id, namespace=config.namespace,
                          pod_name=f"{kind.value}-{run_id}", kind=kind, lifecycle=lifecycle,
                          variant=variant, node=node, steps=steps, waits=waits,
                          grace_period_s=config.grace_period_s,
                          termination_delay_s=config.step_delay.sample(rng)))
    return plans


_IMAGES: dict[Kind, tuple[str, str, list[str]]] = {
    Kind.JOB: ("main", "registry.example.com/batch/trainer:2.3.1",
               ["python", "-m", "trainer", "--epochs=3"]),
    Kind.NOTEBOOK: ("notebook", "quay.io/jupyter/scipy-notebook:2025-01-06",
                    ["start-notebook.py", "--ServerApp.base_url=/nb"]),
    Kind.APP: ("app", "registry.example.com/apps/dashboard:1.8.0",
               ["gunicorn", "dashboard.wsgi", "--bind=0.0.0.0:8080"]),
}
_SIDECAR = {"name": "log-shipper", "image": "cr.fluentbit.io/fluent/fluent-bit:3.2.4",
            "restartPolicy": "Always",
            "resources": {"requests": {"cpu": "20m", "memory": "32Mi"}}}
_INIT = {"name": "fetch-inputs", "image": "docker.io/library/busybox:1.36",
         "command": ["sh", "-c", "wget -q -O /work/inputs.tar http://inputs.internal/$(RUN_ID)"],
         "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}


def pod_manifest(plan: Plan, traceparent: str) -> dict[str, Any]:
    """The pod the platform's runtime creates for `plan`."""
    name, image, command = _IMAGES[plan.kind]
    if plan.lifecycle.broken_image:
        image = image.rsplit(":", 1)[0] + ":does-not-exist"
    main: dict[str, Any] = {
        "name": name, "image": image, "command": command,
        "env": [{"name": "RUN_ID", "value": plan.run_id}],
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"},
                      "limits": {"memory": "1Gi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if plan.kind is not Kind.JOB:
        main["ports"] = [{"containerPort": 8888 if plan.kind is Kind.NOTEBOOK else 8080,
                          "name": "http"}]
    spec: dict[str, Any] = {
        "restartPolicy": "Never" if plan.kind is Kind.JOB else "Always",
        "terminationGracePeriodSeconds": plan.grace_period_s,
        "containers": [main],
    }
    inits: list[dict[str, Any]] = []
    if "sidecar" in plan.variant:
        inits.append(dict(_SIDECAR))
    if "init" in plan.variant:
        inits.append({**_INIT, "env": [{"name": "RUN_ID", "value": plan.run_id}]})
    if inits:
        spec["initContainers"] = inits
    if plan.lifecycle.scheduled:
        spec["nodeName"] = plan.node
    if (deadline := plan.active_deadline_s) is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": plan.pod_name, "namespace": plan.namespace,
            "labels": {RUN_ID_LABEL: plan.run_id, KIND_LABEL: plan.kind.value,
                       LIFECYCLE_LABEL: plan.lifecycle.name, **MANAGED_BY},
            "annotations": {TRACEPARENT_ANNOTATION: traceparent},
        },
        "spec": spec,
    }
