"""Istio's AuthorizationPolicy for sidecars: the part of the oracle that says allow or deny.

The server's sidecar authorizes a request only after it accepted the connection (PeerAuthentication,
rules P*), so the oracle asks this module only about requests that reach it. The module mirrors how
istiod turns policies into Envoy RBAC filters (``pilot/pkg/security/authz/{model,builder,matcher}``,
``pilot/pkg/model/authorization.go``, ``policyattachment.go``) and how Envoy evaluates them. Rule ids
A1..A8 refer to docs/semantics.md ("Authorization"). Where the outcome depends on what cannot be known
offline (an external authorizer, a JWT, pod IP addresses), the answer is ``unknown`` with the reason.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..judge.accesslog import DENIED_DETAIL
from ..judge.stats import TCP_DENIED_STAT
from ..model import Policy, Port, Request, Scenario, Workload

AUTHORIZATION_POLICY = "AuthorizationPolicy"
DRY_RUN = "istio.io/dry-run"

Effect = Literal["allow", "deny", "unknown"]
Tri = bool | None  # three-valued: None when the answer depends on something not modelled


@dataclass(frozen=True)
class Finding:
    """One link of the authorization part of a decision chain (rendered by semantics as a Step)."""

    rule: str
    text: str


@dataclass(frozen=True)
class Decision:
    effect: Effect
    reason: str  # names the policy and rule that decided, or why it is unknown
    findings: tuple[Finding, ...] = ()


@dataclass(frozen=True)
class Attributes:
    """What the server sidecar's RBAC filter knows about one request (HTTP) or connection (TCP)."""

    principal: str | None  # the client certificate's URI SAN; None for plaintext
    port: int  # destination.port: the container port the connection reached
    tcp: bool
    method: str = ""
    path: str = ""
    authority: str | None = ""  # None: depends on the client (see request_attributes)
    headers: Mapping[str, str] = field(default_factory=dict)  # names lower-cased

    def who(self) -> str:
        return f"principal {self.principal}" if self.principal else "no principal (plaintext)"


@dataclass(frozen=True)
class _M:
    """A three-valued match and, when unknown, why."""

    value: Tri
    why: str = ""


TRUE, FALSE = _M(True), _M(False)


def _any(matches: Iterable[_M]) -> _M:
    unknown: _M | None = None
    for match in matches:
        if match.value is True:
            return TRUE
        if match.value is None and unknown is None:
            unknown = match
    return unknown or FALSE


def _all(matches: Iterable[_M]) -> _M:
    unknown: _M | None = None
    for match in matches:
        if match.value is False:
            return FALSE
        if match.value is None and unknown is None:
            unknown = match
    return unknown or TRUE


def _not(match: _M) -> _M:
    return match if match.value is None else _M(not match.value)


# --------------------------------------------------------------------------- A1: which policies bind


@dataclass(frozen=True)
class Bound:
    policy: Policy
    action: str  # ALLOW, DENY, AUDIT or CUSTOM
    dry_run: bool


def _dry_run(policy: Policy) -> bool:
    """``istio.io/dry-run``, parsed like Go's strconv.ParseBool (an invalid value counts as false)."""
    metadata = policy.manifest.get("metadata")
    annotations = metadata.get("annotations") if isinstance(metadata, Mapping) else None
    value = annotations.get(DRY_RUN) if isinstance(annotations, Mapping) else None
    return str(value) in ("1", "t", "T", "TRUE", "true", "True")


