"""Hypothesis strategies for random valid scenarios: topologies first, then policy sets for one topology.

A generated scenario is a plain dict in the scenario file format (README "Scenario format"), so it can be
written to a file and loaded by ``scenario.load_scenario`` like any hand-written one. Its ``expect`` rows
name every connection between two different workloads; their ``result`` is filled in by whoever knows it
(``with_results``): the observed result when a disagreement is written out.

Strategies are ordered so that Hypothesis shrinks towards what people read fastest: fewer policies, the
first choice of every ``sampled_from`` (STRICT, ISTIO_MUTUAL, a FQDN host, ALLOW, autoMtls on), optional
parts absent. Topologies are not shrunk by Hypothesis (a new topology costs a redeploy); the runner
reduces the topology of a minimal disagreement itself. What is not generated, and why, is in
docs/crosscheck.md ("Not generated").
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

ROOT = "istio-system"
NAMESPACES = ("foo", "bar", "baz")
SERVERS = ("httpbin", "echo")
CLIENT = "curl"
SERVICE_PORTS = (8000, 9000, 8080)
# Container ports: the Service port itself (None) first, then ports that overlap other Service ports,
# so that PeerAuthentication portLevelMtls keyed on a Service port is sometimes a container port too.
TARGET_PORTS = (None, 8080, 9080, 9000)
MAX_PORTS = 3  # per topology: rows grow as workloads × ports
PA_MODES = ("STRICT", "PERMISSIVE", "DISABLE", "UNSET")
DR_TLS_MODES = ("ISTIO_MUTUAL", "DISABLE", "SIMPLE")
REQUESTS = (("GET", "/headers"), ("POST", "/anything"), ("GET", "/status/200"))
API = {"PeerAuthentication": "security.istio.io/v1", "AuthorizationPolicy": "security.istio.io/v1",
       "DestinationRule": "networking.istio.io/v1"}
PREFIX = {"PeerAuthentication": "pa", "DestinationRule": "dr", "AuthorizationPolicy": "ap"}

Doc = dict[str, Any]


@dataclass(frozen=True)
class Server:
    name: str
    namespace: str
    ports: tuple[tuple[int, int, str], ...]  # (Service port, container port, protocol)
    account: str


@dataclass(frozen=True)
class Shape:
    """What the policy strategies need to know of a topology document."""

    namespaces: tuple[str, ...]
    servers: tuple[Server, ...]
    accounts: tuple[tuple[str, str], ...]  # (namespace, service account) of every workload

    @classmethod
    def of(cls, topology: Mapping[str, Any]) -> Shape:
        servers = []
        accounts = []
        for w in topology["workloads"]:
            account = w.get("serviceAccount", w["name"])
            accounts.append((w["namespace"], account))
            if w.get("ports"):
                ports = tuple((p["port"], p.get("targetPort", p["port"]), p.get("protocol", "http"))
                              for p in w["ports"])
                servers.append(Server(w["name"], w["namespace"], ports, account))
        return cls(tuple(topology["namespaces"]), tuple(servers), tuple(dict.fromkeys(accounts)))


# --------------------------------------------------------------------------------------------- topology


@st.composite
def _ports(draw: st.DrawFn, budget: int) -> list[dict[str, Any]]:
    raw = draw(st.lists(st.tuples(st.sampled_from(SERVICE_PORTS), st.sampled_from(TARGET_PORTS),
                                  st.sampled_from(("http", "tcp"))),
                        min_size=1, max_size=min(2, budget),
                        unique_by=(lambda p: p[0], lambda p: p[1] if p[1] is not None else p[0])))
    ports = []
    for number, target, protocol in raw:
        port: dict[str, Any] = {"name": f"{protocol}-{number}", "port": number, "protocol": protocol}
        if target is not None and target != number:
            port["targetPort"] = target
        ports.append(port)
    return ports


@st.composite
def topologies(draw: st.DrawFn) -> Doc:
    """2-3 namespaces (each with or without sidecars) with a client each, and two servers with 1-2 ports each
    (3 ports at most).

    Small on purpose: every client × server port is a row, and rows are what a crosscheck pays for.
    """
    count = draw(st.integers(2, len(NAMESPACES)))
    namespaces = {name: {"sidecars": draw(st.sampled_from((True, False)))} for name in NAMESPACES[:count]}
    workloads: list[dict[str, Any]] = []
    budget = MAX_PORTS
    for index, name in enumerate(SERVERS):
        ports = draw(_ports(budget - (len(SERVERS) - 1 - index)))
        budget -= len(ports)
        workloads.append({"name": name, "namespace": draw(st.sampled_from(NAMESPACES[:count])), "ports": ports})
    for namespace in namespaces:
        workloads.append({"name": CLIENT, "namespace": namespace})
    # Now and then one workload differs from its namespace (a pod with sidecar injection turned off or on).
    flip = draw(st.sampled_from([None, None, None, *range(len(workloads))]))
    if flip is not None:
        workloads[flip]["sidecar"] = not namespaces[workloads[flip]["namespace"]]["sidecars"]
    return {"namespaces": namespaces, "workloads": workloads}


# --------------------------------------------------------------------------------------------- policies


def _mode(draw: st.DrawFn) -> dict[str, Any] | None:
    """An mtls block: a mode, or one of the three ways to write UNSET (mode UNSET, no mode, no block)."""
    mode = draw(st.sampled_from(PA_MODES))
    if mode != "UNSET":
        return {"mode": mode}
    return draw(st.sampled_from(({"mode": "UNSET"}, {}, None)))


def _selector(server: Server, draw: st.DrawFn) -> dict[str, Any]:
    """The server's app label; rarely one that selects nothing (the policy then binds no workload)."""
    app = draw(st.sampled_from((server.name, server.name, server.name, "nothing")))
    return {"matchLabels": {"app": app}}


