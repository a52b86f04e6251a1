"""Directing probes on a real cluster: one workload of a Service with several, and a DestinationRule subset.

A row that names an ``endpoint`` must be answered by that workload, and a row with a ``subset`` must go through
the client sidecar's ``outbound|port|subset|host`` cluster. No load balancer may choose, so before such probes:

- **endpoint**, client with a sidecar: the Service's selector is narrowed to that workload (its pods carry the
  workload label besides the Service label), and the client's own sidecar must list exactly that pod in the probed
  cluster (Envoy's ``/clusters``: what istiod's EDS push gave it). A client without a sidecar is not routed at all:
  kube-proxy's DNAT is not Istio and gives no signal that its rules changed, so that probe dials the endpoint's pod
  address and target port itself, which is where kube-proxy would have sent it (``probes.py``).
- **subset**: a VirtualService routes every client of the Service to the subset (``manifests.subset_route``); it is
  in force once every istiod replica holds it and every sidecar serves a generation marker bumped after that
  (``propagation.Generations``), and the client's sidecar lists the probed pod in the subset's cluster.

``reset`` puts every Service back (full selector, no route). Only objects of the run's own namespaces change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from ...judge.observation import Probe
from ...model import Topology, Workload
from ..base import BackendError
from .apply import Applied
from .client import KubeApi, KubeError
from .manifests import PROXY, WORKLOAD_LABEL, subset_route
from .naming import Naming
from .propagation import Generations, poll
from .workloads import PodInfo

State = tuple[str, str]  # (the workload ref that answers, "" for every workload; the subset, "" for none)
DEFAULT: State = ("", "")


def cluster_hosts(text: str, cluster: str) -> set[str]:
    """The endpoints (``ip:port``) Envoy's admin ``/clusters`` lists for one cluster."""
    hosts = set()
    for line in text.splitlines():
        name, _, rest = line.partition("::")
        host, _, field = rest.partition("::")
        if name == cluster and field.startswith("health_flags::"):
            hosts.add(host)
    return hosts


def direct(probe: Probe) -> bool:
    """A client without a sidecar probing one endpoint of a shared Service: it dials that pod itself."""
    return probe.target.shared and not probe.port.pod and not probe.source.sidecar


def routed(probe: Probe) -> bool:
    """Does the probe need a routing state (a narrowed Service, a subset route) before it is sent?"""
    return not probe.port.pod and not direct(probe) and (probe.target.shared or bool(probe.port.subset))


def order(probes: Sequence[Probe]) -> list[list[int]]:
    """Probe indexes grouped by the routing state they need (first-seen order), the unrouted group first."""
    groups: dict[tuple[str, str, str], list[int]] = {("", "", ""): []}
    for index, probe in enumerate(probes):
        target, port = probe.target, probe.port
        key = (target.service_ref, target.ref if target.shared else "", port.subset) if routed(probe) else ("", "", "")
        groups.setdefault(key, []).append(index)
    return [members for members in groups.values() if members]