def binding(scenario: Scenario, workload: Workload) -> tuple[list[Bound], list[Finding]]:
    """The AuthorizationPolicies istiod gives ``workload``'s sidecar, oldest first (A1).

    Policies of the root namespace and of the workload's namespace are considered; a selector must be
    a subset of the pod's labels (in the root namespace it matches pods of every namespace); a policy
    with targetRef(s) is ignored for sidecars (pilot/pkg/model/policyattachment.go ShouldAttachPolicy).
    """
    root = scenario.mesh.root_namespace
    bound: list[Bound] = []
    notes: list[Finding] = []
    for policy in sorted(scenario.policies_of(AUTHORIZATION_POLICY), key=lambda p: p.order):
        if policy.namespace not in (root, workload.namespace):
            continue
        spec = policy.spec
        if spec.get("targetRef") or spec.get("targetRefs"):
            notes.append(Finding("A1", f"{policy.ref} uses targetRef(s), which attach policies to gateways and "
                                       f"waypoints: Istio ignores it for the sidecar of {workload.ref}"))
            continue
        labels = policy.selector
        if not all(workload.labels.get(str(k)) == str(v) for k, v in labels.items()):
            continue
        scope = ("mesh-wide" if policy.namespace == root else "namespace-wide") if not labels else (
            "by selector" + (" from the root namespace" if policy.namespace == root else ""))
        action = str(spec.get("action") or "ALLOW")
        entry = Bound(policy, action, _dry_run(policy))
        bound.append(entry)
        notes.append(Finding("A1", f"{policy.ref} ({action}{', dry-run' if entry.dry_run else ''}) applies to "
                                   f"{workload.ref} ({scope})"))
    return bound, notes


# --------------------------------------------------------------------------- rules (A3..A7)

# Fields of Source and Operation, in the order Istio inserts them (authz/model/model.go New), with
# the attribute each one is the same as.
SOURCE_FIELDS = (("principals", "notPrincipals", "source.principal"),
                 ("requestPrincipals", "notRequestPrincipals", "request.auth.principal"),
                 ("serviceAccounts", "notServiceAccounts", "source.serviceAccount"),
                 ("trustDomains", "notTrustDomains", "source.trustDomain"),
                 ("namespaces", "notNamespaces", "source.namespace"),
                 ("remoteIpBlocks", "notRemoteIpBlocks", "remote.ip"),
                 ("ipBlocks", "notIpBlocks", "source.ip"))
OPERATION_FIELDS = (("hosts", "notHosts", "host"), ("methods", "notMethods", "method"),
                    ("paths", "notPaths", "path"), ("ports", "notPorts", "destination.port"))
WHEN_KEYS = ("destination.ip", "destination.port", "connection.sni", "source.ip", "remote.ip", "source.namespace",
             "source.serviceAccount", "source.trustDomain", "source.principal", "request.auth.principal",
             "request.auth.audiences", "request.auth.presenter")
WHEN_PREFIXES = ("request.headers", "request.auth.claims", "experimental.envoy.filters.")
# Attributes Istio's generators refuse on a TCP filter chain ("... is HTTP only", authz/model/generator.go).
HTTP_ONLY = ("host", "method", "path", "request.auth.principal", "request.auth.audiences",
             "request.auth.presenter", "request.headers", "request.auth.claims")
# Headers that the prober, curl or the sidecars set: their values are not the scenario's to know.
PROXY_HEADER_PREFIXES = ("x-forwarded-", "x-envoy-", "x-b3-", "x-istio-")
PROXY_HEADERS = ("user-agent", "accept", "content-type", "content-length", "connection", "x-request-id", "b3",
                 "traceparent", "tracestate", "baggage", "x-client-trace-id", "x-ot-span-context", "sw8", "te",
                 "transfer-encoding")


@dataclass(frozen=True)
class Condition:
    """One attribute of a rule: values ORed, notValues none of them, after Istio's generation (A3)."""

    field: str  # as written: "methods", "notPrincipals", "when request.headers[x-token]"
    attribute: str  # the Istio attribute: "method", "source.principal", "request.headers[x-token]"
    values: tuple[str, ...]
    not_values: tuple[str, ...]

    def text(self) -> str:
        when = self.field.startswith("when ")
        parts = []
        if self.values:
            parts.append(f"{self.field} [{', '.join(self.values)}]")
        if self.not_values:
            name = f"{self.field} notValues" if when else "not" + self.field[0].upper() + self.field[1:]
            parts.append(f"{name} [{', '.join(self.not_values)}]")
        return " and ".join(parts)


