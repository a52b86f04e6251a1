"""backends/tlsprobe.py, the in-pod TLS client: run as the pods run it (a subprocess, the batch on stdin) against
real TLS servers on 127.0.0.1, its output read back by the kube backend's own ``probes.parse`` and ``probes.read``."""

from __future__ import annotations

import ast
import datetime as dt
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pytest_istio_mtls.backends import tlsprobe
from pytest_istio_mtls.backends.kube import probes
from pytest_istio_mtls.judge.observation import Probe
from pytest_istio_mtls.model import Port, Request, Workload

SCRIPT = Path(tlsprobe.__file__)
CLIENT = Workload("curl", "legacy", {"app": "curl"}, "curl", False)
HTTP, TCP = Port("http", 8000, 8080), Port("tcp-echo", 9000, 9000, "tcp")
SERVER = Workload("httpbin", "foo", {"app": "httpbin"}, "httpbin", True, (HTTP, TCP))
Pem = tuple[str, str]  # certificate, key
Context = Callable[[bool], ssl.SSLContext]  # a server context that demands a client certificate or not


class Authority:
    """A throwaway CA issuing leaf certificates as PEM text."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = self._sign(self.name, self.key.public_key(), ca=True)
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def _sign(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, ca: bool) -> x509.Certificate:
        now = dt.datetime.now(dt.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))

    def issue(self, name: str) -> Pem:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key(), ca=False)
        return (cert.public_bytes(serialization.Encoding.PEM).decode(),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode())


@pytest.fixture(scope="module")
def mesh() -> Authority:
    return Authority("mesh root")


@pytest.fixture(scope="module")
def server_context(mesh: Authority, tmp_path_factory: pytest.TempPathFactory) -> Context:
    """The server's TLS (TLS 1.3, ALPN h2 and http/1.1), demanding a client certificate from ``mesh`` or not."""
    directory = tmp_path_factory.mktemp("server")
    cert, key = mesh.issue("httpbin.foo")
    (directory / "cert.pem").write_text(cert)
    (directory / "key.pem").write_text(key)

    def make(require: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
        context.set_alpn_protocols(["h2", "http/1.1"])
        if require:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=mesh.pem)
        return context
    return make


Handler = Callable[[socket.socket], None]
Handshakes = list[tuple[str | None, str | None]]  # the SNI and the ALPN protocol of each accepted handshake
Serve = Callable[[Handler, ssl.SSLContext | None], tuple[int, Handshakes]]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start a server on 127.0.0.1 (TLS when given a context): its port, and the handshakes it accepted."""
    listeners: list[socket.socket] = []

    def start(handler: Handler, context: ssl.SSLContext | None) -> tuple[int, Handshakes]:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        seen: Handshakes = []
        names: dict[int, str | None] = {}

        def remember(tls: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
            names[id(tls)] = name
        if context is not None:
            context.sni_callback = remember

        def one(conn: socket.socket) -> None:
            with conn:
                if context is not None:
                    try:
                        conn = context.wrap_socket(conn, server_side=True)
                    except OSError:  # the client's certificate was refused: the alert is on its way
                        return
                    seen.append((names.get(id(conn)), conn.selected_alpn_protocol()))
                handler(conn)

        def loop() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=one, args=(conn,), daemon=True).start()
        threading.Thread(target=loop, daemon=True).start()
        return listener.getsockname()[1], seen
    yield start
    for listener in listeners:
        listener.close()


def http_echo(conn: socket.socket) -> None:
    """Answer 200 with the whole request as the body, like an httpbin echo."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0]) if "content-length:" in head else 0
    while len(data.split(b"\r\n\r\n", 1)[1]) < length:
        data += conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(data), data))


def chunked_kept_open(conn: socket.socket) -> None:
    """Answer the marker line in two chunks and keep the connection open (ignoring ``Connection: close``)."""
    data = conn.recv(65536)
    marker = data.split(b"X-Istio-Mtls-Probe: ", 1)[1].split(b"\r\n", 1)[0]
    conn.sendall(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"%x\r\n%s\r\n1\r\n\n\r\n0\r\n\r\n" % (len(marker), marker))
    silent(conn)


