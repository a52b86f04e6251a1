"""Has every sidecar received the policies? The generation-marker method, the same as the local backend's, and
the readers of the proxies' config dumps that the diagnostics share.

Istio has no "policy acknowledged" signal since 1.23, and sleeping is a guess. So a change is in force when:

1. every istiod replica's config store (``/debug/configz``, read by ``pilot-discovery request`` in its pod) holds each
   applied object at the resourceVersion the API server gave it, and none that was removed;
2. then a marker EnvoyFilter in each of the run's sidecar namespaces is bumped to generation N (it stamps the
   sidecars' ``virtualOutbound`` listener), and every sidecar of the topology serves a listener with that stamp,
   nothing warming. A push is built from the whole store, so a sidecar serving N was configured from a store that
   already held the scenario.

Nothing here consults the oracle: the proxies are judged by what istiod sent them, not by what we predict.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from ..base import BackendError
from .apply import Applied
from .client import KubeApi, KubeError
from .manifests import HTTP_OPTIONS, PROXY
from .naming import MANAGED_BY
from .workloads import PodInfo

MODE_CHAINS: dict[str, frozenset[str]] = {
    "STRICT": frozenset({"tls"}),
    "PERMISSIVE": frozenset({"tls", "raw_buffer"}),
    "DISABLE": frozenset({"raw_buffer"}),
}
LISTENERS = "config_dump?resource=dynamic_listeners"
CLUSTERS = "config_dump?resource=dynamic_active_clusters"
MARKER = "pytest-istio-mtls-generation"
MARKER_KEY = "istio-mtls.pytest.io"
MARKER_LISTENER = "config_dump?resource=dynamic_listeners&name_regex=virtualOutbound"
XDS_STATS = "stats?filter=" + quote(r"^(listener_manager\.lds\.update_rejected|cluster_manager\.cds\.update_rejected|"
                                    r"listener_manager\.total_listeners_warming|cluster_manager\.warming_clusters)$",
                                    safe="")
ISTIOD_CONTAINER = "discovery"


# -- reading config dumps -----------------------------------------------------------------------------------


def _entries(dump: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    configs = dump.get("configs")
    return [c for c in configs if isinstance(c, Mapping)] if isinstance(configs, list) else []


def listeners(dump: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Active listeners from a full dump or a ``resource=dynamic_listeners`` dump."""
    found = []
    for entry in _entries(dump):
        for item in entry.get("dynamic_listeners") or [entry]:
            listener = (item.get("active_state") or {}).get("listener")
            if isinstance(listener, Mapping):
                found.append(listener)
    return found