@dataclass(frozen=True)
class Rule:
    """One rule of one policy as the RBAC filter gets it: (any source) and (any operation) and all of when."""

    name: str  # Envoy's policy name, as in the access log: ns[foo]-policy[bar]-rule[0]
    policy: Policy
    index: int
    sources: tuple[tuple[Condition, ...], ...]  # empty tuple of conditions: any source
    operations: tuple[tuple[Condition, ...], ...]
    when: tuple[Condition, ...]

    def text(self) -> str:
        parts = []
        for label, groups in (("from", self.sources), ("to", self.operations)):
            shown = [" and ".join(c.text() for c in group) for group in groups if group]
            if shown:
                parts.append(f"{label} " + " or ".join(shown))
        if self.when:
            parts.append("when " + " and ".join(c.text().removeprefix("when ") for c in self.when))
        return ", ".join(parts) or "an empty rule (matches everything)"


def _strings(raw: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in raw) if isinstance(raw, list) else ()


def when_attribute(key: str) -> str | None:
    """The attribute a ``when`` key names, or None for a key Istio does not know (the rule is skipped)."""
    if key in WHEN_KEYS or any(key.startswith(p) for p in WHEN_PREFIXES):
        return key
    return None


def _value_error(attribute: str, value: str, tcp: bool) -> str:
    """Why Istio cannot generate a matcher for one value ("" when it can): authz/model/generator.go."""
    base = attribute.split("[", 1)[0]
    if tcp and base in HTTP_ONLY:
        return "HTTP only"
    if base == "destination.port" and not (value.isdigit() and int(value) <= 65535):
        return "not a port number"
    if base in ("source.ip", "remote.ip", "destination.ip") and _network(value) is None:
        return "not an IP address or CIDR block"
    if base in ("request.headers", "request.auth.claims") and not re.fullmatch(r"\[.+\]", attribute[len(base):]):
        return f"the key must be {base}[<NAME>]"
    return ""


def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


@dataclass
class Compiled:
    """What istiod generates from one policy for one kind of filter chain."""

    rules: list[Rule] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # rules Istio dropped, with why (for "no ALLOW matched")


