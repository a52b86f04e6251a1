"""Probing: one probe at a time with its stats deltas and capture, then the evidence joined to it through
conntrack (where NAT moved the connection) and the access logs."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...judge import capture, identity, stats
from ...judge.observation import CaptureEvidence, Observation, Probe, ProxyEvidence
from ...model import Workload
from ..base import BackendError
from . import conntrack, envoy, prober, routing
from .capture import save, to_pcap
from .logs import AccessLogs
from .pods import Pod, Pods


@dataclass
class Rewrites:
    """Where NAT moved one probe's connection, read from both pods' connection tracking (conntrack.py).

    Every join below goes through it: the client socket as its sidecar (or the wire) saw it, and the wire source as
    the server's sidecar saw it.
    """

    dialed: conntrack.Address  # what the client app connected to (a Service address, or the pod's)
    target: conntrack.Address  # the server pod's address and container port
    client: conntrack.Table
    server: conntrack.Table
    # Connections from the client pod to the target that appeared during the probe, the app's own excepted: the
    # client sidecar's upstream socket, which it does not log when the upstream TLS handshake failed.
    opened: list[conntrack.Address] = field(default_factory=list)

    def first_hop(self, local: conntrack.Address) -> conntrack.Address:
        """The client socket as the client's sidecar sees it, or the wire when it has none."""
        return conntrack.seen_as(self.client, local, self.dialed)

    def from_client_sidecar(self, upstream: conntrack.Address) -> conntrack.Address:
        """The client sidecar's upstream socket as it leaves the client pod."""
        return conntrack.seen_as(self.client, upstream, self.target)

    def at_server_sidecar(self, wire: conntrack.Address) -> conntrack.Address:
        return conntrack.seen_as(self.server, wire, self.target)



