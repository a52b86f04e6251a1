"""Clients without a sidecar that speak TLS themselves (``tls: no-cert | foreign-cert | mesh-cert``): the format,
its validation, the oracle (Istio's inbound filter chains, filterchain_options.go), the client's credentials and
TLS as the local backend speaks it, and the verdict's evidence.

The data path on real istiod is in tests/local/test_scenario_forms.py."""

from __future__ import annotations

import socket
import ssl
import textwrap
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from pytest_istio_mtls.backends.certs import CertificateAuthority
from pytest_istio_mtls.backends.local.prober import tls_context
from pytest_istio_mtls.backends.local.tlsclient import ClientCredentials
from pytest_istio_mtls.judge.observation import Evidence, Observation, Probe, ProxyEvidence
from pytest_istio_mtls.judge.verdict import decide
from pytest_istio_mtls.model import Result, Scenario
from pytest_istio_mtls.model.diagnostics import ScenarioError
from pytest_istio_mtls.oracle import mtls
from pytest_istio_mtls.scenario.loader import load_scenario

TOPOLOGY = """\
topology:
  namespaces:
    foo: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - {name: strict, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}, {port: 9000, protocol: tcp}]}
    - {name: permissive, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}, {port: 9000, protocol: tcp}],
       containerPorts: [9100]}
    - {name: disabled, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: plain, namespace: legacy, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: curl, namespace: foo}
    - {name: curl, namespace: legacy}
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: strict, namespace: foo}
  spec: {selector: {matchLabels: {app: strict}}, mtls: {mode: STRICT}}
  ---
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: disabled, namespace: foo}
  spec: {selector: {matchLabels: {app: disabled}}, mtls: {mode: DISABLE}}
"""


