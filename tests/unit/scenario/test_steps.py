"""Scenarios with steps, and derived tables with pinned rows: the format and its errors, the items pytest
collects (``file::scenario::step::row``), the truth tables per step with what changed from the step before,
and the CLI (check, predict, explain --step, validate). No mesh; tests/local/test_steps.py runs them."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from pytest_istio_mtls.commands.cli import main
from pytest_istio_mtls.commands.diff import compare, load, render_text
from pytest_istio_mtls.model import Result
from pytest_istio_mtls.report import write_all
from pytest_istio_mtls.report.html import render_html
from pytest_istio_mtls.report.markdown import render_markdown
from pytest_istio_mtls.report.model import Report, Row, ScenarioReport, StepReport, merge, report_from_json, row_anchor
from pytest_istio_mtls.report.terminal import render
from pytest_istio_mtls.scenario.loader import load_scenario

from ...paths import REPO

BUILTIN = REPO / "pytest_istio_mtls/scenarios/25-rollout-to-mesh-strict.yaml"
SCHEMA = json.loads((REPO / "pytest_istio_mtls/report/report.schema.json").read_text())
PA = """      apiVersion: security.istio.io/v1
      kind: PeerAuthentication
      metadata: {name: %s, namespace: app}
      spec: {%smtls: {mode: %s}}
"""
ROLLOUT = f"""name: rollout
description: app goes STRICT, then backend alone goes back to PERMISSIVE.
steps:
  - name: permissive
    expect:
      - {{from: frontend, to: backend, result: mtls}}
      - {{from: plaintext, to: backend, result: plaintext}}
  - name: strict
    description: the whole namespace
    policies: |
{PA % ("default", "", "STRICT")}    expect:
      - {{from: frontend, to: backend, result: mtls}}
      - {{from: plaintext, to: backend, result: refused}}
  - name: backend-permissive
    policies: |
{PA % ("backend", "selector: {matchLabels: {app: backend}}, ", "PERMISSIVE")}    expect:
      derived: true
      rows:
        - {{from: plaintext, to: backend, result: allowed}}
        - {{from: plaintext, to: backend, request: {{method: POST, path: /post}}, result: allowed, status: 200}}
"""
IDS = [f"scenarios/rollout.yaml::rollout::{step}::{pair}" for step, pair in [
    ("permissive", "frontend.app->backend.app:8080"), ("permissive", "plaintext.legacy->backend.app:8080"),
    ("strict", "frontend.app->backend.app:8080"), ("strict", "plaintext.legacy->backend.app:8080")]]


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- the format


def test_each_step_changes_the_state_of_the_step_before() -> None:
    """Policies accumulate over the steps: added, replaced by kind/namespace/name (keeping their age, as kubectl
    apply does) or removed; each state's rows are that step's."""
    scenario = load_scenario(BUILTIN)
    assert scenario.expectations == () and not scenario.warnings
    states = scenario.states()
    assert [s.name for s in states] == [f"rollout-to-mesh-strict/{step}" for step in
                                        ("permissive", "workload-strict", "namespace-strict", "mesh-strict")]
    assert [[(p.ref, p.order) for p in s.policies] for s in states] == [
        [("PeerAuthentication istio-system/default", 0)],
        [("PeerAuthentication istio-system/default", 0), ("PeerAuthentication foo/httpbin-strict", 1)],
        [("PeerAuthentication istio-system/default", 0), ("PeerAuthentication foo/default", 1)],
        [("PeerAuthentication istio-system/default", 0), ("PeerAuthentication foo/default", 1)],
    ]
    assert [s.changes for s in scenario.steps] == [
        "added PeerAuthentication istio-system/default",
        "added PeerAuthentication foo/httpbin-strict",
        "added PeerAuthentication foo/default; removed PeerAuthentication foo/httpbin-strict",
        "changed PeerAuthentication istio-system/default",
    ]
    assert states[3].policies[0].spec == {"mtls": {"mode": "STRICT"}}
    refused = [[e.pair for e in s.expectations if e.result is Result.REFUSED] for s in states]
    assert refused == [[], ["curl.legacy->httpbin.foo:8000"],
                       ["curl.legacy->httpbin.foo:8000", "curl.legacy->web.foo:8000"],
                       ["curl.legacy->httpbin.foo:8000", "curl.legacy->web.foo:8000", "curl.legacy->httpbin.bar:8000"]]


BAD = f"""name: rollout
expect:
  - {{from: frontend, to: backend, result: mtls}}
