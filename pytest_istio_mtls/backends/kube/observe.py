"""A batch of probes into observations with evidence.

Probes run in rounds: within a round each server pod is the target of at most one probe, because a
server's inbound counters (``listener.0.0.0.0_15006.*``) cannot be told apart per connection. Each
round: start a capture on every target pod, read the involved sidecars' stats (the previous round's
reading is reused when nothing else touched the proxy), run one exec per source with all its
probes, read the stats again, stop the captures, read the access logs. Anything that prevents a
proper reading (no pod, a failed exec, a proxy that does not answer) becomes a fault of the
affected observation, so its verdict is an error, never a pass.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...judge import accesslog
from ...judge.capture import analyse
from ...judge.identity import peer_from_echo
from ...judge.observation import CaptureEvidence, Observation, Probe, ProxyEvidence
from ...judge.stats import delta
from ..base import BackendError
from . import routing
from .client import KubeApi
from .evidence import Capture, access_log, format_address, parse_address, snapshot, wait_for_logs
from .manifests import CURL, ECHO_DIR, TLS_CLIENT
from .naming import Naming
from .probes import CONNECT_TIMEOUT_S, HTTP_TIMEOUT_S, Reading, parse, read, script, tls_batch
from .workloads import PodInfo

Stats = tuple[dict[str, int] | None, str]
INBOUND = ("127.0.0.1", 15006)  # where iptables redirects a sidecar's call to its own pod (on lo)


def self_call(probe: Probe) -> bool:
    """A sidecar workload calling itself: the connection stays on lo, redirected to the inbound listener."""
    return probe.source.ref == probe.target.ref and probe.target.sidecar


def _side(entries: list[dict[str, Any]], probe: Probe, direction: str) -> list[dict[str, Any]]:
    """A self-call's one log holds the client's (outbound) and the server's (inbound) entries of the same probe:
    keep one side's, told apart by the cluster they went to."""
    if not self_call(probe):
        return entries
    other = "inbound|" if direction == "outbound" else "outbound|"
    return [e for e in entries if not str(e.get("upstream_cluster", "")).startswith(other)]


def _connected(entry: dict[str, Any]) -> tuple[str, int] | None:
    """The client sidecar's local address of an upstream connection that was made and not failed, else None."""
    if str(entry.get("response_flags") or "-") not in ("-", ""):
        return None
    return parse_address(entry.get("upstream_local_address"))


def rounds(probes: Sequence[Probe]) -> list[list[int]]:
    """Probe indexes grouped so that no target workload appears twice in a round (order kept)."""
    groups: list[list[int]] = []
    targets: list[set[str]] = []
    for index, probe in enumerate(probes):
        for group, used in zip(groups, targets, strict=True):
            if probe.target.ref not in used:
                group.append(index)
                used.add(probe.target.ref)
                break
        else:
            groups.append([index])
            targets.append({probe.target.ref})
    return groups


Credentials = Callable[[Probe], "tuple[bytes, bytes] | None"]  # a TLS-speaking client's certificate and key


def pod_address(probe: Probe, pods: Mapping[str, PodInfo]) -> str:
    """The pod address a probe dials itself ('' : it dials the Service): ``pod/`` rows, and one endpoint of a
    shared Service for a client without a sidecar (``routing.direct``)."""
    pod = pods.get(probe.target.ref)
    return pod.ip if pod is not None and (probe.port.pod or routing.direct(probe)) else ""


