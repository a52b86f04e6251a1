"""The probe batch: one ``sh -c`` script per source pod that runs each probe with curl, in order.

Each probe prints one delimited record: curl's exit code, HTTP status, the client socket address
(``%{local_ip}:%{local_port}``), the time taken, the body and curl's error text. The marker goes in
the ``X-Istio-Mtls-Probe`` header (so both sidecars' access logs carry it) and in the body. TCP
ports are probed through curl's ``telnet://`` scheme (curlimages/curl has no guaranteed netcat):
it sends the marker line and prints what comes back; the echo server never closes first, so curl
ends by its own deadline once the echo is in.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...judge.observation import Probe, TransportError

if TYPE_CHECKING:
    from .naming import Naming

MARKER_HEADER = "X-Istio-Mtls-Probe"
WRITE_OUT = "%{http_code}|%{local_ip}|%{local_port}|%{time_total}"  # one word even when fields are empty
HTTP_TIMEOUT_S = 10
TCP_TIMEOUT_S = 3
CONNECT_TIMEOUT_S = 5


@dataclass
class Output:
    """What the script printed for one probe."""

    index: int
    curl_exit: int | None = None
    http_code: int = 0
    local_ip: str = ""
    local_port: int = 0
    seconds: float = 0.0
    body: bytes = b""
    stderr: str = ""
    complete: bool = False  # the record's end marker was seen


def service_host(probe: Probe, naming: Naming) -> str:
    """The name the client dials: the Service's (the one a workload joins, for an endpoint of a shared one)."""
    target = probe.target
    return naming.host(target.service or target.name, target.namespace)


def url(probe: Probe, naming: Naming, pod_ip: str = "") -> str:
    """``pod_ip``: dial that pod at the target port (``pod/`` rows, and the endpoint of a shared Service for a
    client without a sidecar, ``routing.direct``: over HTTP the URL keeps the Service and ``--connect-to`` dials
    the pod), else the Service at its port."""
    if pod_ip and (probe.port.pod or probe.port.protocol == "tcp"):
        host, port = pod_ip, probe.port.target_port
    else:
        host, port = service_host(probe, naming), probe.port.port
    if probe.port.protocol == "tcp":
        return f"telnet://{host}:{port}"
    return f"http://{host}:{port}{probe.request.path}"


def curl_command(probe: Probe, naming: Naming, pod_ip: str = "") -> str:
    """The curl invocation for one probe, shell-quoted; its stdin/stdout/stderr are set by the caller."""
    quote = shlex.quote
    args = ["curl", "-sS", "-o", '"$b"', "-w", quote(WRITE_OUT), "--connect-timeout", str(CONNECT_TIMEOUT_S)]
    if probe.port.protocol == "tcp":
        args += ["--max-time", str(TCP_TIMEOUT_S), quote(url(probe, naming, pod_ip))]
        return f"printf '%s\\n' {quote(probe.marker)} | " + " ".join(args)
    if pod_ip and not probe.port.pod:  # the Service's name and port in the request, the endpoint's address dialled
        args += ["--connect-to", quote(f"{service_host(probe, naming)}:{probe.port.port}:{pod_ip}:"
                                       f"{probe.port.target_port}")]
    request = probe.request
    args += ["--max-time", str(HTTP_TIMEOUT_S), "-X", quote(request.method),
             "-H", quote(f"{MARKER_HEADER}: {probe.marker}")]
    for name, value in request.headers.items():
        args += ["-H", quote(f"{name}: {value}")]
    body = request.body if request.body is not None else probe.marker
    args += ["--data-raw", quote(body), quote(url(probe, naming, pod_ip))]
    return " ".join(args)


def script(probes: Sequence[Probe], naming: Naming, token: str, pod_ips: Sequence[str] = ()) -> str:
    """The whole batch of one source, as one POSIX sh script. ``token`` delimits records; ``pod_ips[i]``, when
    given and not empty, is the pod address probe ``i`` dials (see ``url``)."""
    lines = ['b="/tmp/pim-$$.body"; e="/tmp/pim-$$.err"']
    for index, probe in enumerate(probes):
        pod_ip = pod_ips[index] if index < len(pod_ips) else ""
        lines += [
            'rm -f "$b" "$e"',
            f'w=$({curl_command(probe, naming, pod_ip)} 2>"$e"); rc=$?',
            f"printf '\\n@@{token} {index} meta %s %s@@\\n' \"$rc\" \"$w\"",
            f"printf '@@{token} {index} body@@\\n'; cat \"$b\" 2>/dev/null",
            f"printf '\\n@@{token} {index} stderr@@\\n'; cat \"$e\" 2>/dev/null",
            f"printf '\\n@@{token} {index} end@@\\n'",
        ]
    lines.append('rm -f "$b" "$e"')
    return "\n".join(lines) + "\n"