def load(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_scenario(path)


def test_a_tls_row_names_its_client_by_the_certificate(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect:\n"
                    "  - {from: curl.legacy, to: 'strict.foo:8000', tls: no-cert, result: refused}\n"
                    "  - {from: curl.legacy, to: 'strict.foo:8000', tls: mesh-cert, request: {path: /get}, "
                    "result: mtls}\n"
                    "  - {from: curl.legacy, to: 'strict.foo:8000', result: refused}\n")
    rows = scenario.expectations
    assert [row.pair for row in rows] == ["curl.legacy+tls-no-cert->strict.foo:8000",
                                          "curl.legacy+tls-mesh-cert->strict.foo:8000:GET:/get",
                                          "curl.legacy->strict.foo:8000"]
    assert [row.request.tls for row in rows] == ["no-cert", "mesh-cert", ""]
    assert rows[0].request.is_default and not rows[1].request.is_default
    assert rows[0].client == "curl.legacy+tls-no-cert" and rows[0].destination == "strict.foo"


def test_errors_name_the_line_and_the_fix(tmp_path: Path) -> None:
    text = TOPOLOGY + """\
expect:
  - {from: curl.foo, to: 'strict.foo:8000', tls: no-cert, result: refused}
  - {from: curl.legacy, to: 'strict.foo:8000', tls: mesh, result: mtls}
"""
    with pytest.raises(ScenarioError) as raised:
        load(tmp_path, text)
    assert [f"{d.mark.line}:{d.mark.col}: {d.message} | {d.fix}" for d in raised.value.diagnostics] == [
        "24:45: curl.foo has a sidecar, which carries its connections: a client that speaks TLS itself is a workload "
        "without a sidecar | use a client with sidecar: false (e.g. in a namespace with sidecars: false)",
        "25:53: invalid tls 'mesh'; did you mean 'mesh-cert'? | use one of no-cert, foreign-cert, mesh-cert",
    ]


# (to, tls, result, the rule the last step cites): STRICT terminates any TLS and wants a mesh client certificate;
# PERMISSIVE http ports only match Istio's ALPN or plaintext; tcp and undeclared ports pass TLS through; DISABLE
# has plaintext chains only; without a sidecar the app gets the handshake.
OUTCOMES = [
    ("strict.foo:8000", "no-cert", Result.REFUSED, "P6"),
    ("strict.foo:8000", "foreign-cert", Result.REFUSED, "P6"),
    ("strict.foo:8000", "mesh-cert", Result.MTLS, "P6"),
    ("strict.foo:9000", "mesh-cert", Result.MTLS, "P6"),
    ("permissive.foo:8000", "mesh-cert", Result.REFUSED, "P6"),
    ("permissive.foo:9000", "mesh-cert", Result.UNKNOWN, "X3"),
    ("pod/permissive.foo:9100", "no-cert", Result.UNKNOWN, "X3"),
    ("disabled.foo:8000", "mesh-cert", Result.REFUSED, "P6"),
    ("plain.legacy:8000", "mesh-cert", Result.UNKNOWN, "X3"),
]


@pytest.mark.parametrize(("to", "tls", "result", "rule"), OUTCOMES, ids=[f"{t}-{c}" for t, c, _, _ in OUTCOMES])
def test_the_oracle_follows_istios_inbound_filter_chains(tmp_path: Path, to: str, tls: str, result: Result,
                                                         rule: str) -> None:
    scenario = load(tmp_path, TOPOLOGY + f"expect:\n  - {{from: curl.legacy, to: '{to}', tls: {tls}, "
                                         "result: refused}\n")
    row = scenario.expectations[0]
    prediction = mtls.predict(scenario, row.source, row.target, row.port, row.request)
    assert prediction.result is result, prediction.reason
    assert prediction.steps[-1].rule == rule


def test_a_mesh_certificate_is_the_clients_identity_for_authorization(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + """\
  ---
  apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: only-foo, namespace: foo}
  spec:
    selector: {matchLabels: {app: strict}}
    rules: [{from: [{source: {namespaces: [foo]}}]}]
expect:
  - {from: curl.legacy, to: 'strict.foo:8000', tls: mesh-cert, result: denied}
""")
    row = scenario.expectations[0]
    prediction = mtls.predict(scenario, row.source, row.target, row.port, row.request)
    assert prediction.result is Result.DENIED
    assert ("curl.legacy opens TLS itself with a valid mesh certificate (spiffe://cluster.local/ns/legacy/sa/curl)"
            in prediction.reason)


def test_the_emulated_control_plane_refuses_tls_clients(tmp_path: Path) -> None:
    from pytest_istio_mtls.backends.support import unsupported

    scenario = load(tmp_path, TOPOLOGY + "expect:\n  - {from: curl.legacy, to: 'strict.foo:8000', tls: no-cert, "
                                         "result: refused}\n")
    assert unsupported(scenario, "local", "istiod") is None
    assert unsupported(scenario, "local", "emulated") == (
        "row curl.legacy+tls-no-cert->strict.foo:8000 is a client speaking TLS itself, which needs istiod's own logic "
        "(endpoints, routes, passthrough and TLS filter chains) that the emulated control plane does not reproduce; "
        "fix: run it with real istiod (--istio-control-plane=istiod)")


# --------------------------------------------------------------------------- the client's TLS, for real


def serve_once(context: ssl.SSLContext) -> tuple[int, dict[str, str], threading.Thread]:
    """A TLS server on loopback that accepts one connection; the dict gets its peer's URI SAN or its error."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: dict[str, str] = {}

    def accept() -> None:
        connection, _ = listener.accept()
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                cert = tls.getpeercert()
                uris = [value for kind, value in (cert or {}).get("subjectAltName", ()) if kind == "URI"]
                seen["peer"] = uris[0] if uris else ""
                seen["alpn"] = tls.selected_alpn_protocol() or ""
                tls.sendall(b"ok")
        except ssl.SSLError as exc:
            seen["error"] = str(exc.reason)
        finally:
            listener.close()

    thread = threading.Thread(target=accept)
    thread.start()
    return listener.getsockname()[1], seen, thread


def handshake(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw) as tls:
                return tls.recv(2).decode()
        except (ssl.SSLError, ConnectionResetError) as exc:
            return f"failed: {exc}"


@pytest.mark.parametrize(("tls", "peer", "error"), [
    ("mesh-cert", "spiffe://cluster.local/ns/legacy/sa/curl", ""),
    ("foreign-cert", "", "CERTIFICATE_VERIFY_FAILED"),
    ("no-cert", "", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
])
def test_client_credentials_meet_a_server_that_trusts_the_mesh_root(tmp_path: Path, tls: str, peer: str,
                                                                     error: str) -> None:
    """The server side of a STRICT sidecar in miniature: it wants a client certificate chaining to the mesh root."""
    mesh = CertificateAuthority(tmp_path / "mesh")
    server_cert, server_key = mesh.issue("foo", "strict", 0)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(server_cert, server_key)
    server.load_verify_locations(mesh.root_path)
    server.verify_mode = ssl.CERT_REQUIRED
    server.set_alpn_protocols(["h2", "http/1.1"])
    scenario = load(tmp_path, TOPOLOGY + f"expect:\n  - {{from: curl.legacy, to: 'strict.foo:8000', tls: {tls}, "
                                         "result: refused}\n")
    row = scenario.expectations[0]
    credentials = ClientCredentials(mesh, tmp_path / "clients")
    port, seen, thread = serve_once(server)
    answer = handshake(port, credentials.context(row.source, row.port, row.request.tls))
    thread.join(5)
    assert seen.get("peer", "") == peer and seen.get("error", "") == error
    assert (answer == "ok") is (not error)
    if not error:
        assert seen["alpn"] == "http/1.1"  # what curl offers over HTTP/1.1: never h2, which the probe cannot speak


def test_a_foreign_certificate_looks_like_a_workloads_but_chains_elsewhere(tmp_path: Path) -> None:
    mesh = CertificateAuthority(tmp_path / "mesh")
    scenario = load(tmp_path, TOPOLOGY + "expect:\n  - {from: curl.legacy, to: 'strict.foo:8000', tls: foreign-cert, "
                                         "result: refused}\n")
    row = scenario.expectations[0]
    credentials = ClientCredentials(mesh, tmp_path / "clients")
    cert_path, _ = credentials._credentials(row.source, "foreign-cert")  # type: ignore[misc]
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    root = x509.load_pem_x509_certificate(mesh.root_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/legacy/sa/curl"]
    with pytest.raises(InvalidSignature):  # the mesh root did not sign it: a sidecar's verification fails
        cert.verify_directly_issued_by(root)
    foreign = x509.load_pem_x509_certificate((tmp_path / "clients" / "foreign-ca" / "root-cert.pem").read_bytes())
    cert.verify_directly_issued_by(foreign)  # the foreign CA did
    assert credentials._credentials(row.source, "foreign-cert") == (cert_path, _)  # issued once per run
    assert tls_context([], None).verify_mode == ssl.CERT_NONE  # like curl -k: the client checks nothing


def test_a_refused_tls_client_is_proven_by_the_server_sidecars_tls_counter(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect:\n  - {from: curl.legacy, to: 'strict.foo:8000', tls: no-cert, "
                                         "result: refused}\n")
    row = scenario.expectations[0]
    server = ProxyEvidence("strict.foo", {"listener.0.0.0.0_15006.ssl.fail_verify_no_cert": 1})
    observation = Observation(Probe(row.source, row.target, row.port, row.request), error="tls",
                              error_detail="TLS alert: TLSV13_ALERT_CERTIFICATE_REQUIRED",
                              evidence=Evidence(server_proxy=server))
    verdict = decide(observation)
    assert verdict.result is Result.REFUSED
    assert verdict.because == ["client saw: tls (TLS alert: TLSV13_ALERT_CERTIFICATE_REQUIRED)",
                               "server sidecar listener.0.0.0.0_15006.ssl.fail_verify_no_cert +1"]
    silent = Observation(observation.probe, error="tls", evidence=Evidence(server_proxy=ProxyEvidence("strict.foo")))
    assert decide(silent).result is None  # a TLS failure nothing on the server side recorded proves nothing


def test_explain_takes_a_rows_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_istio_mtls.commands.cli import main

    load(tmp_path, TOPOLOGY + "expect: derived\n")
    file = str(tmp_path / "s.yaml")
    assert main(["explain", file, "curl.legacy", "strict.foo:8000", "--tls", "foreign-cert"]) == 0
    assert capsys.readouterr().out.splitlines()[:3] == [
        "curl.legacy+tls-foreign-cert -> strict.foo:8000 (container port 8080, http)", "  result: refused",
        "  reason: strict.foo:8000 (container port 8080) is STRICT by PeerAuthentication foo/strict (workload); "
        "curl.legacy opens TLS itself with a client certificate from a foreign CA → refused (the client certificate "
        "does not chain to the mesh root: the server sidecar fails the handshake)"]
    assert main(["explain", file, "curl.foo", "strict.foo:8000", "--tls", "no-cert"]) == 2
    assert capsys.readouterr().err.startswith("error: --tls 'no-cert': curl.foo has a sidecar, which carries its "
                                              "connections")
