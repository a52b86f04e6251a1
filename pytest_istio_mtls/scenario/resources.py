"""Validation of the Istio resources a scenario applies.

Resources are kept exactly as written (they are what gets kubectl-applied); this module only
rejects what Istio's API server would reject or what would silently weaken the test (a typo in
a TLS mode), and warns about the famous traps where Istio accepts a policy that does nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..model import MeshSettings, Policy, Request, Scenario, Topology, Workload
from ..model.diagnostics import did_you_mean
from ..oracle import authz
from ..oracle.destinationrules import DR_TLS_MODES, host_matches, resolve_host
from ..oracle.mtls import PA_MODES, server_decision
from . import schemas
from .checks import DNS_SUBDOMAIN, Checker

# Kinds and served versions per API group (the groups a scenario may use), from Istio's CRDs.
KINDS: dict[str, dict[str, tuple[str, ...]]] = schemas.served()
ALL_KINDS = {kind: group for group, kinds in KINDS.items() for kind in kinds}

AP_ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
# Istio attributes read from the peer certificate: a plaintext request has none of them (authz A5).
IDENTITY_ATTRIBUTES = ("source.principal", "source.namespace", "source.serviceAccount", "source.trustDomain")


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
        if sum(1 for d in checker.diagnostics if d.severity == "error") == before:  # the rest, at every depth
            schemas.check_spec(checker, (*path, "spec"), str(api_version), str(kind), spec, ref)
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
        labels = selector.get("matchLabels")
        if labels is not None and checker.mapping((*path, "selector", "matchLabels"), labels,
                                                  f"{where} selector.matchLabels"):
            for key, val in labels.items():
                if not isinstance(val, str | int) or isinstance(val, bool):
                    checker.error((*path, "selector", "matchLabels", key),
                                  f"label value for '{key}' must be text, not {val!r}", "quote it")

    def _peer_authentication(self, checker: Checker, path: tuple[str | int, ...], spec: Mapping[str, Any],
                             ref: str) -> None:
        self._selector(checker, path, spec, ref)
        mtls = spec.get("mtls")
        if mtls is not None and checker.mapping((*path, "mtls"), mtls, f"{ref} mtls") and "mode" in mtls:
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
            if checker.mapping((*path, "portLevelMtls", key), setting, f"{ref} portLevelMtls[{key}]") and \
                    "mode" in setting:
                checker.choice((*path, "portLevelMtls", key, "mode"), setting["mode"], PA_MODES,
                               f"portLevelMtls[{key}].mode", f" in {ref}")

    def _destination_rule(self, checker: Checker, path: tuple[str | int, ...], spec: Mapping[str, Any],
                          ref: str) -> None:
        if "host" not in spec:
            checker.error(path, f"{ref} has no spec.host", "name the Service, e.g. host: httpbin.foo.svc.cluster.local")
        elif not checker.text((*path, "host"), spec["host"], f"{ref} host"):
            return
        self._traffic_policy(checker, (*path, "trafficPolicy"), spec.get("trafficPolicy"), ref)
        subsets = spec.get("subsets")
        if subsets is not None and checker.is_list((*path, "subsets"), subsets, f"{ref} subsets"):
            for index, subset in enumerate(subsets):
                if checker.mapping((*path, "subsets", index), subset, f"{ref} subset"):
                    self._traffic_policy(checker, (*path, "subsets", index, "trafficPolicy"),
                                         subset.get("trafficPolicy"), ref)

    def _traffic_policy(self, checker: Checker, path: tuple[str | int, ...], policy: Any, ref: str) -> None:
        if policy is None or not checker.mapping(path, policy, f"{ref} trafficPolicy"):
            return
        self._tls(checker, (*path, "tls"), policy.get("tls"), ref)
        settings = policy.get("portLevelSettings")
        if settings is None or not checker.is_list((*path, "portLevelSettings"), settings,
                                                   f"{ref} portLevelSettings"):
            return
        for index, setting in enumerate(settings):
            where = (*path, "portLevelSettings", index)
            if not checker.mapping(where, setting, f"{ref} portLevelSettings entry"):
                continue
            port = setting.get("port")
            if checker.mapping((*where, "port"), port, f"{ref} portLevelSettings port"):
                checker.port_number((*where, "port", "number"), port.get("number"),
                                    f"{ref} portLevelSettings port.number")
            self._tls(checker, (*where, "tls"), setting.get("tls"), ref)

    def _tls(self, checker: Checker, path: tuple[str | int, ...], tls: Any, ref: str) -> None:
        if tls is None or not checker.mapping(path, tls, f"{ref} tls"):
            return
        if "mode" in tls:
            checker.choice((*path, "mode"), tls["mode"], DR_TLS_MODES, "tls.mode", f" in {ref}")
        else:
            checker.warn(path, f"{ref} has a tls block without a mode: Istio reads that as DISABLE (plaintext)",
                         "set mode explicitly, e.g. mode: ISTIO_MUTUAL", key=True)

    def _authorization_policy(self, checker: Checker, path: tuple[str | int, ...], spec: Mapping[str, Any],
                              ref: str) -> None:
        self._selector(checker, path, spec, ref)
        if "action" in spec:
            checker.choice((*path, "action"), spec["action"], AP_ACTIONS, "action", f" in {ref}")
        rules = spec.get("rules")
        if rules is not None:
            checker.is_list((*path, "rules"), rules, f"{ref} rules")

    # -- across documents: the silent traps ---------------------------------------------------------

    def warn_traps(self, routed: Collection[tuple[str, str]] = ()) -> None:
        """Warnings that need every policy and the topology: things Istio accepts but ignores. ``routed``: the
        (DestinationRule ref, subset) pairs that expect rows route probes to (``subset:``)."""
        root = self.mesh.root_namespace
        seen_scope: dict[str, Policy] = {}
        # The oracle answers the AuthorizationPolicy questions (what binds, what accepts plaintext) on this.
        scenario = Scenario(name="", path=Path(), mesh=self.mesh, topology=self.topology,
                            policies=tuple(self.policies))
        for policy in self.policies:
            checker, path = self._checkers[id(policy)]
            if policy.kind == "PeerAuthentication":
                self._pa_traps(checker, path, policy, root, seen_scope)
            elif policy.kind == "DestinationRule":
                self._dr_traps(checker, path, policy, routed)
            elif policy.kind == "AuthorizationPolicy":
                _AuthzTraps(scenario, checker, (*path, "spec"), policy).warn()

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
                container_ports = {p.target_port for p in (*workload.ports, *workload.container_ports)}
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

    def _dr_traps(self, checker: Checker, path: tuple[str | int, ...], policy: Policy,
                  routed: Collection[tuple[str, str]]) -> None:
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
            probed = isinstance(subset, Mapping) and (policy.ref, subset.get("name")) in routed
            if isinstance(sub_policy, Mapping) and "tls" in sub_policy and not probed:
                checker.warn((*spec_path, "subsets", index, "trafficPolicy", "tls"),
                             f"subset TLS in {policy.ref} applies only to traffic a VirtualService routes to the "
                             "subset; probes to the Service use the top-level settings",
                             f"probe the subset with an expect row's subset: {subset.get('name')}", key=True)



@dataclass(frozen=True)
class _Field:
    """One list of values in an AuthorizationPolicy rule, where it is and what Istio reads it as."""

    path: tuple[str | int, ...]  # from the rule: ("to", 0, "operation", "methods") or ("when", 1, "values")
    name: str  # as written: "methods", "notPrincipals", "when request.headers[x-token]"
    attribute: str  # authz's attribute: "method", "source.principal", "request.headers[x-token]"
    values: tuple[str, ...]
    positive: bool  # the values must match (not notValues / a not-field)


def _rules(spec: Mapping[str, Any]) -> Iterator[tuple[int, Mapping[str, Any]]]:
    rules = spec.get("rules")
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        if isinstance(rule, Mapping):
            yield index, rule


def _fields(rule: Mapping[str, Any]) -> Iterator[_Field]:
    """Every source, operation and known ``when`` field of one rule, with authz's attribute for it."""
    for side, block, table in (("from", "source", authz.SOURCE_FIELDS), ("to", "operation", authz.OPERATION_FIELDS)):
        entries = rule.get(side)
        for number, entry in enumerate(entries if isinstance(entries, list) else []):
            inner = entry.get(block) if isinstance(entry, Mapping) else None
            if not isinstance(inner, Mapping):
                continue
            for positive, negative, attribute in table:
                for name in (positive, negative):
                    values = inner.get(name)
                    if isinstance(values, list) and values:
                        yield _Field((side, number, block, name), name, attribute, tuple(map(str, values)),
                                     name == positive)
    conditions = rule.get("when")
    for number, condition in enumerate(conditions if isinstance(conditions, list) else []):
        key = str(condition.get("key", "")) if isinstance(condition, Mapping) else ""
        known = authz.when_attribute(key)
        if known is None:
            continue
        for name in ("values", "notValues"):
            values = condition.get(name)
            if isinstance(values, list) and values:
                yield _Field(("when", number, name), f"when {key}", known, tuple(map(str, values)), name == "values")


