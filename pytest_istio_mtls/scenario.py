"""Loading and validating scenario files: YAML in, a ``Scenario`` or positioned errors out.

The file format is the public contract (README "Scenario format"). Every problem found is
reported at once, each with ``file:line:column``, what is wrong and how to fix it. Nothing here
touches a cluster.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from . import semantics
from .diagnostics import Diagnostic, Mark, ScenarioError, did_you_mean, plural
from .model import (
    CLIENT_TLS,
    EXPECTABLE_RESULTS,
    ClientTls,
    Expectation,
    MeshSettings,
    Namespace,
    Policy,
    Port,
    Request,
    Result,
    Scenario,
    Step,
    Topology,
    Workload,
    default_topology,
    pair_id,
)
from .policies import PolicyValidator
from .validation import DNS_LABEL, Checker, type_name, unquote_fix
from .yamlpos import Located, block_scalar_offset, load_all, load_one

TOP_KEYS = ("name", "description", "mesh", "topology", "policies", "policyFiles", "expect", "steps")
STEP_KEYS = ("name", "description", "policies", "remove", "expect")
DERIVED_KEYS = ("derived", "rows")  # expect: {derived: true, rows: [...]}: the oracle's table, with these rows pinned
MESH_KEYS = ("autoMtls", "rootNamespace")
TOPOLOGY_KEYS = ("namespaces", "workloads")
NAMESPACE_KEYS = ("sidecars", "ambient")
WORKLOAD_KEYS = ("name", "namespace", "labels", "serviceAccount", "sidecar", "ports", "service", "containerPorts")
PORT_KEYS = ("name", "port", "targetPort", "protocol")
CONTAINER_PORT_KEYS = ("name", "port", "protocol")
EXPECT_KEYS = ("from", "to", "endpoint", "subset", "tls", "request", "result", "status")
POD_PREFIX = "pod/"
REQUEST_KEYS = ("method", "path", "headers", "body")
PROTOCOLS = ("http", "tcp")
# Ports the Istio sidecar itself listens on or excludes from interception.
RESERVED_PORTS = {15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090}
MARKER_HEADER = "x-istio-mtls-probe"
SCENARIO_SUFFIXES = (".yaml", ".yml")
POLICY_FILE_SUFFIXES = (".yaml", ".yml", ".json")  # what kubectl apply -f DIR reads
POLICY_COMMAND_KEYS = ("command",)
POLICY_COMMAND_TIMEOUT_S = 120.0  # kustomize or helm may fetch remote bases and charts
COMMAND_TAIL_LINES = 10
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a pytest id part: no '::', '/', '[' or spaces
Source = tuple[Located, tuple[str | int, ...]]  # where a policy was written: its document and path
POLICY_REF = re.compile(r"^([A-Za-z]+) ([^\s/]+)/([^\s/]+)$")


def display_path(path: Path) -> str:
    """A path as users want to read it: relative to the working directory when below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(path) if relative.startswith("..") else relative