def clusters(dump: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Active clusters by name, from a full dump or a ``resource=dynamic_active_clusters`` dump."""
    found: dict[str, Mapping[str, Any]] = {}
    for entry in _entries(dump):
        for item in entry.get("dynamic_active_clusters") or [entry]:
            cluster = item.get("cluster")
            if isinstance(cluster, Mapping) and cluster.get("name"):
                found[str(cluster["name"])] = cluster
    return found


def inbound_chains(dump: Mapping[str, Any], port: int) -> list[Mapping[str, Any]]:
    """Filter chains of the inbound listener (0.0.0.0:15006) that match destination ``port``."""
    chains: list[Mapping[str, Any]] = []
    for listener in listeners(dump):
        address = (listener.get("address") or {}).get("socket_address") or {}
        if listener.get("name") != "virtualInbound" and address.get("port_value") != 15006:
            continue
        for chain in listener.get("filter_chains") or []:
            match = chain.get("filter_chain_match") or {}
            if int(match.get("destination_port", 0) or 0) == port:
                chains.append(chain)
    return chains


def inbound_transports(chains: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Transport protocols accepted; a chain without one accepts both."""
    found: set[str] = set()
    for chain in chains:
        protocol = (chain.get("filter_chain_match") or {}).get("transport_protocol")
        found.update({"tls", "raw_buffer"} if not protocol else {str(protocol)})
    return frozenset(found)


def mode_of(transports: frozenset[str]) -> str:
    return next((mode for mode, chains in MODE_CHAINS.items() if chains == transports), "no known mode")


def _is_tls(socket: Any) -> bool:
    return "UpstreamTlsContext" in json.dumps(socket) or (
        isinstance(socket, Mapping) and socket.get("name") == "envoy.transport_sockets.tls")


def cluster_tls(cluster: Mapping[str, Any]) -> str:
    """``tls`` (always TLS), ``auto`` (TLS for tlsMode=istio endpoints, else plaintext) or ``none``."""
    options = [m.get("transport_socket") for m in cluster.get("transport_socket_matches") or []]
    if cluster.get("transport_socket") is not None or not options:
        options.append(cluster.get("transport_socket"))
    tls = [_is_tls(o) for o in options if o is not None] or [False]
    if all(tls):
        return "tls"
    return "auto" if any(tls) else "none"


def cluster_fresh(cluster: Mapping[str, Any]) -> bool:
    options = (cluster.get("typed_extension_protocol_options") or {}).get(HTTP_OPTIONS) or {}
    limit = (options.get("common_http_protocol_options") or {}).get("max_requests_per_connection")
    return str(limit) == "1"


# -- the generation marker ------------------------------------------------------------------------------------------


def fetch_dump(kube: KubeApi, pod: PodInfo, resource: str) -> tuple[Any, str]:
    result = kube.exec(pod.namespace, pod.name, PROXY, ["pilot-agent", "request", "GET", resource], timeout=30)
    if not result.ok:
        return None, f"config unavailable ({result.describe()})"
    try:
        return json.loads(result.stdout), ""
    except ValueError:
        return None, "config unavailable (not JSON)"




def marker(namespace: str, generation: int, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """An EnvoyFilter stamping the ``virtualOutbound`` listener of every sidecar in ``namespace`` with a generation."""
    return {
        "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
        "metadata": {"name": MARKER, "namespace": namespace, "labels": dict(labels or MANAGED_BY)},
        "spec": {"configPatches": [{
            "applyTo": "LISTENER",
            "match": {"context": "SIDECAR_OUTBOUND", "listener": {"name": "virtualOutbound"}},
            "patch": {"operation": "MERGE", "value": {"metadata": {"filter_metadata": {
                MARKER_KEY: {"generation": str(generation)}}}}},
        }]},
    }


def served_generation(dump: Mapping[str, Any]) -> str:
    """The marker generation of the virtualOutbound listener a sidecar serves ('' if none)."""
    for listener in listeners(dump):
        if listener.get("name") == "virtualOutbound":
            meta = ((listener.get("metadata") or {}).get("filter_metadata") or {}).get(MARKER_KEY) or {}
            return str(meta.get("generation") or "")
    return ""


def parse_configz(text: str) -> dict[tuple[str, str, str], str]:
    """istiod's ``/debug/configz``: (kind, namespace, name) → the resourceVersion it holds."""
    found: dict[tuple[str, str, str], str] = {}
    for item in json.loads(text or "[]") or []:
        meta = item.get("metadata") or item
        kind = str(item.get("kind") or meta.get("type") or "")
        found[(kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))] = str(
            meta.get("resourceVersion") or "")
    return found


def pending_in_store(held: Mapping[tuple[str, str, str], str], applied: Iterable[Applied],
                     removed: Iterable[Applied]) -> list[str]:
    """What a store still lacks: applied objects not at their resourceVersion, removed ones still there."""
    applied = list(applied)
    again = {a.ref for a in applied}
    pending = [f"{a.ref} at resourceVersion {a.resource_version} (istiod has "
               f"{held.get((a.kind, a.namespace, a.name)) or 'none'})" for a in applied
               if held.get((a.kind, a.namespace, a.name)) != a.resource_version]
    pending += [f"{r.ref} still held after its deletion" for r in removed
                if (r.kind, r.namespace, r.name) in held and r.ref not in again]
    return pending


def poll(check: Callable[[], str], timeout: float, interval: float, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> str:
    """Call ``check`` until it returns '' or ``timeout`` passes; returns its last answer ('' when done)."""
    deadline = clock() + timeout
    while True:
        answer = check()
        if not answer or clock() >= deadline:
            return answer
        sleep(interval)


class Generations:
    """The generation marker of one run: where it lives, what it is at, and the waits that use it."""

    def __init__(self, kube: KubeApi, istiod_namespace: str, istiod_selector: str, timeout: float,
                 labels: Mapping[str, str] | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.kube = kube
        self.istiod_namespace = istiod_namespace
        self.istiod_selector = istiod_selector
        self.timeout = timeout
        self.labels = dict(labels or MANAGED_BY)
        self.sleep = sleep
        self.generation = 0
        self.placed: set[str] = set()  # namespaces holding a marker: removed by ``remove``

    def wait_held(self, applied: Sequence[Applied], removed: Sequence[Applied]) -> None:
        """Every istiod replica's store holds ``applied`` at their resourceVersions and none of ``removed``."""
        def check() -> str:
            try:
                replicas = [p for p in self.kube.list("v1", "Pod", self.istiod_namespace, self.istiod_selector)
                            if (p.get("status") or {}).get("phase") == "Running"]
            except KubeError as exc:
                return f"istiod's pods cannot be listed ({exc})"
            if not replicas:
                return f"no running istiod pod ({self.istiod_selector}) in {self.istiod_namespace}"
            gaps = []
            for pod in replicas:
                name = str((pod.get("metadata") or {}).get("name"))
                # From inside istiod's own container: its debug endpoints answer localhost without a token.
                result = self.kube.exec(self.istiod_namespace, name, ISTIOD_CONTAINER,
                                        ["pilot-discovery", "request", "GET", "/debug/configz"], timeout=30)
                try:
                    if not result.ok:
                        raise ValueError(result.describe())
                    held = parse_configz(result.stdout.decode("utf-8", "replace"))
                except (ValueError, AttributeError) as exc:
                    gaps.append(f"{name}: its config store cannot be read ({exc})")
                    continue
                gaps += [f"{name}: {gap}" for gap in pending_in_store(held, applied, removed)]
            return "; ".join(gaps)

        pending = poll(check, self.timeout, 0.1, self.sleep)
        if pending:
            raise BackendError(f"istiod did not pick up the change within {self.timeout:.0f}s (--istio-timeout): "
                               f"{pending}")

    def confirm(self, namespaces: Iterable[str], pods: Iterable[PodInfo]) -> None:
        """Bump the marker in ``namespaces`` and wait until every sidecar of ``pods`` serves it."""
        self.generation += 1
        for namespace in sorted(set(namespaces)):
            self.kube.apply(marker(namespace, self.generation, self.labels))
            self.placed.add(namespace)
        wanted = str(self.generation)
        waiting = {pod.ref: pod for pod in pods if pod.sidecar}

        def check() -> str:
            shown: dict[str, str] = {}
            for ref, pod in list(waiting.items()):
                dump, error = fetch_dump(self.kube, pod, MARKER_LISTENER)
                served = served_generation(dump) if dump is not None else ""
                if served != wanted:
                    shown[ref] = error or f"serves generation {served or 'none'}, want {wanted}"
                    continue
                values = xds_stats(self.kube, pod)
                if values.get("listener_manager.total_listeners_warming", 0) or values.get(
                        "cluster_manager.warming_clusters", 0):
                    shown[ref] = "listeners or clusters still warming"
                    continue
                del waiting[ref]  # a sidecar never goes back to an older generation
            return "; ".join(f"{ref}: {what}" for ref, what in shown.items())

        pending = poll(check, self.timeout, 0.1, self.sleep)
        if pending:
            rejected = [f"{ref} rejected {n} configuration updates from istiod (a NACK: see its istio-proxy log)"
                        for ref, pod in waiting.items()
                        if (n := sum(v for k, v in xds_stats(self.kube, pod).items() if k.endswith("update_rejected")))]
            raise BackendError(f"timed out after {self.timeout:.0f}s (--istio-timeout) waiting for istiod's "
                               f"configuration on every sidecar: {'; '.join([pending, *rejected])}")

    def remove(self) -> None:
        """Delete the markers this run placed (a namespace the run deletes takes its marker along)."""
        for namespace in sorted(self.placed):
            self.kube.delete("networking.istio.io/v1alpha3", "EnvoyFilter", namespace, MARKER)
        self.placed.clear()


def xds_stats(kube: KubeApi, pod: PodInfo) -> dict[str, int]:
    """The sidecar's xDS health counters (rejected updates, warming listeners and clusters); {} if unreadable."""
    result = kube.exec(pod.namespace, pod.name, PROXY, ["pilot-agent", "request", "GET", XDS_STATS], timeout=30)
    values: dict[str, int] = {}
    for line in result.stdout.decode("utf-8", "replace").splitlines() if result.ok else []:
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            values[name.strip()] = int(value)
    return values