class Probing(Pods, AccessLogs):
    _rewrites: dict[str, Rewrites]  # probe marker → where NAT moved its connection


    def _read_stats(self, pod: Pod) -> dict[str, int] | None:
        try:
            return stats.parse_stats(prober.admin(pod.netns, "/" + stats.STATS_PATH))
        except OSError:
            return None

    def _resolve(self, client: Pod, target: Workload) -> str | None:
        """Resolve the target's FQDN the way the client pod would: through its hosts file."""
        try:
            text = Path("/etc/netns", client.netns, "hosts").read_text(encoding="utf-8")
        except OSError:
            return None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) > 1 and target.host in fields[1:]:
                return fields[0]
        return None

    def _health(self, pods: Sequence[Pod], probe: Probe) -> list[str]:
        faults = []
        for pod in pods:
            for process, what in ((pod.envoy, "sidecar"), (pod.app, "app")):
                if process is not None and process.poll() is not None:
                    faults.append(f"the {what} of {pod.ref} is not running (exit {process.returncode})")
        server = self.pods[probe.target.ref]
        if server.app is not None and server.app.poll() is None and not prober.accepts(
                server.netns, probe.port.target_port, timeout=0.5):
            faults.append(f"the app of {server.ref} does not accept connections on port {probe.port.target_port}")
        return faults

    def probe(self, probes: Sequence[Probe]) -> list[Observation]:
        """Probe one at a time (per-probe stats deltas and captures), then join the access logs."""
        if self.capture is None:
            raise BackendError("the local backend was not started")
        router = None
        if self.istiod is not None and self.istiod.kube is not None:
            router = routing.Router(self.istiod.kube, self.istiod.control.configz, self._confirm_istiod, self.pods,
                                    self.settings.timeout)
        done: dict[int, tuple[Observation, bytes, tuple[str, int] | None]] = {}
        try:
            for index in routing.order(probes):  # one routing change per group of probes, not per probe
                if router is not None and router.route(probes[index]):
                    self._stats = {}
                done[index] = self._probe_one(probes[index])
        finally:
            if router is not None:
                router.reset()
        sent = [done[index] for index in range(len(probes))]
        observations = [observation for observation, _, _ in sent]
        locals_ = [local for _, _, local in sent]
        self._wait_logs(probes, observations, locals_)
        for probe, (observation, pcap, local) in zip(probes, sent, strict=True):
            self._attach(probe, observation, pcap, local)
            self._rewrites.pop(probe.marker, None)
        return observations

    def _probe_one(self, probe: Probe) -> tuple[Observation, bytes, tuple[str, int] | None]:
        assert self.capture is not None
        client = self.pods.get(probe.source.ref)
        server = self.pods.get(probe.target.ref)
        observation = Observation(probe)
        if client is None or server is None:
            missing = probe.source.ref if client is None else probe.target.ref
            observation.evidence.faults.append(f"workload {missing} is not deployed")
            return observation, b"", None
        involved = {p.ref: p for p in (client, server) if p.workload.sidecar}
        faults = self._health([client, server], probe)
        before = {ref: self._stats.get(ref) or self._read_stats(pod) for ref, pod in involved.items()}
        self.capture.drain()  # discard frames of earlier traffic
        target = (server.ip, probe.port.target_port)
        earlier = {k for k in conntrack.read(client.netns) if k[1] == target} if client.workload.sidecar else set()
        sent_at = time.time()
        address = server.ip if probe.port.pod else self._resolve(client, probe.target)
        host = server.ip if probe.port.pod else probe.target.host
        tls = None
        if probe.request.tls and self.credentials is not None:
            tls = self.credentials.context(probe.source, probe.port, probe.request.tls)
        if faults:
            observation.evidence.faults.extend(faults)
            response = prober.Response()
        elif address is None:
            response = prober.Response(error="unresolved",
                                       detail=f"{probe.target.host} is not in /etc/netns/{client.netns}/hosts")
        elif probe.port.protocol == "http":
            response = prober.http(client.netns, (address, probe.port.port), host, probe.request,
                                   probe.marker, self.probe_timeout, tls)
        else:
            response = prober.tcp(client.netns, (address, probe.port.port), probe.marker, self.probe_timeout, tls)
        self._windows[probe.marker] = (sent_at, time.time())
        drained = self.capture.drain()
        if address is not None and response.local is not None:  # read now: a closed connection's entry expires
            self._rewrites[probe.marker] = self._tracked(client, server, (address, probe.port.port), target,
                                                         earlier, response.local)
        frames = drained.get(f"{server.netns}:lo" if client is server else server.veth, [])
        observation.status, observation.body = response.status, response.body[:4000]
        observation.error, observation.error_detail = response.error, response.detail  # type: ignore[assignment]
        observation.latency_ms, observation.echoed = response.latency_ms, response.echoed
        evidence = observation.evidence
        for ref, pod in involved.items():
            after = self._read_stats(pod)
            live = after is not None and pod.envoy is not None and pod.envoy.poll() is None
            previous = before.get(ref)
            moved = stats.delta(previous, after) if after is not None and previous is not None else {}
            if after is not None:
                self._stats[ref] = after
            # A self-call has one proxy in both roles: separate objects keep their log entries apart.
            if pod is client:
                evidence.client_proxy = ProxyEvidence(ref, dict(moved), live=live)
            if pod is server:
                evidence.server_proxy = ProxyEvidence(ref, dict(moved), live=live)
        if response.echoed and probe.port.protocol == "http":
            peer = identity.peer_from_echo(response.body)
            if peer:
                evidence.peer_identity, evidence.identity_source = peer, "xfcc"
        if not faults:  # something may have died during the probe
            evidence.faults.extend(self._health([client, server], probe))
        return observation, to_pcap(frames), response.local

    @staticmethod
    def _tracked(client: Pod, server: Pod, dialed: conntrack.Address, target: conntrack.Address,
                 earlier: set[tuple[conntrack.Address, conntrack.Address]], local: conntrack.Address) -> Rewrites:
        near = conntrack.read(client.netns)
        far = near if server is client else conntrack.read(server.netns)
        opened = [k[0] for k in near if k[1] == target and k not in earlier and k[0] != local] \
            if client.workload.sidecar else []
        return Rewrites(dialed, target, {k: v for k, v in near.items() if k[1] in (dialed, target)},
                        {k: v for k, v in far.items() if k[1] == target}, opened)

    def _wait_logs(self, probes: Sequence[Probe], observations: Sequence[Observation],
                   locals_: Sequence[tuple[str, int] | None]) -> None:
        """Wait (bounded) for the access-log entries the evidence needs, then attach them.

        Envoy flushes access logs every 10 ms; an entry that never comes leaves the evidence
        incomplete, and the verdict then refuses to pass the probe.
        """
        sidecars = [pod for pod in self.pods.values() if pod.workload.sidecar]
        pending: dict[str, str] = {}

        def missing() -> bool:
            pending.clear()
            for pod in sidecars:
                self._read_logs(pod)
            for probe, observation, local in zip(probes, observations, locals_, strict=True):
                evidence = observation.evidence
                if evidence.client_proxy is not None and local is not None:
                    evidence.client_proxy.access_log = self._entries(probe.source.ref, "outbound",
                                                                     self._first_hop(probe, local), probe)
                    if not evidence.client_proxy.access_log:
                        pending[probe.pair] = "client sidecar access-log entry"
                        continue
                # A TCP peer identity, or the policy an RBAC denial matched (HTTP and TCP), is only in the server
                # sidecar's log (no XFCC, no status on raw TCP); _attach joins it. Without a wire address it
                # cannot be joined, so there is nothing to wait for.
                wire = self._wire_source(probe, observation, local)
                if evidence.server_proxy is not None and wire is not None and (
                        (probe.port.protocol == "tcp" and observation.echoed)
                        or evidence.server_proxy.count("rbac.denied")) and \
                        not self._entries(probe.target.ref, "inbound", self._at_server_sidecar(probe, wire), probe):
                    pending[probe.pair] = "server sidecar access-log entry"
            return bool(pending)

        with contextlib.suppress(BackendError):
            self._poll(missing, "access logs", pending)

    def _first_hop(self, probe: Probe, local: tuple[str, int]) -> tuple[str, int]:
        rewrites = self._rewrites.get(probe.marker)
        return rewrites.first_hop(local) if rewrites is not None else local

    def _at_server_sidecar(self, probe: Probe, wire: tuple[str, int] | None) -> tuple[str, int] | None:
        rewrites = self._rewrites.get(probe.marker)
        return rewrites.at_server_sidecar(wire) if rewrites is not None and wire is not None else wire

    def _wire_source(self, probe: Probe, observation: Observation,
                     local: tuple[str, int] | None) -> tuple[str, int] | None:
        """The client's address on the wire: its sidecar's upstream socket, or the app's own socket (each as NAT in
        the client pod left it)."""
        client_proxy = observation.evidence.client_proxy
        rewrites = self._rewrites.get(probe.marker)
        if client_proxy is None:
            return self._first_hop(probe, local) if local is not None else None
        for entry in client_proxy.access_log:
            host, _, port = str(entry.get("upstream_local_address", "")).rpartition(":")
            if port.isdigit():
                upstream = (host, int(port))
                return rewrites.from_client_sidecar(upstream) if rewrites is not None else upstream
        # Logged, but without its upstream socket (Envoy leaves it out when the upstream TLS handshake failed):
        # the one connection to the target that appeared in the client pod during the probe is that socket.
        if client_proxy.access_log and rewrites is not None and len(rewrites.opened) == 1:
            return rewrites.from_client_sidecar(rewrites.opened[0])
        return None

    def _attach(self, probe: Probe, observation: Observation, pcap: bytes, local: tuple[str, int] | None) -> None:
        """Capture analysis and server-side log entries for one probe, joined on the wire address."""
        server = self.pods.get(probe.target.ref)
        if server is None or local is None:
            return
        evidence = observation.evidence
        wire = self._wire_source(probe, observation, local)
        path = ""
        if self.settings.report is not None:
            scenario = self.scenario.name if self.scenario is not None else "scenario"
            # Artifact stores (GitHub Actions, Windows) refuse ':' '<' '>' in file names.
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", probe.pair.replace("->", "_to_"))
            path = save(self.settings.report / "captures" / scenario / f"{name}.pcap", pcap)
        interface = f"{server.ref} lo" if probe.source.ref == server.ref else f"{server.veth} ({server.ref} eth0)"
        if wire is None:
            evidence.capture = CaptureEvidence(interface=interface, pcap=path, note=(
                "the client sidecar logged no upstream connection for this request"))
        else:
            # A sidecar's call to its own pod is redirected to its inbound listener before it reaches lo.
            self_call = probe.source.ref == server.ref and server.workload.sidecar
            destination = ("127.0.0.1", envoy.INBOUND_PORT) if self_call else (server.ip, probe.port.target_port)
            evidence.capture = capture.analyse(pcap, interface=interface, server=destination, client=wire,
                                               marker=probe.marker, pcap_path=path)
        if evidence.server_proxy is not None and wire is not None:
            evidence.server_proxy.access_log = self._entries(server.ref, "inbound",
                                                             self._at_server_sidecar(probe, wire), probe)
            if not evidence.peer_identity:
                peer = next((str(e["downstream_peer_uri_san"]) for e in evidence.server_proxy.access_log
                             if str(e.get("downstream_peer_uri_san", "-")).startswith("spiffe://")), "")
                if peer:
                    evidence.peer_identity, evidence.identity_source = peer, "access-log"