def _listing(names: list[str], limit: int = 3) -> str:
    """``a, b and c``; past ``limit`` names, ``a, b, c and 4 more`` (a mesh-wide policy binds every workload)."""
    if len(names) > limit:
        return f"{', '.join(names[:limit])} and {len(names) - limit} more"
    return " and ".join(filter(None, (", ".join(names[:-1]), names[-1]))) if names else ""


def _refs(workloads: list[Workload]) -> str:
    return _listing([w.ref for w in workloads])


def _verb(workloads: list[Workload], singular: str, plural_form: str) -> str:
    return singular if len(workloads) == 1 else plural_form


class _AuthzTraps:
    """Warnings for an AuthorizationPolicy that Istio accepts but that probably does not do what its
    author meant. Which workloads it binds, what their ports accept and what Istio generates for
    them come from the oracle (authz, semantics): Istio's rules live there, not here."""

    def __init__(self, scenario: Scenario, checker: Checker, spec_path: tuple[str | int, ...], policy: Policy) -> None:
        self.scenario = scenario
        self.checker = checker
        self.spec_path = spec_path
        self.policy = policy
        self.spec = policy.spec
        self.action = str(self.spec.get("action") or "ALLOW")
        workloads = scenario.topology.workloads
        self.bound = [w for w in workloads if any(b.policy is policy for b in authz.binding(scenario, w)[0])]
        # The sidecars that enforce it: servers only, since authorization happens on the inbound side.
        self.servers = [w for w in self.bound if w.sidecar and w.is_server]

    def warn(self) -> None:
        if self._target_refs():
            return
        self._custom_without_provider()
        self._binds_nothing()
        self._unknown_when_keys()
        if self.action in ("ALLOW", "DENY"):
            self._http_fields_on_tcp()
            self._identity_without_mtls()
        self._service_ports()
        self._hosts_without_port()

    def _at(self, index: int, *path: str | int) -> tuple[str | int, ...]:
        return (*self.spec_path, "rules", index, *path)

    def _target_refs(self) -> bool:
        """targetRef(s) attach a policy to gateways and waypoints; a sidecar ignores the policy (A1)."""
        key = next((k for k in ("targetRefs", "targetRef") if self.spec.get(k)), "")
        if not key:
            return False
        root = self.scenario.mesh.root_namespace
        sidecars = [w for w in self.scenario.topology.workloads
                    if w.sidecar and self.policy.namespace in (root, w.namespace)]
        if sidecars:
            labels = ", ".join(f"{k}: {v}" for k, v in sidecars[0].labels.items())
            self.checker.warn((*self.spec_path, key),
                              f"{self.policy.ref} uses {key}, which attaches a policy to gateways and waypoints: "
                              f"the {_verb(sidecars, 'sidecar', 'sidecars')} of {_refs(sidecars)} "
                              f"{_verb(sidecars, 'ignores', 'ignore')} it",
                              f"to bind sidecars, use a selector instead, e.g. selector: {{matchLabels: {{{labels}}}}}",
                              key=True)
        return True

    def _custom_without_provider(self) -> None:
        provider = self.spec.get("provider")
        if self.action != "CUSTOM" or (isinstance(provider, Mapping) and provider.get("name")):
            return
        self.checker.warn((*self.spec_path, "action"),
                          f"{self.policy.ref} has action CUSTOM but no provider.name: Istio's validating webhook "
                          "rejects it, and where it gets in anyway istiod finds no such extension provider and "
                          "turns its rules into DENY rules",
                          "name an extension provider of meshConfig.extensionProviders, "
                          "e.g. provider: {name: ext-authz}")

    def _binds_nothing(self) -> None:
        root = self.scenario.mesh.root_namespace
        where = "of the mesh" if self.policy.namespace == root else f"in namespace {self.policy.namespace}"
        selector = self.policy.selector
        if selector and not self.bound:
            labels = ", ".join(f"{k}={v}" for k, v in selector.items())
            names = [w.ref for w in self.scenario.topology.workloads
                     if self.policy.namespace in (root, w.namespace)]
            self.checker.warn((*self.spec_path, "selector"),
                              f"selector {labels} of {self.policy.ref} matches no workload {where}: the policy has "
                              "no effect", f"workloads there: {', '.join(names) or 'none'}")
            return
        servers = [w for w in self.bound if w.is_server]
        if servers and not self.servers:
            path = (*self.spec_path, "selector") if selector else (*self.spec_path[:-1], "metadata", "namespace")
            self.checker.warn(path, f"{self.policy.ref} applies only to {_refs(servers)}, which "
                                    f"{_verb(servers, 'has', 'have')} no sidecar: nothing enforces it",
                              "AuthorizationPolicy is enforced by the server's sidecar; inject one, or drop the policy")

    def _unknown_when_keys(self) -> None:
        """Istio's webhook rejects an unknown ``when`` key; istiod skips the rule if it gets in (A3)."""
        known = [*authz.WHEN_KEYS, *(f"{p}*" if p.endswith(".") else f"{p}[...]" for p in authz.WHEN_PREFIXES)]
        for index, rule in _rules(self.spec):
            conditions = rule.get("when")
            for number, condition in enumerate(conditions if isinstance(conditions, list) else []):
                key = condition.get("key") if isinstance(condition, Mapping) else None
                if not isinstance(key, str) or authz.when_attribute(key) is not None:
                    continue
                self.checker.warn(self._at(index, "when", number, "key"),
                                  f"unknown when key '{key}' in rule {index} of {self.policy.ref}: Istio's "
                                  "validating webhook rejects the policy (unknown attribute), and where it gets in "
                                  f"anyway istiod skips this rule{did_you_mean(key, known)}",
                                  f"use one of {', '.join(known)}")

    def _http_fields_on_tcp(self) -> None:
        """HTTP-only fields on a workload with TCP ports only: an ALLOW rule is dropped, a DENY rule loses
        them and matches more (A6, authz.compile_rules)."""
        tcp_only = [w for w in self.servers if all(p.protocol == "tcp" for p in w.ports)]
        if not tcp_only:
            return
        kept = {rule.index: rule for rule in authz.compile_rules(self.policy, self.action, tcp=True).rules}
        for index, raw in _rules(self.spec):
            http = [f for f in _fields(raw) if f.attribute.split("[", 1)[0] in authz.HTTP_ONLY]
            if not http:
                continue
            names = list(dict.fromkeys(f.name.removeprefix("when ") for f in http))
            if self.action == "ALLOW":
                effect = "Istio drops this ALLOW rule there, so it allows nothing"
                fix = ("match TCP connections by ports, principals, namespaces or ipBlocks; or, if the port speaks "
                       "HTTP, declare it with protocol: http")
            else:
                rule = kept[index]
                left = any(rule.sources) or any(rule.operations) or rule.when
                effect = (f"Istio ignores {'it' if len(names) == 1 else 'them'} there, so this DENY rule denies every "
                          "connection"
                          + (f" that matches what is left ({rule.text()})" if left else ""))
                fix = ("drop the HTTP-only fields, or narrow the rule with fields TCP connections have (ports, "
                       "principals, namespaces, ipBlocks)")
            self.checker.warn(self._at(index, *http[0].path),
                              f"{', '.join(names)} in rule {index} of {self.policy.ref} "
                              f"{'is' if len(names) == 1 else 'are'} HTTP-only, but {_refs(tcp_only)} "
                              f"{_verb(tcp_only, 'has', 'have')} only TCP ports: {effect}", fix, key=True)

    def _identity_without_mtls(self) -> None:
        """principals, namespaces, serviceAccounts, trustDomains come from the peer certificate: a plaintext
        request has none (A5), so on a workload that accepts plaintext a DENY rule never stops it. (An ALLOW
        rule never lets it in either, but failing closed is what its author meant: no warning.)"""
        if self.action != "DENY":
            return
        found = next(((index, f) for index, raw in _rules(self.spec) for f in _fields(raw)
                      if f.positive and f.attribute in IDENTITY_ATTRIBUTES), None)
        if found is None:
            return
        index, field = found
        where: list[str] = []
        why: list[str] = []
        workloads: list[Workload] = []
        for workload in self.servers:
            decisions = [(p, server_decision(self.scenario, workload, p.target_port)) for p in workload.ports]
            plaintext = [(p, d) for p, d in decisions if d.mode in ("PERMISSIVE", "DISABLE")]
            if not plaintext:
                continue
            port, decision = plaintext[0]
            where.append(workload.ref if len(plaintext) == len(decisions) else f"{workload.ref}:{port.port}")
            why.append(f"{decision.mode}, " + ("no PeerAuthentication applies" if decision.decided_by.startswith(
                "default") else f"by {decision.decided_by}"))
            workloads.append(workload)
        if not workloads:
            return
        reasons = why[0] if len(set(why)) == 1 else "; ".join(f"{w}: {r}" for w, r in zip(where, why, strict=True))
        who = f"{_listing(where)} {_verb(workloads, 'accepts', 'accept')} plaintext ({reasons})"
        effect = "so this DENY rule never matches one: a client that sends plaintext gets past it"
        fix = (f"make {_listing([w.ref for w in workloads])} STRICT (PeerAuthentication mtls.mode: STRICT), or "
               "also deny requests without an identity: from: [{source: {notPrincipals: ['*']}}]")
        self.checker.warn(self._at(index, *field.path),
                          f"rule {index} of {self.policy.ref} matches {field.name}, which need mTLS, but {who}: "
                          f"a plaintext request carries no identity, {effect}", fix, key=True)

    def _service_ports(self) -> None:
        """ports and destination.port name the container port the connection reached (A4)."""
        container = {p.target_port for w in self.servers for p in w.ports}
        for index, raw in _rules(self.spec):
            for field in _fields(raw):
                if field.attribute != "destination.port":
                    continue
                for number, value in enumerate(field.values):
                    if not value.isdigit() or int(value) in container:
                        continue
                    owner = next(((w, p) for w in self.servers for p in w.ports if p.port == int(value)), None)
                    if owner is None:
                        continue
                    workload, port = owner
                    self.checker.warn(self._at(index, *field.path, number),
                                      f"port {value} in {field.name} of {self.policy.ref} is the Service port of "
                                      f"{workload.ref}; authorization matches the container port "
                                      f"({port.target_port}), so this value never matches",
                                      f'use "{port.target_port}"')

    def _hosts_without_port(self) -> None:
        """hosts are compared with the Host header, which carries the port except for port 80 (A4)."""
        http = [(w, p) for w in self.servers for p in w.ports if p.protocol == "http" and p.port != 80]
        if not http:
            return
        workload, port = http[0]
        authority = authz.request_attributes(workload, port, Request(), None).authority
        for index, raw in _rules(self.spec):
            for field in _fields(raw):
                if field.attribute != "host":
                    continue
                for number, value in enumerate(field.values):
                    if ":" in value or value.endswith("*"):
                        continue
                    any_port = "" if value.startswith("*") else f", or '{value}:*' for any port"
                    self.checker.warn(self._at(index, *field.path, number),
                                      f"{field.name} value '{value}' in {self.policy.ref} has no port: Istio "
                                      f"compares hosts with the Host header, which carries the port "
                                      f"('{authority}' for {workload.ref}:{port.port}), so it never matches requests "
                                      "to ports other than 80",
                                      f"write '{value}:{port.port}'{any_port}")
