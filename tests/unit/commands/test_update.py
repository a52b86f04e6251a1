"""``--istio-update-expectations``: the observed results of wrong rows written into the scenario files.

Each test hands ``update_expectations`` the report a run produces and checks the file's diff, line for line:
exactly the changed results, with comments, order, quoting and layout untouched. The option end to end (a real
run on the emulated local backend, then a run that passes) is in tests/local/test_steps.py.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from pytest_istio_mtls.commands.update import update_expectations
from pytest_istio_mtls.report.model import Report, Row, ScenarioReport
from pytest_istio_mtls.scenario.loader import load_scenario

EXPLICIT = """\
# The app namespace goes STRICT: the plaintext client is refused.
name: ns-strict
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: app}
  spec: {mtls: {mode: STRICT}}
expect:
  - {from: frontend, to: backend, result: plaintext}   # a wrong guess
  - {from: plaintext, to: backend, result: refused}
  - from: frontend
    to: backend
    request: {method: POST, path: /post}
    result: allowed
    status: 201    # the app answers 200
  - {from: plaintext, to: legacy, result: "mtls", status: 200}
  - {from: frontend, to: legacy, request: {path: /status/418}, result: allowed, status: 418}
"""


def write(directory: Path, name: str, text: str) -> Path:
    (directory / "scenarios").mkdir(exist_ok=True)
    path = directory / "scenarios" / name
    path.write_text(text, encoding="utf-8")
    return path


def row(source: str, target: str, expected: str, observed: str | None, *, status: str = "wrong", request: str = "",
        http: int | None = None, expected_http: int | None = None, step: str = "", port: int = 8080) -> Row:
    return Row(source=source, target=target, port=port, predicted=expected, reason="the oracle's reason",
               status=status, expected=expected, observed=observed, request=request,  # type: ignore[arg-type]
               http_status=http, expected_http_status=expected_http, step=step)


def report(file: str, name: str, rows: list[Row], *, interrupted: bool = False) -> Report:
    return Report("local", [ScenarioReport(name, file, rows=rows)], interrupted=interrupted)


def diff(before: str, path: Path) -> list[str]:
    """The changed lines of the file (``-old`` / ``+new``), as `git diff` shows them."""
    lines = difflib.unified_diff(before.splitlines(), path.read_text(encoding="utf-8").splitlines(), lineterm="", n=0)
    return [line for line in lines if line[:1] in "+-" and line[:3] not in ("+++", "---")]


@pytest.fixture(autouse=True)
def _in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports name files relative to the directory pytest ran in, as runs write them."""
    monkeypatch.chdir(tmp_path)


def test_explicit_rows_take_the_observed_results_and_nothing_else_moves(tmp_path: Path) -> None:
    path = write(tmp_path, "strict.yaml", EXPLICIT)
    update = update_expectations(report("scenarios/strict.yaml", "ns-strict", [
        row("frontend.app", "backend.app", "plaintext", "mtls"),
        row("plaintext.legacy", "backend.app", "refused", "refused", status="correct"),
        row("frontend.app", "backend.app", "allowed", "mtls", request="POST /post", http=200, expected_http=201),
        row("plaintext.legacy", "legacy.legacy", "mtls", "plaintext", http=200, expected_http=200),
        row("frontend.app", "legacy.legacy", "allowed", "refused", request="GET /status/418", expected_http=418),
    ]))
    assert diff(EXPLICIT, path) == [
        "-  - {from: frontend, to: backend, result: plaintext}   # a wrong guess",
        "+  - {from: frontend, to: backend, result: mtls}   # a wrong guess",
        "-    status: 201    # the app answers 200",
        "-  - {from: plaintext, to: legacy, result: \"mtls\", status: 200}",
        "-  - {from: frontend, to: legacy, request: {path: /status/418}, result: allowed, status: 418}",
        "+    status: 200    # the app answers 200",
        "+  - {from: plaintext, to: legacy, result: \"plaintext\", status: 200}",
        "+  - {from: frontend, to: legacy, request: {path: /status/418}, result: refused}",
    ]
    assert update.lines() == [
        "updated 4 expectations in 1 file:",
        "  scenarios/strict.yaml:9: ns-strict::frontend.app->backend.app:8080: plaintext → mtls",
        "  scenarios/strict.yaml:15: ns-strict::frontend.app->backend.app:8080:POST:/post: allowed HTTP 201 → "
        "allowed HTTP 200",
        "  scenarios/strict.yaml:16: ns-strict::plaintext.legacy->legacy.legacy:8080: mtls HTTP 200 → plaintext "
        "HTTP 200",
        "  scenarios/strict.yaml:17: ns-strict::frontend.app->legacy.legacy:8080:GET:/status/418: allowed HTTP 418 "
        "→ refused",
    ]
    load_scenario(path)  # still a valid scenario


