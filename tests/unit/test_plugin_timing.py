"""Where a run's time went: each scenario item's share of its batch in --junitxml and --durations, and each
batch's phases in report.json, report.md and the JUnit properties. A fake backend on a fake clock, so every
figure the plugin computes is exact (pytest's own few milliseconds per item aside)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from importlib.resources import files

import jsonschema
import pytest

from pytest_istio_mtls.report.junit import classname

from .fake_backend import install

LEGACY = """
name: legacy
expect:
  - {from: plaintext, to: legacy, result: plaintext}
  - {from: plaintext, to: backend, result: mtls}
"""
ROLLOUT = """
name: rollout
steps:
  - name: one
    expect:
      - {from: plaintext, to: legacy, result: plaintext}
      - {from: plaintext, to: backend, result: plaintext}
  - name: two
    policies: |
      apiVersion: security.istio.io/v1
      kind: PeerAuthentication
      metadata: {name: default, namespace: app}
      spec: {mtls: {mode: PERMISSIVE}}
    expect:
      - {from: plaintext, to: legacy, result: plaintext}
"""
# The fake backend: start 7 s, deploy 2 s, apply 1 s, probe 0.5 s a probe, diagnostics 0.25 s a failing row.
LEGACY_PHASES = {"deploy": 2.0, "apply": 1.0, "probe": 1.0, "evidence": 0.25}  # 4.25 s, 2.125 s a row
ONE_PHASES = {"deploy": 2.0, "apply": 1.0, "probe": 1.0, "evidence": 0.0}  # 4 s, 2 s a row
TWO_PHASES = {"deploy": 2.0, "apply": 1.0, "probe": 0.5, "evidence": 0.0}  # 3.5 s, its one row
SHARES = {  # item → its share of its batch
    "scenarios/legacy.yaml::legacy::plaintext.legacy->legacy.legacy:8080": 2.125,
    "scenarios/legacy.yaml::legacy::plaintext.legacy->backend.app:8080": 2.125,
    "scenarios/rollout.yaml::rollout::one::plaintext.legacy->legacy.legacy:8080": 2.0,
    "scenarios/rollout.yaml::rollout::one::plaintext.legacy->backend.app:8080": 2.0,
    "scenarios/rollout.yaml::rollout::two::plaintext.legacy->legacy.legacy:8080": 3.5,
}
SLACK = 0.5  # what pytest itself may add to an item's setup on a busy machine


@pytest.fixture
def result(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.RunResult:
    install(monkeypatch)
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "legacy.yaml").write_text(LEGACY)
    (pytester.path / "scenarios" / "rollout.yaml").write_text(ROLLOUT)
    return pytester.runpytest("--istio-scenarios", "--istio-backend=local", "--istio-report=out",
                              "--junitxml=junit.xml", "--durations=0", "--durations-min=0", "-p", "no:cacheprovider")


def test_junit_time_is_the_items_share_of_its_batch(result: pytest.RunResult, pytester: pytest.Pytester) -> None:
    """The testcase's time is its share; its properties are its batch's time, rows and phases."""
    result.assert_outcomes(passed=4, failed=1)
    cases = {(case.get("classname"), case.get("name")): case
             for case in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")}
    assert cases.keys() == {(classname(nodeid), nodeid.rsplit("::", 1)[1]) for nodeid in SHARES}
    for nodeid, share in SHARES.items():
        case = cases[(classname(nodeid), nodeid.rsplit("::", 1)[1])]
        assert share <= float(case.get("time", "0")) < share + SLACK, nodeid
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        batch = LEGACY_PHASES if "legacy.yaml" in nodeid else ONE_PHASES if "::one::" in nodeid else TWO_PHASES
        assert properties["istio_batch_seconds"] == f"{sum(batch.values()):.3f}"
        assert properties["istio_batch_rows"] == str(sum(1 for n in SHARES if n.rsplit("::", 1)[0] ==
                                                         nodeid.rsplit("::", 1)[0]))
        assert properties["istio_batch_phases"] == " ".join(f"{k}={v:.3f}" for k, v in batch.items())


def test_durations_lists_each_items_share_as_its_setup(result: pytest.RunResult) -> None:
    found = {m.group(2): float(m.group(1)) for m in
             (re.fullmatch(r"(\d+\.\d\d)s setup +(\S+)", line) for line in result.outlines) if m}
    assert found.keys() == SHARES.keys()
    for nodeid, share in SHARES.items():
        assert share - 0.005 <= found[nodeid] < share + SLACK, nodeid  # printed to the hundredth


def test_report_json_has_each_batchs_phases_and_each_rows_share(result: pytest.RunResult,
                                                                pytester: pytest.Pytester) -> None:
    data = json.loads((pytester.path / "out" / "report.json").read_text())
    jsonschema.validate(data, json.loads((files("pytest_istio_mtls.report") / "report.schema.json").read_text()),
                        cls=jsonschema.Draft202012Validator)
    assert (data["startSeconds"], data["durationSeconds"]) == (7.0, 7.0 + 4.25 + 4.0 + 3.5)
    legacy, rollout = data["scenarios"]
    assert (legacy["durationSeconds"], legacy["phases"]) == (4.25, LEGACY_PHASES)
    assert [row["durationSeconds"] for row in legacy["rows"]] == [2.125, 2.125]
    assert (rollout["durationSeconds"], rollout["phases"]) == (
        7.5, {"deploy": 4.0, "apply": 2.0, "probe": 1.5, "evidence": 0.0})
    assert [(s["name"], s["durationSeconds"], s["phases"]) for s in rollout["steps"]] == [
        ("one", 4.0, ONE_PHASES), ("two", 3.5, TWO_PHASES)]
    assert [row["durationSeconds"] for row in rollout["rows"]] == [2.0, 2.0, 3.5]


def test_report_md_says_how_long_each_scenario_and_step_took(result: pytest.RunResult,
                                                             pytester: pytest.Pytester) -> None:
    lines = (pytester.path / "out" / "report.md").read_text().splitlines()
    assert re.fullmatch(r"\*\*backend\*\* local · fake 1 · started .* · took 18\.8 s \(backend start 7\.0 s\)",
                        lines[2])
    times = [line for line in lines if line.startswith("Time: ")]
    assert times == [
        "Time: 4.2 s (deploy 2.0 s · apply 1.0 s · probe 1.0 s · evidence 0.2 s)",  # legacy
        "Time: 7.5 s (deploy 4.0 s · apply 2.0 s · probe 1.5 s · evidence 0.0 s)",  # rollout
        "Time: 4.0 s (deploy 2.0 s · apply 1.0 s · probe 1.0 s · evidence 0.0 s)",  # step one
        "Time: 3.5 s (deploy 2.0 s · apply 1.0 s · probe 0.5 s · evidence 0.0 s)",  # step two
    ]
    assert lines[lines.index("## Time per scenario"):] == [
        "## Time per scenario",
        "",
        "The backend took 7.0 s to start, before the first scenario.",
        "",
        "| scenario | rows | time | deploy | apply | probe | evidence |",
        "|---|---|---|---|---|---|---|",
        "| rollout | 3 | 7.5 s | 4.0 s | 2.0 s | 1.5 s | 0.0 s |",
        "| legacy | 2 | 4.2 s | 2.0 s | 1.0 s | 1.0 s | 0.2 s |",
    ]


def test_a_failed_batch_keeps_the_time_of_the_phases_it_reached(pytester: pytest.Pytester,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The policies never took effect: the rows are errors that still share the deploy and the failed apply."""
    install(monkeypatch, fail="apply")
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "legacy.yaml").write_text(LEGACY)
    result = pytester.runpytest("--istio-scenarios", "--istio-backend=local", "--istio-report=out",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(errors=2)
    scenario = json.loads((pytester.path / "out" / "report.json").read_text())["scenarios"][0]
    assert (scenario["durationSeconds"], scenario["phases"]) == (3.0, {"deploy": 2.0, "apply": 1.0})
    assert [row["durationSeconds"] for row in scenario["rows"]] == [1.5, 1.5]
    assert "Time: 3.0 s (deploy 2.0 s · apply 1.0 s)" in (pytester.path / "out" / "report.md").read_text()


def test_items_run_by_another_plugin_keep_pytests_own_timing(pytester: pytest.Pytester,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Another plugin's pytest_runtest_protocol: the batch runs inside the first item's setup, which pytest times
    itself (on its real clock, here a blink), so no share is added on top."""
    install(monkeypatch)
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "legacy.yaml").write_text(LEGACY)
    pytester.makeconftest("""
        import pytest
        from _pytest.runner import runtestprotocol

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_protocol(item, nextitem):
            item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
            runtestprotocol(item, nextitem=nextitem)
            item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
            return True
    """)
    result = pytester.runpytest("--istio-scenarios", "--istio-backend=local", "--durations=0", "--durations-min=0",
                                "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    setups = [float(m.group(1)) for m in (re.fullmatch(r"(\d+\.\d\d)s setup +\S+", line) for line in result.outlines)
              if m]
    assert len(setups) == 2 and all(seconds < SLACK for seconds in setups)
