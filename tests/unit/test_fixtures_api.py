"""The fixtures' probe results read like scenario items: one line, the full block, and the assertion hook.

Observations are the ones ``test_verdict`` judges (shaped like what the local backend records); the
block must be the one ``run.Outcome.message`` writes for a failing scenario item.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_istio_mtls.judge.observation import Observation, Probe
from pytest_istio_mtls.judge.verdict import decide
from pytest_istio_mtls.mesh import Mesh, ProbeResult, assertrepr_compare
from pytest_istio_mtls.model import Expectation, MeshSettings, Namespace, Result, Scenario, Topology
from pytest_istio_mtls.oracle.mtls import predict
from pytest_istio_mtls.run import Outcome
from pytest_istio_mtls.scenario.loader import load_policies

from .judge.test_verdict import CURL_FOO, CURL_LEGACY, HTTPBIN_FOO, HTTPBIN_LEGACY, mtls, refused, strip

TOPOLOGY = Topology((Namespace("foo", True), Namespace("legacy", False)),
                    (CURL_FOO, CURL_LEGACY, HTTPBIN_FOO, HTTPBIN_LEGACY))
STRICT_FOO = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
"""


def judged(observation: Observation) -> ProbeResult:
    """What Mesh.probe returns for this observation, with STRICT in force in foo."""
    policies, _ = load_policies(STRICT_FOO, TOPOLOGY)
    scenario = Scenario(name="fixture", path=Path("<fixture>"), topology=TOPOLOGY, policies=policies)
    probe = observation.probe
    prediction = predict(scenario, probe.source, probe.target, probe.port, probe.request)
    return ProbeResult(observation, decide(observation), prediction, scenario)


def test_str_is_one_line_with_the_observed_result_and_the_oracle() -> None:
    assert str(judged(refused())) == "curl.legacy->httpbin.foo:8000: refused (oracle: refused)"
    assert str(judged(mtls())) == "curl.foo->httpbin.foo:8000: mtls (HTTP 200) (oracle: mtls)"
    assert repr(judged(mtls())) == "<ProbeResult curl.foo->httpbin.foo:8000: mtls (HTTP 200)>"
    unproven = judged(strip(refused(), error="timeout"))
    assert str(unproven) == (
        "curl.legacy->httpbin.foo:8000: ERROR: timed out (though server sidecar "
        "listener.0.0.0.0_15006.no_filter_chain_match +1): a policy rejection is immediate, so a timeout is never "
        "counted as a refusal (oracle: refused)")


def test_explain_is_the_block_of_a_failing_scenario_item() -> None:
    """With an expectation it is Outcome.message word for word; without one it only lacks the 'expected' line."""
    result = judged(refused())
    probe = result.observation.probe
    expectation = Expectation(probe.source, probe.target, probe.port, Result.PLAINTEXT)
    item = Outcome(result.scenario, expectation, result.prediction, result.observation, result.verdict)
    assert result.explain("plaintext") == item.message(diagnostics=False)
    assert result.explain().splitlines() == [
        line for line in item.message(diagnostics=False).splitlines() if line != "  expected: plaintext"]
    assert result.explain().splitlines()[:2] == ["curl.legacy->httpbin.foo:8000 in scenario fixture",
                                                  "  observed: refused"]
    assert "  evidence:" in result.explain().splitlines()


def test_a_failed_comparison_of_result_shows_that_probe_s_block() -> None:
    """The hook finds the probe whose .result was read for the comparison, on either side."""
    result = judged(refused())
    observed = result.result
    assert assertrepr_compare("==", observed, "plaintext") == [
        "'refused' == 'plaintext'", *result.explain("plaintext").splitlines()]
    assert assertrepr_compare("==", "plaintext", result.result) == [
        "'plaintext' == 'refused'", *result.explain("plaintext").splitlines()]


