"""verdict.decide: a result only on positive evidence; every gap or fault is an error.

Observations here mirror what the local backend and istio-proxy record (stat names, access-log
fields, capture summaries); each negative case removes one piece of evidence from a passing one.
"""

from __future__ import annotations

import dataclasses

import pytest

from pytest_istio_mtls.judge.observation import CaptureEvidence, Evidence, Observation, Probe, ProxyEvidence
from pytest_istio_mtls.judge.verdict import decide
from pytest_istio_mtls.model import Port, Result, Workload

from ...paths import UNIT

CURL_FOO = Workload("curl", "foo", {"app": "curl"}, "curl", True)
CURL_LEGACY = Workload("curl", "legacy", {"app": "curl"}, "curl", False)
HTTP = Port("http", 8000, 8080, "http")
TCP = Port("tcp", 9000, 9000, "tcp")
HTTPBIN_FOO = Workload("httpbin", "foo", {"app": "httpbin"}, "httpbin", True, (HTTP, TCP))
HTTPBIN_LEGACY = Workload("httpbin", "legacy", {"app": "httpbin"}, "httpbin", False, (HTTP,))
CLUSTER = "cluster.outbound|8000||httpbin.foo.svc.cluster.local"


def probe(source: Workload = CURL_FOO, target: Workload = HTTPBIN_FOO, port: Port = HTTP) -> Probe:
    return Probe(source, target, port, marker="istio-mtls-probe-0123456789abcdef")


def mtls() -> Observation:
    return Observation(
        probe(), status=200, body='{"headers": {"X-Istio-Mtls-Probe": ["istio-mtls-probe-0123456789abcdef"]}}',
        echoed=True,
        evidence=Evidence(
            client_proxy=ProxyEvidence("curl.foo", {f"{CLUSTER}.ssl.handshake": 1, f"{CLUSTER}.upstream_rq_200": 1},
                                       [{"upstream_local_address": "10.0.0.2:40000", "response_flags": "-"}]),
            server_proxy=ProxyEvidence("httpbin.foo", {"listener.0.0.0.0_15006.ssl.handshake": 1}),
            peer_identity="spiffe://cluster.local/ns/foo/sa/curl", identity_source="xfcc",
            capture=CaptureEvidence("veth1", flow="10.0.0.2:40000 > 10.0.0.3:8080", packets=15, tls_records=18,
                                    client_hello=True, alpn=["istio-http/1.1", "istio"]),
        ),
    )


def plaintext() -> Observation:
    return Observation(
        probe(CURL_LEGACY, HTTPBIN_LEGACY), status=200, echoed=True,
        evidence=Evidence(capture=CaptureEvidence("veth2", flow="10.0.0.4:40001 > 10.0.0.5:8080", packets=8,
                                                  marker_in_clear=True)))


def refused() -> Observation:
    return Observation(
        probe(CURL_LEGACY), error="reset", error_detail="connection reset by peer",
        evidence=Evidence(server_proxy=ProxyEvidence(
            "httpbin.foo", {"listener.0.0.0.0_15006.no_filter_chain_match": 1, "tls_inspector.tls_not_found": 1})))


def unavailable() -> Observation:
    return Observation(
        probe(), status=503, body="upstream connect error or disconnect/reset before headers",
        evidence=Evidence(
            client_proxy=ProxyEvidence("curl.foo", {f"{CLUSTER}.upstream_cx_destroy_remote_with_active_rq": 1,
                                                    f"{CLUSTER}.upstream_rq_503": 1},
                                       [{"response_flags": "UC"}]),
            server_proxy=ProxyEvidence("httpbin.foo", {"listener.0.0.0.0_15006.no_filter_chain_match": 1})))


def denied() -> Observation:
    return Observation(probe(), status=403, body="RBAC: access denied", evidence=Evidence(
        client_proxy=ProxyEvidence("curl.foo"),
        server_proxy=ProxyEvidence("httpbin.foo", {"http.inbound_0.0.0.0_8080.rbac.denied": 1})))


@pytest.mark.parametrize(("make", "result"), [
    (mtls, Result.MTLS), (plaintext, Result.PLAINTEXT), (refused, Result.REFUSED),
    (unavailable, Result.UNAVAILABLE), (denied, Result.DENIED)])
def test_each_result_needs_and_names_its_evidence(make: object, result: Result) -> None:
    """With its full evidence, each observation yields its result and says why."""
    verdict = decide(make())  # type: ignore[operator]
    assert verdict.result is result, verdict.error
    assert verdict.because


def strip(observation: Observation, **changes: object) -> Observation:
    """A copy with some evidence (Evidence fields) or client-side facts (Observation fields) changed."""
    evidence = dataclasses.replace(observation.evidence,
                                   **{k: v for k, v in changes.items() if k in Evidence.__dataclass_fields__})
    return dataclasses.replace(observation, evidence=evidence,
                               **{k: v for k, v in changes.items() if k in Observation.__dataclass_fields__})


