"""Which DestinationRule a client's sidecar uses for a host, and the TLS settings it gives a port or subset
(rule O4 and the subset part of O3; docs/semantics.md cites the Istio code behind each)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..model import CLUSTER_DOMAIN, Policy, Port, Scenario, Workload
from .chain import Step, by_age

DESTINATION_RULE = "DestinationRule"
DR_TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL")


def resolve_host(host: str, namespace: str) -> str:
    """Istio's ResolveShortnameToFQDN: only names without a dot are qualified with the namespace."""
    if host == "*" or "." in host:
        return host
    return f"{host}.{namespace}.{CLUSTER_DOMAIN}"


def host_matches(pattern: str, host: str) -> bool:
    if pattern in ("*", host):
        return True
    return pattern.startswith("*.") and host.endswith(pattern[1:])


def _specificity(pattern: str) -> tuple[int, int]:
    """Exact names beat wildcards; longer wildcards beat shorter ones (Istio's MostSpecificHostMatch)."""
    return (0, len(pattern)) if pattern.startswith("*") else (1, len(pattern))


def _export_set(policy: Policy) -> frozenset[str]:
    """``exportTo`` as istiod keeps it: the set as written, empty when unset (not the same as ``["*"]``)."""
    raw = policy.spec.get("exportTo")
    return frozenset(str(x) for x in raw) if isinstance(raw, list) else frozenset()


def _consolidated(rules: Sequence[Policy]) -> list[tuple[frozenset[str], list[Policy]]]:
    """Istio's mergeDestinationRule for rules of one host in one namespace index, oldest first: a rule merges
    into an entry whose exportTo set equals its own (or is a non-empty subset of it), else it stands alone
    (pilot/pkg/model/destination_rule.go, ENABLE_ENHANCED_DESTINATIONRULE_MERGE, on by default). Each entry's
    rules stay oldest first: the first top-level trafficPolicy wins within an entry."""
    entries: list[tuple[frozenset[str], list[Policy]]] = []
    for rule in rules:
        export = _export_set(rule)
        alone = True
        for existing, members in entries:
            if export == existing or (existing and export >= existing):
                members.append(rule)
                alone = False
            else:
                alone = True
        if alone:
            entries.append((export, [rule]))
    return entries


def destination_rule_for(
    scenario: Scenario, client: Workload, server: Workload
) -> tuple[list[Policy], list[Step]]:
    """The DestinationRules that configure ``client``'s traffic to ``server`` (O4), oldest first.

    Istio's PushContext.destinationRule (pilot/pkg/model/push_context.go): first the rules of the client's
    namespace that it can see (exportTo unset, ``*``, ``.`` or that namespace), then the rules the Service's
    namespace exports, then the root namespace's. In each, the most specific host is chosen before
    visibility is checked, so a more specific host exported elsewhere hides a less specific one. Rules of
    that host that do not merge (different exportTo) stay separate entries, and the sidecar uses the last,
    i.e. the newest (SidecarScope.DestinationRule in pilot/pkg/model/sidecar.go).
    """
    root = scenario.mesh.root_namespace
    host = server.host
    rules = by_age(scenario.policies_of(DESTINATION_RULE))
    steps: list[Step] = []

    def key(rule: Policy) -> str:
        return resolve_host(str(rule.spec.get("host", "")), rule.namespace)

    def lookup(ns: str, exported: bool) -> list[tuple[frozenset[str], list[Policy]]]:
        if exported:  # rules exported beyond their own namespace (private-only ones are not)
            index = [r for r in rules if r.namespace == ns and not (len(_export_set(r)) == 1 and (
                _export_set(r) <= {".", ns}))]
        else:  # the client's own namespace: what it can see of it
            index = [r for r in rules if r.namespace == ns and (not _export_set(r) or _export_set(r) & {"*", ".", ns})]
        matching = [r for r in index if host_matches(key(r), host)]
        if not matching:
            return []
        best = max(_specificity(key(r)) for r in matching)
        most = [r for r in matching if _specificity(key(r)) == best]
        steps.extend(Step("O4", f"DestinationRule {r.namespace}/{r.name} (host {r.spec.get('host')}) loses to the "
                                "more specific host") for r in matching if r not in most)
        entries = _consolidated([r for r in index if key(r) == key(most[0])])
        if exported:
            entries = [(e, m) for e, m in entries if not e or e & {"*", client.namespace}]
        return entries

    searches = ([(client.namespace, False)] if client.namespace != root else []) + [
        (server.namespace, True), (root, True)]
    for ns, exported in searches:
        entries = lookup(ns, exported)
        if not entries:
            continue
        role = "the client's namespace" if not exported else (
            "the Service's namespace" if ns == server.namespace else "the root namespace")
        chosen = entries[-1][1]
        names = ", ".join(f"{r.namespace}/{r.name}" for r in chosen)
        steps.append(Step("O4", f"DestinationRule {names} (host {chosen[0].spec.get('host')}) in {role} {ns} "
                                f"applies to {client.ref} → {host}"))
        for _, ignored in entries[:-1]:
            steps.append(Step("O4", f"DestinationRule {', '.join(f'{r.namespace}/{r.name}' for r in ignored)} has "
                                    "another exportTo, so Istio keeps it apart and the sidecar uses the newer "
                                    f"{names}"))
        return chosen, steps
    return [], steps


