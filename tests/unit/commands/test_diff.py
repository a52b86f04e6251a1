"""``pytest-istio-mtls diff``: the verdicts that changed between two report.json files, exact output."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from pytest_istio_mtls.commands.cli import main
from pytest_istio_mtls.commands.diff import compare, load
from pytest_istio_mtls.report import write_all
from pytest_istio_mtls.report.model import Report, Row, ScenarioReport

from ...paths import REPO

SCHEMA = json.loads((REPO / "pytest_istio_mtls/report/report.schema.json").read_text())


def row(source: str, target: str, port: int, observed: str | None, expected: str, request: str = "",
        status: str | None = None) -> Row:
    judged = status or ("error" if observed is None else "correct" if observed == expected else "wrong")
    return Row(source=source, target=target, port=port, predicted=expected, reason="r", status=judged,  # type: ignore[arg-type]
               expected=expected, observed=observed, request=request)


def write(directory: Path, rows: list[Row], istio: str, name: str = "namespace-strict") -> Path:
    report = Report(backend="local", versions={"istio": istio}, started="2026-08-28T03:23:00+00:00",
                    scenarios=[ScenarioReport(name=name, file="scenarios/03-namespace-strict.yaml", rows=rows)])
    write_all(report, directory)
    jsonschema.validate(json.loads((directory / "report.json").read_text()), SCHEMA)  # real reports, as runs write
    return directory / "report.json"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["diff", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """Last night's and tonight's run: one row flips, one row's expectation was edited, one row is new,
    one is gone, one errored, two are the same."""
    monkeypatch.chdir(tmp_path)
    old = [row("curl.foo", "httpbin.foo", 8000, "mtls", "mtls"),
           row("curl.legacy", "httpbin.foo", 8000, "refused", "refused"),
           row("curl.foo", "httpbin.foo", 8000, "plaintext", "plaintext", request="POST /post"),
           row("curl.foo", "tcp.foo", 9000, "mtls", "mtls"),
           row("curl.legacy", "tcp.foo", 9000, "refused", "refused"),
           row("curl.foo", "db.foo", 5432, "mtls", "mtls")]
    new = [row("curl.foo", "httpbin.foo", 8000, "mtls", "mtls"),
           row("curl.legacy", "httpbin.foo", 8000, "plaintext", "refused"),
           row("curl.foo", "httpbin.foo", 8000, "plaintext", "mtls", request="POST /post"),
           row("curl.foo", "tcp.foo", 9000, None, "mtls"),
           row("curl.legacy", "tcp.foo", 9000, "refused", "refused"),
           row("curl.legacy", "db.foo", 5432, "refused", "refused")]
    write(tmp_path / "last-night", old, "1.30.3")
    write(tmp_path / "tonight", new, "1.31.1")
    return "last-night/report.json", "tonight/report.json"


def test_text_lists_each_changed_row_and_exits_1(reports: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, *reports)
    assert (code, err) == (1, "")
    assert out.splitlines() == [
        "--- last-night/report.json (local, istio 1.30.3, 2026-08-28T03:23:00+00:00)",
        "+++ tonight/report.json (local, istio 1.31.1, 2026-08-28T03:23:00+00:00)",
        "namespace-strict:",
        "  curl.legacy->httpbin.foo:8000          refused → plaintext, correct → wrong",
        "  curl.foo->httpbin.foo:8000:POST:/post  plaintext, correct → wrong (expected plaintext → mtls)",
        "  curl.foo->tcp.foo:9000                 mtls → error, correct → error",
        "  curl.legacy->db.foo:5432               added: refused (correct)",
        "  curl.foo->db.foo:5432                  removed (was mtls, correct)",
        "5 rows changed (2 results, 1 outcome, 1 added, 1 removed), 2 unchanged",
    ]


def test_markdown_is_a_table_for_the_step_summary(reports: tuple[str, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *reports, "--format", "markdown")
    assert code == 1
    assert out.splitlines() == [
        "| scenario | row | last-night/report.json | tonight/report.json | change |",
        "|---|---|---|---|---|",
        "| namespace-strict | curl.legacy->httpbin.foo:8000 | refused | plaintext | result: correct → wrong |",
        "| namespace-strict | curl.foo->httpbin.foo:8000:POST:/post | plaintext | plaintext | outcome: correct → wrong "
        "(expected plaintext → mtls) |",
        "| namespace-strict | curl.foo->tcp.foo:9000 | mtls | error | result: correct → error |",
        "| namespace-strict | curl.legacy->db.foo:5432 | absent | refused | added (correct) |",
        "| namespace-strict | curl.foo->db.foo:5432 | mtls | absent | removed (was correct) |",
        "",
        "5 rows changed (2 results, 1 outcome, 1 added, 1 removed), 2 unchanged",
    ]


def test_json_for_programs(reports: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *reports, "--format", "json")
    data = json.loads(out)
    assert code == 1
    assert data["old"] == {"file": "last-night/report.json", "backend": "local", "versions": {"istio": "1.30.3"},
                           "started": "2026-08-28T03:23:00+00:00"}
    assert data["counts"] == {"result": 2, "outcome": 1, "added": 1, "removed": 1, "unchanged": 2}
    assert (data["onlyInOld"], data["onlyInNew"]) == ([], [])
    assert data["changes"][0] == {
        "scenario": "namespace-strict", "row": "curl.legacy->httpbin.foo:8000", "change": "result",
        "old": {"result": "refused", "status": "correct", "expected": "refused"},
        "new": {"result": "plaintext", "status": "wrong", "expected": "refused"}}
    assert data["changes"][3]["old"] is None and data["changes"][4]["new"] is None


def test_the_same_report_twice_exits_0(reports: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    """A directory stands for its report.json, as `--istio-report=DIR` names it."""
    assert run(capsys, "tonight", reports[1]) == (0, (
        "--- tonight (local, istio 1.31.1, 2026-08-28T03:23:00+00:00)\n"
        "+++ tonight/report.json (local, istio 1.31.1, 2026-08-28T03:23:00+00:00)\n"
        "no verdict changed (6 rows compared)\n"), "")
    assert run(capsys, *reports[1:], reports[1], "--format", "markdown")[:2] == (0, "no differences\n")


def test_predictions_compare_on_the_oracle_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Two `predict --report` runs: the rows a relaxed policy changes, and only those (the scenario's rows: the
    one client of httpbin.foo without a sidecar it expects)."""
    monkeypatch.chdir(tmp_path)
    strict = (REPO / "pytest_istio_mtls/scenarios/03-namespace-strict.yaml").read_text()
    Path("before.yaml").write_text(strict)
    Path("after.yaml").write_text(strict.replace("mode: STRICT", "mode: PERMISSIVE"))
    assert main(["predict", "before.yaml", "--report", "before"]) == 0
    assert main(["predict", "after.yaml", "--report", "after"]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "before", "after")
    changes = out.splitlines()[2:]
    assert code == 1
    assert changes[0] == "namespace-strict:"
    assert changes[1:] == [
        "  curl.legacy->httpbin.foo:8000  refused → plaintext",
        "1 row changed (1 result), 6 unchanged",
    ]


