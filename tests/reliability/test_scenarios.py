"""The fast fault matrix (`scenarios.FAST`) as tests: each scenario at 1,000 jobs must end
with nothing lost, nothing regressed, no finalizer left, no traceback, its faults evident.

The scenarios share one API server of their own (a module fixture: their load and their
restarts must not disturb other tests' server); one scenario brings a restartable server.
Each result is also written to ``.testbed/reliability/fast/<scenario>.json`` for a look
(``python -m tests.reliability.report`` renders a saved results document).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.apiserver import ApiServer, ApiServerError, start
from testbed.gocache import BuildError
from tests.reliability.harness import Bed, run_scenario
from tests.reliability.model import Result, Scenario
from tests.reliability.report import current_commit, summary
from tests.reliability.scenarios import FAST

pytestmark = pytest.mark.testbed
RESULTS = Path(__file__).resolve().parents[2] / ".testbed" / "reliability" / "fast"


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    try:
        server: ApiServer = start(tmp_path_factory.mktemp("reliability-kube"))
    except (ApiServerError, BuildError, OSError) as e:
        pytest.fail(f"no testbed API server for the fault matrix: {e}", pytrace=False)
    try:
        yield Bed(server)
    finally:
        server.stop()


@pytest.mark.parametrize("scenario", FAST, ids=[s.name for s in FAST])
async def test_scenario_loses_nothing(scenario: Scenario, bed: Bed, tmp_path: Path) -> None:
    result: Result = await run_scenario(scenario, bed, tmp_path)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{scenario.name}.json").write_text(json.dumps(
        {**result.to_json(), "commit": current_commit()}, indent=1))
    if result.ok:
        shutil.rmtree(tmp_path / scenario.name, ignore_errors=True)
    assert result.ok, summary({"scenarios": [result.to_json()]}) + \
        f"\n(logs in {result.workdir})"
    assert result.runs_checked >= 0.99 * scenario.load.jobs
