"""The scenario model: topology, policies and expectations, after validation.

Plain frozen dataclasses with no behaviour beyond naming: every backend, the oracle and the
reports read the same objects. Workloads are referred to as ``name.namespace`` like Istio's docs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from .diagnostics import Diagnostic, Mark

Protocol = Literal["http", "tcp"]
CLUSTER_DOMAIN = "svc.cluster.local"


class Result(str, Enum):
    """What a client experiences on one connection; the coarse values cover several fine ones."""

    MTLS = "mtls"
    PLAINTEXT = "plaintext"
    REFUSED = "refused"
    UNAVAILABLE = "unavailable"
    DENIED = "denied"
    ALLOWED = "allowed"
    BLOCKED = "blocked"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    def covers(self, observed: Result) -> bool:
        """Does an expectation of ``self`` accept an observation of ``observed``?"""
        if self is Result.ALLOWED:
            return observed in (Result.MTLS, Result.PLAINTEXT)
        if self is Result.BLOCKED:
            return observed in (Result.REFUSED, Result.UNAVAILABLE, Result.DENIED)
        return self is observed and self is not Result.UNKNOWN


CONCRETE_RESULTS = (Result.MTLS, Result.PLAINTEXT, Result.REFUSED, Result.UNAVAILABLE, Result.DENIED)
EXPECTABLE_RESULTS = (*CONCRETE_RESULTS, Result.ALLOWED, Result.BLOCKED)


ClientTls = Literal["", "no-cert", "foreign-cert", "mesh-cert"]
CLIENT_TLS: tuple[ClientTls, ...] = ("no-cert", "foreign-cert", "mesh-cert")


@dataclass(frozen=True)
class Port:
    """Where a probe connects. A Service port by default; ``pod``: the pod's own address and container port
    (``port == target_port``), bypassing the Service; ``subset``: the Service port, routed to that DestinationRule
    subset (Istio's ``outbound|port|subset|host`` cluster)."""

    name: str
    port: int  # the Service port: what clients dial and what DestinationRule port settings key on
    target_port: int  # the container port: what PeerAuthentication portLevelMtls keys on
    protocol: Protocol = "http"
    pod: bool = False
    subset: str = ""


@dataclass(frozen=True, eq=False)
class Workload:
    name: str
    namespace: str
    labels: Mapping[str, str]
    service_account: str
    sidecar: bool
    ports: tuple[Port, ...] = ()
    ambient: bool = False
    mark: Mark | None = None
    service: str = ""  # the Service this workload is an endpoint of: its own name or the one it joins; "" for clients
    shared: bool = False  # that Service has other workloads as endpoints too
    container_ports: tuple[Port, ...] = ()  # ports the app listens on that no Service declares (port == target_port)

    @property
    def ref(self) -> str:
        return f"{self.name}.{self.namespace}"

    @property
    def service_ref(self) -> str:
        return f"{self.service or self.name}.{self.namespace}"

    @property
    def host(self) -> str:
        """The Service's cluster-local FQDN, as Istio names outbound clusters."""
        return f"{self.service or self.name}.{self.namespace}.{CLUSTER_DOMAIN}"

    @property
    def joins(self) -> bool:
        """An endpoint of another workload's Service (``service: <owner>``), with no Service of its own."""
        return bool(self.service) and self.service != self.name

    def spiffe(self, trust_domain: str = "cluster.local") -> str:
        return f"spiffe://{trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def is_server(self) -> bool:
        return bool(self.ports)

    def port(self, key: int | str) -> Port | None:
        for port in self.ports:
            if key in (port.port, port.name):
                return port
        return None

    def pod_port(self, number: int) -> Port | None:
        """The container port ``number`` dialled at the pod address: a Service's target port or a container port."""
        for port in (*self.ports, *self.container_ports):
            if port.target_port == number:
                return Port(port.name, number, number, port.protocol, pod=True)
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workload) and other.ref == self.ref

    def __hash__(self) -> int:
        return hash(self.ref)

    def __repr__(self) -> str:
        return f"Workload({self.ref})"


@dataclass(frozen=True)
class Namespace:
    name: str
    sidecars: bool
    ambient: bool = False


