"""Each result class with real traffic through real Envoy sidecars, judged on its evidence."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import pytest

from pytest_istio_mtls.backends.local import prober
from pytest_istio_mtls.oracle.mtls import predict

from .conftest import CONTROL_PLANE
from .lab import FOO_BAR_LEGACY, STRICT_FOO, Lab

EVERY_CLASS = FOO_BAR_LEGACY + STRICT_FOO + """  ---
  apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: bar-plaintext, namespace: foo}
  spec: {host: httpbin.bar.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}}}
  ---
  apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: legacy-mtls, namespace: foo}
  spec: {host: httpbin.legacy.svc.cluster.local, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
  ---
  apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: foo-plaintext, namespace: bar}
  spec: {host: httpbin.foo.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}}}
expect:
  - {from: curl.foo, to: "httpbin.foo:8000", result: mtls}
  - {from: curl.foo, to: "httpbin.foo:9000", result: mtls}
  - {from: curl.legacy, to: "httpbin.foo:8000", result: refused}
  - {from: curl.legacy, to: "httpbin.foo:9000", result: refused}
  - {from: curl.legacy, to: "httpbin.legacy:8000", result: plaintext}
  - {from: curl.legacy, to: "httpbin.legacy:9000", result: plaintext}
  - {from: curl.foo, to: "httpbin.bar:8000", result: plaintext}
  - {from: curl.foo, to: "httpbin.legacy:8000", result: unavailable}
  - {from: curl.foo, to: "httpbin.legacy:9000", result: unavailable}
  - {from: curl.bar, to: "httpbin.foo:8000", result: unavailable}
  - {from: curl.bar, to: "httpbin.foo:9000", result: unavailable}
  - {from: curl.foo, to: "httpbin.foo:8000", request: {method: POST, path: /post, body: "{}"}, result: mtls}
"""


def test_every_result_class_is_observed_with_its_evidence(lab: Lab) -> None:
    """mtls, plaintext, refused and unavailable over http and tcp, each as the oracle predicts."""
    scenario = lab.load(EVERY_CLASS)
    probed = lab.run(scenario)
    for expectation in scenario.expectations:
        got = probed[expectation.pair]
        prediction = predict(scenario, expectation.source, expectation.target, expectation.port)
        assert got.result == expectation.result.value == prediction.result.value, (
            f"{expectation.pair}: {got.verdict.error or got.verdict.because}")
    mtls = probed["curl.foo->httpbin.foo:9000"].observation.evidence
    assert mtls.peer_identity == "spiffe://cluster.local/ns/foo/sa/curl"
    assert mtls.identity_source == "access-log"  # raw TCP: no XFCC, the server sidecar's log names the peer
    assert mtls.capture is not None and not mtls.capture.marker_in_clear and mtls.capture.tls_records
    http = probed["curl.foo->httpbin.foo:8000"].observation.evidence
    assert http.identity_source == "xfcc"
    assert http.capture is not None and http.capture.sni == "outbound_.8000_._.httpbin.foo.svc.cluster.local"
    refused = probed["curl.legacy->httpbin.foo:8000"].observation
    assert refused.error == "reset"
    assert refused.evidence.server_proxy is not None
    assert refused.evidence.server_proxy.count("no_filter_chain_match") == 1
    sidecar_plaintext = probed["curl.foo->httpbin.bar:8000"].observation.evidence
    assert sidecar_plaintext.capture is not None and sidecar_plaintext.capture.marker_in_clear
    assert probed["curl.foo->httpbin.legacy:8000"].observation.status == 503
    assert probed["curl.foo->httpbin.legacy:9000"].observation.status is None  # tcp: the client sees a close


def test_denied_needs_the_proxys_rbac_denial(lab: Lab) -> None:
    """403 'RBAC: access denied' from a real RBAC filter is judged denied, with the proxy's counter."""
    scenario = lab.load(FOO_BAR_LEGACY + "expect:\n  - {from: curl.bar, to: 'httpbin.foo:8000', result: denied}\n")
    backend = lab.backend
    backend.signature = None
    if CONTROL_PLANE == "istiod":  # Istio's own RBAC translation: only curl.foo may call httpbin.foo
        scenario = lab.load(FOO_BAR_LEGACY + """
policies: |
  apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: only-curl-foo, namespace: foo}
  spec:
    selector: {matchLabels: {app: httpbin}}
    action: ALLOW
    rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/curl]}}]}]
expect:
  - {from: curl.bar, to: 'httpbin.foo:8000', result: denied}
""")
    backend.deploy(scenario.topology, scenario.mesh)
    backend.apply(scenario)
    if CONTROL_PLANE == "istiod":
        _assert_denied(backend, scenario)
        return
    # The emulated control plane does not translate AuthorizationPolicy: put Envoy's RBAC filter in by hand.
    server = backend.pods["httpbin.foo"]
    assert server.files is not None
    document = json.loads(server.files.lds.read_text())
    rbac = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
        "rules": {"action": "DENY", "policies": {"deny-all": {"permissions": [{"any": True}],
                                                              "principals": [{"any": True}]}}}}}
    for listener in document["resources"]:
        for chain in listener.get("filter_chains", []):
            for network_filter in chain["filters"]:
                config = network_filter["typed_config"]
                if "http_filters" in config and config["stat_prefix"].startswith("inbound"):
                    config["http_filters"].insert(0, rbac)
    document["version_info"] = "rbac-" + document["version_info"]
    temporary = server.files.lds.with_suffix(".tmp")
    temporary.write_text(json.dumps(document))
    temporary.replace(server.files.lds)
    server.versions["lds"] = document["version_info"]
    backend._wait_config()
    _assert_denied(backend, scenario)
    backend.signature = None  # leave no hand-made config behind for other tests


