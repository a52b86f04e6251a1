"""The ``mesh:`` and ``topology:`` sections: namespaces, workloads, their Service and container ports.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from typing import Any

from ..model import (
    MeshSettings,
    Namespace,
    Port,
    Topology,
    Workload,
)
from ..model.diagnostics import did_you_mean
from .checks import Checker

MESH_KEYS = ("autoMtls", "rootNamespace")
TOPOLOGY_KEYS = ("namespaces", "workloads")
NAMESPACE_KEYS = ("sidecars", "ambient")
WORKLOAD_KEYS = ("name", "namespace", "labels", "serviceAccount", "sidecar", "ports", "service", "containerPorts")
PORT_KEYS = ("name", "port", "targetPort", "protocol")
CONTAINER_PORT_KEYS = ("name", "port", "protocol")
PROTOCOLS = ("http", "tcp")
# Ports the Istio sidecar itself listens on or excludes from interception.
RESERVED_PORTS = {15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090}



def read_mesh(check: Checker, mesh: Any) -> MeshSettings:
    if mesh is None:
        return MeshSettings()
    if not check.mapping(("mesh",), mesh, "mesh"):
        return MeshSettings()
    check.keys(("mesh",), mesh, MESH_KEYS, "mesh")
    auto = mesh.get("autoMtls", True)
    root = mesh.get("rootNamespace", "istio-system")
    check.boolean(("mesh", "autoMtls"), auto, "mesh.autoMtls")
    check.dns_label(("mesh", "rootNamespace"), root, "mesh.rootNamespace")
    return MeshSettings(auto_mtls=bool(auto) if isinstance(auto, bool) else True,
                        root_namespace=str(root) if isinstance(root, str) else "istio-system")


class TopologyReader:
    """Reads ``topology:``. One reader per file: it remembers which workloads join another's Service
    (``service:``) until every workload is read."""

    def __init__(self) -> None:
        self._joins: dict[str, tuple[str, tuple[str | int, ...]]] = {}  # workload ref → (Service it joins, where)

    def read(self, check: Checker, data: Mapping[str, Any]) -> Topology:
        raw = data["topology"]
        if not check.mapping(("topology",), raw, "topology"):
            return Topology((), ())
        check.keys(("topology",), raw, TOPOLOGY_KEYS, "topology")
        namespaces: list[Namespace] = []
        raw_ns = raw.get("namespaces")
        if raw_ns is None:
            check.error(("topology",), "topology has no namespaces",
                        "add e.g. namespaces: {foo: {sidecars: true}, legacy: {sidecars: false}}", key=True)
        elif check.mapping(("topology", "namespaces"), raw_ns, "topology.namespaces"):
            for ns_name, settings in raw_ns.items():
                path = ("topology", "namespaces", ns_name)
                if not check.dns_label(path, ns_name, "namespace name"):
                    continue
                settings = {} if settings is None else settings
                if not check.mapping(path, settings, f"namespace '{ns_name}'"):
                    continue
                check.keys(path, settings, NAMESPACE_KEYS, f"namespace '{ns_name}'")
                sidecars = settings.get("sidecars", True)
                ambient = settings.get("ambient", False)
                check.boolean((*path, "sidecars"), sidecars, f"sidecars of namespace '{ns_name}'")
                check.boolean((*path, "ambient"), ambient, f"ambient of namespace '{ns_name}'")
                if ambient is True and sidecars is True and "sidecars" in settings:
                    check.error((*path, "ambient"),
                                f"namespace '{ns_name}' cannot be both ambient and sidecar-injected",
                                "set sidecars: false for an ambient namespace")
                namespaces.append(Namespace(str(ns_name), sidecars is True and ambient is not True,
                                            ambient is True))
        workloads: list[Workload] = []
        raw_workloads = raw.get("workloads")
        if raw_workloads is None:
            check.error(("topology",), "topology has no workloads",
                        "add e.g. workloads: [{name: httpbin, namespace: foo, ports: [{port: 8000}]}]", key=True)
        elif check.is_list(("topology", "workloads"), raw_workloads, "topology.workloads"):
            for index, item in enumerate(raw_workloads):
                workload = self._workload(check, ("topology", "workloads", index), item, namespaces)
                if workload is None:
                    continue
                duplicate = next((w for w in workloads if w.ref == workload.ref), None)
                if duplicate is not None:
                    check.error(("topology", "workloads", index, "name"),
                                f"workload {workload.ref} is declared twice (first at {duplicate.mark})",
                                "workload names must be unique within a namespace")
                    continue
                workloads.append(workload)
        workloads = self._join_services(check, workloads)
        if workloads and not any(w.is_server for w in workloads):
            check.warn(("topology", "workloads"), "no workload has ports, so there is nothing to probe",
                       "give a server workload ports: [{name: http, port: 8000}]")
        return Topology(tuple(namespaces), tuple(workloads))

    def _join_services(self, check: Checker, workloads: list[Workload]) -> list[Workload]:
        """Workloads with ``service: <owner>`` become endpoints of the owner's Service (and serve its ports);
        every workload of a Service with several endpoints is marked ``shared``."""
        joined: list[Workload] = []
        for workload in workloads:
            if workload.ref not in self._joins:
                joined.append(workload)
                continue
            service, path = self._joins[workload.ref]
            owner = next((w for w in workloads if w.name == service and w.namespace == workload.namespace), None)
            names = [w.name for w in workloads if w.namespace == workload.namespace and w.ports
                     and w.ref not in self._joins]
            if owner is None:
                elsewhere = [w for w in workloads if w.name == service]
                if elsewhere:
                    check.error(path, f"workload {workload.ref} joins Service '{service}', but a Service selects pods "
                                f"of its own namespace: {elsewhere[0].ref} is not in {workload.namespace}",
                                f"put {workload.name} in namespace {elsewhere[0].namespace}")
                else:
                    check.error(path, f"workload {workload.ref} joins Service '{service}', but no workload "
                                f"'{service}' in {workload.namespace} owns a Service{did_you_mean(service, names)}",
                                f"name a workload with ports in {workload.namespace}: {', '.join(names) or '(none)'}")
                continue
            if owner.ref in self._joins:
                check.error(path, f"{owner.ref} itself joins Service '{self._joins[owner.ref][0]}'",
                            f"write service: {self._joins[owner.ref][0]}")
                continue
            if not owner.ports:
                check.error(path, f"{owner.ref} has no ports, so it has no Service to join",
                            f"give {owner.name} ports, or drop service")
                continue
            bad = [p.port for p in workload.container_ports if any(q.target_port == p.port for q in owner.ports)]
            if bad:
                check.error(path, f"{workload.ref} serves the target ports of Service {owner.ref} already; "
                            f"containerPorts repeats {', '.join(map(str, bad))}", "drop those from containerPorts")
            joined.append(dataclasses.replace(workload, ports=owner.ports, service=owner.name))
        counts = Counter(w.service_ref for w in joined if w.is_server)
        return [dataclasses.replace(w, shared=True) if w.is_server and counts[w.service_ref] > 1 else w
                for w in joined]

    def _workload(self, check: Checker, path: tuple[str | int, ...], item: Any,
                  namespaces: list[Namespace]) -> Workload | None:
        if not check.mapping(path, item, "a workload"):
            return None
        check.keys(path, item, WORKLOAD_KEYS, "a workload")
        name = item.get("name")
        if "name" not in item:
            check.error(path, "a workload has no name", "add name: <workload name>")
            return None
        if not check.dns_label((*path, "name"), name, "workload name"):
            return None
        ns_names = [n.name for n in namespaces]
        ns_name = item.get("namespace")
        if ns_name is None:
            if len(namespaces) != 1:
                check.error(path, f"workload '{name}' has no namespace",
                            f"add namespace: one of {', '.join(ns_names) or '(declare topology.namespaces)'}")
                return None
            ns_name = namespaces[0].name
        if not check.text((*path, "namespace"), ns_name, f"namespace of workload '{name}'"):
            return None
        namespace = next((n for n in namespaces if n.name == ns_name), None)
        if namespace is None:
            check.error((*path, "namespace"), f"workload '{name}' is in namespace '{ns_name}', which "
                        f"topology.namespaces does not declare{did_you_mean(str(ns_name), ns_names)}",
                        f"declare it under topology.namespaces or use one of {', '.join(ns_names)}")
            return None
        labels = item.get("labels", {"app": name})
        if not check.mapping((*path, "labels"), labels, f"labels of workload '{name}'"):
            labels = {}
        clean_labels: dict[str, str] = {}
        for key, value in labels.items():
            if not isinstance(value, str | int) or isinstance(value, bool):
                check.error((*path, "labels", key), f"label '{key}' of workload '{name}' must be text, not "
                            f"{value!r}", "quote the value")
                continue
            clean_labels[str(key)] = str(value)
        account = item.get("serviceAccount", name)
        check.dns_label((*path, "serviceAccount"), account, f"serviceAccount of workload '{name}'")
        sidecar = item.get("sidecar", namespace.sidecars)
        check.boolean((*path, "sidecar"), sidecar, f"sidecar of workload '{name}'")
        ports = self._ports(check, (*path, "ports"), item.get("ports"), str(name))
        service = str(name) if ports else ""
        if "service" in item and check.dns_label((*path, "service"), item["service"], f"service of workload '{name}'"):
            if item["service"] == name:
                check.error((*path, "service"), f"workload '{name}' names its own Service",
                            "a workload with ports has a Service named after it; drop service", key=True)
            elif "ports" in item:
                check.error((*path, "ports"), f"workload '{name}' joins Service '{item['service']}' and serves "
                            "that Service's ports, so it declares none of its own",
                            "drop ports here (extra ports the app listens on go under containerPorts)", key=True)
            else:
                self._joins[f"{name}.{ns_name}"] = (str(item["service"]), (*path, "service"))
        container_ports = self._container_ports(check, (*path, "containerPorts"), item.get("containerPorts"),
                                                str(name), ports)
        return Workload(
            name=str(name), namespace=str(ns_name), labels=clean_labels, service_account=str(account),
            sidecar=sidecar is True, ports=ports, ambient=namespace.ambient and sidecar is not True,
            mark=check.mark(path), service=service, container_ports=container_ports,
        )

    def _container_ports(self, check: Checker, path: tuple[str | int, ...], raw: Any, workload: str,
                         service_ports: tuple[Port, ...]) -> tuple[Port, ...]:
        """Ports the app listens on that no Service declares: reached only at the pod address (``to: pod/...``)."""
        if raw is None or not check.is_list(path, raw, f"containerPorts of workload '{workload}'"):
            return ()
        ports: list[Port] = []
        for index, raw_item in enumerate(raw):
            where = (*path, index)
            item = _port_entry(check, where, raw_item, CONTAINER_PORT_KEYS,
                               f"a container port of workload '{workload}'", "add port: <number>")
            if item is None:
                continue
            number = item["port"]
            protocol = item.get("protocol", "http")
            if not check.port_number((*where, "port"), number, "port") or not check.choice(
                    (*where, "protocol"), protocol, PROTOCOLS, "protocol"):
                continue
            name = item.get("name", f"{protocol}-{number}")
            if not check.dns_label((*where, "name"), name, "port name"):
                continue
            if number in RESERVED_PORTS:
                check.error((*where, "port"), f"port {number} is reserved by the Istio sidecar",
                            "pick a port outside 15000-15090")
                continue
            served = next((p for p in service_ports if p.target_port == number), None)
            if served is not None:
                check.error((*where, "port"), f"container port {number} is already the targetPort of Service port "
                            f"{served.port}", "drop it from containerPorts: pod probes reach it anyway")
                continue
            if any(p.port == number for p in ports):
                check.error((*where, "port"), f"container port {number} is declared twice on workload '{workload}'",
                            "delete one of them")
                continue
            ports.append(Port(str(name), number, number, protocol))
        return tuple(ports)

    def _ports(self, check: Checker, path: tuple[str | int, ...], raw: Any, workload: str) -> tuple[Port, ...]:
        if raw is None:
            return ()
        if not check.is_list(path, raw, f"ports of workload '{workload}'"):
            return ()
        ports: list[Port] = []
        for index, raw_item in enumerate(raw):
            where = (*path, index)
            item = _port_entry(check, where, raw_item, PORT_KEYS, f"a port of workload '{workload}'",
                               "add port: <Service port>")
            if item is None:
                continue
            number = item["port"]
            if not check.port_number((*where, "port"), number, "port"):
                continue
            target = item.get("targetPort", number)
            if not check.port_number((*where, "targetPort"), target, "targetPort"):
                continue
            protocol = item.get("protocol", "http")
            if not check.choice((*where, "protocol"), protocol, PROTOCOLS, "protocol"):
                continue
            name = item.get("name", protocol if len(raw) == 1 else f"{protocol}-{number}")
            if not check.dns_label((*where, "name"), name, "port name"):
                continue
            for reserved, key in ((number, "port"), (target, "targetPort")):
                if reserved in RESERVED_PORTS and (key == "port" or "targetPort" in item):
                    check.error((*where, key), f"{key} {reserved} is reserved by the Istio sidecar",
                                "pick a port outside 15000-15090")
            clash = next((p for p in ports if p.port == number or p.name == name), None)
            if clash is not None:
                what = f"port {number}" if clash.port == number else f"port name '{name}'"
                check.error((*where, "port" if clash.port == number else "name"),
                            f"{what} is declared twice on workload '{workload}'", "Service ports must be unique")
                continue
            ports.append(Port(str(name), number, target, protocol))
        return tuple(ports)


def _port_entry(check: Checker, where: tuple[str | int, ...], item: Any, keys: tuple[str, ...], what: str,
                fix: str) -> dict[str, Any] | None:
    """One entry of `ports` or `containerPorts` as a mapping with a `port` (a bare number is short for it)."""
    if isinstance(item, int) and not isinstance(item, bool):
        item = {"port": item}
    if not check.mapping(where, item, what):
        return None
    check.keys(where, item, keys, what)
    if "port" not in item:
        check.error(where, f"{what} has no 'port'", fix)
        return None
    return dict(item)
