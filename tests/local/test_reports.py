"""Report files from a real run on local Envoy: JUnit testcases CI tools can group and read, capture links that
survive an upload, and a re-run into the same --istio-report directory that keeps nothing of the first."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

import pytest

from .test_diagnostics import FIRST, SECOND

RUN = ("--istio-scenarios", "--istio-backend=local", "--istio-control-plane=emulated", "-p", "no:cacheprovider")


@pytest.fixture
def scenarios(pytester: pytest.Pytester) -> pytest.Pytester:
    """Two scenario files; the second's name has a dot, as a domain-like name would."""
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios/a-first.yaml").write_text(FIRST)
    (pytester.path / "scenarios/b-second.yaml").write_text(SECOND.replace("name: second", "name: second.v2"))
    return pytester


def test_junit_is_short_and_groups_by_file_and_scenario(scenarios: pytest.Pytester) -> None:
    """No evidence JSON in the XML: expected/predicted/observed, and where the row's evidence and capture are
    (relative to the JUnit file); classnames are directory.file.scenario with no other dot."""
    result = scenarios.runpytest_subprocess(*RUN, "--istio-report=ci/report", "--junitxml=ci/junit.xml")
    result.assert_outcomes(passed=3, failed=2)
    ci = scenarios.path / "ci"
    cases = ET.parse(ci / "junit.xml").getroot().iter("testcase")
    html = (ci / "report/report.html").read_text()
    seen = []
    for case in cases:
        properties = {p.get("name"): p.get("value") or "" for p in case.iter("property")}
        seen.append((case.get("classname"), case.get("name"), properties["istio_observed"]))
        assert set(properties) == {"istio_expected", "istio_predicted", "istio_observed", "istio_evidence",
                                   "istio_capture", "istio_batch_seconds", "istio_batch_rows", "istio_batch_phases"}
        assert float(properties["istio_batch_seconds"]) > 0 and int(properties["istio_batch_rows"]) >= 1
        assert sum(len(value) for value in properties.values()) < 400
        page, _, anchor = properties["istio_evidence"].partition("#")
        assert page == "report/report.html" and f'<details id="{anchor}"' in html
        assert (ci / properties["istio_capture"]).is_file()
    assert seen == [
        ("scenarios.a-first.first", "curl.foo->httpbin.foo:8000", "mtls"),
        ("scenarios.a-first.first", "curl.legacy->httpbin.foo:8000", "plaintext"),
        ("scenarios.b-second.second_v2", "curl.foo->httpbin.foo:8000", "mtls"),
        ("scenarios.b-second.second_v2", "curl.legacy->httpbin.foo:8000", "plaintext"),
        ("scenarios.b-second.second_v2", "sleep.foo->httpbin.foo:8000", "mtls"),
    ]


def test_a_rerun_keeps_nothing_of_the_first_and_links_captures_relatively(scenarios: pytest.Pytester) -> None:
    """The second run, of one scenario only, leaves no capture of the other; report.md and report.html link
    each failing row's capture relative to the report, and the links resolve after the directory moves."""
    (scenarios.path / "out").mkdir()
    (scenarios.path / "out/notes.txt").write_text("not ours")
    scenarios.runpytest_subprocess(*RUN, "--istio-report=out").assert_outcomes(passed=3, failed=2)
    assert (scenarios.path / "out/captures/second.v2").is_dir()
    result = scenarios.runpytest_subprocess(*RUN, "--istio-report=out", "--istio-scenarios",
                                            "scenarios/b-second.yaml")
    result.assert_outcomes(passed=1, failed=2)
    moved = scenarios.path / "artifact"
    (scenarios.path / "out").rename(moved)
    assert sorted(p.name for p in moved.iterdir()) == ["captures", "notes.txt", "report.html", "report.json",
                                                       "report.md"]
    assert [p.name for p in (moved / "captures").iterdir()] == ["second.v2"]
    md_links = re.findall(r"capture: \[[^\]]+\]\(([^)]+)\)", (moved / "report.md").read_text())
    html_links = re.findall(r'<dt>capture</dt><dd><a href="([^"]+)">', (moved / "report.html").read_text())
    assert len(md_links) == 2 and len(html_links) == 3
    for link in md_links + html_links:
        assert not Path(link).is_absolute() and (moved / unquote(link)).is_file()