def _assert_denied(backend: Any, scenario: Any) -> None:
    from pytest_istio_mtls.judge.observation import Probe
    from pytest_istio_mtls.judge.verdict import decide

    probe = scenario.expectations[0]
    observation = backend.probe([Probe(probe.source, probe.target, probe.port)])[0]
    verdict = decide(observation)
    assert observation.status == 403
    assert verdict.result is not None and verdict.result.value == "denied", verdict.error
    assert any("rbac.denied +1" in line for line in verdict.because)


def test_policy_switch_is_in_force_when_apply_returns(lab: Lab) -> None:
    """PERMISSIVE → STRICT → PERMISSIVE, probed right after each apply(): no sleep, no stale result."""
    rows = "expect:\n  - {from: curl.legacy, to: 'httpbin.foo:8000', result: allowed}\n"
    permissive = lab.load(FOO_BAR_LEGACY + rows)
    strict = lab.load(FOO_BAR_LEGACY + STRICT_FOO + rows)
    results = []
    for scenario in (permissive, strict, permissive, strict):
        started = time.monotonic()
        results.append(next(iter(lab.run(scenario).values())).result)
        assert time.monotonic() - started < 5
    assert results == ["plaintext", "refused", "plaintext", "refused"]


def test_connection_opened_under_the_old_policy_is_drained(lab: Lab) -> None:
    """A keep-alive connection accepted under PERMISSIVE serves at most one more request, with Connection: close,
    after STRICT takes over; a new connection is refused."""
    permissive = lab.load(FOO_BAR_LEGACY + "expect:\n  - {from: curl.legacy, to: 'httpbin.foo:8000', result: plaintext}\n")
    lab.run(permissive, fresh=True)
    backend = lab.backend
    client, server = backend.pods["curl.legacy"], backend.pods["httpbin.foo"]
    sock = prober.netns_socket(client.netns)
    sock.settimeout(5)
    sock.connect((server.service_ip, 8000))
    request = b"GET /headers HTTP/1.1\r\nHost: httpbin.foo\r\n\r\n"
    sock.sendall(request)
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    strict = lab.load(FOO_BAR_LEGACY + STRICT_FOO + """expect:
  - {from: curl.legacy, to: 'httpbin.foo:8000', result: refused}
""")
    backend.apply(strict)
    sock.sendall(request)
    second = b""
    try:  # read until Envoy closes it or one whole response is in; a timeout before either fails the test
        while not _complete(second) and (chunk := sock.recv(65536)):
            second += chunk
    except ConnectionResetError:  # closed by the drain with a reset: nothing more was served
        pass
    sock.close()
    # Either the drain closed it at once, or it served exactly one more response, marked as the last.
    assert second == b"" or (second.startswith(b"HTTP/1.1 200") and second.count(b"HTTP/1.1 ") == 1
                             and b"connection: close" in second.lower()), second[:300]
    fresh = prober.netns_socket(client.netns)
    fresh.settimeout(5)
    fresh.connect((server.service_ip, 8000))
    fresh.sendall(request)
    try:
        answer = fresh.recv(65536)
    except ConnectionResetError:
        answer = b""
    finally:
        fresh.close()
    assert answer == b""