def test_a_block_row_loses_its_status_line_when_the_new_result_has_none(tmp_path: Path) -> None:
    text = EXPLICIT.replace("    status: 201    # the app answers 200\n", "    status: 200\n    # the app\n")
    path = write(tmp_path, "strict.yaml", text)
    update_expectations(report("scenarios/strict.yaml", "ns-strict", [
        row("frontend.app", "backend.app", "allowed", "refused", request="POST /post", expected_http=200)]))
    assert diff(text, path) == ["-    result: allowed", "-    status: 200", "+    result: refused"]


DERIVED = """\
name: derived
# every pair as the oracle predicts it
expect: derived   # for now
"""


def test_a_derived_row_that_was_wrong_becomes_a_pin(tmp_path: Path) -> None:
    """`expect: derived` becomes the block form {derived: true, rows: [...]}: the pins are where the mesh and
    the oracle differ; the comment stays on its line."""
    path = write(tmp_path, "derived.yaml", DERIVED)
    update = update_expectations(report("scenarios/derived.yaml", "derived", [
        row("frontend.app", "backend.app", "mtls", "mtls", status="correct"),
        row("plaintext.legacy", "backend.app", "plaintext", "refused"),
        row("frontend.app", "legacy.legacy", "plaintext", "mtls"),
    ]))
    assert diff(DERIVED, path) == [
        "-expect: derived   # for now",
        "+expect:   # for now",
        "+  derived: true",
        "+  rows:",
        "+    - {from: plaintext.legacy, to: backend.app, result: refused}",
        "+    - {from: frontend.app, to: legacy.legacy, result: mtls}",
    ]
    assert update.lines() == [
        "updated 2 expectations in 1 file:",
        "  scenarios/derived.yaml:6: derived::plaintext.legacy->backend.app:8080: plaintext (derived) → refused",
        "  scenarios/derived.yaml:7: derived::frontend.app->legacy.legacy:8080: plaintext (derived) → mtls",
    ]
    pinned = {e.pair: e.result.value for e in load_scenario(path).expectations if e.yaml_path}
    assert pinned == {"plaintext.legacy->backend.app:8080": "refused", "frontend.app->legacy.legacy:8080": "mtls"}


PINNED = """\
name: pinned
expect:
  derived: true
  rows:
    - {from: frontend, to: backend, result: mtls}  # pinned by hand
    - from: plaintext
      to: legacy
      result: plaintext
# the end
"""


def test_new_pins_follow_the_existing_ones_and_an_old_pin_changes_in_place(tmp_path: Path) -> None:
    path = write(tmp_path, "pinned.yaml", PINNED)
    update_expectations(report("scenarios/pinned.yaml", "pinned", [
        row("frontend.app", "backend.app", "mtls", "plaintext"),
        row("plaintext.legacy", "backend.app", "plaintext", "refused"),
    ]))
    assert diff(PINNED, path) == [
        "-    - {from: frontend, to: backend, result: mtls}  # pinned by hand",
        "+    - {from: frontend, to: backend, result: plaintext}  # pinned by hand",
        "+    - {from: plaintext.legacy, to: backend.app, result: refused}",
    ]


@pytest.mark.parametrize(("expect", "written"), [
    ("{derived: true}", "{derived: true, rows: [{from: plaintext.legacy, to: backend.app, result: refused}]}"),
    ("{derived: true, rows: []}", "{derived: true, rows: [{from: plaintext.legacy, to: backend.app, result: refused}]}"),
    ("{derived: true, rows: [{from: frontend, to: backend, result: mtls}]}",
     "{derived: true, rows: [{from: frontend, to: backend, result: mtls}, {from: plaintext.legacy, to: backend.app, "
     "result: refused}]}"),
])
def test_flow_forms_get_the_pins_inside_their_brackets(tmp_path: Path, expect: str, written: str) -> None:
    text = f"name: flow\nexpect: {expect}\n"
    path = write(tmp_path, "flow.yaml", text)
    update_expectations(report("scenarios/flow.yaml", "flow", [
        row("plaintext.legacy", "backend.app", "plaintext", "refused")]))
    assert diff(text, path) == [f"-expect: {expect}", f"+expect: {written}"]