@dataclass(frozen=True)
class Topology:
    namespaces: tuple[Namespace, ...]
    workloads: tuple[Workload, ...]

    def workload(self, ref: str) -> Workload | None:
        for workload in self.workloads:
            if workload.ref == ref:
                return workload
        return None

    def namespace(self, name: str) -> Namespace | None:
        for namespace in self.namespaces:
            if namespace.name == name:
                return namespace
        return None

    @property
    def servers(self) -> tuple[Workload, ...]:
        return tuple(w for w in self.workloads if w.is_server)

    def signature(self) -> tuple[Any, ...]:
        """Equal for topologies that deploy the same pods, so a backend can reuse them."""
        return tuple(
            (w.ref, tuple(sorted(w.labels.items())), w.service_account, w.sidecar, w.ambient, w.ports, w.service,
             w.container_ports)
            for w in self.workloads
        )

    def endpoints(self, workload: Workload) -> tuple[Workload, ...]:
        """Every workload behind ``workload``'s Service (itself included), in topology order."""
        return tuple(w for w in self.workloads if w.is_server and w.service_ref == workload.service_ref)


@dataclass(frozen=True)
class MeshSettings:
    auto_mtls: bool = True  # meshConfig.enableAutoMtls
    root_namespace: str = "istio-system"  # meshConfig.rootNamespace
    trust_domain: str = "cluster.local"


@dataclass(frozen=True, eq=False)
class Policy:
    """One Istio resource exactly as the user wrote it, plus where it came from."""

    api_version: str
    kind: str
    name: str
    namespace: str
    manifest: Mapping[str, Any]  # the whole object, as it would be kubectl-applied
    order: int  # creation order: earlier in the file is older (Istio: the oldest wins ties)
    mark: Mark

    @property
    def spec(self) -> Mapping[str, Any]:
        spec = self.manifest.get("spec")
        return spec if isinstance(spec, Mapping) else {}

    @property
    def group(self) -> str:
        return self.api_version.split("/")[0]

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def selector(self) -> Mapping[str, str]:
        selector = self.spec.get("selector") or self.spec.get("workloadSelector") or {}
        labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
        return labels if isinstance(labels, Mapping) else {}

    def selects(self, workload: Workload) -> bool:
        """Label-selector match: same namespace and the selector is a subset of the pod's labels."""
        if workload.namespace != self.namespace:
            return False
        return all(workload.labels.get(k) == str(v) for k, v in self.selector.items())

    def __repr__(self) -> str:
        return f"Policy({self.ref})"


@dataclass(frozen=True)
class Request:
    method: str = "GET"
    path: str = "/headers"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None
    tls: ClientTls = ""  # a client without a sidecar speaking TLS itself, and the certificate it presents

    @property
    def is_default(self) -> bool:
        """The default method, path, headers and body (the client's TLS is named in the pair's client instead)."""
        return (self.method, self.path, dict(self.headers), self.body) == ("GET", "/headers", {}, None)

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    def __hash__(self) -> int:
        return hash((self.method, self.path, tuple(sorted(self.headers.items())), self.body, self.tls))


def pair_id(source: Workload, target: Workload, port: Port, request: Request) -> str:
    """``from->to:port`` (plus ``:METHOD:/path`` for a non-default request): the stable id of a probe,
    used as the pytest item name and the report row key."""
    client, destination = client_label(source, request), destination_label(target, port)
    if request.is_default:
        return row_id(client, destination, port.port)
    return row_id(client, destination, port.port, request.method, request.path)


def client_label(source: Workload, request: Request) -> str:
    """The client as a report names it: ``curl.legacy``, or ``curl.legacy+tls-no-cert`` when it speaks TLS."""
    return f"{source.ref}+tls-{request.tls}" if request.tls else source.ref


def destination_label(target: Workload, port: Port) -> str:
    """The destination as a report names it: the Service (``httpbin.foo``), routed to a subset (``/v2``) and
    answered by one of its workloads (``@httpbin-v2``) when it has several; or a pod address (``pod/httpbin.foo``)."""
    if port.pod:
        return f"pod/{target.ref}"
    text = target.service_ref + (f"/{port.subset}" if port.subset else "")
    return text + (f"@{target.name}" if target.shared else "")