def run_sources(kube: KubeApi, naming: Naming, pods: Mapping[str, PodInfo], probes: Sequence[Probe],
                indexes: Sequence[int], credentials: Credentials | None = None) -> dict[int, Reading | str]:
    """One exec per source pod (curl), and one more for its probes that speak TLS themselves (``tlsprobe.py``,
    their keys on its stdin); each probe gets a Reading, or the fault that prevented one."""
    by_source: dict[tuple[str, bool], list[int]] = {}
    for index in indexes:
        by_source.setdefault((probes[index].source.ref, bool(probes[index].request.tls)), []).append(index)
    results: dict[int, Reading | str] = {}
    for (source, tls), members in by_source.items():
        pod = pods.get(source)
        if pod is None:
            results.update(dict.fromkeys(members, f"{source} has no running pod"))
            continue
        token = secrets.token_hex(6)
        batch = [probes[i] for i in members]
        addresses = [pod_address(p, pods) for p in batch]
        timeout = 30.0 + len(batch) * (HTTP_TIMEOUT_S + CONNECT_TIMEOUT_S)
        if tls:
            try:
                pairs = [credentials(p) if credentials is not None else None for p in batch]
            except BackendError as exc:
                results.update(dict.fromkeys(members, f"no client certificate for {source}: {exc}"))
                continue
            result = kube.exec(pod.namespace, pod.name, TLS_CLIENT, ["python3", f"{ECHO_DIR}/tlsprobe.py", token],
                               timeout, stdin=tls_batch(batch, naming, addresses, pairs))
        else:
            result = kube.exec(pod.namespace, pod.name, CURL, ["sh", "-c", script(batch, naming, token, addresses)],
                               timeout)
        outputs = parse(result.stdout, token, len(batch))
        for index, output in zip(members, outputs, strict=True):
            if output.complete:
                results[index] = read(probes[index], output)
            elif result.error:
                results[index] = f"the probe exec in {pod.ref} failed: {result.error}"
            else:
                results[index] = f"the probe script in {pod.ref} printed no result for this probe ({result.describe()})"
    return results


def sweep(kube: KubeApi, naming: Naming, pods: Mapping[str, PodInfo],
          probes: Sequence[Probe]) -> dict[int, tuple[object, ...]]:
    """Client-side outcomes only (no evidence): what the consecutive-probe confirmation compares."""
    readings = run_sources(kube, naming, pods, probes, range(len(probes)))
    return {i: (r.outcome() if isinstance(r, Reading) else ("fault", r)) for i, r in readings.items()}


@dataclass
class Round:
    indexes: list[int]
    started: float = field(default_factory=time.time)
    captures: dict[str, Capture] = field(default_factory=dict)
    pcaps: dict[str, bytes] = field(default_factory=dict)
    readings: dict[int, Reading | str] = field(default_factory=dict)
    logs: dict[str, tuple[list[dict[str, Any]], str]] = field(default_factory=dict)