@st.composite
def peer_authentications(draw: st.DrawFn, shape: Shape) -> Doc:
    scope = draw(st.sampled_from(("namespace", "mesh", "workload", "workload in root")))
    spec: dict[str, Any] = {}
    if scope.startswith("workload"):
        server = draw(st.sampled_from(shape.servers))
        namespace = ROOT if scope == "workload in root" else server.namespace  # Istio ignores the first (P1)
        spec["selector"] = _selector(server, draw)
        keys = sorted({p for port in server.ports for p in port[:2]})  # container and Service ports
        chosen = draw(st.lists(st.sampled_from(keys), max_size=2, unique=True))
        if chosen:
            spec["portLevelMtls"] = {key: _mode(draw) or {} for key in chosen}
    else:
        namespace = ROOT if scope == "mesh" else draw(st.sampled_from(shape.namespaces))
    mtls = _mode(draw)
    if mtls is not None:
        spec["mtls"] = mtls
    return _resource("PeerAuthentication", namespace, spec)


def _host(draw: st.DrawFn, server: Server, namespace: str) -> str:
    fqdn = f"{server.name}.{server.namespace}.svc.cluster.local"
    forms = (fqdn, server.name, f"*.{server.namespace}.svc.cluster.local", "*.svc.cluster.local", "*",
             f"{server.name}.{server.namespace}")
    return draw(st.sampled_from(forms))


def _tls(draw: st.DrawFn) -> dict[str, Any]:
    return {"mode": draw(st.sampled_from(DR_TLS_MODES))}


@st.composite
def destination_rules(draw: st.DrawFn, shape: Shape) -> Doc:
    server = draw(st.sampled_from(shape.servers))
    namespace = draw(st.sampled_from((server.namespace, ROOT, *shape.namespaces)))
    spec: dict[str, Any] = {"host": _host(draw, server, namespace)}
    export = draw(st.sampled_from((None, None, ["."], ["*"], *([n] for n in shape.namespaces))))
    if export is not None:
        spec["exportTo"] = export
    policy: dict[str, Any] = {}
    if draw(st.sampled_from((True, True, False))):
        policy["tls"] = _tls(draw)
    if draw(st.sampled_from((False, False, True))):
        # Keyed on a Service port (right) or a container port (the trap), with or without its own tls.
        number = draw(st.sampled_from(sorted({p for port in server.ports for p in port[:2]})))
        setting: dict[str, Any] = {"port": {"number": number}}
        if draw(st.sampled_from((True, True, False))):
            setting["tls"] = _tls(draw)
        policy["portLevelSettings"] = [setting]
    spec["trafficPolicy"] = policy
    if draw(st.sampled_from((False, False, False, True))):  # subset TLS applies only to routed traffic
        spec["subsets"] = [{"name": "v1", "labels": {"app": server.name}, "trafficPolicy": {"tls": _tls(draw)}}]
    return _resource("DestinationRule", namespace, spec)


def _principal(namespace: str, account: str) -> str:
    return f"cluster.local/ns/{namespace}/sa/{account}"


@st.composite
def _source(draw: st.DrawFn, shape: Shape) -> dict[str, Any]:
    field = draw(st.sampled_from(("principals", "namespaces", "notPrincipals", "notNamespaces", "serviceAccounts")))
    if field.lower().endswith("principals"):
        namespace, account = draw(st.sampled_from(shape.accounts))
        values = [draw(st.sampled_from((_principal(namespace, account), "*", f"*/ns/{namespace}/sa/{account}")))]
    elif field == "serviceAccounts":
        namespace, account = draw(st.sampled_from(shape.accounts))
        values = [draw(st.sampled_from((f"{namespace}/{account}", account)))]
    else:
        values = [draw(st.sampled_from((*shape.namespaces, "*")))]
    return {field: values}