def tcp_echo(conn: socket.socket) -> None:
    """Echo bytes back and never close first, like backends/echo.py."""
    while data := conn.recv(65536):
        conn.sendall(data)


def silent(conn: socket.socket) -> None:
    """Read the request, answer nothing, hold the connection until the client leaves."""
    conn.settimeout(30)
    while conn.recv(65536):
        pass


def hang_up(conn: socket.socket) -> None:
    """A plaintext server: reads the ClientHello, closes."""
    conn.recv(65536)


def bad_request(conn: socket.socket) -> None:
    """A plaintext HTTP server (backends/echo.py without a sidecar) answering the ClientHello, then closing."""
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


def spec(probe: Probe, port: int, host: str = "127.0.0.1", credentials: Pem | None = None,
         timeout: float = 5) -> dict[str, object]:
    """The stdin entry for one probe, as the kube backend would write it."""
    http = probe.port.protocol == "http"
    return {"host": host, "port": port, "protocol": probe.port.protocol, "method": probe.request.method,
            "path": probe.request.path, "headers": dict(probe.request.headers), "body": probe.request.body,
            "marker": probe.marker, "alpn": ["http/1.1"] if http else [],
            "cert": credentials[0] if credentials else None, "key": credentials[1] if credentials else None,
            "connect_timeout": min(timeout, 5), "timeout": timeout}


def run(batch: list[tuple[Probe, dict[str, object]]], env: dict[str, str] | None = None,
        ) -> tuple[list[probes.Output], list[probes.Reading]]:
    token = secrets.token_hex(6)
    done = subprocess.run([sys.executable, str(SCRIPT), token], capture_output=True, timeout=60, check=False,
                          input=json.dumps({"probes": [entry for _, entry in batch]}).encode(),
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    outputs = probes.parse(done.stdout, token, len(batch))
    assert all(output.complete for output in outputs), done.stdout
    return outputs, [probes.read(probe, output) for (probe, _), output in zip(batch, outputs, strict=True)]


def test_the_script_runs_on_python_3_9() -> None:
    """Pods bring their own python3, possibly 3.9: no newer syntax, only the standard library."""
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"), feature_version=(3, 9))
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module or "." for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name.split(".")[0] for name in modules} <= sys.stdlib_module_names


def test_a_client_certificate_the_server_trusts_gets_the_answer(serve: Serve, server_context: Context, mesh: Authority) -> None:
    port, seen = serve(http_echo, server_context(True))
    probe = Probe(CLIENT, SERVER, HTTP, Request("POST", "/post", {"X-Team": "a"}, "hello"))
    by_name = Probe(CLIENT, SERVER, HTTP)
    outputs, (reading, named) = run([(probe, spec(probe, port, credentials=mesh.issue("curl.legacy"))),
                                     (by_name, spec(by_name, port, "localhost", mesh.issue("curl.legacy")))])
    assert (reading.status, reading.error, reading.echoed) == (200, None, True)
    assert reading.body.startswith("POST /post HTTP/1.1\r\n") and reading.body.endswith("\r\n\r\nhello")
    assert f"X-Istio-Mtls-Probe: {probe.marker}\r\n" in reading.body and "X-Team: a\r\n" in reading.body
    assert reading.client == ("127.0.0.1", outputs[0].local_port) and outputs[0].local_port > 0
    assert (named.status, named.echoed) == (200, True) and f"\r\n\r\n{by_name.marker}\n" in named.body
    assert seen == [(None, "http/1.1"), ("localhost", "http/1.1")]  # SNI for names only


