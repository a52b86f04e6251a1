"""`diff` for people: a scenario only one report has is one line, not one `removed` line per row; the change
kind for a row judged differently is `outcome` (never `status`, which a row pins as an HTTP code); the Markdown
carries everything the text says (the expectation that changed, the added or removed row's status)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from pytest_istio_mtls.commands.cli import main
from pytest_istio_mtls.report import write_all
from pytest_istio_mtls.report.model import Report, Row, ScenarioReport

from ...paths import REPO

SCHEMA = json.loads((REPO / "pytest_istio_mtls/report/report.schema.json").read_text())


def row(source: str, port: int, observed: str, expected: str) -> Row:
    return Row(source=source, target="httpbin.foo", port=port, predicted=expected, reason="r",
               status="correct" if observed == expected else "wrong", expected=expected, observed=observed)


def scenario(name: str, rows: list[Row]) -> ScenarioReport:
    return ScenarioReport(name=name, file=f"scenarios/{name}.yaml", rows=rows)


def write(directory: Path, scenarios: list[ScenarioReport]) -> str:
    report = Report(backend="local", versions={"istio": "1.31.1"}, started="2026-08-28T03:23:00+00:00",
                    scenarios=scenarios)
    write_all(report, directory)
    jsonschema.validate(json.loads((directory / "report.json").read_text()), SCHEMA)
    return f"{directory.name}/report.json"


def many(count: int) -> list[Row]:
    return [row(f"curl{n}.foo", 8000, "mtls", "mtls") for n in range(count)]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["diff", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def three_then_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Last night ran three scenarios (23 rows); tonight someone re-ran one of them, and one row flipped."""
    monkeypatch.chdir(tmp_path)
    strict = [row("curl.foo", 8000, "mtls", "mtls"), row("curl.legacy", 8000, "refused", "refused")]
    old = write(tmp_path / "last-night", [scenario("mesh-strict", many(7)), scenario("namespace-strict", strict),
                                          scenario("port-level", many(14))])
    strict = [row("curl.foo", 8000, "mtls", "mtls"), row("curl.legacy", 8000, "plaintext", "refused")]
    new = write(tmp_path / "tonight", [scenario("namespace-strict", strict)])
    return old, new


