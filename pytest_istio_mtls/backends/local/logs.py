"""Reading the sidecars' access logs into a per-pod index, and the diagnostics a failed row shows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...judge import accesslog
from ...judge.observation import Probe
from ...oracle import mtls
from ..kube.diagnostics import cluster_summary, inbound_summary
from . import prober
from .pods import LocalRun, Pod


class AccessLogs(LocalRun):
    def _read_logs(self, pod: Pod) -> None:
        if pod.agent_log is not None:
            self._read_log(pod, pod.agent_log)
            return
        assert pod.files is not None
        for path in (pod.files.inbound_log, pod.files.outbound_log):
            self._read_log(pod, path)

    def _read_log(self, pod: Pod, path: Path) -> None:
        """New complete lines of one access log, indexed by (direction, downstream remote address).

        A real sidecar writes both directions to one log: a connection accepted on the pod's own address
        (the original destination of inbound capture) is inbound, anything else outbound.
        """
        offset = pod.log_offsets.get(str(path), 0)
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        complete = data.rfind(b"\n") + 1
        pod.log_offsets[str(path)] = offset + complete
        for entry in accesslog.parse(data[:complete].decode("utf-8", "replace").splitlines()):
            direction = entry.get("direction") or (
                "inbound" if str(entry.get("downstream_local_address", "")).startswith(f"{pod.ip}:") else "outbound")
            entry["direction"] = direction
            key = (str(direction), str(entry.get("downstream_remote_address")))
            pod.log_index.setdefault(key, []).append(entry)

    def _entries(self, ref: str, direction: str, remote: tuple[str, int] | None, probe: Probe) -> list[dict[str, Any]]:
        """The probe's own entries: same downstream address *and* its marker (HTTP) or its time window (TCP).

        The address alone is not enough: the kernel reuses ephemeral ports, and a pod's log keeps the
        entries of every earlier probe, so an old entry could name another connection as this probe's wire.
        """
        pod = self.pods.get(ref)
        if pod is None or remote is None:
            return []
        entries = pod.log_index.get((direction, f"{remote[0]}:{remote[1]}"), [])
        start, end = self._windows.get(probe.marker, (0.0, float("inf")))
        # A connection refused before any request was parsed (e.g. NR) has no marker even on an http port.
        return [e for e in entries if e.get("marker") == probe.marker or (
            e.get("marker") in (None, "", "-") and accesslog.started_within(e, start, end))]


    def diagnostics(self, probes: Sequence[Probe]) -> dict[str, str]:
        """Policies in force, what the sidecars really have (on istiod: Envoy's own config_dump; on the emulated
        control plane the config is written from the oracle's decisions, and says so), the oracle's prediction
        labelled as one, and each sidecar's last log lines."""
        sections: dict[str, str] = {}
        scenario = self.scenario
        if scenario is not None:
            sections["policies in force"] = "\n".join(p.ref for p in scenario.policies) or "(none)"
            lines = []
            for probe in probes:
                server = mtls.server_decision(scenario, probe.target, probe.port.target_port)
                client = (mtls.tls_client_decision(scenario, probe.source, probe.target, probe.port,
                                                        probe.request.tls) if probe.request.tls else
                          mtls.client_decision(scenario, probe.source, probe.target, probe.port))
                lines.append(f"{probe.pair}: server port {probe.port.target_port} "
                             f"{server.mode or 'without sidecar'}; client sends {client.sends}")
            if self.istiod is not None:
                sections["sidecar configuration (Envoy's config_dump)"] = self._envoy_config(probes)
                sections["oracle prediction (not evidence)"] = "\n".join(lines)
            else:
                sections["sidecar configuration (emulated: written from the oracle's decisions)"] = "\n".join(lines)
        for ref in sorted({p.source.ref for p in probes} | {p.target.ref for p in probes}):
            pod = self.pods.get(ref)
            if pod is None or pod.envoy is None:
                continue
            with open(pod.directory / "envoy.log", "rb") as file:
                file.seek(pod.log_start)
                log = file.read().decode(errors="replace").strip().splitlines()[-5:]
            if log:
                sections[f"envoy log {ref}"] = "\n".join(log)
        return sections



    def _envoy_config(self, probes: Sequence[Probe]) -> str:
        """Per probe, what the server sidecar's inbound listener and the client sidecar's outbound cluster hold."""
        lines: list[str] = []
        for probe in probes:
            lines.append(f"{probe.pair}:")
            server, client = self.pods.get(probe.target.ref), self.pods.get(probe.source.ref)
            if server is not None and server.workload.sidecar:
                dump, error = _dump(server, LISTENERS)
                text = error or inbound_summary(dump, probe.port.target_port)
                lines += [f"  server {server.ref} {line}" for line in text.splitlines()]
            if client is not None and client.workload.sidecar and not probe.port.pod:
                dump, error = _dump(client, CLUSTERS)
                text = error or cluster_summary(dump, f"outbound|{probe.port.port}|{probe.port.subset}|"
                                                      f"{probe.target.host}")
                lines += [f"  client {client.ref} {line}" for line in text.splitlines()]
        return "\n".join(lines)


LISTENERS = "/config_dump?resource=dynamic_listeners"
CLUSTERS = "/config_dump?resource=dynamic_active_clusters"


def _dump(pod: Pod, resource: str) -> tuple[Any, str]:
    """The sidecar's config_dump of ``resource``, or why it could not be read."""
    try:
        return json.loads(prober.admin(pod.netns, resource, 5.0)), ""
    except (OSError, ValueError) as exc:
        return None, f"config_dump unavailable ({exc})"