class Observer:
    """Runs batches against the deployed pods; keeps the last stats reading of each proxy."""

    def __init__(self, kube: KubeApi, naming: Naming, pods: Mapping[str, PodInfo],
                 progress: Callable[[str], None], pcap_dir: Path | None = None, access_logs: bool = True,
                 credentials: Credentials | None = None) -> None:
        self.kube = kube
        self.credentials = credentials
        self.access_logs = access_logs  # False: the mesh writes no access logs; read them once, do not wait
        self.naming = naming
        self.pods = pods
        self.progress = progress
        self.pcap_dir = pcap_dir

    def observe(self, probes: Sequence[Probe]) -> list[Observation]:
        observations = [Observation(p) for p in probes]
        stats: dict[str, Stats] = {}
        for indexes in rounds(probes):
            current = Round(list(indexes))
            proxies = sorted({w.ref for i in indexes for w in (probes[i].source, probes[i].target) if w.sidecar})
            for ref in sorted({probes[i].target.ref for i in indexes}):
                pod = self.pods.get(ref)
                if pod is not None:  # a round has one probe per target
                    probe = next(probes[i] for i in indexes if probes[i].target.ref == ref)
                    capture = Capture(self.kube, pod, [INBOUND[1]], "lo") if self_call(probe) else \
                        Capture(self.kube, pod, [probe.port.target_port])
                    current.captures[ref] = capture
                    capture.start()
            before = {ref: stats[ref] if stats.get(ref, (None, ""))[0] is not None else self._stats(ref)
                      for ref in proxies}
            current.readings = run_sources(self.kube, self.naming, self.pods, probes, indexes, self.credentials)
            after = {ref: self._stats(ref) for ref in proxies}
            stats.update(after)
            current.pcaps = {ref: capture.stop() for ref, capture in current.captures.items()}
            current.logs = self._logs(probes, current, proxies, self._denied(probes, indexes, before, after))
            for index in indexes:
                observations[index] = self._assemble(probes[index], current, before, after, index)
        return observations

    def _stats(self, ref: str) -> Stats:
        pod = self.pods.get(ref)
        if pod is None:
            return None, f"{ref} has no running pod"
        return snapshot(self.kube, pod)

    @staticmethod
    def _denied(probes: Sequence[Probe], indexes: Sequence[int], before: Mapping[str, Stats],
                after: Mapping[str, Stats]) -> set[int]:
        """The round's probes whose server sidecar counted an RBAC denial (one probe per target in a round)."""
        found = set()
        for index in indexes:
            ref = probes[index].target.ref
            first, second = before.get(ref, (None, ""))[0], after.get(ref, (None, ""))[0]
            if first is not None and second is not None and any(
                    name.endswith("rbac.denied") and moved > 0 for name, moved in delta(first, second).items()):
                found.add(index)
        return found

    def _logs(self, probes: Sequence[Probe], current: Round, proxies: Sequence[str],
              denied: set[int]) -> dict[str, tuple[list[dict[str, Any]], str]]:
        """Access logs of the round's sidecars, re-read until every sidecar client's entry is there, and the
        server's entry of every denial the server counted (the verdict needs the policy it names)."""
        def fetch() -> dict[str, tuple[list[dict[str, Any]], str]]:
            since = time.time() - current.started
            return {ref: access_log(self.kube, self.pods[ref], since) for ref in proxies if ref in self.pods}

        def complete(logs: dict[str, tuple[list[dict[str, Any]], str]]) -> bool:
            for i in current.indexes:
                probe, reading = probes[i], current.readings.get(i)
                if i in denied and not probe.source.sidecar and isinstance(reading, Reading) and \
                        reading.client is not None and not self._server_entries(probe, logs, reading.client):
                    return False  # written when the server closes the connection, flushed on its own timer
                if not probe.source.sidecar and probe.port.protocol == "tcp" and probe.target.sidecar and \
                        probe.target.ref in logs and isinstance(reading, Reading) and reading.echoed and \
                        reading.client is not None and not self._server_entries(probe, logs, reading.client):
                    # A TCP peer identity (a client speaking TLS with a mesh certificate) is only in the server's
                    # entry, written when the connection closes: without waiting, mtls is unproven now and then.
                    return False
                if not (probe.source.sidecar and probe.source.ref in logs and isinstance(reading, Reading)):
                    continue
                entries = self._client_entries(probe, logs, reading)
                if not entries:
                    return False
                # A TCP peer identity (or denial) is only in the server's entry, written when the connection
                # closes and flushed on the server sidecar's own timer: wait for it too when the client got through.
                if (probe.port.protocol == "tcp" or i in denied) and probe.target.sidecar and probe.target.ref in logs:
                    for wire in (_connected(e) for e in entries):
                        if wire is not None and not self._server_entries(probe, logs, wire):
                            return False
            return True

        return wait_for_logs(fetch, complete) if self.access_logs else fetch()

    def _unmap(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: self.naming.unmap(v) if isinstance(v, str) else v for k, v in e.items()} for e in entries]

    def _client_entries(self, probe: Probe, logs: Mapping[str, tuple[list[dict[str, Any]], str]],
                        reading: Reading | str | None) -> list[dict[str, Any]]:
        entries = _side(logs.get(probe.source.ref, ([], ""))[0], probe, "outbound")
        if probe.port.protocol == "http":
            return accesslog.matching(entries, marker=probe.marker)
        if isinstance(reading, Reading) and reading.client is not None:
            return accesslog.matching(entries, downstream_remote_address=format_address(*reading.client))
        return []

    def _server_entries(self, probe: Probe, logs: Mapping[str, tuple[list[dict[str, Any]], str]],
                        wire: tuple[str, int] | None) -> list[dict[str, Any]]:
        entries = _side(logs.get(probe.target.ref, ([], ""))[0], probe, "inbound")
        found = accesslog.matching(entries, marker=probe.marker) if probe.port.protocol == "http" else []
        if wire is not None:
            address = format_address(*wire)
            found += [e for e in accesslog.matching(entries, downstream_remote_address=address) if e not in found]
        return found

    def _proxy(self, ref: str, before: Mapping[str, Stats], after: Mapping[str, Stats],
               entries: list[dict[str, Any]], faults: list[str]) -> ProxyEvidence:
        first, second = before.get(ref, (None, "")), after.get(ref, (None, ""))
        pod = self.pods.get(ref)
        live = first[0] is not None and second[0] is not None and pod is not None and pod.proxy_ready
        faults.extend(e for e in (first[1], second[1]) if e and e not in faults)
        moved = delta(first[0] or {}, second[0] or {}) if live else {}
        return ProxyEvidence(ref, {self.naming.unmap(k): v for k, v in moved.items()}, self._unmap(entries), live)

    def _assemble(self, probe: Probe, current: Round, before: Mapping[str, Stats], after: Mapping[str, Stats],
                  index: int) -> Observation:
        observation = Observation(probe)
        evidence = observation.evidence
        faults = evidence.faults
        for role, workload in (("client", probe.source), ("server", probe.target)):
            pod = self.pods.get(workload.ref)
            if pod is None:
                faults.append(f"the {role} {workload.ref} has no running pod")
            else:
                faults.extend(f"the {role} pod {pod.namespace}/{pod.name} {problem}" for problem in pod.problems)
        reading = current.readings.get(index)
        if isinstance(reading, Reading):
            observation.status, observation.error = reading.status, reading.error
            observation.error_detail, observation.echoed = reading.detail, reading.echoed
            observation.body, observation.latency_ms = reading.body, reading.latency_ms
        elif reading is not None:
            faults.append(reading)
        client_entries = self._client_entries(probe, current.logs, reading)
        if probe.source.sidecar:
            evidence.client_proxy = self._proxy(probe.source.ref, before, after, client_entries, faults)
            wire = next((a for a in (parse_address(e.get("upstream_local_address")) for e in client_entries) if a),
                        None)
        else:
            wire = reading.client if isinstance(reading, Reading) else None
        server_entries = self._server_entries(probe, current.logs, wire)
        if probe.target.sidecar:
            evidence.server_proxy = self._proxy(probe.target.ref, before, after, server_entries, faults)
        self._identity(observation, server_entries)
        evidence.capture = self._capture(probe, current, wire)
        return observation

    def _identity(self, observation: Observation, server_entries: list[dict[str, Any]]) -> None:
        evidence = observation.evidence
        if observation.echoed and observation.probe.port.protocol == "http":
            peer = peer_from_echo(observation.body)
            if peer:
                evidence.peer_identity, evidence.identity_source = self.naming.unmap(peer), "xfcc"
                return
        for entry in server_entries:
            peer = str(entry.get("downstream_peer_uri_san") or "")
            if peer.startswith("spiffe://"):
                evidence.peer_identity, evidence.identity_source = self.naming.unmap(peer), "access-log"
                return

    def _capture(self, probe: Probe, current: Round, wire: tuple[str, int] | None) -> CaptureEvidence | None:
        capture = current.captures.get(probe.target.ref)
        pod = self.pods.get(probe.target.ref)
        if capture is None or pod is None:
            return None
        interface, server = ("lo", INBOUND) if self_call(probe) else ("eth0", (pod.ip, probe.port.target_port))
        if capture.error and not capture.pcap:
            return CaptureEvidence(interface=interface, note=capture.error)
        pcap = current.pcaps.get(probe.target.ref, b"")
        path = ""
        if self.pcap_dir is not None and pcap:
            self.pcap_dir.mkdir(parents=True, exist_ok=True)
            target = self.pcap_dir / f"{probe.marker}.pcap"
            target.write_bytes(pcap)
            path = str(target)
        result = analyse(pcap, interface=interface, server=server, client=wire,
                         marker=probe.marker, pcap_path=path)
        if capture.error and not result.note:
            result.note = capture.error
        return result