def test_an_unproven_result_shows_why_nothing_was_proven() -> None:
    result = judged(strip(refused(), error="timeout"))
    lines = assertrepr_compare("==", result.result, "refused")
    assert lines is not None
    assert lines[:4] == ["None == 'refused'", "curl.legacy->httpbin.foo:8000 in scenario fixture",
                         "  expected: refused", f"  observed: ERROR: {result.verdict.error}"]


def test_the_hook_names_the_other_probe_when_a_later_one_was_read() -> None:
    """Two probes: the block is the one of the probe whose .result was read last, not a guess by value."""
    first, second = judged(refused()), judged(strip(refused(), error="timeout"))
    assert first.result is Result.REFUSED
    lines = assertrepr_compare("==", second.result, "refused")
    assert lines is not None and lines[3].startswith("  observed: ERROR: timed out")
    assert assertrepr_compare("==", Result.REFUSED, "plaintext") is None  # not what was read last


def test_other_comparisons_are_left_to_pytest() -> None:
    judged(refused()).result  # noqa: B018 - a probe was read, then something unrelated is compared
    assert assertrepr_compare("==", 1, 2) is None
    assert assertrepr_compare("==", None, {"a": 1}) is None
    assert assertrepr_compare("==", [1], ["plaintext"]) is None


def test_comparing_the_probe_itself_says_to_compare_its_result() -> None:
    result = judged(mtls())
    lines = assertrepr_compare("==", result, "mtls")
    assert lines is not None
    assert lines[0] == "<ProbeResult curl.foo->httpbin.foo:8000: mtls (HTTP 200)> == 'mtls'"
    assert lines[-1] == "note: a probe never equals a result name: compare its .result"


def test_a_misspelled_or_coarse_result_name_gets_a_note() -> None:
    result = judged(mtls())
    typo = assertrepr_compare("==", result.result, "mtsl")
    assert typo is not None and typo[-1] == (
        "note: 'mtsl' is not a result; did you mean 'mtls'?; results: mtls, plaintext, refused, unavailable, "
        "denied, allowed, blocked")
    coarse = assertrepr_compare("==", result.result, "allowed")
    assert coarse is not None and coarse[-1] == (
        "note: .result is always a concrete result; 'allowed' covers 'mtls', 'plaintext': write .result in "
        "('mtls', 'plaintext')")


class Unused:
    """A backend stand-in for name resolution only: deploying is a no-op and probing must never happen."""

    name = "unused"

    def deploy(self, topology: Topology, mesh: MeshSettings) -> None:
        pass

    def probe(self, probes: Sequence[Probe]) -> list[Observation]:
        raise AssertionError("a wrong name must stop before anything is probed")


@pytest.mark.parametrize(("source", "target", "message"), [
    ("crul.foo", "httpbin.foo", "unknown workload 'crul.foo'; did you mean 'curl.foo'? (fix: workloads: curl.foo, "
                                "curl.legacy, httpbin.foo, httpbin.legacy)"),
    ("curl", "httpbin.foo", "workload name 'curl' is ambiguous: it exists in foo, legacy (fix: write one of "
                            "curl.foo, curl.legacy)"),
    ("curl.foo", "httpbin.foo", "httpbin.foo has several ports (8000 (http), 9000 (tcp)); say which one (fix: write "
                                "httpbin.foo:8000)"),
    ("curl.foo", "httpbin.foo:8080", "8080 is the container port of httpbin.foo; expectations name the Service port "
                                     "(fix: write httpbin.foo:8000)"),
])
def test_a_wrong_name_fails_the_test_in_one_line_at_the_caller(source: str, target: str, message: str) -> None:
    mesh = Mesh(Unused(), TOPOLOGY)  # type: ignore[arg-type]
    with pytest.raises(pytest.fail.Exception) as failed:
        mesh.probe(source, target)
    assert str(failed.value) == f"tests/unit/test_fixtures_api.py:{failed.tb.tb_lineno}: {message}"
    assert not failed.value.pytrace