def test_steps_and_same_named_scenarios_are_distinct_rows(tmp_path: Path) -> None:
    """Rows of a step are keyed by it; two files with one scenario name are told apart by their file."""
    data = {"schemaVersion": 1, "scenarios": [
        {"name": "x", "file": "a.yaml", "rows": [{"from": "c.f", "to": "s.f", "port": 80, "observed": "mtls",
                                                  "status": "correct", "step": "strict"}]},
        {"name": "x", "file": "b.yaml", "rows": [{"from": "c.f", "to": "s.f", "port": 80, "observed": "mtls",
                                                  "status": "correct"}]}]}
    (tmp_path / "r.json").write_text(json.dumps(data))
    assert list(load(tmp_path / "r.json").rows) == [("x (a.yaml)", "strict::c.f->s.f:80"), ("x (b.yaml)", "c.f->s.f:80")]
    assert compare(load(tmp_path / "r.json"), load(tmp_path / "r.json")).changes == ()


@pytest.mark.parametrize(("content", "message"), [
    (None, "error: missing.json: no such file"),
    ("{", "error: missing.json:1:2: not JSON: Expecting property name enclosed in double quotes"),
    ("[]", "error: missing.json: not a pytest-istio-mtls report (no 'scenarios' list)"),
    ('{"schemaVersion": 2, "scenarios": []}', "error: missing.json: schemaVersion 2 is not one this version reads (1)"),
    ('{"schemaVersion": 1, "scenarios": [{"name": "x", "rows": [{"from": "a"}]}]}',
     "error: missing.json: row 1 of scenario 'x' lacks from, to or port"),
])
def test_an_unreadable_report_exits_2_naming_it(reports: tuple[str, str], capsys: pytest.CaptureFixture[str],
                                                content: str | None, message: str) -> None:
    if content is not None:
        Path("missing.json").write_text(content)
    code, out, err = run(capsys, reports[0], "missing.json")
    assert (code, out) == (2, "")
    assert err.splitlines()[0] == message
    assert err.splitlines()[1].startswith("    fix: ")
