"""What a probe sends and what came back, with the evidence gathered around it.

These types are the contract between backends (which fill them) and ``verdict`` (which judges
them). They are backend-neutral: a real istio-proxy and the local Envoy sidecars produce the same
stat names, access-log fields and capture summaries.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ..model import Port, Request, Workload, pair_id
from .accesslog import DENIED_DETAIL

# How a connection failed, as the client saw it (``None``: a response arrived).
TransportError = Literal[
    "reset",  # connection reset by peer (curl exit 56)
    "closed",  # closed without a response
    "refused",  # TCP RST to the SYN: nothing listens (ECONNREFUSED)
    "timeout",  # no answer within the deadline
    "unresolved",  # the name does not resolve inside the client's pod
    "unreachable",  # no route / network down
    "tls",  # TLS alert or handshake failure seen by the client app itself
]


def new_marker() -> str:
    """A unique, greppable token: one per probe, sent in a header and in the body."""
    return f"istio-mtls-probe-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Probe:
    source: Workload
    target: Workload
    port: Port
    request: Request = field(default_factory=Request)
    marker: str = field(default_factory=new_marker)

    @property
    def pair(self) -> str:
        return pair_id(self.source, self.target, self.port, self.request)

    @property
    def outbound_cluster(self) -> str:
        """The client sidecar's cluster for this Service port (and subset), named like Istio names it."""
        return f"outbound|{self.port.port}|{self.port.subset}|{self.target.host}"


@dataclass
class ProxyEvidence:
    """What one sidecar recorded while the probe ran."""

    workload: str
    stats_delta: dict[str, int] = field(default_factory=dict)  # counter → increase (non-zero only)
    access_log: list[dict[str, Any]] = field(default_factory=list)  # entries of this probe's connection
    live: bool = True  # the proxy answered its admin/readiness endpoint around the probe

    def count(self, *suffixes: str, contains: str = "") -> int:
        return sum(v for k, v in self.stats_delta.items() if k.endswith(suffixes) and contains in k)


@dataclass
class CaptureEvidence:
    """The probe's connection as seen on the server pod's network interface."""

    interface: str
    flow: str = ""  # "10.0.0.3:41234 > 10.0.0.4:8080"; empty when the flow was not found
    packets: int = 0
    payload_bytes: int = 0
    tls_records: int = 0
    client_hello: bool = False
    sni: str = ""
    alpn: list[str] = field(default_factory=list)
    marker_in_clear: bool = False
    pcap: str = ""  # file holding the capture, when kept
    note: str = ""

    @property
    def found(self) -> bool:
        return bool(self.flow) and self.packets > 0


@dataclass
class Evidence:
    client_proxy: ProxyEvidence | None = None  # None: the client has no sidecar
    server_proxy: ProxyEvidence | None = None  # None: the server has no sidecar
    peer_identity: str = ""  # the SPIFFE ID the server side saw for its peer
    identity_source: str = ""  # "xfcc" (echoed by the app) or "access-log" (server sidecar)
    capture: CaptureEvidence | None = None
    faults: list[str] = field(default_factory=list)  # infrastructure faults found around the probe

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self, limit: int = 8) -> list[str]:
        """A few lines for failure messages: what each side recorded, who the server saw, the wire.

        Of the counters, at most ``limit`` are shown: RBAC denials first (they decide ``denied``), then
        TLS; an access-log entry that names the RBAC policy which denied is shown too.
        """
        lines = []
        for role, proxy in (("client", self.client_proxy), ("server", self.server_proxy)):
            if proxy is None:
                continue
            moved = sorted(proxy.stats_delta.items(),
                           key=lambda item: ("rbac" not in item[0], "ssl" not in item[0], item[0]))[:limit]
            counters = ", ".join(f"{name} +{value}" for name, value in moved) or "no counter moved"
            flags = sorted({str(e.get("response_flags", "-")) for e in proxy.access_log})
            log = f"; access log flags {','.join(flags)}" if flags else ""
            denials = sorted({str(e[key]) for e in proxy.access_log
                              for key in ("response_code_details", "connection_termination_details")
                              if str(e.get(key, "")).startswith(DENIED_DETAIL)})
            log += "".join(f", {detail}" for detail in denials)
            lines.append(f"{role} sidecar {proxy.workload}{'' if proxy.live else ' (NOT RUNNING)'}: {counters}{log}")
        if self.peer_identity:
            lines.append(f"peer identity at the server: {self.peer_identity} ({self.identity_source})")
        if self.capture is not None:
            capture = self.capture
            if capture.found:
                marker = "IN CLEAR" if capture.marker_in_clear else "not in clear"
                lines.append(f"capture on {capture.interface}: {capture.flow}, {capture.packets} packets, "
                             f"{capture.tls_records} TLS records, marker {marker}"
                             + (f", pcap {capture.pcap}" if capture.pcap else ""))
            else:
                lines.append(f"capture on {capture.interface}: flow not found ({capture.note})")
        lines.extend(f"fault: {fault}" for fault in self.faults)
        return lines


@dataclass
class Observation:
    probe: Probe
    status: int | None = None
    body: str = ""
    error: TransportError | None = None
    error_detail: str = ""
    latency_ms: float = 0.0
    echoed: bool = False  # the app's answer carries our marker: the request reached the app
    evidence: Evidence = field(default_factory=Evidence)

    def client_saw(self) -> str:
        """One phrase for failure messages: what the client application experienced."""
        if self.status is not None:
            return f"HTTP {self.status}"
        if self.echoed:
            return "its bytes echoed back"
        detail = f" ({self.error_detail})" if self.error_detail else ""
        return f"{self.error or 'no answer'}{detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "marker": self.probe.marker,
            "status": self.status,
            "error": self.error,
            "errorDetail": self.error_detail,
            "latencyMs": round(self.latency_ms, 3),
            "echoed": self.echoed,
            "body": self.body[:2000],
            "evidence": self.evidence.to_json(),
        }