steps:
  - name: one
    policies: |
{PA % ("default", "", "PERMISSIVE")}    expect: [{{from: frontend, to: backend, result: mtls}}]
  - name: one
    expect: derived
  - name: two words
    expect: derived
  - name: three
    remove: [PeerAuthentication app/defualt, Peer, PeerAuthentication app/default]
    policies: |
{PA % ("default", "", "STRICT")}    expect: {{derived: true, rows: [], extra: 1}}
  - name: four
  - name: five
    remove: [PeerAuthentication app/default]
    expect: {{derived: false}}
  - name: six
    policies: |
{PA % ("six", "", "STRICT")}    expect: derivd
"""


def test_mistakes_are_named_with_file_line_and_the_fix(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "bad.yaml").write_text(BAD)
    assert cli(capsys, "validate", "bad.yaml") == (1, "", """\
bad.yaml:2:1: error: a scenario with steps has no top-level 'expect': each step has its own
    fix: move the rows into each step's expect:
bad.yaml:12:11: error: step 'one' is named twice (first at bad.yaml:5:5)
    fix: step names must be unique within a scenario
bad.yaml:14:11: error: step name 'two words' may only hold letters, digits, '-', '_' and '.'
    fix: it is part of the pytest id (file::scenario::step::row), e.g. name: workload-strict
bad.yaml:17:14: error: PeerAuthentication app/defualt is not in force before this step; did you mean 'PeerAuthentication app/default'?
    fix: policies in force: PeerAuthentication app/default
bad.yaml:17:46: error: a remove entry is 'Kind namespace/name', not 'Peer'
    fix: e.g. PeerAuthentication app/default
bad.yaml:17:52: error: the step both removes and applies PeerAuthentication app/default
    fix: drop it from remove: (applying it again replaces it)
bad.yaml:23:39: error: unknown key 'extra' in expect
    fix: allowed keys: derived, rows
bad.yaml:24:5: error: step 'four' has no 'expect'
    fix: add an expect: list of {from, to, result} rows, or expect: derived
bad.yaml:24:5: warning: step 'four' changes no policy: it probes the state of step 'three' again
    fix: add policies: or remove: to the step, or merge its rows into that step
