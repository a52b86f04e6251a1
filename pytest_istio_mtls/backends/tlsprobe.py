"""A client without a sidecar that speaks TLS itself (``curl -k https://``, optionally presenting a client
certificate), run inside a pod with the pod's own python3: curl images cannot be trusted with these TLS options.

It prints the records of the curl batch (backends/kube/probes.py ``script()``), so ``probes.parse()`` and
``probes.read()`` judge both alike: per probe a curl-compatible exit code (0 answer; 6 unresolved; 7 refused or no
route; 28 timed out; 35 TLS handshake failure or alert; 52 closed without an answer; 56 reset or other socket
error; 58 unusable client certificate; 8 not HTTP; 1 anything else), the HTTP status (000: none), the client
socket's address, the seconds taken, the body and the error text. TLS as the local backend's prober speaks it
(backends/local/prober.py): no server verification, the probe's ALPN, SNI for names only, and on TLS 1.3 the
server's verdict on our certificate read as an alert after the handshake. Keys come only on stdin (load_cert_chain
needs files: they exist in a private temporary directory only while loading). Standard library only, Python 3.9
and later, never raises.

Usage: python3 tlsprobe.py TOKEN < one line {"probes": [{"host", "port", "protocol", "method", "path", "headers",
"body", "marker", "alpn", "cert", "key", "connect_timeout", "timeout"}, ...]}
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

MARKER_HEADER = "X-Istio-Mtls-Probe"
TIMEOUTS = (socket.timeout, TimeoutError)  # not yet one class on Python 3.9


class Failure(Exception):
    """How a probe ended without an answer: curl's exit code for it and the message."""

    def __init__(self, rc: int, text: str) -> None:
        super().__init__(text)
        self.rc = rc


def failure(exc: BaseException, stage: str, where: str) -> Failure:
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, socket.gaierror):
        return Failure(6, f"Could not resolve host: {where.rsplit(':', 1)[0]} ({exc})")
    if isinstance(exc, TIMEOUTS):
        return Failure(28, f"{stage} with {where} timed out")
    if isinstance(exc, ssl.SSLError):
        return Failure(35, f"TLS {'handshake failed' if stage == 'handshake' else 'alert'}: {exc.reason or exc}")
    if isinstance(exc, ConnectionRefusedError):
        return Failure(7, f"Failed to connect to {where}: Connection refused")
    if isinstance(exc, OSError) and stage == "connect" and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return Failure(7, f"Failed to connect to {where}: {exc.strerror}")
    if isinstance(exc, ConnectionResetError):
        return Failure(56, f"{stage}: Connection reset by peer")
    if isinstance(exc, OSError):
        return Failure(56, f"{stage}: {exc}")
    return Failure(1, f"{stage}: {type(exc).__name__}: {exc}")


