"""The fixtures' probe results read like scenario items: one line, the full block, and the assertion hook.

Observations are the ones ``test_verdict`` judges (shaped like what the local backend records); the
block must be the one ``run.Outcome.message`` writes for a failing scenario item.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import pytest_istio_mtls
from pytest_istio_mtls.judge.observation import Observation, Probe
from pytest_istio_mtls.judge.verdict import decide
from pytest_istio_mtls.mesh import Assertion, Mesh, ProbeResult, assertrepr_compare
from pytest_istio_mtls.model import Expectation, MeshSettings, Namespace, Request, Result, Scenario, Topology
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
    assert first.result == Result.REFUSED
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


ANSWERS = {"curl.foo": mtls, "curl.legacy": refused}  # client → what the mesh does to its probe of httpbin.foo


class Recorded:
    """A backend that answers each probe with the recorded observation of its client, as the probe asked it."""

    name = "recorded"

    def __init__(self) -> None:
        self.probes: list[Probe] = []

    def deploy(self, topology: Topology, mesh: MeshSettings) -> None:
        pass

    def apply(self, scenario: Scenario) -> None:
        pass

    def clear(self) -> None:
        pass

    def probe(self, probes: Sequence[Probe]) -> list[Observation]:
        self.probes += probes
        answers = []
        for probe in probes:
            observation = ANSWERS[probe.source.ref]()
            answers.append(dataclasses.replace(
                observation, probe=dataclasses.replace(observation.probe, request=probe.request)))
        return answers


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


POST = Request(method="POST", path="/post", headers={"x-team": "shop"}, body="hi")
FORMS = ("request={'method': 'POST', 'path': '/post'}, request=Request(method='POST', path='/post'), or the "
         "keywords method=, path=, headers=, body=, tls=")


@pytest.mark.parametrize("given", [
    {"method": "POST", "path": "/post", "headers": {"x-team": "shop"}, "body": "hi"},
    {"request": {"method": "post", "path": "/post", "headers": {"x-team": "shop"}, "body": "hi"}},
    {"request": POST},
], ids=["keywords", "mapping", "Request"])
def test_a_request_is_given_as_keywords_a_mapping_or_a_request(given: dict[str, Any]) -> None:
    """The natural forms all send the same request, read like a scenario row's `request:` (the method upper-cased)."""
    backend = Recorded()
    result = Mesh(backend, TOPOLOGY).probe("curl.foo", "httpbin.foo:8000", **given)  # type: ignore[arg-type]
    assert backend.probes[-1].request == POST
    assert result.pair == "curl.foo->httpbin.foo:8000:POST:/post"
    assert result.result == "mtls"


@pytest.mark.parametrize("given", [{"tls": "no-cert"}, {"request": {"tls": "no-cert"}},
                                   {"request": Request(tls="no-cert")}], ids=["keyword", "mapping", "Request"])
def test_a_client_without_a_sidecar_speaks_tls_itself(given: dict[str, Any]) -> None:
    backend = Recorded()
    result = Mesh(backend, TOPOLOGY).probe("curl.legacy", "httpbin.foo:8000", **given)  # type: ignore[arg-type]
    assert backend.probes[-1].request == Request(tls="no-cert")
    assert result.pair == "curl.legacy+tls-no-cert->httpbin.foo:8000"


@pytest.mark.parametrize(("source", "target", "given", "message"), [
    ("curl.foo", "httpbin.foo:8000", {"request": "POST /post"},
     f"request must be a Request, a mapping (a scenario row's request:) or None, not text 'POST /post' (fix: write "
     f"{FORMS})"),
    ("curl.foo", "httpbin.foo:8000", {"methd": "POST"},
     f"unknown argument methd=; did you mean 'method'? (fix: {FORMS})"),
    ("curl.foo", "httpbin.foo:8000", {"request": {"method": "POST"}, "path": "/post"},
     f"the request is given twice: as request= and as path= (fix: give one of {FORMS})"),
    ("curl.foo", "httpbin.foo:8000", {"request": {"methd": "POST"}},
     "unknown key 'methd' in request; did you mean 'method'? (fix: allowed keys: method, path, headers, body, tls)"),
    ("curl.foo", "httpbin.foo:8000", {"method": "PO ST", "path": "post"},
     "'PO ST' is not an HTTP method (fix: use e.g. GET, POST, PUT); request.path 'post' must start with '/' "
     "(fix: write /post)"),
    ("curl.foo", "httpbin.foo:8000", {"headers": {"x-istio-mtls-probe": "1"}},
     "header 'x-istio-mtls-probe' is set by the tool on every probe (fix: use another header name)"),
    ("curl.foo", "httpbin.foo:8000", {"request": Request(body=3)},  # type: ignore[arg-type]
     "request.body must be text, not a number (fix: quote it or use a block scalar (body: |))"),
    ("curl.foo", "httpbin.foo:9000", {"method": "POST"},
     "a request applies to http ports only; port 9000 is tcp (fix: drop 'request' (tcp probes send a marker line "
     "and expect it echoed))"),
    ("curl.legacy", "httpbin.foo:8000", {"tls": "nocert"},
     "invalid tls 'nocert'; did you mean 'no-cert'? (fix: use one of no-cert, foreign-cert, mesh-cert)"),
    ("curl.foo", "httpbin.foo:8000", {"request": {"tls": "no-cert"}},
     "curl.foo has a sidecar, which carries its connections: a client that speaks TLS itself is a workload without "
     "a sidecar (fix: use a client with sidecar: false (e.g. in a namespace with sidecars: false))"),
], ids=["type", "keyword", "twice", "key", "method-and-path", "marker-header", "body", "tcp", "tls", "tls-sidecar"])
def test_a_wrong_request_fails_the_test_in_one_line_before_anything_is_probed(
        source: str, target: str, given: dict[str, Any], message: str) -> None:
    """The scenario reader's own messages, at the caller's line, never an error from inside the backend."""
    mesh = Mesh(Unused(), TOPOLOGY)  # type: ignore[arg-type]
    with pytest.raises(pytest.fail.Exception) as failed:
        mesh.probe(source, target, **given)
    assert str(failed.value) == f"tests/unit/test_fixtures_api.py:{failed.tb.tb_lineno}: {message}"
    assert not failed.value.pytrace


def test_the_api_the_fixture_names_is_importable_from_the_package() -> None:
    assert pytest_istio_mtls.Request is Request
    assert pytest_istio_mtls.ProbeResult is ProbeResult
    assert {"Request", "ProbeResult"} <= set(pytest_istio_mtls.__all__)


def test_a_result_compares_like_its_name_and_copies_as_a_plain_result() -> None:
    """`.result` is the name (`== "mtls"`, in a set, formatted); a lookup or a copy of it asserts nothing."""
    probe = judged(mtls())
    observed = probe.result
    assert observed is not None
    assert {"mtls": 1}[observed] == 1 and Result(observed) is Result.MTLS and f"{observed}" == "mtls"
    assert (observed.value, observed.name, repr(observed), dataclasses.replace(probe).assertion) == (
        "mtls", "MTLS", "'mtls'", None)
    assert probe.assertion is None  # nothing above compared it in an assert-like way
    assert observed == "mtls"
    assert probe.assertion == Assertion(True, "== 'mtls'", Result.MTLS)
