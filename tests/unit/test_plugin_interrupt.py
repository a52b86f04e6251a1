"""Ctrl-C (or SIGTERM) while the backend starts ends like Ctrl-C mid-run: the truth table with every row
``not run``, ``run interrupted: N of M rows not run``, report.json saying so, and what start() created torn
down. Fake backend, no mesh."""

from __future__ import annotations

import json

import pytest

from .fake_backend import install

SCENARIO = """
name: legacy
expect:
  - {from: plaintext, to: legacy, result: plaintext}
  - {from: frontend, to: legacy, result: plaintext}
  - {from: plaintext, to: backend, result: plaintext}
"""
ARGS = ("--istio-scenarios", "--istio-backend=local", "-p", "no:cacheprovider")
SUMMARY = [
    "legacy  (scenarios/legacy.yaml)",
    "                  legacy.legacy:8080  backend.app:8080",
    "plaintext.legacy  not run             not run",
    "frontend.app      not run             ·",
    "0 correct, 0 wrong, 0 errors, 3 not run",
    "",
    "run interrupted: 3 of 3 rows not run",
    "reports: */out/report.{json,md,html}",
]


@pytest.fixture
def scenarios(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "legacy.yaml").write_text(SCENARIO)
    return pytester


@pytest.mark.parametrize(("interrupt", "head", "calls"), [
    # the control plane was starting: nothing deployed, no versions known yet
    ("start", [], ["start", "stop keep=False"]),
    # mid-run, as it always worked
    ("deploy", ["backend: local  fake=1", ""], ["start", "deploy", "stop keep=False"]),
])
def test_ctrl_c_during_start_prints_the_summary_of_ctrl_c_mid_run(
        scenarios: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, interrupt: str, head: list[str],
        calls: list[str]) -> None:
    backend = install(monkeypatch, interrupt=interrupt)
    result = scenarios.runpytest(*ARGS, "--istio-report=out", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*= Istio mTLS truth table =*", *head, *SUMMARY], consecutive=True)
    assert backend.calls == calls  # torn down
    data = json.loads((scenarios.path / "out" / "report.json").read_text())
    assert data["interrupted"] is True
    assert data["counts"] == {"correct": 0, "wrong": 0, "error": 0, "predicted": 0, "not run": 3}
    assert {row["message"] for row in data["scenarios"][0]["rows"]} == {"the run was interrupted before this row ran"}
    assert data["startSeconds"] == 7.0  # as far as it got


def test_ctrl_c_during_start_with_keep_on_failure_removes_the_half_started_backend(
        scenarios: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing was deployed, so nothing is worth keeping: a half-started backend is always torn down."""
    backend = install(monkeypatch, interrupt="start")
    result = scenarios.runpytest(*ARGS, "--istio-keep=on-failure", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["run interrupted: 3 of 3 rows not run"])
    assert "state kept for inspection" not in result.stdout.str()
    assert backend.calls == ["start", "stop keep=False"]


def test_ctrl_c_before_the_first_item_prints_the_summary(scenarios: pytest.Pytester,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted between collection and the first item: the rows are planned, no backend was created."""
    backend = install(monkeypatch)
    scenarios.makeconftest("""
        import pytest

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtestloop(session):
            raise KeyboardInterrupt
    """)
    result = scenarios.runpytest(*ARGS, "--istio-report=out", no_reraise_ctrlc=True)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*= Istio mTLS truth table =*", *SUMMARY], consecutive=True)
    assert backend.calls == []
    assert json.loads((scenarios.path / "out" / "report.json").read_text())["startSeconds"] is None