@st.composite
def _operation(draw: st.DrawFn, shape: Shape, server: Server | None) -> dict[str, Any]:
    field = draw(st.sampled_from(("ports", "methods", "paths", "notPaths", "hosts")))
    if field == "hosts":  # the Host header a client sends is <Service FQDN>:<port>
        target = server or draw(st.sampled_from(shape.servers))
        fqdn = f"{target.name}.{target.namespace}.svc.cluster.local"
        port = draw(st.sampled_from(target.ports))[0]
        return {"hosts": [draw(st.sampled_from((f"{fqdn}:{port}", fqdn, f"{target.name}.{target.namespace}*",
                                                "*.svc.cluster.local")))]}
    if field == "ports":
        ports = sorted({p for s in ([server] if server else shape.servers) for port in s.ports for p in port[:2]})
        return {"ports": [str(draw(st.sampled_from(ports)))]}
    if field == "methods":
        return {"methods": [draw(st.sampled_from(("GET", "POST")))]}
    return {field: [draw(st.sampled_from(("/headers", "/status/*", "/any*", "*")))]}


@st.composite
def authorization_policies(draw: st.DrawFn, shape: Shape) -> Doc:
    scope = draw(st.sampled_from(("workload", "namespace", "mesh", "workload from root")))
    server: Server | None = None
    spec: dict[str, Any] = {}
    if scope.startswith("workload"):
        server = draw(st.sampled_from(shape.servers))
        # A selector in the root namespace selects pods of every namespace (unlike PeerAuthentication's).
        namespace = ROOT if scope == "workload from root" else server.namespace
        spec["selector"] = _selector(server, draw)
    else:
        namespace = ROOT if scope == "mesh" else draw(st.sampled_from(shape.namespaces))
    action = draw(st.sampled_from(("ALLOW", "DENY", "AUDIT")))
    if action != "ALLOW":
        spec["action"] = action
    rules = []
    for _ in range(draw(st.integers(0, 2))):  # no rules: ALLOW is allow-nothing, DENY denies nothing
        rule: dict[str, Any] = {}
        if draw(st.booleans()):
            rule["from"] = [{"source": draw(_source(shape))}]
        if draw(st.booleans()):
            rule["to"] = [{"operation": draw(_operation(shape, server))}]
        rules.append(rule)
    if rules:
        spec["rules"] = rules
    return _resource("AuthorizationPolicy", namespace, spec)


def _resource(kind: str, namespace: str, spec: dict[str, Any]) -> Doc:
    return {"apiVersion": API[kind], "kind": kind, "metadata": {"name": "", "namespace": namespace}, "spec": spec}


def _named(policies: Sequence[Doc]) -> list[Doc]:
    """Names by kind and position (pa-0, dr-1, ...): unique, and stable while Hypothesis shrinks the list."""
    named = copy.deepcopy(list(policies))
    for index, policy in enumerate(named):
        policy["metadata"]["name"] = f"{PREFIX[policy['kind']]}-{index}"
    return named


# --------------------------------------------------------------------------------------------- scenarios


def rows(topology: Mapping[str, Any], request: tuple[str, str]) -> list[dict[str, Any]]:
    """Every client × server port between two different workloads; http rows carry the scenario's request."""
    found = []
    for source in topology["workloads"]:
        for target in topology["workloads"]:
            if source is target:
                continue
            for port in target.get("ports") or []:
                row: dict[str, Any] = {"from": f"{source['name']}.{source['namespace']}",
                                       "to": f"{target['name']}.{target['namespace']}:{port['port']}"}
                if port.get("protocol", "http") == "http" and request != REQUESTS[0]:
                    row["request"] = {"method": request[0], "path": request[1]}
                found.append(row)
    return found


@st.composite
def scenarios(draw: st.DrawFn, topology: Doc, name: str = "crosscheck") -> Doc:
    """A scenario document over ``topology``: mesh settings, 1-5 policies, one request for http rows."""
    shape = Shape.of(topology)
    kinds = st.one_of(peer_authentications(shape), destination_rules(shape), authorization_policies(shape))
    policies = _named(draw(st.lists(kinds, min_size=1, max_size=5)))
    auto_mtls = draw(st.sampled_from((True, True, True, False)))
    request = draw(st.sampled_from(REQUESTS))
    doc: Doc = {"name": name}
    if not auto_mtls:
        doc["mesh"] = {"autoMtls": False}
    doc["topology"] = copy.deepcopy(topology)
    if policies:
        doc["policies"] = policies
    doc["expect"] = rows(topology, request)
    return doc


def with_results(doc: Mapping[str, Any], results: Mapping[str, str], default: str = "allowed") -> Doc:
    """A copy whose expect rows carry results: ``results`` by row key (``row_key``), else ``default``.

    Rows missing from ``results`` are dropped when ``default`` is empty.
    """
    out = copy.deepcopy(dict(doc))
    kept = []
    for row in out["expect"]:
        result = results.get(row_key(row), default)
        if result:
            kept.append({**row, "result": result})
    out["expect"] = kept
    return out


def row_key(row: Mapping[str, Any]) -> str:
    """``from->to:port`` (the pair id without the request: a generated scenario has one request)."""
    return f"{row['from']}->{row['to']}"
