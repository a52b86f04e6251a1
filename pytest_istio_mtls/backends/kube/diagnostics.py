"""Text that explains failed probes: what each proxy was configured with, the policies in force, and
what the pods and the cluster said. Every section is bounded; a section that cannot be read says why.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from ...judge.observation import Probe
from ..base import BackendError
from .apply import Applied
from .client import KubeApi
from .manifests import PROXY
from .naming import Naming
from .propagation import CLUSTERS, LISTENERS, cluster_fresh, cluster_tls, clusters, fetch_dump, inbound_chains
from .workloads import PodInfo

MAX_LINES = 40


def _filters(chain: Mapping[str, Any]) -> list[str]:
    names = []
    for network in chain.get("filters") or []:
        names.append(str(network.get("name")))
        config = network.get("typed_config") or {}
        names += [f"  {h.get('name')}" for h in config.get("http_filters") or []]
    return names


def inbound_summary(dump: Any, port: int) -> str:
    chains = inbound_chains(dump, port)
    if not chains:
        return f"no inbound filter chain for port {port}"
    lines = []
    for chain in chains:
        match = chain.get("filter_chain_match") or {}
        alpn = ",".join(match.get("application_protocols") or [])
        lines.append(f"chain {chain.get('name', '?')}: transport={match.get('transport_protocol', 'any')}"
                     + (f" alpn={alpn}" if alpn else "") + f" filters={','.join(_filters(chain)) or '-'}")
        rbac = [n for n in json.dumps(chain).split('"') if n.startswith("ns[") and "-policy[" in n]
        if rbac:
            lines.append(f"  RBAC policies: {', '.join(sorted(set(rbac)))}")
    return "\n".join(lines)


def cluster_summary(dump: Any, name: str) -> str:
    cluster = clusters(dump).get(name)
    if cluster is None:
        return f"no cluster {name}"
    text = json.dumps(cluster)
    sni = next((part for part in text.split('"') if part.startswith("outbound_.")), "")
    matches = [m.get("name", "?") for m in cluster.get("transport_socket_matches") or []]
    return (f"{name}: transport={cluster_tls(cluster)}" + (f" matches={','.join(matches)}" if matches else "")
            + (f" sni={sni}" if sni else "") + f" fresh-connections={'yes' if cluster_fresh(cluster) else 'no'}")


def _tail(text: str, lines: int = MAX_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def sections(kube: KubeApi, naming: Naming, pods: Mapping[str, PodInfo], probes: Sequence[Probe],
             applied: Iterable[Applied]) -> dict[str, str]:
    result: dict[str, str] = {}
    dumps: dict[tuple[str, str], Any] = {}

    def dump(ref: str, resource: str) -> tuple[Any, str]:
        pod = pods.get(ref)
        if pod is None:
            return None, f"{ref} has no running pod"
        key = (ref, resource)
        if key not in dumps:
            dumps[key] = fetch_dump(kube, pod, resource)
        return dumps[key]  # type: ignore[no-any-return]

    for probe in probes:
        if probe.target.sidecar:
            title = f"server {probe.target.ref} inbound port {probe.port.target_port}"
            data, error = dump(probe.target.ref, LISTENERS)
            result.setdefault(title, error or inbound_summary(data, probe.port.target_port))
        if probe.source.sidecar:
            name = f"outbound|{probe.port.port}||{naming.host(probe.target.name, probe.target.namespace)}"
            title = f"client {probe.source.ref} cluster for {probe.target.ref}:{probe.port.port}"
            data, error = dump(probe.source.ref, CLUSTERS)
            result.setdefault(title, error or cluster_summary(data, name))
    result["policies in force"] = _policies(kube, applied)
    refs = sorted({w.ref for p in probes for w in (p.source, p.target)})
    result["proxy logs"] = _logs(kube, pods, refs)
    result["events"] = _events(kube, sorted({pods[r].namespace for r in refs if r in pods}))
    if naming.mapped:
        result["namespaces"] = "\n".join(f"{original} is {naming.ns(original)} in the cluster"
                                         for original in sorted({w.namespace for p in probes
                                                                 for w in (p.source, p.target)}))
    return result


def _policies(kube: KubeApi, applied: Iterable[Applied]) -> str:
    documents = []
    for item in applied:
        try:
            obj = kube.get(item.api_version, item.kind, item.namespace, item.name)
        except BackendError as exc:
            documents.append(f"# {item.ref}: {exc}")
            continue
        if obj is None:
            documents.append(f"# {item.ref}: not found")
            continue
        metadata = obj.get("metadata") or {}
        shown = {"kind": obj.get("kind"), "metadata": {"name": metadata.get("name"),
                                                       "namespace": metadata.get("namespace"),
                                                       "creationTimestamp": metadata.get("creationTimestamp")},
                 "spec": obj.get("spec")}
        documents.append(yaml.safe_dump(shown, sort_keys=False).rstrip())
    return "\n---\n".join(documents) or "none"


def _logs(kube: KubeApi, pods: Mapping[str, PodInfo], refs: Sequence[str]) -> str:
    parts = []
    for ref in refs:
        pod = pods.get(ref)
        if pod is None or not pod.sidecar:
            continue
        try:
            text = kube.logs(pod.namespace, pod.name, PROXY, tail_lines=8)
        except BackendError as exc:
            text = str(exc)
        parts.append(f"{ref} ({pod.name}):\n" + _tail(text, 8))
    return "\n".join(parts) or "no sidecar logs"


def _events(kube: KubeApi, namespaces: Sequence[str]) -> str:
    lines = []
    for namespace in namespaces:
        try:
            events = kube.list("v1", "Event", namespace)
        except BackendError as exc:
            lines.append(f"{namespace}: {exc}")
            continue
        warnings = [e for e in events if e.get("type") == "Warning"]
        warnings.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        lines += [f"{namespace} {(e.get('involvedObject') or {}).get('name')}: {e.get('reason')}: "
                  f"{str(e.get('message', '')).strip()}" for e in warnings[-10:]]
    return "\n".join(lines) or "no warning events"