@pytest.mark.parametrize("client", ["no-cert", "foreign-cert"])
def test_a_certificate_the_server_does_not_accept_is_a_tls_error(serve: Serve, server_context: Context, client: str) -> None:
    port, _ = serve(http_echo, server_context(True))
    credentials = Authority("someone else").issue("curl.legacy") if client == "foreign-cert" else None
    probe = Probe(CLIENT, SERVER, HTTP)
    outputs, (reading,) = run([(probe, spec(probe, port, credentials=credentials))])
    assert (reading.status, reading.error, reading.echoed) == (None, "tls", False), outputs
    assert outputs[0].curl_exit == 35 and "TLS alert" in reading.detail  # TLS 1.3: read after the handshake
    assert reading.client is not None


def test_a_chunked_answer_on_a_connection_kept_open(serve: Serve, server_context: Context) -> None:
    port, _ = serve(chunked_kept_open, server_context(False))
    probe = Probe(CLIENT, SERVER, HTTP)
    outputs, (reading,) = run([(probe, spec(probe, port, timeout=20))])
    assert (reading.status, reading.error, reading.body) == (201, None, probe.marker + "\n")
    assert outputs[0].seconds < 10  # done at the last chunk, not at the deadline


def test_tcp_echo_over_tls(serve: Serve, server_context: Context, mesh: Authority) -> None:
    port, seen = serve(tcp_echo, server_context(True))
    probe = Probe(CLIENT, SERVER, TCP)
    started = time.monotonic()
    outputs, (reading,) = run([(probe, spec(probe, port, credentials=mesh.issue("curl.legacy"), timeout=20))])
    assert (reading.error, reading.echoed, reading.body) == (None, True, probe.marker + "\n")
    assert outputs[0].curl_exit == 0 and time.monotonic() - started < 10  # stopped at the echo, not the deadline
    assert seen == [(None, None)]


def test_a_refused_port_and_the_next_probe_still_read(serve: Serve, server_context: Context) -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        refused_port = closed.getsockname()[1]
    port, _ = serve(http_echo, server_context(False))
    refused, fine = Probe(CLIENT, SERVER, HTTP), Probe(CLIENT, SERVER, HTTP)
    outputs, (first, second) = run([(refused, spec(refused, refused_port)), (fine, spec(fine, port))])
    assert (first.error, outputs[0].curl_exit, first.client) == ("refused", 7, None)
    assert (second.status, second.echoed) == (200, True)


@pytest.mark.parametrize("protocol", [HTTP, TCP])
@pytest.mark.parametrize("handler", [hang_up, bad_request])
def test_a_plaintext_server_fails_the_handshake(serve: Serve, protocol: Port, handler: Handler) -> None:
    port, _ = serve(handler, None)
    probe = Probe(CLIENT, SERVER, protocol)
    outputs, (reading,) = run([(probe, spec(probe, port))])
    assert (reading.status, reading.error, reading.echoed) == (None, "tls", False), outputs
    assert outputs[0].curl_exit == 35 and reading.detail.startswith("TLS handshake failed")


@pytest.mark.parametrize("stage", ["handshake", "answer"])
def test_a_server_that_never_answers_times_out_by_the_deadline(serve: Serve, server_context: Context, stage: str) -> None:
    probe = Probe(CLIENT, SERVER, HTTP)
    with socket.create_server(("127.0.0.1", 0)) as backlog:  # connections complete in its backlog, never accepted
        port = backlog.getsockname()[1] if stage == "handshake" else serve(silent, server_context(False))[0]
        started = time.monotonic()
        outputs, (reading,) = run([(probe, spec(probe, port, timeout=1))])
    assert (reading.error, outputs[0].curl_exit) == ("timeout", 28), outputs
    assert 0.9 < outputs[0].seconds < 1.5 and time.monotonic() - started < 5


def test_the_key_never_stays_on_disk(serve: Serve, server_context: Context, mesh: Authority, tmp_path: Path) -> None:
    port, _ = serve(http_echo, server_context(True))
    probe = Probe(CLIENT, SERVER, HTTP)
    _, (reading,) = run([(probe, spec(probe, port, credentials=mesh.issue("curl.legacy")))],
                        env={"TMPDIR": str(tmp_path)})
    assert reading.status == 200
    assert list(tmp_path.iterdir()) == []