def _complete(response: bytes) -> bool:
    """One whole HTTP/1.1 response with a Content-Length is in."""
    head, found, body = response.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n")
                   if line.startswith(b"content-length:")), None)
    return bool(found) and length is not None and len(body) >= length


REUSED_PORTS = FOO_BAR_LEGACY + """expect:
  - {from: curl.foo, to: "httpbin.foo:9000", result: mtls}
  - {from: curl.foo, to: "httpbin.bar:9000", result: mtls}
  - {from: curl.legacy, to: "httpbin.foo:8000", result: plaintext}
  - {from: curl.legacy, to: "httpbin.foo:9000", result: plaintext}
"""


def test_a_source_port_that_nat_rewrote_is_still_joined(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reused ephemeral port makes conntrack rewrite the source port; evidence still joins (issue 8's rare ERROR).

    The kernel keeps a client's ports unique per destination only, so it reuses one towards another Service now
    and then. Redirected to the same sidecar port, the second connection's reply tuple would equal the first one's
    (still in TIME_WAIT), and netfilter rewrites its source port: the sidecar logs a port the socket never had.
    Here each client uses one fixed port for its two probes, so the rewrite happens every time, not 1 in 1,000:
    in curl.foo's pod (both Services go to 15001) and in httpbin.foo's (8080 and 9000 both go to 15006).
    """
    pinned = {"curl.foo": 41001, "curl.legacy": 41002}
    netns: dict[str, int] = {}
    connect = prober._connect

    def from_a_fixed_port(namespace: str, address: tuple[str, int], timeout: float,
                          response: prober.Response) -> socket.socket | None:
        port = netns.get(namespace)
        if port is None:
            return connect(namespace, address, timeout, response)
        sock = prober.netns_socket(namespace)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the previous probe's port is in TIME_WAIT
        sock.bind(("0.0.0.0", port))
        sock.settimeout(timeout)
        sock.connect(address)
        local = sock.getsockname()
        response.local = (str(local[0]), int(local[1]))
        return sock

    scenario = lab.load(REUSED_PORTS)
    lab.backend.deploy(scenario.topology, scenario.mesh)
    netns.update({lab.backend.pods[ref].netns: port for ref, port in pinned.items()})
    monkeypatch.setattr(prober, "_connect", from_a_fixed_port)
    probed = lab.run(scenario)
    results = {pair: (row.result, row.verdict.error) for pair, row in probed.items()}
    assert results == {"curl.foo->httpbin.foo:9000": ("mtls", ""), "curl.foo->httpbin.bar:9000": ("mtls", ""),
                       "curl.legacy->httpbin.foo:8000": ("plaintext", ""),
                       "curl.legacy->httpbin.foo:9000": ("plaintext", "")}, results
    # The rewrites happened (else this test proves nothing): each sidecar logged a port other than the pinned one.
    for pair, proxy, client in (("curl.foo->httpbin.bar:9000", "client_proxy", "curl.foo"),
                                ("curl.legacy->httpbin.foo:9000", "server_proxy", "curl.legacy")):
        evidence = getattr(probed[pair].observation.evidence, proxy)
        seen = {str(e.get("downstream_remote_address")) for e in evidence.access_log}
        pinned_address = f"{lab.backend.pods[client].ip}:{pinned[client]}"
        assert seen and pinned_address not in seen, f"{pair}: no rewrite happened, the sidecar saw {seen}"