def dr_tls_for_port(rules: Sequence[Policy], port: Port) -> tuple[Mapping[str, Any] | None, Policy | None, str]:
    """The ClientTLSSettings in force for ``port`` (portLevelSettings key on the Service port, O3).

    Returns (tls, rule, where); ``where`` is "conflict" when a portLevelSettings entry matches the
    port without a ``tls`` block while the rule has a top-level one: Istio's cluster builder then
    drops TLS settings (port entries do not inherit) but its endpoint labelling still uses the
    top-level mode, so the outcome is not predicted. A port routed to a subset takes the subset's settings
    first (``_subset_tls``).
    """
    if port.subset:
        found = _subset_tls(rules, port)
        if found is not None:
            return found
    for rule in rules:  # oldest first: the first top-level trafficPolicy wins when rules merge
        policy = rule.spec.get("trafficPolicy")
        if not isinstance(policy, Mapping):
            continue
        tls = policy.get("tls")
        where = "trafficPolicy.tls"
        for setting in policy.get("portLevelSettings") or []:
            number = (setting.get("port") or {}).get("number") if isinstance(setting, Mapping) else None
            if number != port.port:
                continue
            if isinstance(setting.get("tls"), Mapping):
                tls, where = setting["tls"], f"portLevelSettings[port {port.port}].tls"
            elif isinstance(tls, Mapping):
                where = "conflict"
            break
        return (tls if isinstance(tls, Mapping) else None), rule, where
    return None, None, ""


def subsets(rules: Sequence[Policy]) -> dict[str, dict[str, str]]:
    """Subset name → labels over the DestinationRules that apply (oldest first: the first definition wins)."""
    found: dict[str, dict[str, str]] = {}
    for rule in rules:
        for subset in rule.spec.get("subsets") or []:
            name = subset.get("name") if isinstance(subset, Mapping) else None
            if isinstance(name, str) and name not in found:
                labels = subset.get("labels")
                found[name] = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {}
    return found


def _subset_tls(rules: Sequence[Policy], port: Port) -> tuple[Mapping[str, Any] | None, Policy | None, str] | None:
    """The subset's own TLS for ``port`` (its portLevelSettings entry, else its trafficPolicy.tls); None when
    it sets none and the DestinationRule's settings apply (Istio's ``MergeSubsetTrafficPolicy``).

    A subset portLevelSettings entry without ``tls`` replaces the merged policy wholesale (no TLS in the
    cluster) while the endpoint labelling falls back to the subset's or the rule's mode
    (``tlsModeForDestinationRule``): "conflict" when either sets one, as in ``dr_tls_for_port``.
    """
    for rule in rules:
        for subset in rule.spec.get("subsets") or []:
            if not isinstance(subset, Mapping) or subset.get("name") != port.subset:
                continue
            policy = subset.get("trafficPolicy")
            if not isinstance(policy, Mapping):
                return None
            where = f"subsets[{port.subset}]"
            for setting in policy.get("portLevelSettings") or []:
                number = (setting.get("port") or {}).get("number") if isinstance(setting, Mapping) else None
                if number != port.port:
                    continue
                if isinstance(setting.get("tls"), Mapping):
                    return setting["tls"], rule, f"{where}.portLevelSettings[port {port.port}].tls"
                top, _, top_where = dr_tls_for_port(rules, Port(port.name, port.port, port.target_port, port.protocol))
                if isinstance(policy.get("tls"), Mapping) or top is not None or top_where == "conflict":
                    return None, rule, "conflict"
                return None, rule, ""
            if isinstance(policy.get("tls"), Mapping):
                return policy["tls"], rule, f"{where}.trafficPolicy.tls"
            return None
    return None