class Router:
    """Routing state per Service: put in force before a group of routed probes, back to default by ``reset``."""

    def __init__(self, kube: KubeApi, naming: Naming, topology: Topology, pods: Callable[[], Mapping[str, PodInfo]],
                 generations: Generations, sidecar_namespaces: Iterable[str], timeout: float,
                 progress: Callable[[str], None]) -> None:
        self.kube = kube
        self.naming = naming
        self.topology = topology
        self.pods = pods
        self.generations = generations
        self.sidecar_namespaces = sorted(set(sidecar_namespaces))
        self.timeout = timeout
        self.progress = progress
        self.state: dict[str, State] = {}  # Service ref → state; absent: DEFAULT
        self.routes: dict[str, Applied] = {}  # Service ref → the subset route in force

    def wanted(self, probe: Probe) -> State | None:
        """The state a probe needs, or None when its Service may stay as it is."""
        if routed(probe):
            return probe.target.ref if probe.target.shared else "", probe.port.subset
        if probe.port.pod or direct(probe) or probe.target.service_ref not in self.state:
            return None
        return DEFAULT

    def route(self, probe: Probe) -> None:
        """Put the probe's state in force and wait until its client's sidecar lists exactly the probed pod."""
        state = self.wanted(probe)
        if state is None:
            return
        service = probe.target.service_ref
        if self.state.get(service, DEFAULT) != state:
            self._set(service, state)
        pods = self.pods()
        client, server = pods.get(probe.source.ref), pods.get(probe.target.ref)
        if state != DEFAULT and client is not None and client.sidecar and server is not None:
            self._wait_client(client, probe, server)

    def reset(self) -> None:
        """Every Service back to all its workloads and no subset route."""
        for service in [s for s, state in self.state.items() if state != DEFAULT]:
            self._set(service, DEFAULT)
        self.state.clear()

    # -- state changes ---------------------------------------------------------------------------------------

    def _owner(self, service: str) -> Workload:
        return next(w for w in self.topology.workloads if w.is_server and w.service_ref == service and not w.joins)

    def _set(self, service: str, state: State) -> None:
        endpoint, subset = state
        previous = self.state.get(service, DEFAULT)
        owner = self._owner(service)
        self.progress(f"routing {service}: " + (", ".join(filter(None, [
            f"only {endpoint}" if endpoint else "", f"subset {subset}" if subset else ""])) or "back to default"))
        if endpoint != previous[0] and owner.shared:
            chosen = next((w for w in self.topology.workloads if w.ref == endpoint), None)
            namespace = self.naming.ns(owner.namespace)
            name = owner.service or owner.name
            self.kube.patch("v1", "Service", namespace, name,
                            {"spec": {"selector": {WORKLOAD_LABEL: chosen.name if chosen is not None else None}}})
            self._wait_slices(service, namespace, name, chosen)
        if subset != previous[1]:
            route = subset_route(owner, subset or previous[1], self.naming)
            metadata = route["metadata"]
            ref = Applied(str(route["apiVersion"]), str(route["kind"]), str(metadata["namespace"]),
                          str(metadata["name"]))
            if subset:
                result = self.kube.apply(route)
                ref = Applied(ref.api_version, ref.kind, ref.namespace, ref.name,
                              str((result.get("metadata") or {}).get("resourceVersion") or ""))
                self.routes[service] = ref
                self.generations.wait_held([ref], [])
            else:
                self.kube.delete(ref.api_version, ref.kind, ref.namespace, ref.name)
                self.routes.pop(service, None)
                self.generations.wait_held([], [ref])
            self.generations.confirm(self.sidecar_namespaces, self.pods().values())
        self.state[service] = state

    def _wait_slices(self, service: str, namespace: str, name: str, chosen: Workload | None) -> None:
        """The Service's EndpointSlices list exactly the chosen workload's pod (every member's, when none is)."""
        members = [w for w in self.topology.workloads if w.is_server and w.service_ref == service]
        wanted_refs = [chosen.ref] if chosen is not None else [w.ref for w in members]

        def check() -> str:
            pods = self.pods()
            wanted = {pods[r].ip for r in wanted_refs if r in pods}
            try:
                slices = self.kube.list("discovery.k8s.io/v1", "EndpointSlice", namespace,
                                        f"kubernetes.io/service-name={name}")
            except KubeError as exc:
                return f"EndpointSlices of {namespace}/{name} cannot be listed ({exc})"
            ready = {address for s in slices for e in s.get("endpoints") or []
                     if (e.get("conditions") or {}).get("ready", True) for address in e.get("addresses") or []}
            shown = ", ".join(sorted(ready)) or "none"
            return "" if ready == wanted else f"Service {namespace}/{name} has endpoints {shown}, want " \
                                              f"{', '.join(sorted(wanted))}"

        pending = poll(check, self.timeout, 0.2)
        if pending:
            raise BackendError(f"timed out after {self.timeout:.0f}s (--istio-timeout): {pending}")

    def _wait_client(self, client: PodInfo, probe: Probe, server: PodInfo) -> None:
        """The client's sidecar lists exactly the probed pod in the cluster its probe uses."""
        target, port = probe.target, probe.port
        host = self.naming.host(target.service or target.name, target.namespace)
        cluster = f"outbound|{port.port}|{port.subset}|{host}"
        wanted = {f"{server.ip}:{port.target_port}"}

        def check() -> str:
            result = self.kube.exec(client.namespace, client.name, PROXY, ["pilot-agent", "request", "GET", "clusters"],
                                    timeout=30)
            if not result.ok:
                return f"the sidecar of {client.ref} does not answer ({result.describe()})"
            hosts = cluster_hosts(result.stdout.decode("utf-8", "replace"), cluster)
            listed = ", ".join(sorted(hosts)) or "nothing"
            return "" if hosts == wanted else f"{client.ref} lists {listed} in {cluster}, want {min(wanted)}"

        pending = poll(check, self.timeout, 0.2)
        if pending:
            raise BackendError(f"timed out after {self.timeout:.0f}s (--istio-timeout) waiting for istiod's endpoints: "
                               f"{pending}")