STEPS = """\
name: rollout
steps:
  - name: permissive
    expect:
      - {from: plaintext, to: backend, result: plaintext}
  - name: strict   # the namespace
    policies: |
      apiVersion: security.istio.io/v1
      kind: PeerAuthentication
      metadata: {name: default, namespace: app}
      spec: {mtls: {mode: STRICT}}
    expect: derived
  - name: after
    expect:
      - {from: plaintext, to: backend, result: refused}
"""


def test_each_step_is_updated_in_its_own_expect(tmp_path: Path) -> None:
    path = write(tmp_path, "rollout.yaml", STEPS)
    update = update_expectations(report("scenarios/rollout.yaml", "rollout", [
        row("plaintext.legacy", "backend.app", "plaintext", "refused", step="permissive"),
        row("plaintext.legacy", "backend.app", "refused", "plaintext", step="strict"),
        row("plaintext.legacy", "backend.app", "refused", "refused", status="correct", step="after"),
    ]))
    assert diff(STEPS, path) == [
        "-      - {from: plaintext, to: backend, result: plaintext}",
        "+      - {from: plaintext, to: backend, result: refused}",
        "-    expect: derived",
        "+    expect:",
        "+      derived: true",
        "+      rows:",
        "+        - {from: plaintext.legacy, to: backend.app, result: plaintext}",
    ]
    assert update.lines() == [
        "updated 2 expectations in 1 file:",
        "  scenarios/rollout.yaml:5: rollout::permissive::plaintext.legacy->backend.app:8080: plaintext → refused",
        "  scenarios/rollout.yaml:15: rollout::strict::plaintext.legacy->backend.app:8080: refused (derived) → "
        "plaintext",
    ]


def test_nothing_is_written_when_a_row_errored(tmp_path: Path) -> None:
    """A row without a result cannot be pinned, and pinning the others would hide it: no file changes."""
    path = write(tmp_path, "strict.yaml", EXPLICIT)
    update = update_expectations(report("scenarios/strict.yaml", "ns-strict", [
        row("frontend.app", "backend.app", "plaintext", "mtls"),
        row("plaintext.legacy", "backend.app", "refused", None, status="error"),
        row("plaintext.legacy", "legacy.legacy", "mtls", None, status="error", step="later"),
    ]))
    assert path.read_text() == EXPLICIT
    assert update.lines() == [
        "not written: 2 rows errored, and a row without a result cannot be pinned; fix what the errors say and "
        "run again",
        "  scenarios/strict.yaml::ns-strict::plaintext.legacy->backend.app:8080",
        "  scenarios/strict.yaml::ns-strict::later::plaintext.legacy->legacy.legacy:8080",
    ]


def test_nothing_is_written_when_the_run_was_interrupted(tmp_path: Path) -> None:
    path = write(tmp_path, "strict.yaml", EXPLICIT)
    update = update_expectations(report("scenarios/strict.yaml", "ns-strict", [
        row("frontend.app", "backend.app", "plaintext", "mtls")], interrupted=True))
    assert path.read_text() == EXPLICIT
    assert update.lines() == ["not written: the run was interrupted, so the observations are incomplete; run it "
                              "to the end"]


def test_correct_rows_and_python_tests_are_left_alone(tmp_path: Path) -> None:
    """`allowed` stays `allowed` when the mesh answered plaintext: only a row that was wrong changes."""
    path = write(tmp_path, "strict.yaml", EXPLICIT)
    fixture = ScenarioReport("test_mesh", "tests/test_mesh.py", rows=[
        row("frontend.app", "backend.app", "mtls", "plaintext")])
    update = update_expectations(Report("local", [
        ScenarioReport("ns-strict", "scenarios/strict.yaml", rows=[
            row("frontend.app", "backend.app", "allowed", "plaintext", status="correct", request="POST /post",
                http=201, expected_http=201)]), fixture]))
    assert path.read_text() == EXPLICIT
    assert update.lines() == ["no expectation changed: no row was wrong"]


def test_a_file_that_no_longer_loads_is_named_with_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "strict.yaml", EXPLICIT.replace("result: refused", "result: refusd"))
    update = update_expectations(report("scenarios/strict.yaml", "ns-strict", [
        row("frontend.app", "backend.app", "plaintext", "mtls")]))
    assert "refusd" in path.read_text()
    assert update.lines() == [
        "scenarios/strict.yaml: error: cannot update it, it no longer loads: scenarios/strict.yaml:10:44: error: "
        "invalid result 'refusd'; did you mean 'refused'?\n    fix: run the scenario again once the file is valid",
    ]
