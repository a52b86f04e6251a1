"""Probes sent from inside a pod: a socket created in the pod's namespace, so its iptables apply.

A probe may speak TLS itself (a client without a sidecar doing ``curl -k https://``): the socket is
wrapped before the request, and a failed handshake or a TLS alert is the ``tls`` transport error.
Also the tiny HTTP client used for Envoy's admin endpoint (127.0.0.1:15000 inside the pod).
"""

from __future__ import annotations

import errno
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from ...model import Request
from .system import netns_socket

MARKER_HEADER = "X-Istio-Mtls-Probe"


@dataclass
class Response:
    status: int | None = None
    body: str = ""
    error: str | None = None  # observation.TransportError values
    detail: str = ""
    local: tuple[str, int] | None = None  # the client socket's address (the wire source without a sidecar)
    latency_ms: float = 0.0
    echoed: bool = False


def _connect(netns: str, address: tuple[str, int], timeout: float, response: Response) -> socket.socket | None:
    sock = netns_socket(netns)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
    except ConnectionRefusedError:
        response.error, response.detail = "refused", f"connection to {address[0]}:{address[1]} refused"
    except TimeoutError:
        response.error, response.detail = "timeout", f"connect to {address[0]}:{address[1]} timed out"
    except OSError as exc:
        kind = "unreachable" if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) else "closed"
        response.error, response.detail = kind, str(exc)
    else:
        local = sock.getsockname()
        response.local = (str(local[0]), int(local[1]))
        return sock
    sock.close()
    return None


def tls_context(alpn: list[str], credentials: tuple[Path, Path] | None) -> ssl.SSLContext:
    """A TLS client like ``curl -k``: no server verification, the given ALPN, and a client certificate (cert and
    key files) when ``credentials`` are given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    if credentials is not None:
        context.load_cert_chain(str(credentials[0]), str(credentials[1]))
    return context


def _handshake(sock: socket.socket, context: ssl.SSLContext, response: Response) -> socket.socket | None:
    try:
        return context.wrap_socket(sock)
    except ssl.SSLError as exc:
        response.error, response.detail = "tls", f"TLS handshake failed: {exc.reason or exc}"
    except ConnectionResetError:
        response.error, response.detail = "reset", "connection reset during the TLS handshake"
    except TimeoutError:
        response.error, response.detail = "timeout", "no TLS handshake before the deadline"
    except OSError as exc:
        response.error, response.detail = "closed", f"TLS handshake: {exc}"
    sock.close()
    return None


def _receive(sock: socket.socket, response: Response, deadline: float, expect: int | None = None) -> bytes:
    data = b""
    while expect is None or len(data) < expect:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            response.error, response.detail = "timeout", "no complete answer before the deadline"
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            response.error, response.detail = "reset", "connection reset by peer"
            break
        except ssl.SSLError as exc:  # TLS 1.3: the server's verdict on our certificate arrives as an alert here
            response.error, response.detail = "tls", f"TLS alert: {exc.reason or exc}"
            break
        except TimeoutError:
            response.error, response.detail = "timeout", "no complete answer before the deadline"
            break
        if not chunk:
            break
        data += chunk
    return data


def _exchange(netns: str, address: tuple[str, int], payload: bytes, timeout: float,
              expect: int | None = None, tls: ssl.SSLContext | None = None) -> tuple[Response, bytes]:
    """Connect from inside ``netns`` (and shake hands when ``tls``), send ``payload``, read the answer (until close
    or ``expect`` bytes)."""
    response = Response()
    started = time.monotonic()
    sock = _connect(netns, address, timeout, response)
    if sock is not None and tls is not None:
        sock = _handshake(sock, tls, response)
    data = b""
    if sock is not None:
        try:
            sock.sendall(payload)
            data = _receive(sock, response, started + timeout, expect)
        except ssl.SSLError as exc:
            response.error, response.detail = "tls", f"TLS alert: {exc.reason or exc}"
        except OSError as exc:
            response.error, response.detail = "reset", str(exc)
        finally:
            sock.close()
    response.latency_ms = (time.monotonic() - started) * 1000
    return response, data


def http(netns: str, address: tuple[str, int], host: str, request: Request, marker: str,
         timeout: float, tls: ssl.SSLContext | None = None) -> Response:
    """One HTTP/1.1 request on a fresh connection (Connection: close), like ``curl`` would send it."""
    body = (request.body if request.body is not None else marker + "\n").encode()
    lines = [f"{request.method} {request.path} HTTP/1.1", f"Host: {host}:{address[1]}",
             "User-Agent: pytest-istio-mtls", "Accept: */*", f"{MARKER_HEADER}: {marker}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items()]
    lines += ["Content-Type: text/plain", f"Content-Length: {len(body)}", "Connection: close", "", ""]
    response, data = _exchange(netns, address, "\r\n".join(lines).encode() + body, timeout, tls=tls)
    if data:
        head, _, payload = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ")
        if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit():
            response.status, response.error, response.detail = int(parts[1]), None, ""
            if b"transfer-encoding: chunked" in head.lower():
                payload = _dechunk(payload)
            response.body = payload.decode("utf-8", "replace")
            response.echoed = marker in response.body
        elif response.error is None:
            response.error, response.detail = "closed", f"not an HTTP answer: {data[:80]!r}"
    elif response.error is None:
        response.error, response.detail = "closed", "connection closed without an answer"
    return response


def _dechunk(payload: bytes) -> bytes:
    body, rest = b"", payload
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2:]
    return body


def tcp(netns: str, address: tuple[str, int], marker: str, timeout: float,
        tls: ssl.SSLContext | None = None) -> Response:
    """Send one marker line and expect it echoed back byte for byte."""
    line = (marker + "\n").encode()
    response, data = _exchange(netns, address, line, timeout, expect=len(line), tls=tls)
    response.body = data.decode("utf-8", "replace")
    response.echoed = data == line
    if response.echoed:
        response.error, response.detail = None, ""
    elif response.error is None:
        response.error = "closed"
        response.detail = "connection closed without the echo" if not data else f"unexpected echo {data[:80]!r}"
    return response


def admin(netns: str, path: str, timeout: float = 2.0, address: tuple[str, int] = ("127.0.0.1", 15000)) -> str:
    """GET a plaintext HTTP path inside ``netns`` (Envoy's admin by default, istiod's debug port too);
    raises OSError when nothing answers 200."""
    sock = netns_socket(netns)
    sock.settimeout(timeout)
    try:
        sock.connect(address)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(262144):
            data += chunk
    finally:
        sock.close()
    head, _, payload = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        status = head.split(b"\r\n", 1)[0].decode("latin-1", "replace") or "no answer"
        raise OSError(f"admin {path}: {status}")
    if b"transfer-encoding: chunked" in head.lower():
        payload = _dechunk(payload)
    return payload.decode("utf-8", "replace")


def accepts(netns: str, port: int, timeout: float = 1.0) -> bool:
    """Does something listen on 127.0.0.1:port inside ``netns``? (the app health check)"""
    sock = netns_socket(netns)
    sock.settimeout(timeout)
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        return False
    finally:
        sock.close()
    return True
