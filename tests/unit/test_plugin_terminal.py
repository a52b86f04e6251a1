"""The truth table pytest prints at the end of a session: counts that agree with pytest's, interrupted
runs, rows of Python tests. Exact text, no mesh."""

from __future__ import annotations

import json
from importlib.resources import files

import jsonschema

from pytest_istio_mtls.report.model import Report, Row, ScenarioReport, report_from_json
from pytest_istio_mtls.report.terminal import render

SCHEMA = json.loads((files("pytest_istio_mtls.report") / "report.schema.json").read_text())


def row(status: str, source: str = "frontend.app", expected: str | None = "mtls", **fields: object) -> Row:
    fields.setdefault("observed", "mtls" if status in ("correct", "wrong") else None)
    return Row(source, "backend.app", 8080, "mtls", "STRICT", status, expected=expected,  # type: ignore[arg-type]
               **fields)  # type: ignore[arg-type]


def test_interrupted_run_counts_rows_not_run() -> None:
    """Every collected row appears; those pytest never ran are `not run`, so the counts match pytest's."""
    first = ScenarioReport("one", "scenarios/one.yaml", rows=[
        row("correct"), row("error", "plaintext.legacy", "refused", message="  observed: ERROR: timed out"),
        row("not run", "legacy.legacy", message="the run was interrupted before this row ran")])
    second = ScenarioReport("two", "scenarios/two.yaml", rows=[
        row("not run", message="the run was interrupted before this row ran")])
    report = Report("local", [first, second], interrupted=True)
    assert render(report) == (
        "one  (scenarios/one.yaml)\n"
        "                  backend.app:8080\n"
        "frontend.app      ✓ mtls\n"
        "plaintext.legacy  ! error (exp refused)\n"
        "legacy.legacy     not run\n"
        "1 correct, 0 wrong, 1 error, 1 not run\n"
        "  ! plaintext.legacy->backend.app:8080 expected refused: timed out\n"
        "\n"
        "two  (scenarios/two.yaml)\n"
        "              backend.app:8080\n"
        "frontend.app  not run\n"
        "0 correct, 0 wrong, 0 errors, 1 not run\n"
        "\n"
        "total: 1 correct, 0 wrong, 1 error, 2 not run\n"
        "\n"
        "run interrupted: 2 of 4 rows not run")
    data = report.to_json()
    jsonschema.validate(data, SCHEMA)
    assert data["interrupted"] is True
    assert data["counts"] == {"correct": 1, "wrong": 0, "error": 1, "predicted": 0, "not run": 2}
    assert report_from_json(data).interrupted


def test_rows_of_a_python_test_say_what_their_own_assertion_concluded() -> None:
    """A probe made through `istio_probe` is judged by the comparison of its result: `(exp X)` for `== X`,
    `(assert failed)` for another comparison (not `(exp None)`), and `not asserted` when never compared."""
    scenario = ScenarioReport("test_strict", "test_mesh.py", rows=[
        row("correct", expected=None),
        row("wrong", "plaintext.legacy", expected=None, request="POST /post",
            message="plaintext.legacy->backend.app:8080:POST:/post in test test_strict\n  asserted: .result != 'mtls'"),
        row("wrong", "legacy.legacy", expected="refused"),
        row("not asserted", "curl.legacy", expected=None, observed="plaintext")])
    report = Report("local", [scenario])
    assert render(report) == (
        "test_strict  (test_mesh.py)\n"
        "                  backend.app:8080\n"
        "frontend.app      ✓ mtls\n"
        "plaintext.legacy  POST /post: ✗ mtls (assert failed)\n"
        "legacy.legacy     ✗ mtls (exp refused)\n"
        "curl.legacy       plaintext (not asserted)\n"
        "1 correct, 2 wrong, 0 errors, 1 not asserted\n"
        "  ✗ plaintext.legacy->backend.app:8080:POST:/post expected what the test asserts, observed mtls\n"
        "  ✗ legacy.legacy->backend.app:8080 expected refused, observed mtls")
    assert report.to_json()["counts"] == {"correct": 1, "wrong": 2, "error": 0, "predicted": 0, "not run": 0,
                                          "not asserted": 1}
    jsonschema.validate(report.to_json(), SCHEMA)
