"""What a row's ``from``, ``to``, ``endpoint``, ``subset`` and ``tls`` name: shared by the loader, the CLI's
``explain`` and the fixtures, so a reference means the same thing everywhere.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, NamedTuple

from ..model import (
    CLIENT_TLS,
    ClientTls,
    Expectation,
    Port,
    Scenario,
    Topology,
    Workload,
)
from ..model.diagnostics import did_you_mean
from ..oracle import destinationrules
from .checks import DNS_LABEL, type_name

POD_PREFIX = "pod/"



class Unresolved(NamedTuple):
    """Why a workload or port reference names nothing, and the fix (shared by validation and the CLI)."""

    message: str
    fix: str
    key: str = "to"  # the row key it is about ("": the row itself)
    at_key: bool = False  # point at the key, not its value


def resolve_workload(topology: Topology, text: str) -> Workload | Unresolved:
    """``name.namespace``, or a bare name when it is unique; else what is wrong, with a did-you-mean."""
    refs = [w.ref for w in topology.workloads]
    if "." in text:
        workload = topology.workload(text)
        if workload is None:
            return Unresolved(f"unknown workload '{text}'{did_you_mean(text, refs)}", f"workloads: {', '.join(refs)}")
        return workload
    matches = [w for w in topology.workloads if w.name == text]
    if len(matches) == 1:
        return matches[0]
    if matches:
        return Unresolved(f"workload name '{text}' is ambiguous: it exists in "
                          f"{', '.join(w.namespace for w in matches)}",
                          f"write one of {', '.join(w.ref for w in matches)}")
    names = [*refs, *(w.name for w in topology.workloads)]
    return Unresolved(f"unknown workload '{text}'{did_you_mean(text, names)}", f"workloads: {', '.join(refs)}")


def resolve_client_tls(source: Workload, value: Any) -> ClientTls | Unresolved:
    """``tls``: the client (no sidecar) opens TLS itself, with no, a foreign or a mesh certificate."""
    tls = next((t for t in CLIENT_TLS if t == value), None)
    if tls is None:
        return Unresolved(f"invalid tls {value!r}{did_you_mean(str(value), CLIENT_TLS)}",
                          f"use one of {', '.join(CLIENT_TLS)}", "tls")
    if source.sidecar:
        return Unresolved(f"{source.ref} has a sidecar, which carries its connections: a client that speaks TLS itself "
                          "is a workload without a sidecar",
                          "use a client with sidecar: false (e.g. in a namespace with sidecars: false)", "tls", True)
    return tls


def resolve_destination(scenario: Scenario, source: Workload, to: str, endpoint: Any = None,
                        subset: Any = None) -> tuple[Workload, Port] | Unresolved:
    """Where a row's probe goes and which workload answers it: ``to`` (a Service, or ``pod/<workload>``, and a
    port), ``endpoint`` (one of several workloads behind the Service) and ``subset`` (a DestinationRule subset the
    client is routed to). Shared by the loader (rows) and ``explain``."""
    pod = to.startswith(POD_PREFIX)
    target_text, _, port_key = to.removeprefix(POD_PREFIX).partition(":")
    target = resolve_workload(scenario.topology, target_text)
    if isinstance(target, Unresolved):
        return target
    if pod:
        return _pod_destination(source, target, port_key or None, endpoint, subset)
    if target.joins:
        return Unresolved(f"{target.ref} has no Service of its own: it is an endpoint of {target.service_ref}",
                          f"write to: {target.service_ref}, endpoint: {target.name}")
    port = resolve_port(target, port_key or None)
    if isinstance(port, Unresolved):
        return port
    endpoints = scenario.topology.endpoints(target)
    answering: Workload | None = None
    if endpoint is not None:
        names = [e.name for e in endpoints]
        if not isinstance(endpoint, str) or not endpoint:
            return Unresolved(f"endpoint must be a workload name, not {type_name(endpoint)}",
                              f"its workloads: {', '.join(names)}", "endpoint")
        if not target.shared:
            return Unresolved(f"{target.ref} is the only workload behind its Service",
                              "drop endpoint: it names one of several workloads behind a Service", "endpoint", True)
        answering = next((e for e in endpoints if endpoint in (e.name, e.ref)), None)
        if answering is None:
            return Unresolved(f"'{endpoint}' is not behind Service {target.service_ref}"
                              f"{did_you_mean(endpoint, names)}", f"its workloads: {', '.join(names)}", "endpoint")
    if subset is not None:
        routed = _subset(scenario, source, target, subset, endpoints, answering)
        if isinstance(routed, Unresolved):
            return routed
        answering, port = routed, dataclasses.replace(port, subset=str(subset))
    if answering is None and len(endpoints) > 1:
        names = [e.name for e in endpoints]
        return Unresolved(f"Service {target.service_ref} has {len(endpoints)} workloads behind it "
                          f"({', '.join(names)}): say which one answers", f"add endpoint: {names[-1]}", "")
    return answering or target, port


def _pod_destination(source: Workload, target: Workload, key: str | None, endpoint: Any,
                     subset: Any) -> tuple[Workload, Port] | Unresolved:
    """``to: pod/<workload>[:<container port>]``: the pod address, bypassing the Service."""
    for extra, value in (("endpoint", endpoint), ("subset", subset)):
        if value is not None:
            return Unresolved(f"a pod probe names its pod in 'to'; {extra} applies to Service probes",
                              f"drop {extra}", extra, True)
    if source.sidecar:
        return Unresolved(f"{source.ref} has a sidecar: a pod probe comes from a workload without one (a sidecar "
                          "would send it through its passthrough cluster, which is not modelled)",
                          "probe the pod from a client with sidecar: false")
    port = resolve_pod_port(target, key)
    return port if isinstance(port, Unresolved) else (target, port)


def _subset(scenario: Scenario, source: Workload, target: Workload, name: Any, endpoints: tuple[Workload, ...],
            endpoint: Workload | None) -> Workload | Unresolved:
    """The endpoint a subset route reaches: the subset must be defined by the DestinationRule that applies to this
    client and Service, and select the endpoint (or exactly one workload when none is named)."""
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        return Unresolved(f"subset must be a subset's name, not {name!r}", "write the name of a DestinationRule "
                          "subset, e.g. subset: v2", "subset")
    if not source.sidecar:
        return Unresolved(f"{source.ref} has no sidecar: a subset route configures the client's sidecar, and without "
                          "one the Service's ClusterIP picks any endpoint",
                          "drop subset, or probe from a workload with a sidecar", "subset", True)
    rules, _ = destinationrules.destination_rule_for(scenario, source, target)
    defined = destinationrules.subsets(rules)
    if name not in defined:
        names = ", ".join(f"{r.namespace}/{r.name}" for r in rules)
        return Unresolved(f"no DestinationRule that applies to {source.ref} → {target.host} defines subset '{name}'"
                          + (f" ({names} defines {', '.join(defined) or 'no subsets'})" if rules else "")
                          + did_you_mean(name, defined),
                          "define it under spec.subsets of a DestinationRule for that host", "subset")
    labels = defined[name]
    selected = [e for e in endpoints if all(e.labels.get(k) == v for k, v in labels.items())]
    shown = ", ".join(f"{k}={v}" for k, v in labels.items()) or "none"
    if endpoint is not None and endpoint not in selected:
        return Unresolved(f"subset '{name}' (labels {shown}) does not select {endpoint.ref}",
                          "route to a subset that selects that workload, or name another endpoint", "subset")
    if endpoint is None and len(selected) != 1:
        choices = [e.name for e in selected]
        if not choices:
            return Unresolved(f"subset '{name}' (labels {shown}) selects no workload behind Service "
                              f"{target.service_ref}", "check the subset's labels against the workloads' labels",
                              "subset")
        return Unresolved(f"subset '{name}' (labels {shown}) selects {', '.join(choices)} behind Service "
                          f"{target.service_ref}: say which one answers", f"add endpoint: {' or '.join(choices)}",
                          "subset")
    return endpoint or selected[0]


def resolve_pod_port(target: Workload, key: str | None) -> Port | Unresolved:
    """A container port of ``target``'s pod, by number or port name; any one when it listens on only one."""
    ports = [target.pod_port(n) for n in sorted({p.target_port for p in (*target.ports, *target.container_ports)})]
    found = [p for p in ports if p is not None]
    listing = ", ".join(str(p.port) for p in found)
    if not found:
        return Unresolved(f"the pod of {target.ref} listens on no port", "give the workload ports or containerPorts")
    if key is None or key == "":
        if len(found) == 1:
            return found[0]
        return Unresolved(f"the pod of {target.ref} listens on several ports ({listing}); say which one",
                          f"write pod/{target.ref}:{found[0].port}")
    named = next((p for p in (*target.ports, *target.container_ports) if p.name == key), None)
    port = target.pod_port(int(key)) if key.isdigit() else (target.pod_port(named.target_port) if named else None)
    if port is not None:
        return port
    service = next((p for p in target.ports if key.isdigit() and p.port == int(key)), None)
    if service is not None:
        return Unresolved(f"{key} is a Service port of {target.ref}; a pod probe names the container port",
                          f"write pod/{target.ref}:{service.target_port}")
    close = did_you_mean(key, [str(p.port) for p in found])
    return Unresolved(f"the pod of {target.ref} listens on no port '{key}'{close}", f"its container ports: {listing}")


