"""Which workload answers a probe to a Service with several, and the subset a probe is routed to.

Every workload of a Service has its own EndpointSlice (``kubelet.endpoint_slice``). Before the probes that
expect one workload to answer, the router empties the other workloads' slices, as if their pods had left
the Service's endpoints, and points the Service's ClusterIP (this backend's kube-proxy DNAT) at that
workload. A probe with a subset also gets the VirtualService that routes the Service to the subset
(``manifests.subset_route``): Istio applies a subset's traffic policy only to traffic routed there.

No load balancer chooses, so a probe never reaches another workload. What is under test is unchanged: the
client's TLS is decided per endpoint (auto mTLS) and per cluster (the DestinationRule and the subset), and
neither depends on the other endpoints of a ClusterIP Service. A change is in force when istiod's store
holds the route (or no longer holds it), a marker push built after that reached every sidecar, and the
probing sidecar lists exactly the wanted endpoints in the probed cluster. No sleep, no retry of a probe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ...judge.observation import Probe
from ...model import Workload
from ..base import BackendError
from ..kube.client import Kube
from ..kube.manifests import subset_route
from ..kube.naming import Naming
from ..kube.propagation import poll
from ..kube.routing import cluster_hosts
from . import kubelet, prober
from .controlplane import NODE
from .system import run

State = tuple[str, str]  # (the workload ref that answers, "" for every workload; the subset, "" for none)
DEFAULT: State = ("", "")
ServiceEntry = tuple[str, int, str, int]  # ClusterIP, Service port, pod IP, container port


class PodView(Protocol):
    """What the router needs of a local pod (``backend.Pod``)."""

    workload: Workload
    netns: str
    ip: str
    service_ip: str


def service_dnat(pods: Sequence[PodView], chosen: Mapping[str, str]) -> list[ServiceEntry]:
    """kube-proxy's DNAT entries: each Service's ClusterIP to one workload behind it, ``chosen`` (Service ref →
    workload ref) or else the workload that owns the Service."""
    by_ref = {pod.workload.ref: pod for pod in pods}
    entries: list[ServiceEntry] = []
    for owner in pods:
        if not owner.workload.is_server or owner.workload.joins:
            continue
        answering = by_ref.get(chosen.get(owner.workload.service_ref, ""), owner)
        entries += [(owner.service_ip, port.port, answering.ip, port.target_port) for port in owner.workload.ports]
    return entries


def kube_services(entries: Sequence[ServiceEntry]) -> str:
    """An ``iptables-restore --noflush`` input that replaces the KUBE-SERVICES chain with ``entries``."""
    lines = ["*nat", "-F KUBE-SERVICES"]
    lines += [f"-A KUBE-SERVICES -d {sip}/32 -p tcp --dport {sport} -j DNAT --to-destination {pip}:{pport}"
              for sip, sport, pip, pport in entries]
    return "\n".join([*lines, "COMMIT"]) + "\n"


def order(probes: Sequence[Probe]) -> list[int]:
    """Probe indexes grouped by the Service state they need (in first-seen order), those needing none first."""
    keys: dict[tuple[str, str, str], int] = {}
    ranked = []
    for index, probe in enumerate(probes):
        target, port = probe.target, probe.port
        routed = not port.pod and (target.shared or bool(port.subset))
        key = (target.service_ref, target.ref if target.shared else "", port.subset) if routed else ("", "", "")
        ranked.append((keys.setdefault(key, len(keys)) if routed else -1, index))
    return [index for _, index in sorted(ranked)]


class Router:
    """Routing state per Service: in force before each routed probe, back to every endpoint by ``reset``."""

    def __init__(self, kube: Kube, configz: Callable[[], dict[tuple[str, str, str], str]],
                 confirm: Callable[[], None], pods: Mapping[str, PodView], timeout: float) -> None:
        self.kube = kube
        self.configz = configz
        self.confirm = confirm
        self.pods = pods
        self.timeout = timeout
        self.state: dict[str, State] = {}  # Service ref → state; absent: DEFAULT

    def wanted(self, probe: Probe) -> State | None:
        """The state a probe needs, or None when its Service is routed as deployed (and nothing changed it)."""
        target, port = probe.target, probe.port
        if port.pod or not (target.shared or port.subset or target.service_ref in self.state):
            return None
        return target.ref if target.shared else "", port.subset

    def route(self, probe: Probe) -> bool:
        """Put the probe's state in force (True when it changed), and wait until its client's sidecar agrees."""
        state = self.wanted(probe)
        if state is None:
            return False
        service = probe.target.service_ref
        changed = self.state.get(service, DEFAULT) != state
        if changed:
            self._set(service, state)
        client = self.pods.get(probe.source.ref)
        if client is not None and client.workload.sidecar:
            self._wait_endpoints(client, probe.target, probe.port.port, state[1])
        return changed

    def reset(self) -> None:
        """Every Service back to all its workloads and no subset route."""
        for service in [s for s, state in self.state.items() if state != DEFAULT]:
            self._set(service, DEFAULT)
        self.state.clear()

    # -- state changes ---------------------------------------------------------------------------------------

    def _members(self, service: str) -> list[PodView]:
        return [p for p in self.pods.values() if p.workload.is_server and p.workload.service_ref == service]

    def _set(self, service: str, state: State) -> None:
        endpoint, subset = state
        members = self._members(service)
        for member in members:
            answers = not endpoint or member.workload.ref == endpoint
            self.kube.apply(kubelet.endpoint_slice(member.workload, member.ip if answers else None, NODE))
        owner = next(m for m in members if not m.workload.joins)
        previous = self.state.get(service, DEFAULT)
        self.state[service] = state
        chosen = {s: e for s, (e, _) in self.state.items() if e}
        rules = kube_services(service_dnat(list(self.pods.values()), chosen))
        for pod in self.pods.values():
            run(["ip", "netns", "exec", pod.netns, "iptables-restore", "--noflush"], stdin=rules)
        if subset or previous[1]:
            route = subset_route(owner.workload, subset or previous[1], Naming(None))
            metadata = route["metadata"]
            key = (str(route["kind"]), str(metadata["namespace"]), str(metadata["name"]))
            if subset:
                version = str((self.kube.apply(route).get("metadata") or {}).get("resourceVersion") or "")
                self._wait_store(key, version)
            else:
                self.kube.delete(str(route["apiVersion"]), key[0], key[1], key[2])
                self._wait_store(key, "")
            self.confirm()  # endpoint changes need no push: the probing sidecar's own endpoint list proves them

    def _wait_store(self, key: tuple[str, str, str], version: str) -> None:
        """istiod's config store holds the route at ``version`` ('' : no longer holds it)."""
        def check() -> str:
            try:
                held = self.configz().get(key, "")
            except (OSError, ValueError) as exc:
                return f"istiod's config store cannot be read ({exc})"
            return "" if held == version else f"{key[0]} {key[1]}/{key[2]}: istiod has {held or 'none'}, want " \
                                                  f"{version or 'none'}"

        pending = poll(check, self.timeout, 0.05)
        if pending:
            raise BackendError(f"istiod did not pick up the subset route within {self.timeout:.0f}s: {pending}")

    def _wait_endpoints(self, client: PodView, target: Workload, port: int, subset: str) -> None:
        """The client's sidecar lists exactly the probed workload in the cluster its probe uses."""
        service_port = next(p for p in target.ports if p.port == port)
        wanted = {f"{self.pods[target.ref].ip}:{service_port.target_port}"}
        cluster = f"outbound|{port}|{subset}|{target.host}"

        def check() -> str:
            try:
                hosts = cluster_hosts(prober.admin(client.netns, "/clusters", 5.0), cluster)
            except OSError as exc:
                return f"Envoy admin of {client.workload.ref} not answering ({exc})"
            listed = ", ".join(sorted(hosts)) or "nothing"
            return "" if hosts == wanted else f"{client.workload.ref} lists {listed} in {cluster}, want {min(wanted)}"

        pending = poll(check, self.timeout, 0.02)
        if pending:
            raise BackendError(f"timed out after {self.timeout:.0f} s waiting for istiod's endpoints: {pending}")