def looks_like_scenario(path: Path) -> bool:
    """Cheap test used by collection: a YAML mapping that is not a Kubernetes manifest.

    Policy files referenced through ``policyFiles`` may live next to scenarios; they start with
    ``apiVersion``/``kind`` and are skipped here.
    """
    if path.suffix not in SCENARIO_SUFFIXES:
        return False
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return True  # let load_scenario report it properly
    top_keys = set(re.findall(r"^([A-Za-z]+)\s*:", text, flags=re.MULTILINE))
    if {"apiVersion", "kind"} <= top_keys:
        return False
    return bool(top_keys & set(TOP_KEYS)) or not top_keys


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = display_path(path)
        self.diagnostics: list[Diagnostic] = []
        self._joins: dict[str, tuple[str, tuple[str | int, ...]]] = {}  # workload ref → (Service it joins, where)

    def fail_if_errors(self) -> None:
        """Raise with every diagnostic (warnings too, they often explain the error) in file order."""
        if any(d.severity == "error" for d in self.diagnostics):
            raise ScenarioError(sorted(dict.fromkeys(self.diagnostics),
                                       key=lambda d: (d.mark.file != self.file, d.mark)))

    # -- entry --------------------------------------------------------------------------------------

    def load(self) -> Scenario:
        try:
            source = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ScenarioError([Diagnostic("error", Mark(self.file, 1, 1), "no such scenario file",
                                            "check the path")]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ScenarioError([Diagnostic("error", Mark(self.file, 1, 1), f"cannot read the file: {exc}",
                                            "scenario files are UTF-8 YAML")]) from None
        located = load_one(source, self.file)
        check = Checker(located, self.diagnostics)
        data = located.data
        if data is None:
            check.error((), "the scenario file is empty",
                        "write at least an 'expect:' list; see the scenario format in the README")
            self.fail_if_errors()
        if not check.mapping((), data, "a scenario"):
            self.fail_if_errors()
        check.keys((), data, TOP_KEYS, "the scenario")

        name = data.get("name", self.path.stem)
        if check.text(("name",), name, "name") and ("::" in name or "\n" in name):
            check.error(("name",), f"name '{name}' may not contain '::' or line breaks",
                        "use letters, digits, '-', '_' and '.'")
        description = data.get("description", "")
        if not isinstance(description, str):
            check.error(("description",), f"description must be text, not {type_name(description)}")
        mesh = self._mesh(check, data.get("mesh"))
        topology = self._topology(check, data) if "topology" in data else default_topology()
        validator = _Recorder(topology, mesh)
        self._policy_files(check, data.get("policyFiles"), validator)
        self._inline_policies(check, source, data.get("policies"), validator, located, ("policies",))
        draft = Scenario(name=str(name), path=self.path, description=str(description or ""), mesh=mesh,
                         topology=topology, policies=tuple(validator.policies))
        if "steps" in data:
            if "expect" in data:
                check.error(("expect",), "a scenario with steps has no top-level 'expect': each step has its own",
                            "move the rows into each step's expect:", key=True)
            scenario = dataclasses.replace(draft, steps=self._steps(check, source, located, data["steps"],
                                                                    validator, draft))
        else:
            expectations, derived = self._expectations(check, ("expect",), data.get("expect"), draft)
            validator.warn_traps(routed_subsets(draft, expectations))
            self.fail_if_errors()
            scenario = dataclasses.replace(draft, expectations=tuple(expectations), derived=derived)
            if derived:
                scenario = dataclasses.replace(scenario, expectations=self._derive(check, scenario, ("expect",),
                                                                                   expectations))
        self.fail_if_errors()
        warnings = tuple(sorted(dict.fromkeys(d for d in self.diagnostics if d.severity == "warning"),
                                key=lambda d: d.mark))
        return dataclasses.replace(scenario, warnings=warnings)

    # -- steps --------------------------------------------------------------------------------------

    def _steps(self, check: Checker, source: str, located: Located, raw: Any, base: _Recorder,
               draft: Scenario) -> tuple[Step, ...]:
        """Each step's policy state (the previous one with the step's policies added or replaced by kind,
        namespace and name, and its ``remove`` entries removed) and its expectations."""
        if not check.is_list(("steps",), raw, "steps"):
            return ()
        if not raw:
            check.error(("steps",), "steps is empty", "add at least one step: {name: ..., expect: ...}")
        state: list[Policy] = list(base.policies)
        sources = dict(base.sources)
        steps: list[Step] = []
        for index, item in enumerate(raw):
            path: tuple[str | int, ...] = ("steps", index)
            if not check.mapping(path, item, "a step"):
                continue
            check.keys(path, item, STEP_KEYS, "a step")
            name = self._step_name(check, path, item, steps)
            description = item.get("description", "")
            if not isinstance(description, str):
                check.error((*path, "description"), f"description must be text, not {type_name(description)}")
                description = ""
            own = _Recorder(draft.topology, draft.mesh)
            self._inline_policies(check, source, item.get("policies"), own, located, (*path, "policies"))
            sources.update(own.sources)
            removed = self._removals(check, path, item.get("remove"), state, own.policies)
            before = {p.ref: p for p in state}
            state = [p for p in state if p.ref not in removed]
            added: list[str] = []
            changed: list[str] = []
            for policy in own.policies:
                old = next((i for i, p in enumerate(state) if p.ref == policy.ref), None)
                if old is None:
                    state.append(policy)
                    added.append(policy.ref)
                else:  # kubectl apply updates the object in place: it keeps its age
                    if state[old].manifest != policy.manifest:
                        changed.append(policy.ref)
                    state[old] = policy
            fresh, scratch = self._revalidate(state, sources, draft)
            state = fresh.policies
            if name is None:
                continue
            at_step = dataclasses.replace(draft, policies=tuple(state))
            rows, derived = self._expectations(check, (*path, "expect"), item.get("expect"), at_step,
                                               f"step '{name}'")
            if derived and not any(d.severity == "error" for d in self.diagnostics):
                rows = list(self._derive(check, at_step, (*path, "expect"), rows))
            fresh.warn_traps(routed_subsets(at_step, rows))  # Istio's traps in this state (e.g. a second
            self.diagnostics.extend(d for d in scratch if d.severity == "warning")  # namespace-wide policy)
            step = Step(name=name, number=len(steps) + 1, policies=tuple(state), expectations=tuple(rows),
                        derived=derived, description=description, added=tuple(added), changed=tuple(changed),
                        removed=tuple(r for r in before if r in removed), mark=check.mark(path))
            if steps and not step.changes:
                check.warn(path, f"step '{name}' changes no policy: it probes the state of step '{steps[-1].name}' "
                           "again", "add policies: or remove: to the step, or merge its rows into that step")
            steps.append(step)
        return tuple(steps)

    def _step_name(self, check: Checker, path: tuple[str | int, ...], item: Mapping[str, Any],
                   steps: list[Step]) -> str | None:
        if "name" not in item:
            check.error(path, "a step has no name", "add name: <step name>, e.g. name: workload-strict")
            return None
        name = item["name"]
        if not check.text((*path, "name"), name, "step name"):
            return None
        if not STEP_NAME.match(name):
            check.error((*path, "name"), f"step name '{name}' may only hold letters, digits, '-', '_' and '.'",
                        "it is part of the pytest id (file::scenario::step::row), e.g. name: workload-strict")
            return None
        first = next((s for s in steps if s.name == name), None)
        if first is not None:
            check.error((*path, "name"), f"step '{name}' is named twice (first at {first.mark})",
                        "step names must be unique within a scenario")
            return None
        return str(name)

    def _removals(self, check: Checker, path: tuple[str | int, ...], raw: Any, state: list[Policy],
                  added: list[Policy]) -> set[str]:
        """The refs ``remove`` names: each a policy in force before the step, written ``Kind namespace/name``."""
        if raw is None or not check.is_list((*path, "remove"), raw, "remove"):
            return set()
        refs = [p.ref for p in state]
        removed: set[str] = set()
        for index, entry in enumerate(raw):
            where = (*path, "remove", index)
            if not isinstance(entry, str) or not POLICY_REF.match(entry.strip()):
                check.error(where, f"a remove entry is 'Kind namespace/name', not {entry!r}",
                            f"e.g. {refs[0] if refs else 'PeerAuthentication foo/default'}")
                continue
            ref = " ".join(entry.split())
            if ref not in refs:
                check.error(where, f"{ref} is not in force before this step{did_you_mean(ref, refs)}",
                            f"policies in force: {', '.join(refs) or 'none'}")
            elif any(p.ref == ref for p in added):
                check.error(where, f"the step both removes and applies {ref}",
                            "drop it from remove: (applying it again replaces it)")
            else:
                removed.add(ref)
        return removed

    @staticmethod
    def _revalidate(state: list[Policy], sources: dict[Policy, Source],
                    draft: Scenario) -> tuple[_Recorder, list[Diagnostic]]:
        """One step's policies validated together, as the cluster holds them (``order`` is their age), with
        the diagnostics apart: each document was validated when it was read."""
        scratch: list[Diagnostic] = []
        fresh = _Recorder(draft.topology, draft.mesh)
        for policy in state:
            located, where = sources[policy]
            fresh.add(Checker(located, scratch), where, policy.manifest)
        sources.update(fresh.sources)
        return fresh, scratch

    # -- sections -----------------------------------------------------------------------------------

    def _mesh(self, check: Checker, mesh: Any) -> MeshSettings:
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

    def _topology(self, check: Checker, data: Mapping[str, Any]) -> Topology:
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

    def _policy_files(self, check: Checker, files: Any, validator: PolicyValidator) -> None:
        if files is None:
            return
        if not check.is_list(("policyFiles",), files, "policyFiles"):
            return
        for index, entry in enumerate(files):
            path: tuple[str | int, ...] = ("policyFiles", index)
            skipped: Counter[str] = Counter()
            skipped_in: list[str] = []
            for label, text in self._policy_sources(check, path, entry):
                try:
                    documents = load_all(text, label)
                except ScenarioError as exc:
                    self.diagnostics.extend(exc.diagnostics)
                    continue
                before = skipped.total()
                for doc in documents:
                    if doc.data is not None:  # an empty document (a trailing ---), as kubectl ignores it
                        validator.add(Checker(doc, self.diagnostics), (), doc.data, skipped)
                if skipped.total() > before:
                    skipped_in.append(label)
            if skipped:
                kinds = [plural(count, kind) for kind, count in skipped.items()]
                listed = ", ".join(kinds[:-1]) + f" and {kinds[-1]}" if len(kinds) > 1 else kinds[0]
                check.warn(path, f"{', '.join(skipped_in)}: skipped {listed} (not Istio security or networking "
                                 "policies)")

    def _policy_sources(self, check: Checker, path: tuple[str | int, ...], entry: Any) -> list[tuple[str, str]]:
        """(label, YAML text) for one policyFiles entry: a file, every manifest of a directory, or a command's
        output. Problems are reported at the entry; nothing is returned for them."""
        if isinstance(entry, Mapping):
            check.keys(path, entry, POLICY_COMMAND_KEYS, "a policyFiles entry")
            command = entry.get("command")
            if "command" not in entry:
                check.error(path, "a policyFiles mapping has no 'command'",
                            "write {command: kustomize build deploy/overlays/prod}, or a path")
                return []
            if not check.text((*path, "command"), command, "policyFiles command"):
                return []
            output = self._run_policy_command(check, (*path, "command"), str(command))
            return [] if output is None else [(f"output of `{command}`", output)]
        if not isinstance(entry, str) or not entry:
            check.error(path, f"a policyFiles entry must be a path or a command, not {type_name(entry)}",
                        "write a file or directory relative to the scenario file, or {command: ...}")
            return []
        target = self.path.parent / entry
        if target.is_dir():
            files = sorted(f for f in target.iterdir() if f.suffix in POLICY_FILE_SUFFIXES and f.is_file()
                           and f.resolve() != self.path.resolve() and not looks_like_scenario(f))
            if not files:
                check.error(path, f"policy directory '{entry}' holds no manifests (*.yaml, *.yml, *.json)",
                            "subdirectories are not read (as with kubectl apply -f DIR): name them too")
            return [source for f in files for source in self._read_policy_file(check, path, entry, f)]
        return self._read_policy_file(check, path, entry, target)

    def _read_policy_file(self, check: Checker, path: tuple[str | int, ...], entry: str,
                          file: Path) -> list[tuple[str, str]]:
        try:
            return [(display_path(file.resolve()), file.read_text(encoding="utf-8"))]
        except (OSError, UnicodeDecodeError) as exc:
            reason = "no such file" if isinstance(exc, FileNotFoundError) else str(exc)
            check.error(path, f"cannot read policy file '{entry}': {reason}", "paths are relative to the scenario file")
            return []

    def _run_policy_command(self, check: Checker, path: tuple[str | int, ...], command: str) -> str | None:
        """Run ``command`` (no shell) in the scenario file's directory; its standard output is the manifests."""
        directory = self.path.parent.resolve()
        where = f"run it in {display_path(directory)} to see the whole output"
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            check.error(path, f"cannot split policy command `{command}`: {exc}", "check its quotes")
            return None
        try:
            done = subprocess.run(argv, cwd=directory, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  errors="replace", timeout=POLICY_COMMAND_TIMEOUT_S, check=False)
        except FileNotFoundError:
            check.error(path, f"cannot run policy command `{command}`: {argv[0]} not found",
                        f"install {argv[0]} or put it on PATH")
            return None
        except subprocess.TimeoutExpired:
            check.error(path, f"policy command `{command}` did not finish within {POLICY_COMMAND_TIMEOUT_S:g} s",
                        where)
            return None
        except OSError as exc:
            check.error(path, f"cannot run policy command `{command}`: {exc.strerror or exc}",
                        "the command runs without a shell: for pipes write sh -c '...'")
            return None
        if done.returncode != 0:
            tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-COMMAND_TAIL_LINES:]
            output = "".join(f"\n      {line}" for line in tail) if tail else " (no output)"
            check.error(path, f"policy command `{command}` failed (exit {done.returncode}):{output}", where)
            return None
        return done.stdout

    def _inline_policies(self, check: Checker, source: str, raw: Any, validator: PolicyValidator,
                         located: Located, path: tuple[str | int, ...]) -> None:
        if raw is None:
            return
        if isinstance(raw, list):  # a YAML list of resources is accepted too
            for index, item in enumerate(raw):
                validator.add(check, (*path, index), item)
            return
        if not isinstance(raw, str):
            check.error(path, f"policies must be a YAML block (policies: |) or a list, not {type_name(raw)}",
                        "write the resources exactly as you would kubectl-apply them, after 'policies: |'")
            return
        offset = block_scalar_offset(source, located.at(*path))
        line, col = offset if offset is not None else (located.at(*path).line - 1, 0)
        try:
            documents = load_all(raw, self.file, line_offset=line, col_offset=col)
        except ScenarioError as exc:
            self.diagnostics.extend(exc.diagnostics)
            return
        for doc in documents:
            validator.add(Checker(doc, self.diagnostics), (), doc.data)

    # -- expectations -------------------------------------------------------------------------------

    def _expectations(self, check: Checker, path: tuple[str | int, ...], raw: Any, scenario: Scenario,
                      owner: str = "the scenario") -> tuple[list[Expectation], bool]:
        """The explicit rows at ``path`` and whether the oracle's table is wanted too (``derived``)."""
        if raw is None:
            check.error(path[:-1], f"{owner} has no 'expect'",
                        "add an expect: list of {from, to, result} rows, or expect: derived", key=True)
            return [], False
        if raw == "derived":
            return [], True
        if isinstance(raw, str):
            check.error(path, f"expect must be a list of rows, 'derived' or {{derived: true, rows: [...]}}, not "
                        f"'{raw}'{did_you_mean(raw, ['derived'])}")
            return [], False
        if isinstance(raw, Mapping):
            check.keys(path, raw, DERIVED_KEYS, "expect")
            derived = raw.get("derived", False)
            if not check.boolean((*path, "derived"), derived, "expect.derived"):
                derived = False
            if "rows" not in raw:
                if not derived:
                    check.error(path, "expect has no rows and is not derived",
                                "write derived: true (the oracle's table) and/or rows: [...]")
                return [], derived is True
            return self._rows(check, (*path, "rows"), raw["rows"], scenario, allow_empty=derived is True), \
                derived is True
        return self._rows(check, path, raw, scenario), False

    def _rows(self, check: Checker, path: tuple[str | int, ...], raw: Any, scenario: Scenario, *,
              allow_empty: bool = False) -> list[Expectation]:
        if not check.is_list(path, raw, "expect" if path[-1] == "expect" else "expect.rows"):
            return []
        rows: list[Expectation] = []
        for index, item in enumerate(raw):
            row = self._row(check, (*path, index), item, scenario)
            if row is None:
                continue
            key = (row.client, row.destination, row.port.port, row.request)
            first = next((r for r in rows if (r.client, r.destination, r.port.port, r.request) == key), None)
            if first is not None:
                check.error((*path, index), f"duplicate row {row.pair} (first at {first.mark})",
                            "each (from, to, port, request) may be expected once; delete one of the rows")
                continue
            rows.append(row)
        if not raw and not allow_empty:
            check.error(path, "expect is empty", "add at least one {from, to, result} row")
        return rows

    def _row(self, check: Checker, path: tuple[str | int, ...], item: Any,
             scenario: Scenario) -> Expectation | None:
        topology = scenario.topology
        if not check.mapping(path, item, "an expect row"):
            return None
        check.keys(path, item, EXPECT_KEYS, "an expect row")
        missing = [k for k in ("from", "to", "result") if k not in item]
        if missing:
            check.error(path, f"expect row lacks {', '.join(missing)}",
                        "write rows like {from: curl.foo, to: httpbin.foo:8000, result: mtls}")
            return None
        source = self._workload_ref(check, (*path, "from"), item["from"], topology)
        to = item["to"]
        if not check.text((*path, "to"), to, "a workload reference"):
            return None
        result_text = item["result"]
        ok = check.choice((*path, "result"), result_text, [r.value for r in EXPECTABLE_RESULTS], "result")
        if source is None:  # the destination's own problems are still worth reporting
            target = resolve_workload(topology, to.removeprefix(POD_PREFIX).partition(":")[0])
            if isinstance(target, Unresolved):
                check.error((*path, "to"), target.message, target.fix)
            return None
        tls = resolve_client_tls(source, item["tls"]) if "tls" in item else ""
        destination = resolve_destination(scenario, source, to, item.get("endpoint"), item.get("subset"))
        for problem in (tls, destination):
            if isinstance(problem, Unresolved):
                where = (*path, problem.key) if problem.key else path
                check.error(where, problem.message, problem.fix, key=problem.at_key)
        if isinstance(tls, Unresolved) or isinstance(destination, Unresolved) or not ok:
            return None
        target, port = destination
        result = Result(result_text)
        request = self._request(check, (*path, "request"), item.get("request"), port)
        status = item.get("status")
        if status is not None and not self._status(check, (*path, "status"), status, result, port):
            return None
        if request is None:
            return None
        return Expectation(source, target, port, result, dataclasses.replace(request, tls=tls), status,
                           check.mark(path), yaml_path=path)

    def _workload_ref(self, check: Checker, path: tuple[str | int, ...], text: Any,
                      topology: Topology) -> Workload | None:
        if not check.text(path, text, "a workload reference"):
            return None
        workload = resolve_workload(topology, text)
        if isinstance(workload, Unresolved):
            check.error(path, workload.message, workload.fix)
            return None
        return workload

    def _request(self, check: Checker, path: tuple[str | int, ...], raw: Any, port: Port) -> Request | None:
        if raw is None:
            return Request()
        if port.protocol == "tcp":
            check.error(path, f"a request applies to http ports only; port {port.port} is tcp",
                        "drop 'request' (tcp probes send a marker line and expect it echoed)", key=True)
            return None
        if not check.mapping(path, raw, "request"):
            return None
        check.keys(path, raw, REQUEST_KEYS, "request")
        method = raw.get("method", "GET")
        target = raw.get("path", "/headers")
        headers = raw.get("headers", {})
        body = raw.get("body")
        ok = check.text((*path, "method"), method, "request.method")
        if ok and not _TOKEN.match(method):
            check.error((*path, "method"), f"'{method}' is not an HTTP method", "use e.g. GET, POST, PUT")
            ok = False
        if check.text((*path, "path"), target, "request.path") and not str(target).startswith("/"):
            check.error((*path, "path"), f"request.path '{target}' must start with '/'", f"write /{target}")
            ok = False
        clean: dict[str, str] = {}
        if check.mapping((*path, "headers"), headers, "request.headers"):
            for key, value in headers.items():
                if not isinstance(key, str) or not _TOKEN.match(key):
                    check.error((*path, "headers", key), f"'{key}' is not a valid header name", key=True)
                    ok = False
                elif key.lower() == MARKER_HEADER:
                    check.error((*path, "headers", key), f"header '{key}' is set by the tool on every probe",
                                "use another header name", key=True)
                    ok = False
                elif not isinstance(value, str | int) or isinstance(value, bool):
                    check.error((*path, "headers", key), f"header '{key}' must be text, not {value!r}",
                                "quote the value")
                    ok = False
                else:
                    clean[key] = str(value)
        else:
            ok = False
        if body is not None and not isinstance(body, str):
            check.error((*path, "body"), f"request.body must be text, not {type_name(body)}",
                        "quote it or use a block scalar (body: |)")
            ok = False
        if not ok:
            return None
        return Request(method=str(method).upper(), path=str(target), headers=clean, body=body)

    def _status(self, check: Checker, path: tuple[str | int, ...], status: Any, result: Result, port: Port) -> bool:
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            check.error(path, f"status must be an HTTP status code (100-599), not {status!r}",
                        unquote_fix(path, status) or "write the code as a number, e.g. status: 200")
            return False
        if port.protocol == "tcp":
            check.error(path, f"port {port.port} is tcp: there is no HTTP status to pin", "drop 'status'", key=True)
            return False
        if result is Result.REFUSED:
            check.error(path, "a refused connection gets no HTTP response, so it has no status",
                        "drop 'status', or expect a result that answers", key=True)
            return False
        fixed = {Result.UNAVAILABLE: 503, Result.DENIED: 403}
        if result in fixed and status != fixed[result]:
            check.error(path, f"result {result.value} always answers {fixed[result]}, not {status}",
                        f"use status: {fixed[result]} or drop it")
            return False
        return True

    def _derive(self, check: Checker, scenario: Scenario, path: tuple[str | int, ...],
                pins: list[Expectation]) -> tuple[Expectation, ...]:
        """The oracle's table (every client × other workload's server port), where a pinned row replaces the
        derived row of its pair; pins of pairs the table lacks (a request, a subset, a pod address) follow."""
        pinned = {row.pair: row for row in pins}
        rows: list[Expectation] = []
        unknown: list[str] = []
        for prediction in semantics.predict_all(scenario):
            if prediction.source.ref == prediction.target.ref:  # a workload calling itself is not a connection
                continue  # between two workloads: a derived table probes those only
            pair = pair_id(prediction.source, prediction.target, prediction.port, Request())
            if pair in pinned:
                rows.append(pinned.pop(pair))
            elif prediction.result is Result.UNKNOWN:
                unknown.append(f"{pair} ({prediction.reason})")
            else:
                rows.append(Expectation(prediction.source, prediction.target, prediction.port, prediction.result,
                                        mark=check.mark(path), reason=prediction.reason))
        rows += pinned.values()
        if unknown:
            check.error(path, "expect: derived, but the oracle cannot predict " + "; ".join(unknown),
                        "pin those pairs: expect: {derived: true, rows: [{from: ..., to: ..., result: ...}]}")
        if not rows and not unknown:
            check.error(path, "expect: derived, but the topology has no server ports to probe")
        return tuple(rows)