def compile_rules(policy: Policy, action: str, tcp: bool) -> Compiled:
    """The RBAC policies istiod generates from ``policy`` for a TCP or HTTP filter chain (A3, A6).

    A value Istio cannot use there (an HTTP-only field on TCP, an invalid port or IP block) makes an
    ALLOW rule disappear (a smaller allow) and is dropped from a DENY or AUDIT rule (a wider deny):
    authz/model/model.go ``checkError``. A rule with an unknown ``when`` key is skipped for every action.
    No rules at all is an explicit policy that never matches (builder.go ``rbacPolicyMatchNever``).
    """
    chain = "TCP" if tcp else "HTTP"
    out = Compiled()
    raw_rules = policy.spec.get("rules")
    for index, raw in enumerate(raw_rules if isinstance(raw_rules, list) else []):
        name = f"ns[{policy.namespace}]-policy[{policy.name}]-rule[{index}]"
        if not isinstance(raw, Mapping):
            out.notes.append(Finding("A3", f"{name} is empty (null): Istio skips it"))
            out.skipped.append(f"{name} is null")
            continue
        when: list[Condition] = []
        unknown_key = ""
        for cond in raw.get("when") or []:
            key = str(cond.get("key", "")) if isinstance(cond, Mapping) else ""
            attribute = when_attribute(key)
            if attribute is None:
                unknown_key = key
                break
            when.append(_qualified(Condition(f"when {key}", attribute, _strings(cond.get("values")),
                                             _strings(cond.get("notValues"))), policy.namespace))
        if unknown_key:
            out.notes.append(Finding("A3", f"{name} uses the unknown attribute '{unknown_key}': Istio skips the rule"))
            out.skipped.append(f"{name} uses the unknown attribute '{unknown_key}'")
            continue
        sources = [_conditions(entry.get("source") if isinstance(entry, Mapping) else None, SOURCE_FIELDS,
                               policy.namespace) for entry in raw.get("from") or []]
        operations = [_conditions(entry.get("operation") if isinstance(entry, Mapping) else None, OPERATION_FIELDS,
                                  policy.namespace) for entry in raw.get("to") or []]
        unusable: dict[tuple[str, str], list[str]] = {}
        for condition in [c for group in (*sources, *operations) for c in group] + when:
            for value in (*condition.values, *condition.not_values):
                error = _value_error(condition.attribute, value, tcp)
                if error:
                    unusable.setdefault((condition.field.removeprefix("when "), error), []).append(value)
        what = ", ".join(f"{f} [{', '.join(v)}] ({e})" for (f, e), v in unusable.items())
        if what and action == "ALLOW":
            out.notes.append(Finding("A6", f"{name} uses {what}: on a {chain} port Istio drops this ALLOW rule"))
            out.skipped.append(f"{name} is dropped on a {chain} port: {what}")
            continue
        if what:
            out.notes.append(Finding("A6", f"{name}: on a {chain} port Istio ignores {what} in this {action} rule, "
                                           "so the rule matches more"))

        def keep(condition: Condition) -> Condition | None:
            values = tuple(v for v in condition.values if not _value_error(condition.attribute, v, tcp))
            not_values = tuple(v for v in condition.not_values if not _value_error(condition.attribute, v, tcp))
            if not values and not not_values:
                return None
            return Condition(condition.field, condition.attribute, values, not_values)

        def kept(group: Sequence[Condition]) -> tuple[Condition, ...]:
            return tuple(c for c in map(keep, group) if c is not None)

        out.rules.append(Rule(name, policy, index, tuple(kept(g) for g in sources) or ((),),
                              tuple(kept(g) for g in operations) or ((),), kept(when)))
    return out


def _conditions(block: Any, fields: Sequence[tuple[str, str, str]], namespace: str) -> tuple[Condition, ...]:
    if not isinstance(block, Mapping):
        return ()
    found = []
    for positive, negative, attribute in fields:
        values, not_values = _strings(block.get(positive)), _strings(block.get(negative))
        if values or not_values:
            found.append(_qualified(Condition(positive, attribute, values, not_values), namespace))
    return tuple(found)


def _qualified(condition: Condition, namespace: str) -> Condition:
    """A service account without ``<namespace>/`` is in the policy's namespace (generator.go serviceAccountRegex)."""
    if condition.attribute != "source.serviceAccount":
        return condition

    def full(values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v if "/" in v else f"{namespace}/{v}" for v in values)

    return Condition(condition.field, condition.attribute, full(condition.values), full(condition.not_values))


# --------------------------------------------------------------------------- matching (A4, A5, A7)


def string_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """Istio's exact / prefix ``abc*`` / suffix ``*abc`` / presence ``*`` (non-empty) match (matcher/string.go)."""
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    if pattern == "*":
        return value != ""
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def _principal_pattern(pattern: str, trust_domain: str) -> str:
    """A principal as Istio rewrites it: ``cluster.local`` stands for the mesh's trust domain
    (pilot/pkg/security/trustdomain/bundle.go ReplaceTrustDomainAliases)."""
    parts = pattern.split("/")
    if len(parts) == 5 and parts[0] != "*" and parts[0] in ("cluster.local", trust_domain):
        return "/".join([trust_domain, *parts[1:]])
    return pattern


