"""Every lifecycle the simulator knows reaches the platform with the right state, reason
and exit code, through `sniffer watch` alone (no reconciler), with and without
finalizers, and with pods deleted the instant they finish."""

from __future__ import annotations

import pytest

from testbed.simulator.config import Distribution, SimConfig
from testbed.simulator.driver import simulate
from testbed.simulator.lifecycles import CATALOGUE
from testbed.verdict import mismatches, regressions
from tests.fixtures.watcher import eventually, running_watcher, settings_for, watcher_env


@pytest.mark.parametrize(("finalizers", "delete_finished"),
                         [("true", False), ("true", True), ("false", False)])
async def test_every_lifecycle_reaches_the_platform_with_state_reason_and_exit_code(
        apiserver, platform, namespace, kube, finalizers, delete_finished, tmp_path):
    config = SimConfig(
        jobs=4 * len(CATALOGUE), rate=40, namespace=namespace, seed=11,
        mix={name: 1.0 for name in CATALOGUE}, delete_finished=delete_finished,
        duration=Distribution("uniform", 0.2, 0.8), run_prefix=namespace[-12:].strip("-"),
        image_pull_failure_after_s=1.0)
    env = watcher_env(apiserver, platform, namespace, SNIFFER_FINALIZERS_ENABLED=finalizers,
                      # The stuck-image-pull rule fires within the test's lifetime (the
                      # simulator is told the same threshold, so it expects failures).
                      SNIFFER_STATES_IMAGE_PULL_FAILURE_AFTER_S="1")
    async with running_watcher(settings_for(env)):
        result = await simulate(kube, platform.url, platform.token_file, config,
                                records_path=tmp_path / "records.jsonl")
        assert result.finished == config.jobs
        assert not result.errors

        def wrong():
            runs = {r["id"]: r for r in platform.list_runs()}
            return mismatches(result.expected, runs)

        try:
            await eventually(lambda: not wrong(), bound_s=90)
        except AssertionError:
            played = {o.run_id: f"{o.lifecycle}/{o.kind}" for o in result.outcomes}
            assert [(played[m.run_id], m) for m in wrong()] == []  # which runs, and how
    assert set(result.by_lifecycle) == set(CATALOGUE), "some lifecycle was never played"
    assert regressions(platform.updates()) == []
    runs = {r["id"]: r for r in platform.list_runs()}
    for run_id in result.expected:
        run = runs[run_id]
        assert run["finished_at"] is not None, run