class _Recorder(PolicyValidator):
    """A PolicyValidator that remembers where each policy was written, so that the policies of one step's state
    can be validated again together (their ages, Istio's traps across them)."""

    def __init__(self, topology: Topology, mesh: MeshSettings) -> None:
        super().__init__(topology, mesh)
        self.sources: dict[Policy, Source] = {}

    def add(self, checker: Checker, path: tuple[str | int, ...], value: Any,
            skipped: Counter[str] | None = None) -> None:
        before = len(self.policies)
        super().add(checker, path, value, skipped)
        for policy in self.policies[before:]:  # a List's items recorded themselves first, at their own paths
            self.sources.setdefault(policy, (checker.located, path))


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
    rules, _ = semantics.destination_rule_for(scenario, source, target)
    defined = semantics.subsets(rules)
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
            rules, _ = semantics.destination_rule_for(scenario, row.source, row.target)
            routed |= {(rule.ref, row.port.subset) for rule in rules if row.port.subset in semantics.subsets([rule])}
    return routed


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Load and validate one scenario file. Raises ScenarioError listing every problem."""
    return _Loader(Path(path)).load()


def load_policies(text: str, topology: Topology, mesh: MeshSettings | None = None,
                  file: str = "<policies>") -> tuple[tuple[Policy, ...], tuple[Diagnostic, ...]]:
    """Validate Istio resources against a topology outside a scenario file (used by the fixtures).

    Returns the policies and the warnings; raises ScenarioError on errors.
    """
    diagnostics: list[Diagnostic] = []
    validator = PolicyValidator(topology, mesh or MeshSettings())
    for document in load_all(text, file):
        validator.add(Checker(document, diagnostics), (), document.data)
    validator.warn_traps()
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors:
        raise ScenarioError(errors)
    return tuple(validator.policies), tuple(diagnostics)


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
