"""testbed.simulator: the lifecycle catalogue and option parsing (pure), and on the real API
server: every lifecycle's status shapes as Kubernetes stores them, the kubelet stand-in's
graceful deletions, whole simulations and their records."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sniffer.kube import KubeClient
from sniffer.kubedecode import NotFound, WatchEvent
from sniffer.podview import CANCEL_ANNOTATION, KIND_LABEL, RUN_ID_LABEL, TRACEPARENT_ANNOTATION
from testbed.apiserver import ApiServer
from testbed.platform.launcher import PlatformServer
from testbed.simulator.__main__ import build_parser, config_from, main
from testbed.simulator.config import Distribution, SimConfig, parse_kinds, parse_mix
from testbed.simulator.driver import simulate
from testbed.simulator.kubeapi import PodApi
from testbed.simulator.kubelet import Kubelet
from testbed.simulator.lifecycles import (
    CATALOGUE,
    CRASHLOOP_FAILURE_RESTARTS,
    DEFAULT_MIX,
    TERMINAL,
    Expectation,
    Kind,
    Op,
    Shape,
    State,
    Step,
    expand,
    expected_state,
    under_policy,
)
from testbed.simulator.records import Change, SimResult, read_jsonl
from testbed.simulator.shapes import render
from testbed.simulator.workloads import draw_plans, new_traceparent, pod_manifest, quotas

JSON = dict[str, Any]


def fast_config(**fields: Any) -> SimConfig:
    """A config with tiny durations and no creation pacing, for quick tests."""
    return SimConfig(duration=Distribution("uniform", 0.05, 0.2),
                     step_delay=Distribution("fixed", 0.01), rate=0.0, **fields)
BOUND_S = 30.0


# --- the catalogue (pure) -------------------------------------------------------------


def test_every_lifecycle_ends_in_a_terminal_expectation_for_each_of_its_kinds() -> None:
    for lifecycle in CATALOGUE.values():
        assert lifecycle.kinds, lifecycle.name
        for kind in lifecycle.kinds:
            expectation = lifecycle.outcome(kind)
            assert expectation.state in TERMINAL, (lifecycle.name, kind)
            assert expectation.reason, (lifecycle.name, kind)


def test_default_mix_gives_every_lifecycle_a_weight_summing_to_100() -> None:
    assert set(DEFAULT_MIX) == set(CATALOGUE)
    assert all(w > 0 for w in DEFAULT_MIX.values())
    assert sum(DEFAULT_MIX.values()) == 100


def test_expected_states_move_only_forward_and_end_at_the_outcome() -> None:
    rank = {State.QUEUED: 0, State.RUNNING: 1}
    for lifecycle in CATALOGUE.values():
        for kind in lifecycle.kinds:
            for has_init in (False, True):
                state = State.QUEUED
                for step in expand(lifecycle, has_init=has_init):
                    new = expected_state(lifecycle, step, kind, state)
                    assert rank.get(new, 2) >= rank.get(state, 2), (lifecycle.name, step)
                    if state in TERMINAL:
                        assert new == state
                    state = new
                assert state == lifecycle.outcome(kind).state, (lifecycle.name, kind)


def test_a_crash_loop_is_expected_to_fail_at_the_restart_threshold() -> None:
    crashloop = CATALOGUE["crashloop"]
    below = Step(Op.STATUS, Shape.CRASH_LOOP_BACKOFF, restarts=CRASHLOOP_FAILURE_RESTARTS - 1)
    at = Step(Op.STATUS, Shape.CRASH_LOOP_BACKOFF, restarts=CRASHLOOP_FAILURE_RESTARTS)
    assert expected_state(crashloop, below, Kind.APP, State.RUNNING) is State.RUNNING
    assert expected_state(crashloop, at, Kind.APP, State.RUNNING) is State.FAILED


def test_start_up_has_an_init_step_only_for_pods_with_init_containers() -> None:
    plain = [s.shape for s in expand(CATALOGUE["succeeded"], has_init=False)]
    init = [s.shape for s in expand(CATALOGUE["succeeded"], has_init=True)]
    assert plain == [Shape.CONTAINER_CREATING, Shape.RUNNING, Shape.SUCCEEDED]
    assert init == [Shape.CONTAINER_CREATING, Shape.INIT_RUNNING, Shape.RUNNING,
                    Shape.SUCCEEDED]


def test_a_known_stuck_pull_rule_makes_image_pulls_outlast_it_and_fail() -> None:
    image_pull = CATALOGUE["image-pull"]
    assert under_policy(image_pull, image_pull_failure_after_s=None) is image_pull
    assert under_policy(CATALOGUE["oom"], image_pull_failure_after_s=5) is CATALOGUE["oom"]
    stuck = under_policy(image_pull, image_pull_failure_after_s=5)
    assert stuck.outcome(Kind.JOB) == Expectation(State.FAILED, None, None)
    assert [s.op for s in stuck.steps][-1] is Op.DELETE
    config = SimConfig(jobs=3, mix={"image-pull": 1}, image_pull_failure_after_s=5,
                       duration=Distribution("fixed", 1))
    for plan in draw_plans(config, 1, "p"):
        assert plan.waits[-1] == 6  # the rule's 5 s plus the drawn duration
        assert plan.lifecycle.outcome(plan.kind).state is State.FAILED


def test_plans_are_reproducible_from_the_seed_and_follow_the_mix() -> None:
    config = SimConfig(jobs=50, mix={"oom": 1, "cancelled": 1}, seed=7)
    first, again = draw_plans(config, 7, "p"), draw_plans(config, 7, "p")
    assert [(p.lifecycle.name, p.kind, p.variant, p.waits) for p in first] == \
           [(p.lifecycle.name, p.kind, p.variant, p.waits) for p in again]
    assert {p.lifecycle.name for p in first} == {"oom", "cancelled"}
    assert all(p.kind is Kind.JOB for p in first if p.lifecycle.name == "oom")
    assert len({p.run_id for p in first}) == 50
    assert all(p.variant != "plain" for p in draw_plans(
        SimConfig(jobs=20, mix={"init-error": 1}), 1, "p"))


def test_the_mix_is_followed_exactly_and_every_lifecycle_plays_when_jobs_allow() -> None:
    assert Counter(quotas({"a": 70, "b": 20, "c": 10}, 10)) == {"a": 7, "b": 2, "c": 1}
    assert Counter(quotas({"a": 98, "b": 1, "c": 1}, 10)) == {"a": 8, "b": 1, "c": 1}
    assert len(quotas({"a": 1, "b": 1, "c": 1}, 2)) == 2
    assert quotas({"a": 1, "b": 0}, 3) == ["a", "a", "a"]
    plans = draw_plans(SimConfig(jobs=len(CATALOGUE)), 1, "p")
    assert {p.lifecycle.name for p in plans} == set(CATALOGUE)
    thousand = Counter(p.lifecycle.name for p in draw_plans(SimConfig(jobs=1000), 1, "p"))
    assert thousand == {name: 10 * w for name, w in DEFAULT_MIX.items()}


def test_pod_manifest_is_a_tracked_realistic_pod() -> None:
    config = SimConfig(jobs=40, mix={"cancelled": 1, "unschedulable": 1}, seed=3)
    for plan in draw_plans(config, 3, "sim-abc"):
        tp = new_traceparent()
        pod = pod_manifest(plan, tp)
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["labels"][RUN_ID_LABEL] == plan.run_id
        assert meta["labels"][KIND_LABEL] == plan.kind.value
        assert meta["annotations"][TRACEPARENT_ANNOTATION] == tp
        assert "finalizers" not in meta
        assert spec["restartPolicy"] == ("Never" if plan.kind is Kind.JOB else "Always")
        assert ("nodeName" in spec) == plan.lifecycle.scheduled
        assert spec["containers"][0]["image"]
        sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy")]
        assert bool(sidecars) == ("sidecar" in plan.variant)


# --- option parsing (pure) --------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("fixed:1", Distribution("fixed", 1)), ("2.5", Distribution("fixed", 2.5)),
    ("uniform:0.5,3", Distribution("uniform", 0.5, 3)), ("exp:2", Distribution("exp", 2)),
])
def test_duration_parses_fixed_uniform_and_exponential(text: str,
                                                       expected: Distribution) -> None:
    assert Distribution.parse(text) == expected


@pytest.mark.parametrize("text", ["uniform:3,1", "exp:-1", "gauss:1", "uniform:1", "fixed:x",
                                  "fixed:nan"])
def test_duration_rejects_malformed_distributions(text: str) -> None:
    with pytest.raises(ValueError):
        Distribution.parse(text)


def test_duration_samples_stay_in_range_and_follow_the_seed() -> None:
    uniform = Distribution.parse("uniform:0.5,3")
    samples = [uniform.sample(random.Random(i)) for i in range(200)]
    assert all(0.5 <= s <= 3 for s in samples)
    assert uniform.sample(random.Random(9)) == uniform.sample(random.Random(9))
    exp = Distribution.parse("exp:2")
    mean = sum(exp.sample(r) for r in [random.Random(1)] for _ in range(4000)) / 4000
    assert 1.7 < mean < 2.3


def test_mix_parses_weights_and_names_an_unknown_lifecycle() -> None:
    assert parse_mix("succeeded=70, failed=10,oom=5") == {"succeeded": 70, "failed": 10,
                                                           "oom": 5}
    with pytest.raises(ValueError, match="unknown lifecycle 'sucess'"):
        parse_mix("sucess=1")
    for bad in ("succeeded", "succeeded=-1", "succeeded=x", "succeeded=0", ""):
        with pytest.raises(ValueError):
            parse_mix(bad)
    assert parse_kinds("job=1,app=0") == {Kind.JOB: 1, Kind.APP: 0}
    with pytest.raises(ValueError, match="unknown kind"):
        parse_kinds("cronjob=1")


def test_cli_options_build_the_config() -> None:
    args = build_parser().parse_args([
        "--jobs", "20", "--rate", "5", "--duration", "exp:2", "--mix", "oom=1,flaky=2",
        "--seed", "4", "--namespace", "ns1", "--delete-finished", "--concurrency", "8",
        "--image-pull-failure-after", "2.5"])
    config = config_from(args)
    assert config.image_pull_failure_after_s == 2.5
    assert (config.jobs, config.rate, config.seed, config.namespace) == (20, 5.0, 4, "ns1")
    assert config.duration == Distribution("exp", 2)
    assert dict(config.mix) == {"oom": 1, "flaky": 2}
    assert config.delete_finished and config.concurrency == 8
    assert dict(config_from(build_parser().parse_args([])).mix) == DEFAULT_MIX


def test_cli_rejects_a_bad_option_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--mix", "nope=1", "--platform-url", "http://x", "--platform-token-file", "t"])
    assert exit_info.value.code == 2
    assert "--mix" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--jobs", "-1", "--platform-url", "http://x", "--platform-token-file", "t"])
    assert "SimConfig.jobs" in capsys.readouterr().err


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    pod: JSON = {"metadata": {"name": "p", "namespace": "n", "uid": "u"},
                 "spec": {"nodeName": "sim-node-0", "restartPolicy": "Never",
                          "containers": [{"name": "main", "image": "i:1"}]}, "status": {}}
    pod["status"] = render(Shape.CONTAINER_CREATING, pod, 1000.0)
    running = render(Shape.RUNNING, pod, 2000.0)
    times = {c["type"]: c["lastTransitionTime"] for c in running["conditions"]}
    assert times["PodScheduled"] == "1970-01-01T00:16:40Z"  # unchanged since 1000
    assert times["Ready"] == "1970-01-01T00:33:20Z"          # became True at 2000


# --- on the real API server -----------------------------------------------------------


@pytest.fixture
def api(kube: KubeClient) -> PodApi:
    return PodApi(kube, asyncio.Semaphore(16))


class Capture:
    """Every watch event of a namespace, by resourceVersion."""

    def __init__(self, kube: KubeClient, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.by_rv: dict[str, WatchEvent] = {}

    async def run(self, rv: str) -> None:
        while True:
            async for event in self.kube.watch_pods(self.namespace, label_selector="",
                                                    resource_version=rv, timeout_seconds=60,
                                                    read_timeout=90):
                if isinstance(event, WatchEvent):
                    rv = event.object["metadata"]["resourceVersion"]
                    self.by_rv[rv] = event

    async def wait_for(self, rvs: set[str]) -> None:
        await eventually(lambda: rvs <= self.by_rv.keys())


async def eventually(check: Callable[[], Any]) -> Any:
    """Poll `check` (sync or async) until truthy; the bound turns a hang into a failure."""
    async with asyncio.timeout(BOUND_S):
        while True:
            value = check()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.02)


async def _capturing(kube: KubeClient, namespace: str,
                     body: Callable[[], Any]) -> tuple[Any, Capture]:
    capture = Capture(kube, namespace)
    page = await kube.list_pods(namespace, label_selector="", limit=1)
    task = asyncio.create_task(capture.run(page.resource_version))
    try:
        result = await body()
        rvs = {c.resource_version for c in result.changes if c.resource_version}
        await capture.wait_for(rvs)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return result, capture


def _cond(pod: JSON, type_: str) -> JSON:
    found = [c for c in pod["status"].get("conditions", []) if c["type"] == type_]
    assert len(found) == 1, (type_, pod["status"].get("conditions"))
    return found[0]


def _main(pod: JSON) -> JSON:
    name = pod["spec"]["containers"][0]["name"]
    return next(c for c in pod["status"]["containerStatuses"] if c["name"] == name)


def _inits(pod: JSON, *, sidecar: bool) -> list[JSON]:
    names = {c["name"] for c in pod["spec"].get("initContainers", [])
             if (c.get("restartPolicy") == "Always") == sidecar}
    return [c for c in pod["status"].get("initContainerStatuses", []) if c["name"] in names]


def _terminated(cs: JSON, exit_code: int, reason: str) -> None:
    term = cs["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (exit_code, reason), cs
    assert term["startedAt"] and term["finishedAt"] and term["containerID"]


def _failed_pod(pod: JSON) -> None:
    assert pod["status"]["phase"] == "Failed"
    assert _cond(pod, "Ready")["status"] == "False"
    assert _cond(pod, "Ready")["reason"] == "PodFailed"
    assert "message" not in _cond(pod, "Ready")


def check_shape(shape: str, pod: JSON, change: Change) -> None:
    """Assert `pod` (as the API server stored it) has the shape a kubelet gives it."""
    status, spec = pod["status"], pod["spec"]
    inits = _inits(pod, sidecar=False)
    if shape in (Shape.CREATED, Shape.CREATED_ON_NODE):
        assert status["phase"] == "Pending" and "containerStatuses" not in status
        assert ("nodeName" in spec) == (shape == Shape.CREATED_ON_NODE)
    elif shape == Shape.UNSCHEDULABLE:
        scheduled = _cond(pod, "PodScheduled")
        assert (scheduled["status"], scheduled["reason"]) == ("False", "Unschedulable")
        assert "nodeName" not in spec and status["phase"] == "Pending"
    elif shape == Shape.CONTAINER_CREATING:
        assert status["phase"] == "Pending" and status["startTime"]
        assert _cond(pod, "PodScheduled")["status"] == "True"
        assert _cond(pod, "PodReadyToStartContainers")["status"] == "False"
        waiting = _main(pod)["state"]["waiting"]["reason"]
        assert waiting == ("PodInitializing" if spec.get("initContainers")
                           else "ContainerCreating")
        assert _cond(pod, "Ready")["reason"] == "ContainersNotReady"
        assert _cond(pod, "Ready")["message"].startswith("containers with unready status: [")
    elif shape == Shape.INIT_RUNNING:
        assert status["phase"] == "Pending"
        for sidecar in _inits(pod, sidecar=True):
            assert "running" in sidecar["state"] and sidecar["started"] and sidecar["ready"]
        if inits:
            assert "running" in inits[0]["state"]
            assert _cond(pod, "Initialized")["status"] == "False"
            assert _cond(pod, "Initialized")["reason"] == "ContainersNotInitialized"
            assert _main(pod)["state"]["waiting"]["reason"] == "PodInitializing"
    elif shape in (Shape.RUNNING, Shape.RESTARTED):
        assert status["phase"] == "Running" and status["podIP"]
        for type_ in ("Initialized", "Ready", "ContainersReady", "PodReadyToStartContainers"):
            cond = _cond(pod, type_)
            assert cond["status"] == "True" and "message" not in cond and "reason" not in cond
        main = _main(pod)
        assert main["state"]["running"]["startedAt"] and main["ready"] and main["started"]
        for init in inits:
            _terminated(init, 0, "Completed")
        if shape == Shape.RESTARTED:
            assert main["restartCount"] >= 1
            assert main["lastState"]["terminated"]["exitCode"] == 1
    elif shape == Shape.CRASH_LOOP_BACKOFF:
        assert status["phase"] == "Running"
        main = _main(pod)
        assert main["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        assert "back-off" in main["state"]["waiting"]["message"]
        assert main["lastState"]["terminated"]["exitCode"] == 1
        assert main["restartCount"] >= 1 and not main["ready"]
        assert _cond(pod, "Ready")["reason"] == "ContainersNotReady"
    elif shape in (Shape.ERR_IMAGE_PULL, Shape.IMAGE_PULL_BACKOFF):
        assert status["phase"] == "Pending"
        waiting = _main(pod)["state"]["waiting"]
        assert waiting["reason"] == ("ErrImagePull" if shape == Shape.ERR_IMAGE_PULL
                                     else "ImagePullBackOff")
        assert spec["containers"][0]["image"] in waiting["message"]
    elif shape == Shape.SUCCEEDED:
        assert status["phase"] == "Succeeded"
        _terminated(_main(pod), 0, "Completed")
        assert (_cond(pod, "Ready")["reason"], _cond(pod, "Initialized")["reason"]) == \
               ("PodCompleted", "PodCompleted")
        for sidecar in _inits(pod, sidecar=True):
            assert "terminated" in sidecar["state"]
    elif shape in (Shape.FAILED_ERROR, Shape.OOM_KILLED):
        _failed_pod(pod)
        _terminated(_main(pod), *((1, "Error") if shape == Shape.FAILED_ERROR
                                  else (137, "OOMKilled")))
    elif shape == Shape.DEADLINE_EXCEEDED:
        _failed_pod(pod)
        assert status["reason"] == "DeadlineExceeded"
        assert status["message"] == "Pod was active on the node longer than the specified deadline"
        assert spec["activeDeadlineSeconds"] >= 1
        _terminated(_main(pod), 137, "Error")
    elif shape in (Shape.EVICTED, Shape.NODE_SHUTDOWN):
        _failed_pod(pod)
        disruption = _cond(pod, "DisruptionTarget")
        assert (disruption["status"], disruption["reason"]) == ("True", "TerminationByKubelet")
        if shape == Shape.EVICTED:
            assert status["reason"] == "Evicted"
            assert status["message"].startswith("The node was low on resource: memory. ")
            _terminated(_main(pod), 137, "Error")
        else:
            assert status["reason"] == "Terminated"
            assert "imminent node shutdown" in status["message"]
    elif shape == Shape.INIT_ERROR:
        _failed_pod(pod)
        _terminated(inits[0], 1, "Error")
        assert _main(pod)["state"]["waiting"]["reason"] == "PodInitializing"
        assert _cond(pod, "Initialized")["status"] == "False"
    elif shape == Shape.DISRUPTION_TARGET:
        disruption = _cond(pod, "DisruptionTarget")
        assert (disruption["status"], disruption["reason"]) == ("True", "PreemptionByScheduler")
        assert status["phase"] == "Running"
    elif shape == Shape.CANCEL_ANNOTATED:
        assert pod["metadata"]["annotations"][CANCEL_ANNOTATION] == "true"
    elif shape == Shape.TERMINATING:
        assert pod["metadata"]["deletionTimestamp"]
    elif shape == Shape.TERMINATED_ON_DELETION:
        assert pod["metadata"]["deletionTimestamp"]
        expected_exit = 143 if spec["restartPolicy"] == "Never" else 0
        main = _main(pod)["state"]["terminated"]
        if main["reason"] == "ContainerStatusUnknown":  # it never started
            assert main["exitCode"] == 137 and status["phase"] == "Failed"
        else:
            assert main["exitCode"] == expected_exit
            assert status["phase"] == ("Failed" if expected_exit else "Succeeded")
        assert _cond(pod, "Ready")["status"] == "False"
    elif shape in (Shape.DELETED, Shape.DELETED_WHEN_FINISHED):
        # Bound pods go once a kubelet stopped them; unbound ones go at once, still Pending.
        assert status["phase"] in (("Succeeded", "Failed") if "nodeName" in spec
                                   else ("Pending",))
    else:
        raise AssertionError(f"no check for shape {shape} ({change.op})")


@pytest.mark.parametrize("lifecycle", sorted(CATALOGUE))
async def test_each_lifecycle_writes_the_statuses_kubernetes_really_produces(
        kube: KubeClient, namespace: str, platform: PlatformServer, lifecycle: str) -> None:
    config = fast_config(jobs=4, mix={lifecycle: 1}, seed=11, namespace=namespace,
                       kinds={Kind.JOB: 1, Kind.NOTEBOOK: 1, Kind.APP: 1})

    async def play() -> SimResult:
        return await simulate(kube, platform.url, platform.token_file, config)

    result, capture = await _capturing(kube, namespace, play)
    assert not result.errors
    shapes_seen = set()
    for change in result.changes:
        if change.resource_version is None:
            continue
        event = capture.by_rv[change.resource_version]
        if change.shape == Shape.DELETED:
            assert event.type == "DELETED", change
        elif change.op != "create" and change.shape != Shape.DELETED_WHEN_FINISHED:
            assert event.type == "MODIFIED", change
        check_shape(change.shape, event.object, change)
        shapes_seen.add(change.shape)
    steps = {s.shape for s in CATALOGUE[lifecycle].steps if s.shape is not None}
    assert steps <= shapes_seen
    for run_id, expectation in result.expected.items():
        last = [c for c in result.changes if c.run_id == run_id][-1]
        assert last.expect == expectation.state.value


async def test_image_pulls_stay_stuck_past_a_known_platform_rule_then_get_reaped(
        kube: KubeClient, namespace: str, platform: PlatformServer) -> None:
    config = fast_config(jobs=2, seed=3, namespace=namespace, mix={"image-pull": 1},
                         image_pull_failure_after_s=0.5)
    result = await simulate(kube, platform.url, platform.token_file, config)
    assert not result.errors and all(e.state is State.FAILED for e in result.expected.values())
    for run_id in result.expected:
        changes = [c for c in result.changes if c.run_id == run_id]
        backoff = next(c for c in changes if c.shape == Shape.IMAGE_PULL_BACKOFF)
        reap = next(c for c in changes if c.op == "delete")
        assert reap.actor == "platform" and reap.sent_at - backoff.accepted_at >= 0.5


async def _running_pod(api: PodApi, namespace: str, *, kind: str = "cancelled",
                       finalizers: list[str] | None = None) -> JSON:
    plan = draw_plans(SimConfig(jobs=1, mix={kind: 1}, seed=5, namespace=namespace,
                                kinds={Kind.JOB: 1}), 5, f"t{random.randrange(10**6)}")[0]
    manifest = pod_manifest(plan, new_traceparent())
    if finalizers:
        manifest["metadata"]["finalizers"] = finalizers
    pod = (await api.create_pod(manifest)).obj
    assert pod is not None
    kubelet = Kubelet(api, namespace)
    for shape in (Shape.CONTAINER_CREATING, Shape.RUNNING):
        pod = (await kubelet.apply(pod, shape)).obj
        assert pod is not None
    return pod


async def _eventually_gone(api: PodApi, namespace: str, name: str) -> None:
    async def gone() -> bool:
        return await api.get(namespace, name) is None

    await eventually(gone)


async def test_kubelet_completes_a_graceful_deletion_when_no_finalizer_remains(
        api: PodApi, namespace: str) -> None:
    pod = await _running_pod(api, namespace)
    name = pod["metadata"]["name"]
    seen: list[tuple[str, Shape, JSON]] = []
    kubelet = Kubelet(api, namespace, record=lambda p, op, shape, a: seen.append((op, shape, p)))
    async with kubelet.running():
        terminating = (await api.delete(namespace, name, grace_s=30)).obj
        assert terminating is not None and terminating["metadata"]["deletionTimestamp"]
        await _eventually_gone(api, namespace, name)
    assert [(op, shape) for op, shape, _ in seen] == [
        ("status", Shape.TERMINATED_ON_DELETION), ("delete", Shape.DELETED)]
    stopped = seen[0][2]
    assert stopped["status"]["phase"] == "Failed"
    _terminated(_main(stopped), 143, "Error")


async def test_kubelet_leaves_a_pod_with_a_foreign_finalizer_terminating_until_it_is_removed(
        api: PodApi, namespace: str) -> None:
    pod = await _running_pod(api, namespace, finalizers=["example.com/hold"])
    name = pod["metadata"]["name"]
    kubelet = Kubelet(api, namespace)
    async with kubelet.running():
        await api.delete(namespace, name, grace_s=30)
        await eventually(lambda: kubelet.finished >= 1)
        await asyncio.sleep(0.3)  # time enough for a wrong second deletion attempt
        held = await api.get(namespace, name)
        assert held is not None
        assert held["metadata"]["finalizers"] == ["example.com/hold"]
        assert held["metadata"]["deletionGracePeriodSeconds"] == 0
        assert held["status"]["phase"] == "Failed"
        assert kubelet.finished == 1
        await api.call("PATCH", KubeClient.pods_path(namespace, name),
                       body={"metadata": {"finalizers": None}},
                       content_type="application/merge-patch+json")
        await _eventually_gone(api, namespace, name)


async def test_kubelet_never_overwrites_a_newer_status_when_two_finish_one_deletion(
        api: PodApi, namespace: str) -> None:
    pod = await _running_pod(api, namespace, finalizers=["example.com/hold"])
    name = pod["metadata"]["name"]
    terminating = (await api.delete(namespace, name, grace_s=30)).obj
    assert terminating is not None
    writes: list[Shape] = []
    kubelets = [Kubelet(api, namespace, record=lambda p, op, shape, a: writes.append(shape))
                for _ in range(2)]
    await asyncio.gather(*(k.finish_deletion(terminating) for k in kubelets))
    assert writes.count(Shape.TERMINATED_ON_DELETION) == 1
    held = await api.get(namespace, name)
    assert held is not None and held["status"]["phase"] == "Failed"


async def test_kubelet_ignores_pods_that_are_not_on_its_nodes(api: PodApi,
                                                              namespace: str) -> None:
    plan = draw_plans(SimConfig(jobs=1, mix={"unschedulable": 1}, namespace=namespace),
                      1, "u")[0]
    manifest = pod_manifest(plan, new_traceparent())
    manifest["metadata"]["finalizers"] = ["example.com/hold"]
    manifest["spec"]["nodeName"] = "real-node-1"
    await api.create_pod(manifest)
    kubelet = Kubelet(api, namespace)
    async with kubelet.running():
        await api.delete(namespace, plan.pod_name, grace_s=30)
        await asyncio.sleep(0.3)
    pod = await api.get(namespace, plan.pod_name)
    assert pod is not None and pod["status"]["phase"] == "Pending"
    assert pod["metadata"]["deletionGracePeriodSeconds"] == 30
    assert kubelet.finished == 0


async def test_twenty_jobs_reach_terminal_phases_and_every_run_exists_on_the_platform(
        kube: KubeClient, namespace: str, platform: PlatformServer, tmp_path: Path) -> None:
    records = tmp_path / "records.jsonl"
    config = fast_config(jobs=20, seed=2, namespace=namespace)
    result = await simulate(kube, platform.url, platform.token_file, config,
                            records_path=records)
    assert not result.errors
    assert result.created == result.finished == 20 and len(result.expected) == 20
    page = await kube.list_pods(namespace, label_selector=RUN_ID_LABEL, limit=100)
    for pod in page.items:
        assert pod["status"]["phase"] in ("Succeeded", "Failed"), pod["metadata"]["name"]
    for run_id in result.expected:
        run = platform.get_run(run_id)
        assert run is not None and run["pod_namespace"] == namespace
        assert run["pod_name"].endswith(run_id)

    # The records carry accept times and resource versions, in memory and in the file.
    assert result.changes
    for change in result.changes:
        assert result.started_at <= change.sent_at <= change.accepted_at <= result.finished_at
        if change.op in ("create", "status", "annotate"):
            assert change.resource_version and change.resource_version.isdigit()
    for run_id in result.expected:
        versions = [int(c.resource_version) for c in result.changes
                    if c.run_id == run_id and c.resource_version]
        assert versions == sorted(versions)
    lines = read_jsonl(records)
    assert [line for line in lines if line["type"] == "change"] == \
           [c.to_json() for c in result.changes]
    outcomes = {line["run_id"]: line for line in lines if line["type"] == "outcome"}
    assert outcomes.keys() == result.expected.keys()
    for run_id, expectation in result.expected.items():
        assert outcomes[run_id]["state"] == expectation.state.value
        assert outcomes[run_id]["reason"] == expectation.reason
        assert outcomes[run_id]["decided_at"] <= result.finished_at


async def test_delete_finished_removes_every_pod_the_moment_it_ends(
        kube: KubeClient, namespace: str, platform: PlatformServer) -> None:
    config = fast_config(jobs=8, seed=4, namespace=namespace, delete_finished=True,
                       mix={"succeeded": 1, "failed": 1, "cancelled": 1})
    result = await simulate(kube, platform.url, platform.token_file, config)
    assert not result.errors and result.finished == 8
    page = await kube.list_pods(namespace, label_selector="", limit=100)
    assert page.items == []
    finished = [c for c in result.changes if c.shape == Shape.DELETED_WHEN_FINISHED]
    assert len(finished) == sum(1 for e in result.expected.values() if e.state != "cancelled")


async def test_records_of_a_pod_deleted_without_a_node_show_it_gone_at_once(
        kube: KubeClient, api: PodApi, namespace: str, platform: PlatformServer) -> None:
    config = fast_config(jobs=2, seed=1, namespace=namespace, mix={"unschedulable": 1})
    result = await simulate(kube, platform.url, platform.token_file, config)
    assert not result.errors
    for run_id in result.expected:
        ops = [(c.op, c.shape) for c in result.changes if c.run_id == run_id]
        assert ops[-3:] == [("run-cancel", "run-cancel-requested"),
                            ("annotate", "cancel-annotated"), ("delete", "deleted")]
        run = platform.get_run(run_id)
        assert run is not None and run["cancel_requested"] is True
    with pytest.raises(NotFound):
        await kube.request_json("GET", KubeClient.pods_path(namespace, "nothing-here"))
    assert (await kube.list_pods(namespace, label_selector="", limit=10)).items == []


def test_cli_runs_a_small_simulation_and_prints_a_summary(
        apiserver: ApiServer, platform: PlatformServer, namespace: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    records = tmp_path / "r.jsonl"
    status = main(["--jobs", "5", "--rate", "0", "--duration", "fixed:0.05",
                   "--step-delay", "0.01", "--seed", "3", "--namespace", namespace,
                   "--kubeconfig", str(apiserver.kubeconfig), "--platform-url", platform.url,
                   "--platform-token-file", str(platform.token_file), "--records",
                   str(records), "--quiet"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "simulated 5 pods" in out and "errors 0" in out
    assert sum(1 for line in read_jsonl(records) if line["type"] == "outcome") == 5