def row_id(source: str, target: str, port: int, method: str = "", path: str = "") -> str:
    """The text of a pair id. No ``[...]`` (pytest reads it as parameters, so ``--lf`` and pasted ids would
    never match again) and no ``::`` (a node id separator) in it."""
    text = f"{source}->{target}:{port}"
    if method:
        text += f":{method}:" + path.replace("[", "%5B").replace("]", "%5D").replace("::", ":%3A")
    return text


@dataclass(frozen=True)
class Expectation:
    source: Workload
    target: Workload
    port: Port
    result: Result
    request: Request = field(default_factory=Request)
    status: int | None = None
    mark: Mark | None = None
    reason: str = ""  # for derived rows: the oracle's reason
    yaml_path: tuple[str | int, ...] = ()  # where the row is written in the file; () for a derived row

    @property
    def pair(self) -> str:
        return pair_id(self.source, self.target, self.port, self.request)

    @property
    def client(self) -> str:
        return client_label(self.source, self.request)

    @property
    def destination(self) -> str:
        return destination_label(self.target, self.port)


@dataclass(frozen=True)
class Step:
    """One policy state of a scenario with ``steps:``: the policies in force once this step's changes are
    applied to the previous step's (the first step's to the scenario's own ``policies``), and its expectations."""

    name: str
    number: int  # 1-based, in file order
    policies: tuple[Policy, ...]
    expectations: tuple[Expectation, ...]
    derived: bool = False
    description: str = ""
    added: tuple[str, ...] = ()  # refs ("Kind ns/name") of the policies this step adds...
    changed: tuple[str, ...] = ()  # ...replaces with a different manifest...
    removed: tuple[str, ...] = ()  # ...and removes
    mark: Mark | None = None

    @property
    def changes(self) -> str:
        """``added X; removed Y`` for people ("" when the step changes nothing)."""
        parts = [f"{what} {', '.join(refs)}" for what, refs in
                 (("added", self.added), ("changed", self.changed), ("removed", self.removed)) if refs]
        return "; ".join(parts)


@dataclass(frozen=True)
class Scenario:
    name: str
    path: Path
    description: str = ""
    mesh: MeshSettings = field(default_factory=MeshSettings)
    topology: Topology = field(default_factory=lambda: Topology((), ()))
    policies: tuple[Policy, ...] = ()
    expectations: tuple[Expectation, ...] = ()
    derived: bool = False
    warnings: tuple[Diagnostic, ...] = ()
    expected_warnings: tuple[Diagnostic, ...] = ()  # the traps the scenario shows on purpose (expectWarnings)
    steps: tuple[Step, ...] = ()  # a scenario with steps probes each step's state, not its own policies
    step: str = ""  # a scenario at one of its steps (``at``): the step's name; ``name`` is then "<scenario>/<step>"

    def policies_of(self, kind: str) -> tuple[Policy, ...]:
        return tuple(p for p in self.policies if p.kind == kind)

    @property
    def scenario_name(self) -> str:
        """The scenario's own name (``name`` of a scenario at a step names the step too, for backends'
        messages and capture directories)."""
        return self.name.removesuffix(f"/{self.step}") if self.step else self.name

    def at(self, step: Step) -> Scenario:
        """This scenario in ``step``'s state: its policies and expectations, the steps kept for reports."""
        return replace(self, name=f"{self.scenario_name}/{step.name}", step=step.name, policies=step.policies,
                       expectations=step.expectations, derived=step.derived)

    def states(self) -> tuple[Scenario, ...]:
        """What runs: the scenario itself, or the scenario at each of its steps."""
        if not self.steps or self.step:
            return (self,)
        return tuple(self.at(step) for step in self.steps)

    @property
    def current(self) -> Step | None:
        """The step a scenario at a step is at (None otherwise)."""
        return next((s for s in self.steps if s.name == self.step), None) if self.step else None


def default_topology() -> Topology:
    """The topology used when a scenario has none: the seed's app plus a non-mesh client and server."""

    def workload(name: str, namespace: str, sidecar: bool, server: bool) -> Workload:
        ports = (Port("http", 8080, 8080, "http"),) if server else ()
        return Workload(name, namespace, {"app": name}, name, sidecar, ports, service=name if server else "")

    return Topology(
        namespaces=(Namespace("app", True), Namespace("legacy", False)),
        workloads=(
            workload("frontend", "app", True, True),
            workload("backend", "app", True, True),
            workload("plaintext", "legacy", False, False),
            workload("legacy", "legacy", False, True),
        ),
    )