def _identity(value: str, attrs: Attributes, attribute: str, trust_domain: str) -> _M:
    """principals, namespaces, serviceAccounts, trustDomains: matched on the peer certificate (A5).

    Envoy's ``authenticated`` principal needs a TLS connection: plaintext never matches, so its
    ``not`` form always does.
    """
    uri = attrs.principal
    if not uri:
        return FALSE
    if attribute == "source.principal":
        pattern = _principal_pattern(value, trust_domain)
        if pattern == "*":
            return _M(True)
        if pattern.startswith("*"):
            return _M(re.fullmatch("spiffe://.*" + re.escape(pattern[1:]), uri) is not None)
        return _M(string_match("spiffe://" + pattern, uri))
    if attribute == "source.namespace":
        regex = ".*".join(re.escape(part) for part in value.split("*"))
        return _M(re.fullmatch(f".*/ns/{regex}/.*", uri) is not None)
    if attribute == "source.serviceAccount":
        namespace, _, account = value.partition("/")
        return _M(re.fullmatch(f"spiffe://.+/ns/{re.escape(namespace)}/(.+/|)sa/{re.escape(account)}(/.+)?",
                               uri) is not None)
    # source.trustDomain (generator.go srcTrustDomainGenerator)
    domain = uri.removeprefix("spiffe://").split("/", 1)[0]
    if value == "*":
        return _M(uri.startswith("spiffe://"))
    if "*" not in value:
        return _M(domain == value)
    head, _, tail = value.partition("*")
    return _M(re.fullmatch(f"{re.escape(head)}[^/]*{re.escape(tail)}", domain) is not None)


def _ip(value: str, what: str) -> _M:
    """Every backend gives pods IPv4 addresses, but which ones is decided at deploy time."""
    network = _network(value)
    if network is not None and network.version == 4 and network.prefixlen == 0:
        return TRUE
    return _M(None, f"{what} {value}: the oracle does not know pod IP addresses")


def _header(pattern: str, value: str | None) -> bool:
    """Envoy's HeaderMatcher as Istio builds it: ``*`` is a presence match (matcher/header.go)."""
    if value is None:
        return False
    return pattern == "*" or string_match(pattern, value)


def _value(condition: Condition, value: str, attrs: Attributes, trust_domain: str) -> _M:
    attribute = condition.attribute
    base = attribute.split("[", 1)[0]
    if base in ("source.principal", "source.namespace", "source.serviceAccount", "source.trustDomain"):
        match = _identity(value, attrs, base, trust_domain)
        if match.value is None:
            return _M(None, f"{condition.field} {match.why}")
        return match
    if base == "destination.port":
        return _M(int(value) == attrs.port)
    if base in ("source.ip", "remote.ip", "destination.ip"):
        return _ip(value, condition.field.removeprefix("when "))
    if base == "method":
        return _M(_header(value, attrs.method))
    if base == "path":
        if "{*}" in value or "{**}" in value:
            return _M(None, f"path template {value} is not modelled")
        path = attrs.path.split("?", 1)[0]
        if re.search(r"%|\\|//|/\.\.?(/|$)", path):
            return _M(None, f"path {attrs.path} would be normalized by the sidecar first, which is not modelled")
        return _M(string_match(value, path))
    if base == "host":
        if attrs.authority is None:
            return _M(None, "hosts: the Host header on port 80 depends on the client (curl omits ':80')")
        return _M(string_match(value, attrs.authority, ignore_case=True))
    if base == "request.headers":
        name = attribute[len(base) + 1:-1].lower()
        if name in attrs.headers:
            return _M(_header(value, attrs.headers[name]))
        if name.startswith(":") or name == "host" or name in PROXY_HEADERS or name.startswith(PROXY_HEADER_PREFIXES):
            return _M(None, f"{attribute}: the header is set by the client or the sidecars, not by the scenario")
        return _M(_header(value, None))
    if base.startswith("request.auth"):
        return _M(None, f"{condition.field.removeprefix('when ')} needs a validated JWT; JWT authentication is "
                        "not predicted")
    return _M(None, f"{attribute} is not modelled")  # connection.sni, experimental.envoy.filters.*