bad.yaml:27:13: error: expect has no rows and is not derived
    fix: write derived: true (the oracle's table) and/or rows: [...]
bad.yaml:34:13: error: expect must be a list of rows, 'derived' or {derived: true, rows: [...]}, not 'derivd'; did you mean 'derived'?
""")


def test_a_trap_that_only_one_state_holds_is_warned_at_that_step(here: Path) -> None:
    """Istio ignores a second namespace-wide PeerAuthentication; the warning names the step's policy, once,
    although the later steps keep it in force."""
    text = ROLLOUT.replace("  - name: backend-permissive\n    policies: |\n", "  - name: backend-permissive\n"
                           "    policies: |\n" + PA % ("second", "", "DISABLE") + "      ---\n")
    (here / "rollout.yaml").write_text(text)
    warnings = [str(w) for w in load_scenario(here / "rollout.yaml").warnings]
    assert warnings == [
        "rollout.yaml:20:7: warning: PeerAuthentication app/second is a second namespace-wide PeerAuthentication in "
        "app: Istio ignores it because PeerAuthentication app/default (at rollout.yaml:11:7) is older\n"
        "    fix: keep one namespace-wide policy per namespace"]


def test_derived_plus_pinned_rows(here: Path) -> None:
    """`expect: {derived: true, rows: [...]}`: the oracle's table where a row of the same pair replaces the
    derived one in place, and rows for pairs the table lacks (a request) follow it."""
    (here / "rollout.yaml").write_text(ROLLOUT)
    step = load_scenario(here / "rollout.yaml").steps[2]
    assert step.derived
    assert [(e.pair, e.result.value, e.mark.line if e.mark else 0, bool(e.yaml_path)) for e in step.expectations] == [
        ("frontend.app->backend.app:8080", "mtls", 25, False),
        ("frontend.app->legacy.legacy:8080", "plaintext", 25, False),
        ("backend.app->frontend.app:8080", "mtls", 25, False),
        ("backend.app->legacy.legacy:8080", "plaintext", 25, False),
        ("plaintext.legacy->frontend.app:8080", "refused", 25, False),
        ("plaintext.legacy->backend.app:8080", "allowed", 27, True),  # the pin, in the derived row's place
        ("plaintext.legacy->legacy.legacy:8080", "plaintext", 25, False),
        ("legacy.legacy->frontend.app:8080", "refused", 25, False),
        ("legacy.legacy->backend.app:8080", "plaintext", 25, False),
        ("plaintext.legacy->backend.app:8080:POST:/post", "allowed", 28, True),  # a pair the table lacks
    ]


ENVOY_FILTER = """name: tweaked
policies: |
  apiVersion: networking.istio.io/v1alpha3
  kind: EnvoyFilter
  metadata: {name: tweak, namespace: app}
  spec: {workloadSelector: {labels: {app: backend}}}
expect: %s
"""


def test_pins_answer_the_pairs_the_oracle_cannot_predict(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "derived.yaml").write_text(ENVOY_FILTER % "derived")
    why = "(EnvoyFilter app/tweak applies to backend.app and is not modelled)"
    unknown = ["frontend.app->backend.app:8080", "backend.app->frontend.app:8080", "backend.app->legacy.legacy:8080",
               "plaintext.legacy->backend.app:8080", "legacy.legacy->backend.app:8080"]
    assert cli(capsys, "validate", "derived.yaml") == (1, "", (
        "derived.yaml:7:9: error: expect: derived, but the oracle cannot predict "
        + "; ".join(f"{pair} {why}" for pair in unknown) + "\n"
        "    fix: pin those pairs: expect: {derived: true, rows: [{from: ..., to: ..., result: ...}]}\n"))
    pins = [("frontend", "backend", "mtls"), ("backend", "frontend", "mtls"), ("backend", "legacy", "plaintext"),
            ("plaintext", "backend", "plaintext"), ("legacy", "backend", "plaintext")]
    (here / "pinned.yaml").write_text(ENVOY_FILTER % ("\n  derived: true\n  rows:\n" + "".join(
        f"    - {{from: {client}, to: {server}, result: {result}}}\n" for client, server, result in pins)))
    assert cli(capsys, "validate", "pinned.yaml") == (0, "pinned.yaml: ok (tweaked: 9 expectations, 1 policy)\n", "")


def test_every_earlier_scenario_file_loads_as_before() -> None:
    """Files without steps keep their one state: no steps, their own policies and rows."""
    for path in sorted(BUILTIN.parent.glob("*.yaml")):
        scenario = load_scenario(path)
        assert (scenario.step, bool(scenario.steps)) == ("", path == BUILTIN)
        if path != BUILTIN:
            assert scenario.states() == (scenario,)
        else:  # one state per step, each the scenario at that step
            assert scenario.states() == tuple(scenario.at(step) for step in scenario.steps)
            assert [s.step for s in scenario.states()] == [step.name for step in scenario.steps]


# --------------------------------------------------------------------------- pytest items


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "rollout.yaml").write_text(ROLLOUT)
    return pytester


def test_items_are_file_scenario_step_row(project: pytest.Pytester) -> None:
    result = project.runpytest("--istio-scenarios", "--co", "-q")
    steps = [f"scenarios/rollout.yaml::rollout::backend-permissive::{pair}" for pair in (
        "frontend.app->backend.app:8080", "frontend.app->legacy.legacy:8080", "backend.app->frontend.app:8080",
        "backend.app->legacy.legacy:8080", "plaintext.legacy->frontend.app:8080", "plaintext.legacy->backend.app:8080",
        "plaintext.legacy->legacy.legacy:8080", "legacy.legacy->frontend.app:8080", "legacy.legacy->backend.app:8080",
        "plaintext.legacy->backend.app:8080:POST:/post")]
    result.stdout.fnmatch_lines([*IDS, *steps, "", "14 tests collected in *"], consecutive=True)


@pytest.mark.parametrize(("selection", "selected"), [
    (["-k", "strict and not permissive"], IDS[2:]),  # a step's name selects its rows
    (["-k", "PeerAuthentication and not backend-permissive"], IDS[2:]),  # the kinds in force at that step
    (["scenarios/rollout.yaml::rollout::strict"], IDS[2:]),  # a step's node id
    (["scenarios/rollout.yaml::rollout::permissive::plaintext.legacy->backend.app:8080"], IDS[1:2]),
])
def test_selection_by_step(project: pytest.Pytester, selection: list[str], selected: list[str]) -> None:
    result = project.runpytest("--istio-scenarios", "--co", "-q", *selection)
    result.stdout.fnmatch_lines([*selected, ""], consecutive=True)
    assert f"{len(selected)}" in result.outlines[len(selected) + 1]


# --------------------------------------------------------------------------- reports


def row(step: str, source: str, observed: str | None, status: str = "correct", expected: str = "",
        message: str = "", request: str = "") -> Row:
    return Row(source=source, target="backend.app", port=8080, predicted=observed or "unknown",
               reason="r", status=status, expected=expected or observed, observed=observed,  # type: ignore[arg-type]
               message=message, step=step, request=request)


def stepped_report() -> Report:
    steps = [StepReport("permissive", 1, policies=[]),
             StepReport("strict", 2, "the whole namespace", ["PeerAuthentication app/default"],
                        added=["PeerAuthentication app/default"]),
             StepReport("nothing", 3, policies=["PeerAuthentication app/default"])]
    rows = [row("permissive", "frontend.app", "mtls"), row("permissive", "plaintext.legacy", "plaintext"),
            row("strict", "frontend.app", "mtls"),
            row("strict", "plaintext.legacy", "plaintext", "wrong", "refused", "  observed: plaintext"),
            row("strict", "plaintext.legacy", None, "error", "allowed", "  observed: ERROR: timed out",
                request="POST /post"),
            row("nothing", "frontend.app", "mtls"), row("nothing", "plaintext.legacy", "plaintext", "wrong", "refused")]
    return Report("local", [ScenarioReport("rollout", "scenarios/rollout.yaml", rows=rows, steps=steps,
                                           policies=["PeerAuthentication app/default"])])


def test_the_terminal_shows_each_step_and_what_changed() -> None:
    assert render(stepped_report()) == """\
rollout  (scenarios/rollout.yaml)

step 1 permissive: 0 policies in force
                  backend.app:8080
frontend.app      ✓ mtls
plaintext.legacy  ✓ plaintext
2 correct, 0 wrong, 0 errors

step 2 strict: added PeerAuthentication app/default
                  backend.app:8080
frontend.app      ✓ mtls
plaintext.legacy  ✗ plaintext (exp refused)
                  POST /post: ! error (exp allowed)
1 correct, 1 wrong, 1 error
  ✗ plaintext.legacy->backend.app:8080 expected refused, observed plaintext
  ! plaintext.legacy->backend.app:8080:POST:/post expected allowed: timed out
no result changed from permissive

step 3 nothing: no policy changed
                  backend.app:8080
frontend.app      ✓ mtls
plaintext.legacy  ✗ plaintext (exp refused)
1 correct, 1 wrong, 0 errors
  ✗ plaintext.legacy->backend.app:8080 expected refused, observed plaintext
no result changed from strict

3 steps: 4 correct, 2 wrong, 1 error"""


def test_predict_shows_each_step_and_the_results_that_change(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each step's table holds the rows that step would run: its own rows, or its derived rows (no self-calls)
    with the pinned ones in their place."""
    (here / "rollout.yaml").write_text(ROLLOUT)
    code, out, _ = cli(capsys, "predict", "rollout.yaml")
    assert code == 0
    assert out.split("step 2 ")[1].split("step 3 ")[0] == """\
strict: added PeerAuthentication app/default
                  backend.app:8080
frontend.app      mtls
plaintext.legacy  refused
2 rows: 1 mtls, 1 refused
changed from permissive:
  plaintext.legacy->backend.app:8080  plaintext → refused

"""
    assert out.split("step 3 ")[1].splitlines() == [
        "backend-permissive: added PeerAuthentication app/backend",
        "                  backend.app:8080       legacy.legacy:8080  frontend.app:8080",
        "frontend.app      mtls                   plaintext           ·",
        "backend.app       ·                      plaintext           mtls",
        "plaintext.legacy  plaintext              plaintext           refused",
        "                  POST /post: plaintext",
        "legacy.legacy     plaintext              ·                   refused",
        "10 rows: 2 mtls, 6 plaintext, 2 refused",
        "changed from strict:",
        "  plaintext.legacy->backend.app:8080  refused → plaintext"]
    code, out, _ = cli(capsys, "predict", "rollout.yaml", "--json")
    assert [(line["scenario"], line["step"], len(line["rows"])) for line in map(json.loads, out.splitlines())] == [
        ("rollout", "permissive", 2), ("rollout", "strict", 2), ("rollout", "backend-permissive", 10)]


def test_markdown_and_html_show_each_step() -> None:
    report = stepped_report()
    report.scenarios[0].rows[3].status = "correct"
    report.scenarios[0].rows[3].expected = "plaintext"
    markdown = render_markdown(report)
    assert markdown.split("## rollout\n", 1)[1].split("### Step 3")[0] == """
file: scenarios/rollout.yaml

### Step 1: permissive

Policies: none

| from \\ to | backend.app:8080 |
|---|---|
| **frontend.app** | ✅ mtls |
| **plaintext.legacy** | ✅ plaintext |

✅ 2 correct · ❌ 0 wrong · ⚠️ 0 errors

### Step 2: strict

the whole namespace

Policies: PeerAuthentication app/default

Changes: added PeerAuthentication app/default

| from \\ to | backend.app:8080 |
|---|---|
| **frontend.app** | ✅ mtls |
| **plaintext.legacy** | ✅ plaintext<br>POST /post: ⚠️ error (exp allowed) |

✅ 2 correct · ❌ 0 wrong · ⚠️ 1 error

No result changed from permissive.

"""
    assert "- ⚠️ [rollout: strict::plaintext.legacy->backend.app:8080:POST:/post](#row-scenarios-rollout.yaml--strict--" \
           "plaintext.legacy--backend.app-8080-POST-post) expected allowed: timed out" in markdown
    report.scenarios[0].rows[6] = row("nothing", "plaintext.legacy", "refused")
    page = render_html(report)
    assert "<h3>Step 2: strict</h3>\n<p class=\"description\">the whole namespace</p>\n" \
           "<p>Policies: PeerAuthentication app/default</p>\n<p>Changes: added PeerAuthentication app/default</p>" in page
    assert ('<p>Changed from strict:</p><ul>\n<li><a href="#row-scenarios-rollout.yaml--nothing--plaintext.legacy--'
            'backend.app-8080">plaintext.legacy-&gt;backend.app:8080</a>: plaintext → refused</li>\n</ul>') in page
    assert "<p>No result changed from permissive.</p>" in page
    assert page.count('id="row-scenarios-rollout.yaml--') == 7  # one anchor per row, each step's rows its own


def test_report_json_names_each_rows_step(tmp_path: Path) -> None:
    """The schema accepts it, the report reads back, xdist workers' steps merge in file order, and diff compares
    a row with the same row of the same step."""
    old = stepped_report()
    data = old.to_json()
    jsonschema.validate(data, SCHEMA)
    assert data["scenarios"][0]["steps"][1] == {
        "name": "strict", "number": 2, "description": "the whole namespace", "policies": ["PeerAuthentication app/default"],
        "added": ["PeerAuthentication app/default"], "changed": [], "removed": [], "error": None,
        "durationSeconds": None, "phases": {}}  # not timed: nothing was deployed for it
    assert [r["step"] for r in data["scenarios"][0]["rows"]][:3] == ["permissive", "permissive", "strict"]
    assert report_from_json(data).to_json() == data
    assert len({row_anchor("f", r) for r in old.scenarios[0].rows}) == 7
    first, second = report_from_json(data), report_from_json(data)
    first.scenarios[0].steps = first.scenarios[0].steps[2:]
    first.scenarios[0].rows = first.scenarios[0].rows[5:]
    second.scenarios[0].steps = second.scenarios[0].steps[:2]
    second.scenarios[0].rows = second.scenarios[0].rows[:5]
    merged = merge([first, second])
    assert [s.name for s in merged.scenarios[0].steps] == ["permissive", "strict", "nothing"]
    assert [r.step for r in merged.scenarios[0].rows] == [r.step for r in old.scenarios[0].rows]
    new = stepped_report()
    new.scenarios[0].rows[6] = row("nothing", "plaintext.legacy", "refused", "correct", "refused")
    write_all(old, tmp_path / "old")
    write_all(new, tmp_path / "new")
    assert render_text(compare(load(tmp_path / "old"), load(tmp_path / "new"))).splitlines()[2:] == [
        "rollout:",
        "  nothing::plaintext.legacy->backend.app:8080  plaintext → refused, wrong → correct",
        "1 row changed (1 result), 6 unchanged"]


# --------------------------------------------------------------------------- the CLI


def test_check_names_the_step_of_a_disagreeing_row(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "rollout.yaml").write_text(ROLLOUT.replace("result: refused}", "result: plaintext}"))
    assert cli(capsys, "check", "rollout.yaml") == (1, (
        "rollout.yaml:17:9: disagreement: strict::plaintext.legacy->backend.app:8080 expects plaintext, the oracle "
        "predicts refused: backend.app:8080 is STRICT by PeerAuthentication app/default (namespace-wide); "
        "plaintext.legacy has no sidecar and sends plaintext → refused (the server sidecar resets the plaintext "
        "connection)\n"
        "rollout.yaml: 13 agree, 1 disagrees, 0 not predictable\n"), "")


def test_validate_counts_steps(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "rollout.yaml").write_text(ROLLOUT)
    assert cli(capsys, "validate", "rollout.yaml") == (
        0, "rollout.yaml: ok (rollout: 3 steps, 14 expectations, 2 policies)\n", "")


def test_explain_takes_the_step(capsys: pytest.CaptureFixture[str]) -> None:
    file = str(BUILTIN)
    code, out, _ = cli(capsys, "explain", file, "curl.legacy", "web.foo", "--step", "namespace-strict")
    assert code == 0
    assert out.splitlines()[:3] == [
        "step 3 namespace-strict: PeerAuthentication istio-system/default, PeerAuthentication foo/default in force",
        "curl.legacy -> web.foo:8000 (container port 8080, http)",
        "  result: refused"]
    assert cli(capsys, "explain", file, "curl.legacy", "web.foo", "--step", "workload-strict")[1].splitlines()[2] == \
        "  result: plaintext"
    assert cli(capsys, "explain", file, "curl.legacy", "web.foo") == (2, "", (
        f"error: {file} has steps: say which one's policies decide\n"
        "    fix: add --step with one of permissive, workload-strict, namespace-strict, mesh-strict\n"))
    assert cli(capsys, "explain", file, "curl.legacy", "web.foo", "--step", "mesh-strct") == (2, "", (
        f"error: --step mesh-strct: no such step in {file}; did you mean 'mesh-strict'?\n"
        "    fix: add --step with one of permissive, workload-strict, namespace-strict, mesh-strict\n"))
    other = str(BUILTIN.parent / "02-mesh-strict.yaml")
    assert cli(capsys, "explain", other, "plaintext", "backend", "--step", "x") == (2, "", (
        f"error: --step x: {other} has no steps\n    fix: drop --step\n"))


def test_the_readme_example_is_valid_and_agrees_with_the_oracle(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """README 'Scenario format': the steps example (derived, and derived plus pinned) as written."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Scenario format", 1)[1].split("\n## ", 1)[0]
    example = section.split("```yaml\n")[3].split("```", 1)[0]
    schema = json.loads((REPO / "pytest_istio_mtls/scenario.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(example), schema)
    (here / "rollout.yaml").write_text(example)
    assert cli(capsys, "validate", "rollout.yaml")[1] == "rollout.yaml: ok (rollout: 3 steps, 15 expectations, 2 policies)\n"
    assert cli(capsys, "check", "rollout.yaml")[1] == "rollout.yaml: 15 agree, 0 disagree, 0 not predictable\n"


def test_a_step_whose_rows_did_not_run_says_nothing_about_changes() -> None:
    """`not run` is no result: nothing is compared with the step before, rather than "no result changed"."""
    report = Report("local", [ScenarioReport("r", "r.yaml", steps=[StepReport("one", 1), StepReport("two", 2)], rows=[
        row("one", "plaintext.legacy", "plaintext", "wrong", "refused"),
        row("two", "plaintext.legacy", None, "not run", "refused", "kept")])])
    assert render(report).split("step 2 ")[1] == (
        "two: no policy changed\n"
        "                  backend.app:8080\n"
        "plaintext.legacy  not run\n"
        "0 correct, 0 wrong, 0 errors, 1 not run\n"
        "\n"
        "2 steps: 0 correct, 1 wrong, 0 errors, 1 not run")