def test_a_scenario_only_one_report_has_is_one_line(three_then_one: tuple[str, str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *three_then_one)
    assert code == 1
    assert out.splitlines()[2:] == [
        "mesh-strict: only in the old report (7 rows)",
        "namespace-strict:",
        "  curl.legacy->httpbin.foo:8000  refused → plaintext, correct → wrong",
        "port-level: only in the old report (14 rows)",
        "1 row changed (1 result), 1 unchanged; 2 scenarios only in the old report (21 rows)"]
    code, out, _ = run(capsys, *reversed(three_then_one))
    assert out.splitlines()[2] == "mesh-strict: only in the new report (7 rows)"
    assert out.splitlines()[-1] == ("1 row changed (1 result), 1 unchanged; "
                                    "2 scenarios only in the new report (21 rows)")


def test_scenarios_only_in_one_report_in_markdown_and_json(three_then_one: tuple[str, str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *three_then_one, "--format", "markdown")
    assert code == 1
    assert out.splitlines() == [
        "| scenario | row | last-night/report.json | tonight/report.json | change |",
        "|---|---|---|---|---|",
        "| mesh-strict | every row | 7 rows | absent | scenario only in last-night/report.json |",
        "| namespace-strict | curl.legacy->httpbin.foo:8000 | refused | plaintext | result: correct → wrong |",
        "| port-level | every row | 14 rows | absent | scenario only in last-night/report.json |",
        "",
        "1 row changed (1 result), 1 unchanged; 2 scenarios only in the old report (21 rows)"]
    assert run(capsys, *reversed(three_then_one), "--format", "markdown")[1].splitlines()[2] == (
        "| mesh-strict | every row | absent | 7 rows | scenario only in last-night/report.json |")
    data = json.loads(run(capsys, *three_then_one, "--format", "json")[1])
    assert data["onlyInOld"] == [{"scenario": "mesh-strict", "rows": 7}, {"scenario": "port-level", "rows": 14}]
    assert data["onlyInNew"] == []
    assert [change["row"] for change in data["changes"]] == ["curl.legacy->httpbin.foo:8000"]


def test_only_a_scenario_missing_is_still_a_difference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    old = write(tmp_path / "old", [scenario("a", many(2)), scenario("b", many(3))])
    new = write(tmp_path / "new", [scenario("a", many(2))])
    assert run(capsys, old, new)[:2] == (1, (
        "--- old/report.json (local, istio 1.31.1, 2026-08-28T03:23:00+00:00)\n"
        "+++ new/report.json (local, istio 1.31.1, 2026-08-28T03:23:00+00:00)\n"
        "b: only in the old report (3 rows)\n"
        "no row changed in the scenarios both reports have (2 rows compared); "
        "1 scenario only in the old report (3 rows)\n"))


@pytest.fixture
def edited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The mesh did the same, but someone edited an expectation (mtls → unavailable); a row was added, one removed."""
    monkeypatch.chdir(tmp_path)
    old = write(tmp_path / "old", [scenario("s", [row("curl.foo", 8000, "mtls", "mtls"),
                                                  row("curl.bar", 8000, "mtls", "mtls")])])
    new = write(tmp_path / "new", [scenario("s", [row("curl.foo", 8000, "mtls", "unavailable"),
                                                  row("curl.baz", 8000, "refused", "refused")])])
    return old, new


def test_the_kind_of_a_judged_differently_row_is_outcome(edited: tuple[str, str],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Not `status`: a row's `status:` pins an HTTP code, and report.json rows have a `status` field."""
    code, out, _ = run(capsys, *edited)
    assert code == 1
    assert out.splitlines()[2:] == [
        "s:",
        "  curl.foo->httpbin.foo:8000  mtls, correct → wrong (expected mtls → unavailable)",
        "  curl.baz->httpbin.foo:8000  added: refused (correct)",
        "  curl.bar->httpbin.foo:8000  removed (was mtls, correct)",
        "3 rows changed (1 outcome, 1 added, 1 removed), 0 unchanged"]
    data = json.loads(run(capsys, *edited, "--format", "json")[1])
    assert data["counts"] == {"result": 0, "outcome": 1, "added": 1, "removed": 1, "unchanged": 0}
    assert [change["change"] for change in data["changes"]] == ["outcome", "added", "removed"]


def test_markdown_carries_what_the_text_says(edited: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *edited, "--format", "markdown")
    assert code == 1
    assert out.splitlines() == [
        "| scenario | row | old/report.json | new/report.json | change |",
        "|---|---|---|---|---|",
        "| s | curl.foo->httpbin.foo:8000 | mtls | mtls | outcome: correct → wrong (expected mtls → unavailable) |",
        "| s | curl.baz->httpbin.foo:8000 | absent | refused | added (correct) |",
        "| s | curl.bar->httpbin.foo:8000 | mtls | absent | removed (was correct) |",
        "",
        "3 rows changed (1 outcome, 1 added, 1 removed), 0 unchanged"]


def test_an_expectation_edited_with_the_result_is_shown_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Result and expectation both changed, so the row stays correct: the text still says the expectation moved."""
    monkeypatch.chdir(tmp_path)
    old = write(tmp_path / "old", [scenario("s", [row("curl.legacy", 8000, "refused", "refused")])])
    new = write(tmp_path / "new", [scenario("s", [row("curl.legacy", 8000, "plaintext", "plaintext")])])
    assert run(capsys, old, new)[1].splitlines()[3] == (
        "  curl.legacy->httpbin.foo:8000  refused → plaintext (expected refused → plaintext)")
    assert run(capsys, old, new, "--format", "markdown")[1].splitlines()[2] == (
        "| s | curl.legacy->httpbin.foo:8000 | refused | plaintext | result (expected refused → plaintext) |")
