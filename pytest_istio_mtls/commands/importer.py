"""``pytest-istio-mtls import``: a scenario file from a live cluster, with ``expect: derived``.

It reads what decides mTLS and authorization between workloads: the namespaces' injection and ambient labels,
the Deployments, StatefulSets and DaemonSets (pod template labels, service account, whether a sidecar is
injected: Istio's injection webhook rules, overruled by what running pods really have), the Services that
select them and their ports with protocols, the mesh config (autoMtls, root namespace) and the
PeerAuthentication, RequestAuthentication, AuthorizationPolicy and DestinationRule resources of the
namespaces and the root namespace. Everything it cannot carry into a scenario is listed in the file's
header and on stderr. Only reads: nothing on the cluster changes.

Exit codes: 0 written and valid, 1 the cluster could not be read or the scenario does not validate, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from ..backends.base import BackendError
from ..backends.kube.client import Kube, KubeconfigError, KubeError
from ..backends.kube.istio import IstioInstall, detect, mesh_config
from ..model.diagnostics import ScenarioError, did_you_mean, plural
from ..scenario.checks import DNS_LABEL
from ..scenario.loader import display_path, load_scenario
from ..scenario.topology import RESERVED_PORTS

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
# Kinds a scenario carries, per group, each listed under the versions tried newest first.
IMPORTED = {"PeerAuthentication": "security.istio.io", "RequestAuthentication": "security.istio.io",
            "AuthorizationPolicy": "security.istio.io", "DestinationRule": "networking.istio.io"}
# Kinds read only to say that they exist and why the scenario leaves them out.
LEFT_OUT = {
    "VirtualService": ("networking.istio.io", "routing is not modelled"),
    "ServiceEntry": ("networking.istio.io", "services outside the cluster are not modelled"),
    "Gateway": ("networking.istio.io", "gateways are not part of a scenario"),
    "Sidecar": ("networking.istio.io", "Sidecar scoping is not modelled"),
    "EnvoyFilter": ("networking.istio.io", "Envoy patches are not modelled"),
    "WorkloadEntry": ("networking.istio.io", "VM workloads are not part of a scenario"),
}
VERSIONS = {"security.istio.io": ("v1", "v1beta1"), "networking.istio.io": ("v1", "v1beta1", "v1alpha3")}
INJECT_TRUE = ("y", "yes", "true", "on")  # Istio's injectRequired reads these as true, anything else as false
HTTP_PROTOCOLS = ("http", "http2", "grpc", "grpc-web", "kubernetes.io/h2c", "kubernetes.io/ws")
TCP_PROTOCOLS = ("tcp", "https", "tls", "mongo", "mysql", "redis", "kubernetes.io/wss")
SIDECAR = "istio-proxy"


@dataclass
class PodTemplate:
    """A Deployment, StatefulSet or DaemonSet as far as the mesh is concerned."""

    kind: str
    name: str
    namespace: str
    labels: dict[str, str]
    service_account: str
    sidecar: bool
    container_ports: dict[str, int]  # named container ports, for Services' named targetPorts

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass
class Imported:
    """The scenario's data and what the cluster had that it does not carry."""

    namespaces: dict[str, dict[str, bool]] = field(default_factory=dict)
    workloads: list[dict[str, Any]] = field(default_factory=list)
    policies: list[dict[str, Any]] = field(default_factory=list)
    mesh: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _labels(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


def injected(namespace_labels: Mapping[str, str], pod_labels: Mapping[str, str],
             pod_annotations: Mapping[str, str], host_network: bool) -> bool:
    """Whether Istio's default injection webhooks give this pod template a sidecar.

    The webhooks are called for namespaces labelled ``istio-injection=enabled`` or ``istio.io/rev`` unless the
    pod's label ``sidecar.istio.io/inject`` is ``false``, and in unlabelled namespaces only for pods labelled
    ``sidecar.istio.io/inject=true`` (or ``istio.io/rev``); never under ``istio-injection=disabled``. Called,
    the injector prefers the label to the deprecated annotation of the same name (pkg/kube/inject/webhook.go).
    """
    if host_network:
        return False
    namespace = namespace_labels.get("istio-injection")
    label = pod_labels.get("sidecar.istio.io/inject")
    if namespace == "disabled":
        return False
    if namespace == "enabled" or (namespace is None and namespace_labels.get("istio.io/rev")):
        called = label != "false"
    else:
        called = label == "true" or bool(pod_labels.get("istio.io/rev"))
    choice = label if label is not None else pod_annotations.get("sidecar.istio.io/inject", "")
    return called and (choice == "" or choice.lower() in INJECT_TRUE)


def port_protocol(port: Mapping[str, Any]) -> tuple[str, str]:
    """(http | tcp, how Istio decided it): appProtocol first, then the name's prefix before '-'; '' = sniffed."""
    app_protocol = str(port.get("appProtocol") or "").lower()
    name = str(port.get("name") or "").lower()
    for declared, how in ((app_protocol, f"appProtocol {app_protocol}"), (name.split("-")[0], f"name {name}")):
        if declared in HTTP_PROTOCOLS:
            return "http", how
        if declared in TCP_PROTOCOLS:
            return "tcp", how
        if declared and how.startswith("appProtocol"):
            return "tcp", how  # an appProtocol Istio does not parse is opaque TCP
    return "http", ""


class Importer:
    def __init__(self, kube: Kube, namespaces: Sequence[str], where: str) -> None:
        self.kube = kube
        self.names = list(namespaces)
        self.where = where  # "context kind-x" / "the current context", for messages
        self.out = Imported()

    def note(self, text: str) -> None:
        self.out.notes.append(text)

    def run(self) -> Imported:
        """Read everything, in an order that makes messages name the first thing missing."""
        labels = self._namespaces()
        root = self._mesh(labels)
        pods = {ns: self.kube.list("v1", "Pod", ns) for ns in self.names}
        templates = [t for ns in self.names for t in self._templates(ns, labels[ns], pods[ns])]
        served = self._services(templates)
        for template in templates:
            if template.ref not in served:
                self._client(template)
        self._policies([*self.names, *([root] if root not in self.names else [])])
        self.out.workloads.sort(key=lambda w: self.names.index(w["namespace"]))  # servers, then clients, per namespace
        return self.out

    # -- namespaces and mesh ----------------------------------------------------------------------------

    def _namespaces(self) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {}
        for name in self.names:
            namespace = self.kube.get("v1", "Namespace", None, name)
            if namespace is None:
                try:
                    there = [str(n["metadata"]["name"]) for n in self.kube.list("v1", "Namespace")]
                except KubeError:
                    there = []
                raise BackendError(f"namespace '{name}' does not exist in {self.where}{did_you_mean(name, there)}"
                                   + (f"\n    fix: namespaces there: {', '.join(there)}" if there else ""))
            labels = _labels((namespace.get("metadata") or {}).get("labels"))
            ambient = labels.get("istio.io/dataplane-mode") == "ambient"
            sidecars = injected(labels, {}, {}, False)
            self.out.namespaces[name] = {"sidecars": sidecars and not ambient, **({"ambient": True} if ambient else {})}
            if ambient and sidecars:
                self.note(f"namespace {name} is labelled for both ambient and sidecar injection: imported as "
                          "ambient; pods with a sidecar say sidecar: true")
            found[name] = labels
        return found

    def _mesh(self, labels: Mapping[str, Mapping[str, str]]) -> str:
        """The mesh config's autoMtls and root namespace (the revision's ConfigMap when namespaces name one)."""
        revisions = ["default", *sorted({ls["istio.io/rev"] for ls in labels.values() if ls.get("istio.io/rev")})]
        try:
            installs = {i.revision: i for i in detect(self.kube)}
        except BackendError:  # no permission to look for istiod: where Istio keeps it by default
            installs = {}
        home = next(iter(installs.values())).namespace if installs else "istio-system"
        tried = [installs.get(r) or IstioInstall("", r, home, "istiod") for r in revisions]
        config: dict[str, Any] = {}
        for install in tried:
            config = mesh_config(self.kube, install)
            if config:
                break
        else:
            where = " or ".join(f"{i.namespace}/{i.config_map}" for i in tried)
            self.note(f"no mesh config in ConfigMap {where}: Istio's defaults assumed (autoMtls on, root "
                      "namespace istio-system)")
        auto, root = config.get("enableAutoMtls", True), str(config.get("rootNamespace") or "istio-system")
        if auto is False:
            self.out.mesh["autoMtls"] = False
        if root != "istio-system":
            self.out.mesh["rootNamespace"] = root
        return root

    # -- workloads and services -------------------------------------------------------------------------

    def _templates(self, namespace: str, namespace_labels: Mapping[str, str],
                   pods: list[dict[str, Any]]) -> list[PodTemplate]:
        templates = []
        for kind in WORKLOAD_KINDS:
            for obj in self.kube.list("apps/v1", kind, namespace):
                name = str(obj["metadata"]["name"])
                spec = obj.get("spec") or {}
                template = spec.get("template") or {}
                meta, pod = template.get("metadata") or {}, template.get("spec") or {}
                labels, annotations = _labels(meta.get("labels")), _labels(meta.get("annotations"))
                sidecar = injected(namespace_labels, labels, annotations, bool(pod.get("hostNetwork")))
                selector = _labels((spec.get("selector") or {}).get("matchLabels"))
                running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running" and selector
                           and all(_labels((p.get("metadata") or {}).get("labels")).get(k) == v
                                   for k, v in selector.items())]
                seen = {any(c.get("name") == SIDECAR for c in [*(p["spec"].get("containers") or []),
                                                                *(p["spec"].get("initContainers") or [])])
                        for p in running}
                ref = f"{kind} {namespace}/{name}"
                if len(seen) == 1 and seen != {sidecar}:
                    sidecar = seen.pop()
                    self.note(f"{ref}: its running pods {'have' if sidecar else 'lack'} a sidecar, which the "
                              "injection labels would not give them now (restarted since?): imported as they run")
                elif len(seen) > 1:
                    self.note(f"{ref}: some running pods have a sidecar and some do not (a rollout?): imported "
                              f"{'with' if sidecar else 'without'}, as its pod template would be injected now")
                if labels.get("istio.io/dataplane-mode") in ("ambient", "none"):
                    self.note(f"{ref}: pod label istio.io/dataplane-mode={labels['istio.io/dataplane-mode']} "
                              "(per-workload ambient enrolment) cannot be expressed: the namespace decides")
                ports = {str(p["name"]): int(p["containerPort"]) for c in pod.get("containers") or []
                         for p in c.get("ports") or [] if p.get("name") and p.get("containerPort")}
                account = str(pod.get("serviceAccountName") or pod.get("serviceAccount") or "default")
                templates.append(PodTemplate(kind, name, namespace, labels, account, sidecar, ports))
        return templates

    def _services(self, templates: list[PodTemplate]) -> set[str]:
        """A server workload per Service, named after it, with the pods of the first workload it selects; the
        others it selects join it (``service:``). Returns the templates imported behind a Service."""
        placed: dict[str, str] = {}  # template ref → the Service it is imported behind
        joiners: list[tuple[PodTemplate, str]] = []
        for namespace in self.names:
            for service in self.kube.list("v1", "Service", namespace):
                name = str(service["metadata"]["name"])
                spec = service.get("spec") or {}
                selector = _labels(spec.get("selector"))
                ref = f"Service {namespace}/{name}"
                if spec.get("type") == "ExternalName" or not selector:
                    self.note(f"{ref} has no selector (ExternalName or hand-written endpoints): not imported")
                    continue
                backing = sorted((t for t in templates if t.namespace == namespace
                                  and all(t.labels.get(k) == v for k, v in selector.items())), key=lambda t: t.name)
                if not backing:
                    self.note(f"{ref} selects no Deployment, StatefulSet or DaemonSet: not imported")
                    continue
                owner = backing[0]
                ports = [p for p in (self._port(ref, owner, raw) for raw in spec.get("ports") or []) if p]
                if not ports:
                    self.note(f"{ref} has no port a scenario can probe: not imported")
                    continue
                self.out.workloads.append(self._workload(name, owner, ports))
                for template in backing:
                    if template.ref in placed:
                        self.note(f"{template.ref} is behind {ref} and Service {namespace}/{placed[template.ref]}: "
                                  + ("its pods are imported for each" if template is owner else
                                     f"a workload joins one Service, so it is imported behind {placed[template.ref]}"))
                    elif template is not owner:
                        joiners.append((template, name))
                    placed.setdefault(template.ref, name)
        for template, owner_name in joiners:
            self.out.workloads.append(self._workload(self._free_name(template), template, service=owner_name))
        return set(placed)

    def _port(self, service: str, template: PodTemplate, raw: Mapping[str, Any]) -> dict[str, Any] | None:
        number = int(raw.get("port") or 0)
        if str(raw.get("protocol") or "TCP") != "TCP":
            self.note(f"{service} port {number} is {raw.get('protocol')}: Istio does not proxy it, not imported")
            return None
        target = raw.get("targetPort", number)
        if isinstance(target, str) and not target.isdigit():
            if target not in template.container_ports:
                self.note(f"{service} port {number} targets container port '{target}', which {template.ref} does "
                          "not name: not imported")
                return None
            target = template.container_ports[target]
        target = int(target)
        if number in RESERVED_PORTS or target in RESERVED_PORTS:
            self.note(f"{service} port {number} is one the sidecar reserves (15000-15090): not imported")
            return None
        protocol, how = port_protocol(raw)
        if not how:
            self.note(f"{service} port {number} declares no protocol (no appProtocol, no known name prefix): "
                      "Istio sniffs it; imported as http")
        port: dict[str, Any] = {}
        name = str(raw.get("name") or "")
        if name and DNS_LABEL.match(name):
            port["name"] = name
        port["port"] = number
        if target != number:
            port["targetPort"] = target
        if protocol != "http":
            port["protocol"] = protocol
        return port

    def _workload(self, name: str, template: PodTemplate, ports: list[dict[str, Any]] | None = None,
                  service: str = "") -> dict[str, Any]:
        """The scenario's entry, leaving out what equals the loader's defaults."""
        entry: dict[str, Any] = {"name": name, "namespace": template.namespace}
        if service:
            entry["service"] = service
        if template.labels != {"app": name}:
            entry["labels"] = template.labels
        if template.service_account != name:
            entry["serviceAccount"] = template.service_account
        if template.sidecar != self.out.namespaces[template.namespace]["sidecars"]:
            entry["sidecar"] = template.sidecar
        if ports:
            entry["ports"] = ports
        return entry

    def _free_name(self, template: PodTemplate) -> str:
        """The workload's own name, unless a Service took it or it is not a DNS label (a note says so)."""
        name = template.name.replace(".", "-")
        if name in {w["name"] for w in self.out.workloads if w["namespace"] == template.namespace}:
            name = f"{name}-{template.kind.lower()}"
        if name != template.name:
            self.note(f"{template.ref} is imported as {name}.{template.namespace} (its name is taken or not a DNS "
                      "label)")
        return name

    def _client(self, template: PodTemplate) -> None:
        """A workload no Service selects: a client only, named after its Deployment, StatefulSet or DaemonSet."""
        self.out.workloads.append(self._workload(self._free_name(template), template))

    # -- policies -----------------------------------------------------------------------------------------

    def _list(self, kind: str, group: str, namespace: str) -> list[dict[str, Any]] | None:
        """The kind's objects at the newest version the cluster serves; None when it serves none."""
        for version in VERSIONS[group]:
            try:
                return self.kube.list(f"{group}/{version}", kind, namespace)
            except KubeError as exc:
                if exc.status != 404:
                    raise
        return None

    def _policies(self, namespaces: list[str]) -> None:
        found: list[dict[str, Any]] = []
        missing: list[str] = []
        for kind, group in IMPORTED.items():
            listed = [self._list(kind, group, ns) for ns in namespaces]
            if any(objects is None for objects in listed):
                missing.append(kind)
            objects = [o for some in listed for o in some or []]
            # Istio's order among resources of a kind: oldest first, then by name, then namespace.
            objects.sort(key=lambda o: (str(o["metadata"].get("creationTimestamp") or ""), o["metadata"]["name"],
                                        o["metadata"]["namespace"]))
            found += [self._clean(o, kind) for o in objects]
        if missing:
            self.note(f"the cluster serves no {', '.join(missing)} (is Istio installed?)")
        self.out.policies = found
        for kind, (group, why) in LEFT_OUT.items():
            try:
                objects = [o for ns in namespaces for o in (self._list(kind, group, ns) or [])]
            except KubeError as exc:  # a kind the scenario leaves out anyway: say it could not be checked
                self.note(f"could not list {kind} ({exc}): any there are not imported either")
                continue
            for obj in objects:
                self.note(f"{kind} {obj['metadata']['namespace']}/{obj['metadata']['name']}: {why}, not imported")

    @staticmethod
    def _clean(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
        """The resource as someone would have written it: no status, server fields or kubectl bookkeeping.
        Istio's own annotations stay (``istio.io/dry-run`` changes what an AuthorizationPolicy does)."""
        meta = obj.get("metadata") or {}
        metadata: dict[str, Any] = {"name": meta["name"], "namespace": meta["namespace"]}
        annotations = {k: v for k, v in _labels(meta.get("annotations")).items() if "istio.io/" in k}
        if annotations:
            metadata["annotations"] = annotations
        return {"apiVersion": obj.get("apiVersion"), "kind": kind, "metadata": metadata, "spec": obj.get("spec") or {}}


# -- the file ---------------------------------------------------------------------------------------------


def _flow(value: Any) -> str:
    """One line of YAML (a scalar without the document end marker PyYAML puts after it)."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).removesuffix("...\n").strip()


def scenario_text(imported: Imported, name: str, where: str) -> str:
    """The scenario file: a header that says where it came from and what it leaves out, then the data."""
    schema = json.loads((files("pytest_istio_mtls") / "scenario.schema.json").read_text(encoding="utf-8"))["$id"]
    namespaces = ", ".join(imported.namespaces)
    lines = [f"# yaml-language-server: $schema={schema}",
             f"# Imported by `pytest-istio-mtls import` from {where}, namespaces {namespaces}.",
             "# The topology and policies are the cluster's; probes run against the plugin's own test apps."]
    if imported.notes:
        lines.append("# Not carried over, or carried over with a choice:")
        lines += [f"#   - {note}" for note in imported.notes]
    lines += [f"name: {_flow(name)}", f"description: {_flow(f'Imported from {where}, namespaces {namespaces}')}"]
    if imported.mesh:
        lines.append(f"mesh: {_flow(imported.mesh)}")
    lines += ["topology:", "  namespaces:"]
    lines += [f"    {ns}: {_flow(settings)}" for ns, settings in imported.namespaces.items()]
    lines.append("  workloads:" + ("" if imported.workloads else " []"))
    lines += [f"    - {_flow(w)}" for w in imported.workloads]
    if imported.policies:
        lines.append("policies: |")
        text = yaml.safe_dump_all(imported.policies, sort_keys=False, width=10**6)
        lines += [f"  {line}" if line else "" for line in text.rstrip("\n").splitlines()]
    lines.append("expect: derived")
    return "\n".join(lines) + "\n"


def _context_name(kubeconfig: str | None, context: str | None) -> str:
    if context:
        return f"context {context}"
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except (config.ConfigException, OSError, ValueError, TypeError):
        return "the current context"
    return f"context {active['name']}" if active else "the current context"


def add_import_command(sub: Any) -> None:
    p = sub.add_parser("import", help="write a scenario (expect: derived) from a live cluster's namespaces",
                       description="Read namespaces, workloads, Services and Istio policies from a cluster and "
                                   "write a scenario with expect: derived. Only reads. Exit codes: 0 written and "
                                   "valid, 1 the cluster could not be read or the scenario does not validate "
                                   "(it is written anyway), 2 wrong usage.")
    p.add_argument("--kubeconfig", metavar="FILE", help="default: $KUBECONFIG, else ~/.kube/config")
    p.add_argument("--context", metavar="NAME", help="kubeconfig context (default: its current context)")
    p.add_argument("--namespaces", metavar="A,B", required=True, help="comma-separated namespaces to import")
    p.add_argument("-o", "--output", metavar="FILE", help="write the scenario here (default: standard output)")
    p.add_argument("--name", help="the scenario's name (default: the output file's name, else 'imported')")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    names = [n.strip() for n in str(args.namespaces).split(",") if n.strip()]
    wrong = [n for n in names if not DNS_LABEL.match(n)]
    if not names or wrong:
        print(f"error: --namespaces {args.namespaces!r} must name namespaces, comma-separated\n"
              "    fix: e.g. --namespaces shop,legacy", file=sys.stderr)
        return 2
    where = _context_name(args.kubeconfig, args.context)
    try:
        kube = Kube(args.kubeconfig, args.context, option="--kubeconfig")
        kube.server_version()  # unreachable clusters fail here, in one line
        imported = Importer(kube, list(dict.fromkeys(names)), where).run()
    except KubeconfigError as exc:
        print(f"error: {exc.problem}\n    fix: {exc.fix}", file=sys.stderr)
        return 1
    except BackendError as exc:
        text = str(exc)
        fix = "" if "\n    fix:" in text else (
            "\n    fix: check the kubeconfig and context (kubectl --kubeconfig ... get ns), and that its user may "
            "list these namespaces' workloads, Services and Istio resources")
        print(f"error: {text}{fix}", file=sys.stderr)
        return 1
    name = args.name or (Path(args.output).stem if args.output else "imported")
    text = scenario_text(imported, name, where)
    for note in imported.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        problems = _validate(Path(args.output), "")
    else:
        print(text, end="")
        with tempfile.TemporaryDirectory() as directory:
            written = Path(directory) / "imported.yaml"
            written.write_text(text, encoding="utf-8")
            problems = _validate(written, "<stdout>")
    counts = (f"{plural(len(imported.namespaces), 'namespace')}, {plural(len(imported.workloads), 'workload')}, "
              f"{plural(len(imported.policies), 'policy')}")
    if problems:
        print(f"error: the imported scenario ({counts}) does not validate:\n{problems}", file=sys.stderr)
        return 1
    print(f"{args.output or 'scenario'} written: {counts}; check it with `pytest-istio-mtls predict "
          f"{args.output or 'FILE'}`", file=sys.stderr)
    return 0


def _validate(path: Path, shown_as: str) -> str:
    """The loader's verdict on the written file ('' when valid), with the path as the user knows it."""
    try:
        load_scenario(path)
    except ScenarioError as exc:
        text = exc.render()
        return text.replace(display_path(path), shown_as) if shown_as else text
    return ""
