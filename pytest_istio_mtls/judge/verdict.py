"""From an observation to a result, on positive evidence only.

This is the module that keeps the tool honest. A result is returned only when the evidence
shows *why* it happened; anything else is an error with the reason, never a pass:

- ``mtls``: the request reached the app, the server sidecar completed a TLS handshake, the server
  side saw the client's SPIFFE identity, and the capture shows TLS records and no marker in clear.
- ``plaintext``: the request reached the app and the capture shows the marker in clear.
- ``refused``: no answer, the client has no sidecar, and the server sidecar recorded a rejection
  (no filter chain matched, or a TLS error on its inbound listener).
- ``unavailable``: the client's own sidecar answered 503 (or closed a TCP stream) and its upstream
  connection to this Service failed at the TLS level, or was reset by a server side that shows the
  connection (its sidecar's rejection or the capture); a bare TCP connect failure does not count.
- ``denied``: 403 ``RBAC: access denied`` and the server sidecar recorded an RBAC denial; on a TCP
  port, the connection closed without an answer, the server sidecar's network RBAC filter counted a
  denial (``tcp.rbac.denied``) and its access log ended that connection as an RBAC denial.

A dead proxy, a dead app, an unresolved name, a timeout, or missing evidence is an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..model import Result
from .accesslog import DENIED_DETAIL
from .observation import Evidence, Observation, ProxyEvidence
from .stats import TCP_DENIED_STAT

INBOUND = "listener.0.0.0.0_15006."
# Counters on the client's outbound cluster that mean its TLS handshake upstream failed.
CLIENT_TLS_FAILURES = (".ssl.connection_error", ".ssl.fail_verify_san", ".ssl.fail_verify_error",
                       ".ssl.fail_verify_no_cert")
# The server side reset the connection after it was established (e.g. plaintext into STRICT).
REMOTE_RESET = ".upstream_cx_destroy_remote_with_active_rq"
# Counters on the server's inbound listener that mean it rejected the connection.
SERVER_REJECTIONS = (
    "no_filter_chain_match",
    "ssl.connection_error",
    "ssl.fail_verify_no_cert",
    "ssl.fail_verify_error",
    "ssl.fail_verify_san",
)


@dataclass
class Verdict:
    result: Result | None  # None: no positive evidence, the item is an error
    because: list[str] = field(default_factory=list)  # the evidence behind the result, for people
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not None

    def __str__(self) -> str:
        """One line for messages: the result and the evidence behind it, or why no result could be proven."""
        if self.result is None:
            return f"no result: {self.error}"
        return f"{self.result.value}, because " + "; ".join(self.because)


def _error(message: str, because: list[str] | None = None) -> Verdict:
    return Verdict(None, because or [], message)


def _flags(proxy: ProxyEvidence | None) -> set[str]:
    flags: set[str] = set()
    for entry in proxy.access_log if proxy else []:
        flags.update(str(entry.get("response_flags", "")).replace("-", "").split(","))
    flags.discard("")
    return flags


def _server_rejected(evidence: Evidence) -> list[str]:
    server = evidence.server_proxy
    if server is None:
        return []
    found = [f"server sidecar {INBOUND}{name} +{server.count(name, contains=INBOUND)}"
             for name in SERVER_REJECTIONS if server.count(name, contains=INBOUND)]
    if "NR" in _flags(server):
        found.append("server sidecar access log: response flag NR (no filter chain matched)")
    return found


def _client_upstream_failed(observation: Observation) -> tuple[list[str], str]:
    """Evidence that the client's sidecar failed *because of the other side's TLS or policy*.

    Returns (evidence, "") or ([], why not). A TCP connect failure alone (no TLS error, nothing
    reset after connecting) is a network or workload fault, so it never counts.
    """
    probe, evidence = observation.probe, observation.evidence
    client = evidence.client_proxy
    if client is None:
        return [], "the client has no sidecar"
    cluster = probe.outbound_cluster
    found = [f"client sidecar cluster {cluster}{name} +{client.count(name, contains=cluster)}"
             for name in CLIENT_TLS_FAILURES if client.count(name, contains=cluster)]
    reasons = sorted({str(e.get("upstream_transport_failure_reason")) for e in client.access_log}
                     - {"None", "", "-"})
    found += [f"client sidecar access log: {reason}" for reason in reasons if reason.startswith("TLS")]
    if found:
        return found, ""
    resets = client.count(REMOTE_RESET, contains=cluster)
    if resets:
        server_side = _server_rejected(evidence)
        capture = evidence.capture
        wire = [f"capture on {capture.interface}: flow {capture.flow}, {capture.packets} packets"] if (
            capture is not None and capture.found) else []
        if server_side or wire:
            return [f"client sidecar cluster {cluster}{REMOTE_RESET} +{resets}", *server_side, *wire], ""
        return [], (f"the connection to {probe.target.ref} was reset after connecting, but neither its sidecar "
                    "nor the capture shows that connection")
    if client.count(".upstream_cx_connect_fail", contains=cluster):
        return [], (f"the client sidecar could not open a TCP connection to {probe.target.ref} (no TLS error, no "
                    "reset): a network or workload fault, not a policy outcome")
    return [], f"the client sidecar recorded no upstream connection failure for {cluster}"


def _tcp_denied(observation: Observation) -> Verdict | None:
    """TCP denial: the server sidecar accepted the connection, then its RBAC network filter closed it.

    Proven by the filter's counter and the access-log entry of that connection, whose termination
    detail names the matched DENY policy (or ``none`` when no ALLOW policy matched). Without the
    counter this is not a denial (None: judged like any other closed connection).
    """
    server = observation.evidence.server_proxy
    denials = server.count(TCP_DENIED_STAT) if server is not None else 0
    if server is None or not denials:
        return None
    because = [f"client saw: {observation.client_saw()}", f"server sidecar {TCP_DENIED_STAT} +{denials}"]
    details = sorted({str(e.get("connection_termination_details")) for e in server.access_log}
                     - {"None", "", "-"})
    rbac = [d for d in details if d.startswith(DENIED_DETAIL)]
    if not rbac:
        ended = f" (it ended with {', '.join(details)})" if details else ""
        return _error(f"{TCP_DENIED_STAT} moved, but the server sidecar's access log does not show this connection "
                      f"closed by RBAC{ended}", because)
    return Verdict(Result.DENIED, [*because, *(f"server sidecar access log: connection_termination_details {d}"
                                               for d in rbac)])


def _faults(observation: Observation) -> list[str]:
    evidence = observation.evidence
    faults = list(evidence.faults)
    for role, proxy in (("client", evidence.client_proxy), ("server", evidence.server_proxy)):
        if proxy is not None and not proxy.live:
            faults.append(f"the {role} sidecar of {proxy.workload} is not running")
    if observation.error == "unresolved":
        faults.append(f"{observation.probe.target.ref} does not resolve inside {observation.probe.source.ref}"
                      + (f": {observation.error_detail}" if observation.error_detail else ""))
    if observation.error == "unreachable":
        faults.append(f"no route to {observation.probe.target.ref}: {observation.error_detail}")
    return faults


def _answered_by(observation: Observation) -> str:
    """The workload whose app answered, when the app names itself (the local backend's echo app does)."""
    try:
        answer = json.loads(observation.body)
    except ValueError:
        return ""
    return str(answer.get("workload") or "") if isinstance(answer, dict) else ""


def _allowed(observation: Observation) -> Verdict:
    """The request reached the app: was the hop between the pods mTLS or plaintext?"""
    probe = observation.probe
    answered = _answered_by(observation)
    if answered and answered != probe.target.ref:
        return _error(f"the app of {answered} answered, not the probed {probe.target.ref}")
    verdict = _encryption(observation)
    if verdict.ok and answered and probe.target.shared:  # which of the Service's workloads answered
        verdict.because.insert(0, f"the app of {answered} answered")
    return verdict


def _encryption(observation: Observation) -> Verdict:
    """Mtls or plaintext, on the capture, the server sidecar's handshakes and the peer identity."""
    probe, evidence = observation.probe, observation.evidence
    capture = evidence.capture
    if capture is None or not capture.found:
        note = f" ({capture.note})" if capture is not None and capture.note else ""
        return _error(f"the request reached the app but its connection was not found in the capture{note}; "
                      "without the packets, encryption cannot be proven either way")
    wire = f"capture on {capture.interface}: flow {capture.flow}, {capture.packets} packets"
    server = evidence.server_proxy
    handshakes = server.count("ssl.handshake", contains=INBOUND) if server is not None else 0
    expected_identity = probe.source.spiffe()

    if capture.marker_in_clear:
        because = [f"{wire}, marker in clear"]
        if handshakes or capture.tls_records:
            return _error("contradictory evidence: the marker crossed the wire in clear, yet TLS was seen "
                          f"({handshakes} server handshakes, {capture.tls_records} TLS records)", because)
        if evidence.peer_identity:
            return _error(f"contradictory evidence: the marker crossed the wire in clear, yet the server side "
                          f"saw peer identity {evidence.peer_identity}", because)
        return Verdict(Result.PLAINTEXT, because)

    missing: list[str] = []
    if capture.tls_records == 0:
        missing.append("no TLS records in the captured flow")
    if server is None:
        missing.append(f"{probe.target.ref} has no sidecar to terminate mTLS")
    elif handshakes == 0:
        missing.append("no TLS handshake on the server sidecar's inbound listener")
    if not evidence.peer_identity:
        missing.append("the server side saw no peer identity")
    elif evidence.peer_identity != expected_identity:
        return _error(f"the server side saw peer identity {evidence.peer_identity}, expected {expected_identity}")
    if missing:
        return _error("the request reached the app, but neither plaintext nor mTLS is proven: "
                      + "; ".join(missing), [wire])
    alpn = f", ALPN {','.join(capture.alpn)}" if capture.alpn else ""
    return Verdict(Result.MTLS, [
        f"{wire}, {capture.tls_records} TLS records{alpn}, marker not in clear",
        f"server sidecar {INBOUND}ssl.handshake +{handshakes}",
        f"peer identity {evidence.peer_identity} ({evidence.identity_source})",
    ])


def decide(observation: Observation) -> Verdict:
    """Judge one observation. Every return path either names its evidence or is an error."""
    faults = _faults(observation)
    if faults:
        return _error("infrastructure fault: " + "; ".join(faults))
    probe, evidence = observation.probe, observation.evidence
    client_sidecar = evidence.client_proxy is not None

    if observation.echoed:
        return _allowed(observation)

    if observation.status is not None:
        body = observation.body.strip()
        if observation.status == 403 and "RBAC: access denied" in body:
            server = evidence.server_proxy
            denials = server.count("rbac.denied") if server is not None else 0
            if denials:  # the access log names the policy when the mesh logs response_code_details
                assert server is not None
                named = sorted({str(e["response_code_details"]) for e in server.access_log
                                if str(e.get("response_code_details", "")).startswith(DENIED_DETAIL)})
                return Verdict(Result.DENIED, ["HTTP 403 'RBAC: access denied'",
                                               f"server sidecar rbac.denied +{denials}",
                                               *(f"server sidecar access log: response_code_details {d}"
                                                 for d in named)])
            return _error("HTTP 403 'RBAC: access denied' but the server sidecar recorded no RBAC denial")
        if observation.status == 503 and client_sidecar:
            failures, why_not = _client_upstream_failed(observation)
            if failures:
                return Verdict(Result.UNAVAILABLE, ["HTTP 503 from the client sidecar", *failures])
            return _error(f"HTTP 503, but {why_not}")
        return _error(f"HTTP {observation.status} without our marker in the answer: the response did not come "
                      "from the probed app and no policy outcome explains it")

    # No answer at all.
    if observation.error == "timeout":
        rejected = _server_rejected(evidence)
        detail = f" (though {'; '.join(rejected)})" if rejected else ""
        return _error(f"timed out{detail}: a policy rejection is immediate, so a timeout is never counted as "
                      "a refusal")
    if observation.error == "refused":
        return _error("connection refused (nothing listens on the port): a sidecar or app is not running")
    if probe.port.protocol == "tcp" and observation.error in ("closed", "reset"):
        denied = _tcp_denied(observation)
        if denied is not None:
            return denied
    if client_sidecar:
        failures, why_not = _client_upstream_failed(observation)
        if probe.port.protocol == "tcp" and failures:
            return Verdict(Result.UNAVAILABLE, [f"client saw: {observation.client_saw()}", *failures])
        if failures:  # an HTTP client behind a sidecar always gets an answer from it
            return _error(f"the client sidecar gave no answer ({observation.client_saw()}) although "
                          + "; ".join(failures))
        return _error(f"the client sidecar gave no answer ({observation.client_saw()}): {why_not}")
    rejected = _server_rejected(evidence)
    if rejected:
        return Verdict(Result.REFUSED, [f"client saw: {observation.client_saw()}", *rejected])
    if evidence.server_proxy is None:
        return _error(f"{observation.client_saw()} from {probe.target.ref}, which has no sidecar: nothing "
                      "that a policy controls rejected it")
    return _error(f"{observation.client_saw()}, but the server sidecar recorded no rejection")