@pytest.mark.parametrize(("observation", "error"), [
    (strip(mtls(), capture=None), "not found in the capture"),
    (strip(mtls(), capture=CaptureEvidence("veth1", note="0 packets")), "not found in the capture (0 packets)"),
    (strip(mtls(), peer_identity=""), "the server side saw no peer identity"),
    (strip(mtls(), peer_identity="spiffe://cluster.local/ns/evil/sa/x"), "expected spiffe://cluster.local/ns/foo/sa/curl"),
    (strip(mtls(), server_proxy=ProxyEvidence("httpbin.foo", {})), "no TLS handshake on the server sidecar"),
    (strip(mtls(), capture=CaptureEvidence("v", flow="a > b", packets=3, tls_records=0)), "no TLS records"),
    (strip(mtls(), capture=CaptureEvidence("v", flow="a > b", packets=3, tls_records=4, marker_in_clear=True)),
     "contradictory evidence"),
    (strip(plaintext(), peer_identity="spiffe://cluster.local/ns/foo/sa/curl"), "contradictory evidence"),
    (strip(refused(), server_proxy=ProxyEvidence("httpbin.foo", {"tls_inspector.tls_not_found": 1})),
     "the server sidecar recorded no rejection"),
    (strip(refused(), error="timeout"), "timed out"),
    (strip(refused(), error="refused"), "nothing listens on the port"),
    (strip(refused(), server_proxy=None), "which has no sidecar"),
    (strip(unavailable(), client_proxy=ProxyEvidence("curl.foo", {f"{CLUSTER}.upstream_rq_503": 1})),
     "recorded no upstream connection failure"),
    (strip(unavailable(), client_proxy=ProxyEvidence("curl.foo", {f"{CLUSTER}.upstream_cx_connect_fail": 1}, [
        {"response_flags": "UF", "upstream_transport_failure_reason": "delayed_connect_error:_111"}])),
     "could not open a TCP connection"),
    (strip(unavailable(), server_proxy=ProxyEvidence("httpbin.foo", {}), capture=None),
     "neither its sidecar nor the capture shows that connection"),
    (strip(denied(), server_proxy=ProxyEvidence("httpbin.foo", {})), "recorded no RBAC denial"),
    (strip(mtls(), echoed=False), "without our marker in the answer"),
    (strip(mtls(), faults=["the app of httpbin.foo does not accept connections on port 8080"]),
     "infrastructure fault: the app of httpbin.foo"),
    (strip(mtls(), client_proxy=ProxyEvidence("curl.foo", live=False)), "the client sidecar of curl.foo is not running"),
    (strip(refused(), error="unresolved", error_detail="not in hosts"), "does not resolve inside curl.legacy"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_missing_or_contradictory_evidence_is_an_error(observation: Observation, error: str) -> None:
    """Remove or contradict one piece of evidence and the verdict becomes an error, never a pass."""
    verdict = decide(observation)
    assert verdict.result is None
    assert error in verdict.error


def test_a_tls_failure_reason_in_the_access_log_is_evidence_enough() -> None:
    """Istio mTLS to a plaintext app: the handshake failure reason names TLS, so 503 is unavailable."""
    observation = Observation(probe(CURL_FOO, HTTPBIN_LEGACY), status=503, evidence=Evidence(
        client_proxy=ProxyEvidence("curl.foo", {}, [{"response_flags": "UF", "upstream_transport_failure_reason":
                                                     "TLS_error:|268435703:SSL_routines:OPENSSL_internal:"
                                                     "WRONG_VERSION_NUMBER:TLS_error_end"}])))
    verdict = decide(observation)
    assert verdict.result is Result.UNAVAILABLE, verdict.error


def test_tcp_close_through_a_client_sidecar_is_unavailable_only_with_upstream_failure() -> None:
    """A TCP client behind a sidecar sees a close; it counts as unavailable only with the sidecar's failure."""
    cluster = "cluster.outbound|9000||httpbin.legacy.svc.cluster.local"
    base = Observation(probe(CURL_FOO, HTTPBIN_LEGACY, TCP), error="reset",
                       evidence=Evidence(client_proxy=ProxyEvidence("curl.foo", {f"{cluster}.ssl.connection_error": 1})))
    assert decide(base).result is Result.UNAVAILABLE
    bare = dataclasses.replace(base, evidence=Evidence(client_proxy=ProxyEvidence("curl.foo", {})))
    assert decide(bare).result is None


def test_a_verdict_reads_as_one_line_whether_proven_or_not() -> None:
    """str(verdict) is what an assertion message needs: the result and its evidence, or why there is none."""
    assert str(decide(refused())) == (
        "refused, because client saw: reset (connection reset by peer); "
        "server sidecar listener.0.0.0.0_15006.no_filter_chain_match +1")
    assert str(decide(strip(refused(), error="timeout"))) == (
        "no result: timed out (though server sidecar listener.0.0.0.0_15006.no_filter_chain_match +1): a policy "
        "rejection is immediate, so a timeout is never counted as a refusal")


# A TCP denial as real istio-proxy records it (istiod 1.31, Envoy 1.40, local backend): the client sees the
# connection closed without the echo, the server sidecar's network RBAC filter counts tcp.rbac.denied and its
# access log ends the connection with the matched policy (or "none" when no ALLOW policy matched).
TCP_DENIAL_LOG = {"connection_termination_details": "rbac_access_denied_matched_policy[ns[foo]-policy[deny]-rule[0]]",
                  "response_flags": "-", "bytes_sent": 0, "downstream_peer_uri_san": "spiffe://cluster.local/ns/foo/sa/curl"}


def tcp_denied(source: Workload = CURL_FOO) -> Observation:
    client = ProxyEvidence("curl.foo", {"cluster.outbound|9000||httpbin.foo.svc.cluster.local;.ssl.handshake": 1},
                           [{"response_flags": "-"}]) if source.sidecar else None
    return Observation(probe(source, HTTPBIN_FOO, TCP), error="closed", error_detail="connection closed without the echo",
                       evidence=Evidence(client_proxy=client, server_proxy=ProxyEvidence(
                           "httpbin.foo", {"tcp.rbac.denied": 1, "listener.0.0.0.0_15006.ssl.handshake": 1},
                           [TCP_DENIAL_LOG])))


@pytest.mark.parametrize("source", [CURL_FOO, CURL_LEGACY], ids=["through-a-client-sidecar", "without-sidecar"])
def test_tcp_denied_needs_the_network_rbac_counter_and_its_access_log_entry(source: Workload) -> None:
    """TCP denied: closed by the server sidecar's RBAC network filter, named by counter and termination detail."""
    verdict = decide(tcp_denied(source))
    assert verdict.result is Result.DENIED, verdict.error
    assert verdict.because == [
        "client saw: closed (connection closed without the echo)", "server sidecar tcp.rbac.denied +1",
        "server sidecar access log: connection_termination_details "
        "rbac_access_denied_matched_policy[ns[foo]-policy[deny]-rule[0]]"]


@pytest.mark.parametrize(("observation", "error"), [
    # Without the counter a closed TCP connection is never "denied" (nor refused/unavailable).
    (strip(tcp_denied(CURL_LEGACY), server_proxy=ProxyEvidence("httpbin.foo", {}, [TCP_DENIAL_LOG])),
     "the server sidecar recorded no rejection"),
    (strip(tcp_denied(), server_proxy=ProxyEvidence("httpbin.foo", {}, [TCP_DENIAL_LOG])),
     "recorded no upstream connection failure"),
    # The counter moved, but this connection's log entry says it ended for another reason, or is missing.
    (strip(tcp_denied(), server_proxy=ProxyEvidence("httpbin.foo", {"tcp.rbac.denied": 1}, [
        {"connection_termination_details": "-", "response_flags": "UC"}])),
     "access log does not show this connection closed by RBAC"),
    (strip(tcp_denied(), server_proxy=ProxyEvidence("httpbin.foo", {"tcp.rbac.denied": 1}, [])),
     "access log does not show this connection closed by RBAC"),
    # A shadow (dry-run) denial is not a denial.
    (strip(tcp_denied(CURL_LEGACY), server_proxy=ProxyEvidence(
        "httpbin.foo", {"tcp.rbac.istio_dry_run_allow_.shadow_denied": 1}, [TCP_DENIAL_LOG])),
     "the server sidecar recorded no rejection"),
    # A policy rejection is immediate: a timeout stays an error even with the counter.
    (strip(tcp_denied(), error="timeout"), "timed out"),
], ids=["no-counter-no-sidecar", "no-counter-client-sidecar", "other-termination", "no-log-entry", "shadow-only",
        "timeout"])
def test_tcp_denied_without_its_evidence_is_an_error(observation: Observation, error: str) -> None:
    verdict = decide(observation)
    assert verdict.result is None
    assert error in verdict.error



def test_http_denied_names_the_policy_from_the_server_access_log() -> None:
    """The server sidecar's entry of a real 403 (istio-proxy, istiod 1.31) names the matched policy in
    response_code_details; a mesh that does not log that key still proves denied by the counter."""
    import json

    recorded = json.loads((UNIT / "data" / "evidence" / "http-rbac-denied-server.json").read_text())
    observation = strip(denied(), server_proxy=ProxyEvidence(**recorded))
    assert decide(observation).because == [
        "HTTP 403 'RBAC: access denied'", "server sidecar rbac.denied +1",
        "server sidecar access log: response_code_details "
        "rbac_access_denied_matched_policy[ns[foo]-policy[deny-get-without-token]-rule[0]]"]
    assert decide(denied()).because == ["HTTP 403 'RBAC: access denied'", "server sidecar rbac.denied +1"]