def _condition(condition: Condition, attrs: Attributes, trust_domain: str) -> _M:
    parts = []
    if condition.values:
        parts.append(_any(_value(condition, v, attrs, trust_domain) for v in condition.values))
    if condition.not_values:
        parts.append(_not(_any(_value(condition, v, attrs, trust_domain) for v in condition.not_values)))
    return _all(parts)


def rule_matches(rule: Rule, attrs: Attributes, trust_domain: str) -> tuple[_M, str]:
    """Does ``rule`` match? With the first condition that does not (for explanations)."""
    failed: list[str] = []

    def group(conditions: tuple[Condition, ...]) -> _M:
        results = [(_condition(c, attrs, trust_domain), c) for c in conditions]
        for match, condition in results:
            if match.value is False:
                failed.append(condition.text())
                return FALSE
        return _all(m for m, _ in results)

    match = _all([_any(group(g) for g in rule.sources), _any(group(g) for g in rule.operations),
                  group(rule.when)])
    return match, (failed[0] if failed else "")


# --------------------------------------------------------------------------- the decision (A2, A8)


def request_attributes(server: Workload, port: Port, request: Request, principal: str | None) -> Attributes:
    """What the RBAC filter sees from one probe: the client's identity (mTLS only), the container port,
    and on HTTP ports the method, path, Host (``<service FQDN>:<port>``) and the scenario's headers."""
    headers = {k.lower(): str(v) for k, v in request.headers.items()}
    authority: str | None = headers.get("host", f"{server.host}:{port.port}")
    if port.port == 80 and "host" not in headers:
        authority = None
    return Attributes(principal, port.target_port, port.protocol == "tcp", request.method, request.path,
                      authority, headers)


def _denial(tcp: bool, matched: str) -> str:
    if tcp:
        return (f"the server sidecar accepts the connection and its RBAC network filter closes it ({TCP_DENIED_STAT}, "
                f"access log {DENIED_DETAIL}{matched}])")
    return f"the server sidecar answers HTTP 403 'RBAC: access denied' ({DENIED_DETAIL}{matched}])"


