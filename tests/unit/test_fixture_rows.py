"""The truth-table row of a probe made through ``istio_probe`` says what that probe's own assertion concluded
(``✓``/``✗``), or ``not asserted``: never the fate of the test around it (one wrong assert of two used to
mark both probes wrong, and a crash marked a correct probe wrong).

Run with pytester and a stand-in backend that answers with recorded observations (those ``test_verdict``
judges), so the whole path (fixture, run, report, terminal) runs without a mesh.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from . import test_fixtures_api
from .test_plugin_terminal import SCHEMA

CONFTEST = f"""
import pytest

from pytest_istio_mtls.mesh import Mesh
from {test_fixtures_api.__name__} import TOPOLOGY, Recorded


@pytest.fixture(scope="session")
def istio_mesh():
    return Mesh(Recorded(), TOPOLOGY)
"""


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    """The test file run in-process (so its conftest imports the recorded backend), its mesh the recorded one."""
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_mesh=source)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)


def table(result: pytest.RunResult) -> list[str]:
    """The lines of the truth table section, up to the end of the run's summary."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "Istio mTLS truth table" in line) + 1
    start += lines[start] == ""  # pytest leaves a blank line after the header when no failure precedes it
    end = next(i for i, line in enumerate(lines[start:], start) if line.startswith(("=", "reports: ")))
    return lines[start:end]


def test_one_wrong_assert_marks_only_its_own_probe(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        def test_two(istio_probe):
            assert istio_probe("curl.foo", "httpbin.foo:8000").result == "mtls"
            assert istio_probe("curl.legacy", "httpbin.foo:8000").result == "plaintext"
    """)
    result.assert_outcomes(failed=1)
    assert table(result) == [
        "test_two  (test_mesh.py)",
        "             httpbin.foo:8000",
        "curl.foo     ✓ mtls",
        "curl.legacy  ✗ refused (exp plaintext)",
        "1 correct, 1 wrong, 0 errors",
        "  ✗ curl.legacy->httpbin.foo:8000 expected plaintext, observed refused",
    ]


def test_a_crash_after_a_correct_probe_leaves_it_correct(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        def test_crash(istio_probe):
            assert istio_probe("curl.foo", "httpbin.foo:8000").result == "mtls"
            1 / 0
    """)
    result.assert_outcomes(failed=1)
    assert table(result) == [
        "test_crash  (test_mesh.py)",
        "          httpbin.foo:8000",
        "curl.foo  ✓ mtls",
        "1 correct, 0 wrong, 0 errors",
    ]


def test_a_probe_whose_result_is_never_compared_is_not_asserted(pytester: pytest.Pytester) -> None:
    """Printing or keeping a probe is not asserting it: its row says so, whether the test passed or failed."""
    result = run(pytester, """
        def test_looks(istio_probe):
            print(istio_probe("curl.legacy", "httpbin.foo:8000"))
            assert istio_probe("curl.foo", "httpbin.foo:8000").result in ("mtls", "plaintext")

        def test_crashes(istio_probe):
            istio_probe("curl.legacy", "httpbin.foo:8000")
            raise RuntimeError("boom")
    """, "--istio-report=report")
    result.assert_outcomes(passed=1, failed=1)
    assert table(result) == [
        "test_looks  (test_mesh.py)",
        "             httpbin.foo:8000",
        "curl.legacy  refused (not asserted)",
        "curl.foo     ✓ mtls",
        "1 correct, 0 wrong, 0 errors, 1 not asserted",
        "",
        "test_crashes  (test_mesh.py)",
        "             httpbin.foo:8000",
        "curl.legacy  refused (not asserted)",
        "0 correct, 0 wrong, 0 errors, 1 not asserted",
        "",
        "total: 1 correct, 0 wrong, 0 errors, 2 not asserted",
    ]
    report = json.loads((pytester.path / "report" / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    assert [[(r["from"], r["status"], r["expected"]) for r in s["rows"]] for s in report["scenarios"]] == [
        [("curl.legacy", "not asserted", None), ("curl.foo", "correct", None)],
        [("curl.legacy", "not asserted", None)]]
    assert report["counts"]["not asserted"] == 2
    assert report["scenarios"][1]["rows"][0]["message"] == (
        "curl.legacy->httpbin.foo:8000 in test test_crashes: not asserted (the test compared no result of this "
        "probe; the test failed: RuntimeError: boom)")


@pytest.mark.parametrize(("assertion", "cell", "status"), [
    ('assert probe.result != "refused"', "✗ refused (assert failed)", "wrong"),
    ('assert probe.result not in ("plaintext", "mtls")', "✓ refused", "correct"),
    ('assert probe.result not in ("mtls", "refused")', "✗ refused (assert failed)", "wrong"),
    ('assert probe.result in ("mtls", "plaintext")', "✗ refused (assert failed)", "wrong"),
    ('assert "refused" == probe.result', "✓ refused", "correct"),
    ('assert probe.result == "mtls" or probe.result == "refused"', "✓ refused", "correct"),
])
def test_each_kind_of_comparison_concludes_for_its_probe(pytester: pytest.Pytester, assertion: str, cell: str,
                                                          status: str) -> None:
    """``==``, ``!=``, ``in`` and ``not in``, on either side: the row follows what the comparison concluded."""
    result = run(pytester, f"""
        def test_compare(istio_probe):
            probe = istio_probe("curl.legacy", "httpbin.foo:8000")
            {assertion}
    """)
    result.assert_outcomes(**{"passed" if status == "correct" else "failed": 1})
    assert table(result)[2] == f"curl.legacy  {cell}"
