"""Timing in the report model: report.json's durations and phases against the schema, the trip from an xdist
worker, merged workers' times, and reports without timing (predictions, older files) unchanged."""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import jsonschema
import pytest

from pytest_istio_mtls.report.markdown import render_markdown
from pytest_istio_mtls.report.model import Report, Row, ScenarioReport, StepReport, merge, report_from_json

SCHEMA = json.loads((files("pytest_istio_mtls.report") / "report.schema.json").read_text())
PHASES = {"deploy": 12.0, "apply": 3.5, "probe": 2.25, "evidence": 0.125}


def row(step: str = "", seconds: float | None = 4.4375) -> Row:
    return Row("curl.foo", "httpbin.foo", 8000, "mtls", "auto mTLS", "correct", expected="mtls", observed="mtls",
               step=step, duration_s=seconds)


def timed() -> Report:
    """A scenario of one batch, a scenario with two steps (one never started), and rows not probed."""
    flat = ScenarioReport("flat", "flat.yaml", rows=[row(), row(), row(seconds=None)], phases=dict(PHASES))
    first = StepReport("first", 1, phases={"deploy": 10.0, "apply": 2.0, "probe": 1.0, "evidence": 0.0})
    second = StepReport("second", 2)
    steps = ScenarioReport("steps", "steps.yaml", rows=[row("first", 13.0), row("second", None)],
                           steps=[first, second], phases=dict(first.phases))
    return Report("local", [flat, steps], duration_s=60.0, start_s=20.5)


def validate(document: dict[str, Any]) -> None:
    jsonschema.validate(document, SCHEMA, cls=jsonschema.Draft202012Validator)


def test_report_json_carries_durations_and_phases() -> None:
    data = json.loads(json.dumps(timed().to_json()))
    validate(data)
    flat, steps = data["scenarios"]
    assert data["startSeconds"] == 20.5
    assert (flat["durationSeconds"], flat["phases"]) == (17.875, PHASES)
    assert [r["durationSeconds"] for r in flat["rows"]] == [4.438, 4.438, None]  # to the millisecond
    assert [(s["durationSeconds"], s["phases"]) for s in steps["steps"]] == [
        (13.0, {"deploy": 10.0, "apply": 2.0, "probe": 1.0, "evidence": 0.0}), (None, {})]


@pytest.mark.parametrize("change", ["negative-phase", "string-phase", "negative-row", "string-start"])
def test_schema_rejects_broken_timing(change: str) -> None:
    data = json.loads(json.dumps(timed().to_json()))
    scenario = data["scenarios"][0]
    if change == "negative-phase":
        scenario["phases"]["probe"] = -1
    elif change == "string-phase":
        scenario["steps"] = [{**StepReport("x", 1).to_json(), "phases": {"apply": "3 s"}}]
    elif change == "negative-row":
        scenario["rows"][0]["durationSeconds"] = -0.5
    else:
        data["startSeconds"] = "20"
    with pytest.raises(jsonschema.ValidationError):
        validate(data)


def test_timing_survives_the_trip_from_an_xdist_worker() -> None:
    original = timed()
    back = report_from_json(json.loads(json.dumps(original.to_json())))
    assert back.to_json() == original.to_json()
    assert back.start_s == 20.5 and back.scenarios[0].phases == PHASES


def test_reports_without_timing_still_load_and_validate() -> None:
    """A report.json written before these fields existed: no start, no phases, no row shares."""
    data = json.loads(json.dumps(timed().to_json()))
    del data["startSeconds"]
    for scenario in data["scenarios"]:
        del scenario["durationSeconds"], scenario["phases"]
        for step in scenario["steps"]:
            del step["durationSeconds"], step["phases"]
        for r in scenario["rows"]:
            del r["durationSeconds"]
    validate(data)
    back = report_from_json(data)
    assert back.start_s is None and back.scenarios[0].phases == {} and back.scenarios[0].rows[0].duration_s is None
    assert "Time" not in render_markdown(back)


def test_merged_workers_add_a_scenarios_times_and_keep_the_longest_start() -> None:
    """Two workers ran a scenario's steps each on its own deployment: the scenario's time is both together."""
    one = Report("local", [ScenarioReport("steps", "steps.yaml", rows=[row("first")],
                                          steps=[StepReport("first", 1, phases={"deploy": 10.0, "probe": 1.0})],
                                          phases={"deploy": 10.0, "probe": 1.0})], start_s=20.0)
    two = Report("local", [ScenarioReport("steps", "steps.yaml", rows=[row("second")],
                                          steps=[StepReport("second", 2, phases={"deploy": 8.0, "apply": 2.0})],
                                          phases={"deploy": 8.0, "apply": 2.0})], start_s=25.0)
    merged = merge([two, one])
    assert merged.start_s == 25.0
    assert merged.scenarios[0].phases == {"deploy": 18.0, "apply": 2.0, "probe": 1.0}
    assert [s.phases for s in merged.scenarios[0].steps] == [{"deploy": 10.0, "probe": 1.0},
                                                            {"deploy": 8.0, "apply": 2.0}]
    assert merge([Report("local"), Report("local")]).start_s is None


def test_markdown_time_table_lists_scenarios_slowest_first() -> None:
    text = render_markdown(timed())
    assert "took 1 min 00 s (backend start 20.5 s)" in text
    assert text.endswith(
        "## Time per scenario\n"
        "\n"
        "The backend took 20.5 s to start, before the first scenario.\n"
        "\n"
        "| scenario | rows | time | deploy | apply | probe | evidence |\n"
        "|---|---|---|---|---|---|---|\n"
        "| flat | 3 | 17.9 s | 12.0 s | 3.5 s | 2.2 s | 0.1 s |\n"
        "| steps | 2 | 13.0 s | 10.0 s | 2.0 s | 1.0 s | 0.0 s |\n")
    assert "Time: 17.9 s (deploy 12.0 s · apply 3.5 s · probe 2.2 s · evidence 0.1 s)" in text