def evaluate(scenario: Scenario, server: Workload, port: Port, request: Request, principal: str | None) -> Decision:
    """Istio's authorization of one request that reached ``server``'s sidecar (A2).

    CUSTOM policies are evaluated first by an external authorizer (unknown here), then DENY, then
    ALLOW: a matching DENY rule denies; with any ALLOW policy, a request no ALLOW rule matches is denied.
    AUDIT and dry-run policies never change the outcome (builder.go: RBAC_LOG and shadow rules).
    """
    bound, findings = binding(scenario, server)
    if not bound:
        return Decision("allow", "", tuple(findings))
    attrs = request_attributes(server, port, request, principal)
    trust_domain = scenario.mesh.trust_domain
    chain = f"{'TCP' if attrs.tcp else 'HTTP'} port {port.target_port}"
    findings.append(Finding("A5", f"the request reaches {server.ref}'s sidecar on {chain} with {attrs.who()}"
                            + ("" if attrs.principal else ": principals and namespaces cannot match it, "
                               "their not-forms always do")))
    custom = next((b for b in bound if b.action == "CUSTOM"), None)
    if custom is not None:  # even dry-run CUSTOM policies call the authorizer (builder.go buildHTTP)
        provider = custom.policy.spec.get("provider")
        name = provider.get("name") if isinstance(provider, Mapping) else None
        why = (f"{custom.policy.ref} (CUSTOM) delegates to the extension provider '{name or '?'}' of meshConfig; "
               "external authorization is not predicted")
        findings.append(Finding("A7", why))
        return Decision("unknown", why, tuple(findings))
    for entry in bound:
        if entry.action == "AUDIT" or entry.dry_run:
            findings.append(Finding("A2", f"{entry.policy.ref} ({entry.action}"
                                          f"{', dry-run' if entry.dry_run else ''}) is only logged: it never "
                                          "changes the outcome"))
    enforced = {action: [b.policy for b in bound if b.action == action and not b.dry_run]
                for action in ("DENY", "ALLOW")}
    compiled: dict[Policy, Compiled] = {}
    for action, policies in enforced.items():
        for policy in policies:
            compiled[policy] = compile_rules(policy, action, attrs.tcp)
            findings.extend(compiled[policy].notes)

    def rules_of(action: str) -> list[Rule]:
        # Envoy keeps an RBAC filter's policies in a sorted map: the first match by name is the one logged.
        return sorted((r for p in enforced[action] for r in compiled[p].rules), key=lambda r: r.name)

    deny = FALSE
    for rule in rules_of("DENY"):
        match, _ = rule_matches(rule, attrs, trust_domain)
        if match.value is True:
            why = f"{rule.policy.ref} (DENY) {rule.name} matches ({rule.text()}): {_denial(attrs.tcp, rule.name)}"
            findings.append(Finding("A2", f"DENY is evaluated before ALLOW: {why}"))
            return Decision("deny", f"denied by {why}", tuple(findings))
        if match.value is None and deny.value is False:
            deny = _M(None, f"whether {rule.policy.ref} (DENY) {rule.name} matches is unknown: {match.why}")
    if deny.value is False and rules_of("DENY"):
        findings.append(Finding("A2", f"no DENY rule matches ({', '.join(r.name for r in rules_of('DENY'))})"))

    if not enforced["ALLOW"]:
        if deny.value is None:
            findings.append(Finding("A7", deny.why))
            return Decision("unknown", deny.why, tuple(findings))
        findings.append(Finding("A2", "no ALLOW policy applies: the request is allowed"))
        return Decision("allow", "no DENY rule matches and no ALLOW policy applies", tuple(findings))
    allow = FALSE
    for rule in rules_of("ALLOW"):
        match, _ = rule_matches(rule, attrs, trust_domain)
        if match.value is True:
            if deny.value is None:
                findings.append(Finding("A7", deny.why))
                return Decision("unknown", deny.why, tuple(findings))
            why = f"{rule.policy.ref} (ALLOW) {rule.name} matches ({rule.text()})"
            findings.append(Finding("A2", f"allowed: {why}"))
            return Decision("allow", f"allowed by {why}", tuple(findings))
        if match.value is None and allow.value is False:
            allow = _M(None, f"whether {rule.policy.ref} (ALLOW) {rule.name} matches is unknown: {match.why}")
    if allow.value is None:
        findings.append(Finding("A7", allow.why))
        return Decision("unknown", allow.why, tuple(findings))
    misses = []
    for policy in enforced["ALLOW"]:
        if not compiled[policy].rules and not compiled[policy].skipped:
            misses.append(f"{policy.ref.removeprefix(f'{AUTHORIZATION_POLICY} ')} has no rule (allow-nothing)")
        misses.extend(compiled[policy].skipped)
        for rule in compiled[policy].rules:
            _, failed = rule_matches(rule, attrs, trust_domain)
            misses.append(f"{rule.name} needs {failed}")
    either = f"; {deny.why}, but the request is denied either way" if deny.value is None else ""
    why = (f"no ALLOW policy matched: {'; '.join(misses)}; the request has {attrs.who()}{either}. With an ALLOW "
           f"policy on {server.ref}, Istio denies what no ALLOW rule matches: {_denial(attrs.tcp, 'none')}")
    findings.append(Finding("A2", why))
    return Decision("deny", why, tuple(findings))


def unreached(scenario: Scenario, server: Workload, outcome: str) -> list[Finding]:
    """A8: a connection the server side rejects (refused) or the client sidecar fails (unavailable)
    never reaches the RBAC filters, so the policies that bind the server do not matter."""
    if not server.sidecar:
        return []
    bound, _ = binding(scenario, server)
    if not bound:
        return []
    names = ", ".join(b.policy.ref.removeprefix("AuthorizationPolicy ") for b in bound)
    return [Finding("A8", f"the connection fails before authorization ({outcome}): AuthorizationPolicy {names} "
                          "never sees it")]