def resolve_port(target: Workload, key: str | None) -> Port | Unresolved:
    """A Service port by number or name (optional when there is one); a container port gets the Service port's fix."""
    listing = ", ".join(f"{p.port} ({p.name})" for p in target.ports)
    if not target.ports:
        return Unresolved(f"{target.ref} has no ports: it is a client only and cannot be probed",
                          "probe a workload that declares ports, or add ports to this one")
    if key is None or key == "":
        if len(target.ports) == 1:
            return target.ports[0]
        return Unresolved(f"{target.ref} has several ports ({listing}); say which one",
                          f"write {target.ref}:{target.ports[0].port}")
    port = target.port(int(key)) if key.isdigit() else target.port(key)
    if port is not None:
        return port
    by_target = next((p for p in target.ports if key.isdigit() and p.target_port == int(key)), None)
    if by_target is not None:
        return Unresolved(f"{key} is the container port of {target.ref}; expectations name the Service port",
                          f"write {target.ref}:{by_target.port}")
    names = [str(p.port) for p in target.ports] + [p.name for p in target.ports]
    return Unresolved(f"{target.ref} has no port '{key}'{did_you_mean(key, names)}", f"its ports: {listing}")


def routed_subsets(scenario: Scenario, rows: Iterable[Expectation]) -> set[tuple[str, str]]:
    """(DestinationRule ref, subset) for every subset an expect row routes probes to."""
    routed = set()
    for row in rows:
        if row.port.subset:
            rules, _ = destinationrules.destination_rule_for(scenario, row.source, row.target)
            routed |= {(rule.ref, row.port.subset) for rule in rules
                       if row.port.subset in destinationrules.subsets([rule])}
    return routed
