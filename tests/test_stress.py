"""tests.stress: which modules it stresses, and how it reads a run's JUnit report."""

from __future__ import annotations

from pathlib import Path

from tests.stress import failures_in, server_modules


def test_the_server_tests_are_stressed_and_the_pure_ones_are_not() -> None:
    names = {p.name for p in server_modules()}
    assert {"test_finalizer_loop.py", "test_reflector.py", "test_scenarios.py"} <= names
    assert "test_states.py" not in names and "test_workqueue.py" not in names


def test_failed_and_errored_cases_are_reported_and_passed_ones_are_not(
        tmp_path: Path) -> None:
    report = tmp_path / "run.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_b" name="test_setup"><error message="y"/></testcase>'
        '<testcase classname="tests.test_b" name="test_skip"><skipped/></testcase>'
        '</testsuite></testsuites>')
    assert failures_in(report) == ["tests.test_a::test_bad", "tests.test_b::test_setup"]
