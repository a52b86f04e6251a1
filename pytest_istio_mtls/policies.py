"""Validation of the Istio resources a scenario applies.

Resources are kept exactly as written (they are what gets kubectl-applied); this module only
rejects what Istio's API server would reject or what would silently weaken the test (a typo in
a TLS mode), and warns about the famous traps where Istio accepts a policy that does nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from .diagnostics import did_you_mean
from .model import MeshSettings, Policy, Topology, Workload
from .semantics import DR_TLS_MODES, PA_MODES, host_matches, resolve_host
from .validation import DNS_SUBDOMAIN, Checker

# Kinds and served versions per API group (the groups a scenario may use).
KINDS: dict[str, dict[str, tuple[str, ...]]] = {
    "security.istio.io": {
        "PeerAuthentication": ("v1", "v1beta1"),
        "AuthorizationPolicy": ("v1", "v1beta1"),
        "RequestAuthentication": ("v1", "v1beta1"),
    },
    "networking.istio.io": {
        "DestinationRule": ("v1", "v1beta1", "v1alpha3"),
        "VirtualService": ("v1", "v1beta1", "v1alpha3"),
        "Gateway": ("v1", "v1beta1", "v1alpha3"),
        "ServiceEntry": ("v1", "v1beta1", "v1alpha3"),
        "Sidecar": ("v1", "v1beta1", "v1alpha3"),
        "WorkloadEntry": ("v1", "v1beta1", "v1alpha3"),
        "WorkloadGroup": ("v1", "v1beta1", "v1alpha3"),
        "EnvoyFilter": ("v1alpha3",),
        "ProxyConfig": ("v1beta1",),
    },
}
ALL_KINDS = {kind: group for group, kinds in KINDS.items() for kind in kinds}

PA_SPEC_KEYS = ("selector", "mtls", "portLevelMtls")
DR_SPEC_KEYS = ("host", "trafficPolicy", "subsets", "exportTo", "workloadSelector")
DR_POLICY_KEYS = ("loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings", "tunnel",
                  "proxyProtocol", "retryBudget")
DR_TLS_KEYS = ("mode", "clientCertificate", "privateKey", "caCertificates", "credentialName", "subjectAltNames",
               "sni", "insecureSkipVerify", "caCrl")
DR_PORT_KEYS = ("port", "loadBalancer", "connectionPool", "outlierDetection", "tls")
AP_SPEC_KEYS = ("selector", "targetRef", "targetRefs", "action", "provider", "rules")
AP_ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")


def not_istio(resource: Mapping[str, Any]) -> bool:
    """A well-formed resource of another API (Namespace, Deployment, Telemetry): nothing a scenario applies."""
    api_version, kind = resource.get("apiVersion"), resource.get("kind")
    if not (isinstance(api_version, str) and api_version and isinstance(kind, str) and kind):
        return False
    return api_version.partition("/")[0] not in KINDS and kind not in ALL_KINDS


class PolicyValidator:
    """Validates the documents of one source (inline block or policy file) against a topology."""

    def __init__(self, topology: Topology, mesh: MeshSettings) -> None:
        self.topology = topology
        self.mesh = mesh
        self.policies: list[Policy] = []
        self._checkers: dict[int, tuple[Checker, tuple[str | int, ...]]] = {}

    # -- one document -------------------------------------------------------------------------------

    def add(self, checker: Checker, path: tuple[str | int, ...], value: Any,
            skipped: Counter[str] | None = None) -> None:
        """Validate one resource at ``path`` of ``checker``'s document and keep it if usable.

        With ``skipped`` (manifests from policyFiles), a resource that is not an Istio security or
        networking resource (a Namespace, a Deployment) is counted there by kind instead of rejected:
        teams point policyFiles at what they really deploy. An Istio kind under a wrong apiVersion is
        still an error, since that is a typo.
        """
        if not checker.mapping(path, value, "a policy"):
            return
        if value.get("kind") == "List" and value.get("apiVersion") == "v1":
            items = value.get("items")
            if checker.is_list((*path, "items"), items, "a List's items"):
                for index, item in enumerate(items):
                    self.add(checker, (*path, "items", index), item, skipped)
            return
        if skipped is not None and not_istio(value):
            skipped[str(value["kind"])] += 1
            return
        missing = [key for key in ("apiVersion", "kind", "metadata") if key not in value]
        if missing:
            checker.error(path, f"a policy has no {', '.join(missing)}",
                          "write each resource exactly as you would kubectl-apply it, e.g. apiVersion: "
                          "security.istio.io/v1, kind: PeerAuthentication, metadata: {name: ..., namespace: ...}")
            return
        api_version, kind = value.get("apiVersion"), value.get("kind")
        if not checker.text((*path, "apiVersion"), api_version, "apiVersion") or not checker.text(
            (*path, "kind"), kind, "kind"
        ):
            return
        group, _, version = str(api_version).partition("/")
        if group not in KINDS:
            checker.error((*path, "apiVersion"),
                          f"apiVersion '{api_version}' is not an Istio security or networking API"
                          f"{did_you_mean(group, KINDS)}",
                          "scenarios apply security.istio.io and networking.istio.io resources only")
            return
        if kind not in KINDS[group]:
            other = ALL_KINDS.get(kind)
            fix = (f"{kind} belongs to {other}" if other
                   else f"{group} serves {', '.join(KINDS[group])}")
            checker.error((*path, "kind"), f"unknown kind '{kind}' for {group}"
                          f"{did_you_mean(kind, KINDS[group])}", fix)
            return
        if version not in KINDS[group][kind]:
            checker.error((*path, "apiVersion"), f"{kind} is not served as {api_version}",
                          f"use {group}/{KINDS[group][kind][0]}")
            return
        metadata = value.get("metadata")
        if not checker.mapping((*path, "metadata"), metadata, f"{kind} metadata"):
            return
        name, namespace = metadata.get("name"), metadata.get("namespace")
        ok = checker.text((*path, "metadata", "name"), name, f"{kind} metadata.name")
        if ok and not (len(name) <= 253 and DNS_SUBDOMAIN.match(name)):
            checker.error((*path, "metadata", "name"), f"'{name}' is not a valid Kubernetes object name",
                          "use lower-case letters, digits, '-' and '.'")
            ok = False
        if namespace is None:
            checker.error((*path, "metadata"), f"{kind} {name} has no metadata.namespace",
                          "name the namespace explicitly: scenarios never rely on a context's default namespace")
            return
        if not checker.text((*path, "metadata", "namespace"), namespace, f"{kind} metadata.namespace") or not ok:
            return
        known = [n.name for n in self.topology.namespaces]
        if namespace != self.mesh.root_namespace and namespace not in known:
            checker.error((*path, "metadata", "namespace"),
                          f"{kind} {name} is in namespace '{namespace}', which the topology lacks"
                          f"{did_you_mean(namespace, [*known, self.mesh.root_namespace])}",
                          f"use one of {', '.join(known)} or the root namespace {self.mesh.root_namespace}, "
                          "or add the namespace to topology.namespaces")
            return
        spec = value.get("spec", {})
        if spec is not None and not checker.mapping((*path, "spec"), spec, f"{kind} spec"):
            return
        spec = spec or {}
        before = sum(1 for d in checker.diagnostics if d.severity == "error")
        ref = f"{kind} {namespace}/{name}"
        if kind == "PeerAuthentication":
            self._peer_authentication(checker, (*path, "spec"), spec, ref)
        elif kind == "DestinationRule":
            self._destination_rule(checker, (*path, "spec"), spec, ref)
        elif kind == "AuthorizationPolicy":
            self._authorization_policy(checker, (*path, "spec"), spec, ref)
        if sum(1 for d in checker.diagnostics if d.severity == "error") > before:
            return
        for existing in self.policies:
            if (existing.kind, existing.namespace, existing.name) == (kind, namespace, name):
                checker.error((*path, "metadata", "name"),
                              f"{ref} is defined twice (first at {existing.mark})",
                              "kubectl apply would replace the first with the second; rename one of them")
                return
        policy = Policy(str(api_version), str(kind), str(name), str(namespace), value, len(self.policies),
                        checker.mark(path))
        self._checkers[id(policy)] = (checker, path)
        self.policies.append(policy)

    # -- per kind -----------------------------------------------------------------------------------

    def _selector(self, checker: Checker, path: tuple[str | int, ...], spec: Mapping[str, Any],
                  where: str) -> None:
        selector = spec.get("selector")
        if selector is None:
            return
        if not checker.mapping((*path, "selector"), selector, f"{where} selector"):
            return
        checker.keys((*path, "selector"), selector, ("matchLabels",), f"{where} selector")
        labels = selector.get("matchLabels")
        if labels is not None and checker.mapping((*path, "selector", "matchLabels"), labels,
                                                  f"{where} selector.matchLabels"):
            for key, val in labels.items():
                if not isinstance(val, str | int) or isinstance(val, bool):
                    checker.error((*path, "selector", "matchLabels", key),
                                  f"label value for '{key}' must be text, not {val!r}", "quote it")

    def _peer_authentication(self, checker: Checker, path: tuple[str | int, ...], spec: Mapping[str, Any],
                             ref: str) -> None:
        checker.keys(path, spec, PA_SPEC_KEYS, ref)
        self._selector(checker, path, spec, ref)
        mtls = spec.get("mtls")
        if mtls is not None and checker.mapping((*path, "mtls"), mtls, f"{ref} mtls"):
            checker.keys((*path, "mtls"), mtls, ("mode",), f"{ref} mtls")
            if "mode" in mtls:
                checker.choice((*path, "mtls", "mode"), mtls["mode"], PA_MODES, "mtls.mode", f" in {ref}")
        port_level = spec.get("portLevelMtls")
        if port_level is None:
            return
        if not checker.mapping((*path, "portLevelMtls"), port_level, f"{ref} portLevelMtls"):
            return
        selector = spec.get("selector")
        labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
        if not labels:
            checker.error((*path, "portLevelMtls"), f"{ref} sets portLevelMtls without a selector",
                          "add spec.selector.matchLabels for the workload (Istio's API server rejects this too: "
                          "'portLevelMtls requires selector')", key=True)
        for key, setting in port_level.items():
            number = int(key) if isinstance(key, int | str) and str(key).isdigit() else None
            if number is None or not 1 <= number <= 65535:
                checker.error((*path, "portLevelMtls", key), f"portLevelMtls key {key!r} in {ref} is not a port number",
                              "key each entry by the container port, e.g. 8080:", key=True)
                continue
            if checker.mapping((*path, "portLevelMtls", key), setting, f"{ref} portLevelMtls[{key}]"):
                checker.keys((*path, "portLevelMtls", key), setting, ("mode",), f"{ref} portLevelMtls[{key}]")
                if "mode" in setting:
                    checker.choice((*path, "portLevelMtls", key, "mode"), setting["mode"], PA_MODES,
                                   f"portLevelMtls[{key}].mode", f" in {ref}")

    def _destination_rule(self, checker: Checker, path: tuple[str | int, ...], spec: Mapping[str, Any],
                          ref: str) -> None:
        checker.keys(path, spec, DR_SPEC_KEYS, ref)
        if "host" not in spec:
            checker.error(path, f"{ref} has no spec.host", "name the Service, e.g. host: httpbin.foo.svc.cluster.local")
        elif not checker.text((*path, "host"), spec["host"], f"{ref} host"):
            return
        self._traffic_policy(checker, (*path, "trafficPolicy"), spec.get("trafficPolicy"), ref)
        subsets = spec.get("subsets")
        if subsets is not None and checker.is_list((*path, "subsets"), subsets, f"{ref} subsets"):
            for index, subset in enumerate(subsets):
                if checker.mapping((*path, "subsets", index), subset, f"{ref} subset"):
                    checker.keys((*path, "subsets", index), subset, ("name", "labels", "trafficPolicy"),
                                 f"{ref} subset")
                    self._traffic_policy(checker, (*path, "subsets", index, "trafficPolicy"),
                                         subset.get("trafficPolicy"), ref)

    def _traffic_policy(self, checker: Checker, path: tuple[str | int, ...], policy: Any, ref: str) -> None:
        if policy is None or not checker.mapping(path, policy, f"{ref} trafficPolicy"):
            return
        checker.keys(path, policy, DR_POLICY_KEYS, f"{ref} trafficPolicy")
        self._tls(checker, (*path, "tls"), policy.get("tls"), ref)
        settings = policy.get("portLevelSettings")
        if settings is None or not checker.is_list((*path, "portLevelSettings"), settings,
                                                   f"{ref} portLevelSettings"):
            return
        for index, setting in enumerate(settings):
            where = (*path, "portLevelSettings", index)
            if not checker.mapping(where, setting, f"{ref} portLevelSettings entry"):
                continue
            checker.keys(where, setting, DR_PORT_KEYS, f"{ref} portLevelSettings entry")
            port = setting.get("port")
            if checker.mapping((*where, "port"), port, f"{ref} portLevelSettings port"):
                checker.keys((*where, "port"), port, ("number",), f"{ref} portLevelSettings port")
                checker.port_number((*where, "port", "number"), port.get("number"),
                                    f"{ref} portLevelSettings port.number")
            self._tls(checker, (*where, "tls"), setting.get("tls"), ref)

    def _tls(self, checker: Checker, path: tuple[str | int, ...], tls: Any, ref: str) -> None:
        if tls is None or not checker.mapping(path, tls, f"{ref} tls"):
            return
        checker.keys(path, tls, DR_TLS_KEYS, f"{ref} tls")
        if "mode" in tls:
            checker.choice((*path, "mode"), tls["mode"], DR_TLS_MODES, "tls.mode", f" in {ref}")
        else:
            checker.warn(path, f"{ref} has a tls block without a mode: Istio reads that as DISABLE (plaintext)",
                         "set mode explicitly, e.g. mode: ISTIO_MUTUAL", key=True)

    def _authorization_policy(self, checker: Checker, path: tuple[str | int, ...], spec: Mapping[str, Any],
                              ref: str) -> None:
        checker.keys(path, spec, AP_SPEC_KEYS, ref)
        self._selector(checker, path, spec, ref)
        if "action" in spec:
            checker.choice((*path, "action"), spec["action"], AP_ACTIONS, "action", f" in {ref}")
        rules = spec.get("rules")
        if rules is not None:
            checker.is_list((*path, "rules"), rules, f"{ref} rules")

    # -- across documents: the silent traps ---------------------------------------------------------

    def warn_traps(self) -> None:
        """Warnings that need every policy and the topology: things Istio accepts but ignores."""
        root = self.mesh.root_namespace
        seen_scope: dict[str, Policy] = {}
        for policy in self.policies:
            checker, path = self._checkers[id(policy)]
            if policy.kind == "PeerAuthentication":
                self._pa_traps(checker, path, policy, root, seen_scope)
            elif policy.kind == "DestinationRule":
                self._dr_traps(checker, path, policy)

    def _selected(self, policy: Policy) -> list[Workload]:
        return [w for w in self.topology.workloads if policy.selects(w)]

    def _pa_traps(self, checker: Checker, path: tuple[str | int, ...], policy: Policy, root: str,
                  seen_scope: dict[str, Policy]) -> None:
        spec_path = (*path, "spec")
        if not policy.selector:
            first = seen_scope.get(policy.namespace)
            if first is not None:
                scope = "mesh-wide" if policy.namespace == root else "namespace-wide"
                checker.warn(path, f"{policy.ref} is a second {scope} PeerAuthentication in {policy.namespace}: "
                                   f"Istio ignores it because {first.ref} (at {first.mark}) is older",
                             "keep one namespace-wide policy per namespace")
            else:
                seen_scope[policy.namespace] = policy
            return
        if policy.namespace == root:
            checker.warn((*spec_path, "selector"),
                         f"{policy.ref} has a selector in the root namespace {root}: Istio ignores such policies",
                         "move it to the workload's namespace, or drop the selector to make it mesh-wide")
            return
        selected = self._selected(policy)
        if not selected:
            labels = ", ".join(f"{k}={v}" for k, v in policy.selector.items())
            names = [w.ref for w in self.topology.workloads if w.namespace == policy.namespace]
            checker.warn((*spec_path, "selector"),
                         f"selector {labels} of {policy.ref} matches no workload in namespace {policy.namespace}: "
                         "the policy has no effect",
                         f"workloads there: {', '.join(names) or 'none'}")
        port_level = policy.spec.get("portLevelMtls")
        if not isinstance(port_level, Mapping):
            return
        for key in port_level:
            if not str(key).isdigit():
                continue
            number = int(key)
            for workload in selected:
                container_ports = {p.target_port for p in workload.ports}
                service_port = next((p for p in workload.ports if p.port == number), None)
                if number in container_ports:
                    continue
                if service_port is not None:
                    checker.warn((*spec_path, "portLevelMtls", key),
                                 f"portLevelMtls[{number}] of {policy.ref} names the Service port of {workload.ref}; "
                                 f"PeerAuthentication keys on the container port ({service_port.target_port}), so "
                                 "Istio silently ignores this entry",
                                 f"use {service_port.target_port}:", key=True)
                else:
                    checker.warn((*spec_path, "portLevelMtls", key),
                                 f"portLevelMtls[{number}] of {policy.ref} matches no container port of "
                                 f"{workload.ref} (ports: {', '.join(str(p) for p in sorted(container_ports))})",
                                 key=True)

    def _dr_traps(self, checker: Checker, path: tuple[str | int, ...], policy: Policy) -> None:
        spec_path = (*path, "spec")
        host = str(policy.spec.get("host", ""))
        resolved = resolve_host(host, policy.namespace)
        matched = [w for w in self.topology.servers if host_matches(resolved, w.host)]
        if not matched:
            guess = next((w.host for w in self.topology.servers if w.ref == host), "")
            if guess:
                checker.warn((*spec_path, "host"),
                             f"{policy.ref} host '{host}' is taken literally by Istio (it contains a dot) and "
                             "matches no Service", f"use host: {guess}")
            else:
                checker.warn((*spec_path, "host"),
                             f"{policy.ref} host '{host}' matches no Service of the topology",
                             "use the Service FQDN, e.g. httpbin.foo.svc.cluster.local, or a short name in the "
                             "rule's own namespace")
        traffic = policy.spec.get("trafficPolicy")
        if isinstance(traffic, Mapping):
            for index, setting in enumerate(traffic.get("portLevelSettings") or []):
                number = (setting.get("port") or {}).get("number") if isinstance(setting, Mapping) else None
                for workload in matched:
                    if number is None or any(p.port == number for p in workload.ports):
                        continue
                    target = next((p for p in workload.ports if p.target_port == number), None)
                    hint = f"use number: {target.port} (the Service port)" if target else ""
                    checker.warn((*spec_path, "trafficPolicy", "portLevelSettings", index, "port", "number"),
                                 f"portLevelSettings port {number} of {policy.ref} is not a Service port of "
                                 f"{workload.ref}: DestinationRule port settings key on the Service port", hint)
        for index, subset in enumerate(policy.spec.get("subsets") or []):
            sub_policy = subset.get("trafficPolicy") if isinstance(subset, Mapping) else None
            if isinstance(sub_policy, Mapping) and "tls" in sub_policy:
                checker.warn((*spec_path, "subsets", index, "trafficPolicy", "tls"),
                             f"subset TLS in {policy.ref} applies only to traffic a VirtualService routes to the "
                             "subset; probes to the Service use the top-level settings", key=True)