def tls_batch(probes: Sequence[Probe], naming: Naming, pod_ips: Sequence[str],
              credentials: Sequence[tuple[bytes, bytes] | None]) -> bytes:
    """The TLS prober's input (``backends/tlsprobe.py``): one JSON line, read from the exec's stdin, so the
    client's private key is never in a command line, a file of ours or a log."""
    items = []
    for probe, pod_ip, pair in zip(probes, pod_ips, credentials, strict=True):
        direct = bool(pod_ip)
        http = probe.port.protocol == "http"
        request = probe.request
        items.append({
            "host": pod_ip if direct else service_host(probe, naming),
            "port": probe.port.target_port if direct else probe.port.port,
            "protocol": probe.port.protocol, "method": request.method, "path": request.path,
            "headers": dict(request.headers), "body": request.body, "marker": probe.marker,
            "alpn": ["http/1.1"] if http else [],  # what curl offers over HTTP/1.1; raw TLS offers none
            "cert": pair[0].decode() if pair else None, "key": pair[1].decode() if pair else None,
            "connect_timeout": CONNECT_TIMEOUT_S, "timeout": HTTP_TIMEOUT_S if http else TCP_TIMEOUT_S,
        })
    return (json.dumps({"probes": items}) + "\n").encode()


def parse(stdout: bytes, token: str, count: int) -> list[Output]:
    """Records back from the script's output; a probe whose record is missing stays incomplete."""
    outputs = [Output(i) for i in range(count)]
    marker = re.compile(rb"\n?@@" + re.escape(token.encode()) + rb" (\d+) (meta|body|stderr|end)( [^@\n]*)?@@\n")
    matches = list(marker.finditer(stdout))
    for position, match in enumerate(matches):
        index = int(match[1])
        if index >= count:
            continue
        output = outputs[index]
        following = matches[position + 1].start() if position + 1 < len(matches) else len(stdout)
        section = match[2].decode()
        if section == "meta":
            words = (match[3] or b"").decode("utf-8", "replace").split()
            if words and words[0].lstrip("-").isdigit():
                output.curl_exit = int(words[0])
            fields = words[1].split("|") if len(words) > 1 else []
            if len(fields) == 4:
                output.http_code = int(fields[0]) if fields[0].isdigit() else 0
                output.local_ip = fields[1]
                output.local_port = int(fields[2]) if fields[2].isdigit() else 0
                try:
                    output.seconds = float(fields[3])
                except ValueError:
                    output.seconds = 0.0
        elif section == "body":
            output.body = stdout[match.end():following]
        elif section == "stderr":
            output.stderr = stdout[match.end():following].decode("utf-8", "replace").strip()
        else:
            output.complete = output.curl_exit is not None
    return outputs


def transport_error(curl_exit: int, stderr: str) -> TransportError:
    """curl's exit code (and message, where one code covers several causes) as a TransportError."""
    text = stderr.lower()
    if curl_exit == 6:
        return "unresolved"
    if curl_exit == 7:
        if "no route" in text or "unreachable" in text:
            return "unreachable"
        return "timeout" if "timed out" in text else "refused"
    if curl_exit == 28:
        return "timeout"
    if curl_exit == 55 or (curl_exit == 56 and "reset" in text):
        return "reset"
    if curl_exit == 35:
        return "tls"
    return "closed"


@dataclass
class Reading:
    """One probe's client-side outcome, in the terms of ``Observation``."""

    status: int | None
    error: TransportError | None
    detail: str
    echoed: bool
    body: str
    latency_ms: float
    client: tuple[str, int] | None  # the client socket (the app's connection)

    def outcome(self) -> tuple[object, ...]:
        """What two consecutive probes must agree on before a policy counts as settled."""
        return (self.status, self.error, self.echoed)


def read(probe: Probe, output: Output) -> Reading:
    body = output.body.decode("utf-8", "replace")
    echoed = probe.marker in body
    client = (output.local_ip, output.local_port) if output.local_ip and output.local_port else None
    latency = output.seconds * 1000
    detail = output.stderr.splitlines()[-1] if output.stderr else ""
    if probe.port.protocol == "tcp":
        # The echo server answers and waits for more: curl's own deadline (28) is the normal end.
        if echoed:
            return Reading(None, None, "", True, body, latency, client)
        error = "closed" if output.curl_exit == 0 else transport_error(output.curl_exit or 0, output.stderr)
        return Reading(None, error, detail, False, body, latency, client)
    if output.curl_exit == 0 and output.http_code:
        return Reading(output.http_code, None, "", echoed, body, latency, client)
    error = transport_error(output.curl_exit or 0, output.stderr) if output.curl_exit else "closed"
    return Reading(None, error, detail, False, body, latency, client)