def tls_context(alpn: list[str], cert: str | None, key: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    if not cert:
        return context
    directory = tempfile.mkdtemp(prefix="pim-tls-")  # mode 0700
    try:
        paths = []
        for name, pem in (("cert.pem", cert), ("key.pem", key)):
            if pem:
                paths.append(os.path.join(directory, name))
                with open(os.open(paths[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
                    file.write(pem.encode())
        context.load_cert_chain(*paths)
    except (OSError, ValueError) as exc:
        raise Failure(58, f"could not load the client certificate: {exc}") from exc
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return context


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes] | None:
    head, sep, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, payload


def http_complete(data: bytes) -> bool:
    """Enough read, for a server that keeps the connection open despite ``Connection: close``."""
    response = split_response(data)
    if response is None:
        return False
    _, headers, payload = response
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return payload.endswith(b"0\r\n\r\n")
    length = headers.get("content-length", "")
    return length.isdigit() and len(payload) >= int(length)


def dechunk(payload: bytes) -> bytes:
    body, rest = b"", payload
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
        except ValueError:
            break
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2:]
    return body


def receive(sock: socket.socket, deadline: float, done: Callable[[bytes], bool],
            where: str) -> tuple[bytes, Failure | None]:
    """Read until ``done``, the peer closes, or the deadline; what came, and how reading ended if not normally."""
    data = b""
    while not done(data):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return data, Failure(28, f"Operation timed out with {len(data)} bytes received")
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except Exception as exc:  # TLS 1.3: the verdict on our certificate is an alert here
            return data, failure(exc, "receive", where)
        if not chunk:
            break
        data += chunk
    return data, None


def pending_alert(sock: socket.socket, where: str) -> Failure | None:
    """TLS 1.3: the server's refusal of our certificate is an alert, maybe queued behind the reset our send met."""
    sock.settimeout(1)
    try:
        sock.recv(65536)
    except ssl.SSLError as exc:
        return failure(exc, "receive", where)
    except Exception:  # nothing pending: the reset stands
        return None
    return None


def request(spec: dict[str, Any], host: str, port: int) -> bytes:
    """What the local prober's ``http()`` sends."""
    marker = str(spec["marker"])
    body = (marker + "\n" if spec.get("body") is None else str(spec["body"])).encode()
    authority = f"[{host}]" if ":" in host else host
    lines = [f"{spec.get('method') or 'GET'} {spec.get('path') or '/'} HTTP/1.1", f"Host: {authority}:{port}",
             "User-Agent: pytest-istio-mtls", "Accept: */*", f"{MARKER_HEADER}: {marker}"]
    lines += [f"{name}: {value}" for name, value in (spec.get("headers") or {}).items()]
    lines += ["Content-Type: text/plain", f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


def probe(spec: dict[str, Any]) -> tuple[int, int, tuple[str, int], bytes, str]:
    """One probe: (exit code, HTTP status, client address, body, error text)."""
    started = time.monotonic()
    local, stage, where = ("", 0), "connect", "?"
    sock: socket.socket | None = None
    try:
        host, port, tcp = str(spec["host"]), int(spec["port"]), spec.get("protocol") == "tcp"
        where = f"{host}:{port}"
        deadline = started + float(spec.get("timeout") or 10)
        connect_by = min(deadline, started + float(spec.get("connect_timeout") or 5))
        context = tls_context(list(spec.get("alpn") or []), spec.get("cert"), spec.get("key"))
        try:
            ipaddress.ip_address(host)
            sni = None
        except ValueError:
            sni = host
        sock = socket.create_connection((host, port), timeout=max(connect_by - time.monotonic(), 0.001))
        address = sock.getsockname()
        local = (str(address[0]), int(address[1]))
        stage = "handshake"
        sock.settimeout(max(connect_by - time.monotonic(), 0.001))
        sock = context.wrap_socket(sock, server_hostname=sni)
        stage = "send"
        line = (str(spec["marker"]) + "\n").encode()
        try:
            sock.sendall(line if tcp else request(spec, host, port))
        except ConnectionError as exc:
            alert = pending_alert(sock, where)
            if alert is None:
                raise
            raise alert from exc
        stage = "receive"
        data, ended = receive(sock, deadline, (lambda d: line in d) if tcp else http_complete, where)
        if tcp:
            if line in data:
                return 0, 0, local, data, ""
            if ended is not None:
                return ended.rc, 0, local, data, str(ended)
            return 52, 0, local, data, "Empty reply from server" if not data else "closed without the echo"
        response = split_response(data)
        if response is not None:
            status, headers, payload = response
            if headers.get("transfer-encoding", "").lower() == "chunked":
                payload = dechunk(payload)
            elif headers.get("content-length", "").isdigit():
                payload = payload[:int(headers["content-length"])]
            return 0, status, local, payload, ""
        if ended is not None:
            return ended.rc, 0, local, data, str(ended)
        if data:
            return 8, 0, local, data, f"not an HTTP answer: {data[:80]!r}"
        return 52, 0, local, b"", "Empty reply from server"
    except Exception as exc:  # every failure is a record, never a traceback
        ended = failure(exc, stage, where)
        return ended.rc, 0, local, b"", str(ended)
    finally:
        if sock is not None:
            sock.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write((__doc__ or "").strip().rsplit("\n\n", 1)[-1] + "\n")
        return 2
    token, out = argv[1], sys.stdout.buffer
    try:
        # One line: a Kubernetes exec cannot close stdin (protocol v4), so end of input never comes.
        probes = json.loads(sys.stdin.buffer.readline())["probes"]
    except (ValueError, KeyError, TypeError) as exc:
        sys.stderr.write(f"tlsprobe: no batch on stdin: {exc!r}\n")
        return 2
    for index, spec in enumerate(probes):
        started = time.monotonic()
        rc, status, local, body, error = probe(spec)
        seconds = time.monotonic() - started
        out.write(f"\n@@{token} {index} meta {rc} {status:03d}|{local[0]}|{local[1]}|{seconds:.6f}@@\n".encode())
        out.write(f"@@{token} {index} body@@\n".encode() + body)
        out.write(f"\n@@{token} {index} stderr@@\n{error}".encode("utf-8", "replace"))
        out.write(f"\n@@{token} {index} end@@\n".encode())
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
