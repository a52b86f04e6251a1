"""Istio's mutual-TLS rules for sidecar mode: the oracle.

Given a scenario, this module says, for every (client, server, Service port), what Istio does and
why: which PeerAuthentication decides what the server's sidecar accepts, which DestinationRule or
auto-mTLS decision decides what the client's sidecar sends, and what the client then experiences.
Every backend derives its configuration or its expectations from here, so the rules live once.

Rule ids (P1..P7 server side, O1..O5 client side, X1..X3 outcome and limits) refer to
docs/semantics.md, which cites the Istio documentation, tests and code behind each rule.
AuthorizationPolicy is evaluated by ``authz`` (rules A1..A8) for requests the server's sidecar accepts.
Where Istio's behaviour depends on something this module does not model (ambient mode, routing
resources, external or JWT authorization), the result is ``unknown`` with a reason: never a guess.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..model import Policy, Port, Request, Result, Scenario, Workload
from . import authz
from .chain import Step, by_age
from .destinationrules import (
    destination_rule_for,
    dr_tls_for_port,
    host_matches,
    resolve_host,
)

Mode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
Sends = Literal["plaintext", "istio-mtls", "tls"]

PEER_AUTHENTICATION = "PeerAuthentication"
PA_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")


@dataclass(frozen=True)
class ServerDecision:
    """What the server's sidecar accepts on one container port (mode None: no sidecar)."""

    workload: Workload
    target_port: int
    mode: Mode | None
    decided_by: str
    steps: tuple[Step, ...]


@dataclass(frozen=True)
class ClientDecision:
    """What the client's sidecar (or app, without a sidecar) sends to one Service port."""

    client: Workload
    server: Workload
    port: Port
    sends: Sends
    summary: str
    steps: tuple[Step, ...]
    tls_mode: str | None = None  # the DestinationRule tls.mode that decided, if one did
    destination_rule: Policy | None = None
    unknown: str = ""  # non-empty: the decision depends on something not modelled


@dataclass(frozen=True)
class Prediction:
    source: Workload
    target: Workload
    port: Port
    result: Result
    reason: str
    steps: tuple[Step, ...]
    server: ServerDecision
    client: ClientDecision
    request: Request = field(default_factory=Request)


# --------------------------------------------------------------------------- server side (P rules)


def pa_mode(policy: Policy) -> str:
    """The top-level mode of a PeerAuthentication; a missing ``mtls`` block means UNSET (P3)."""
    mtls = policy.spec.get("mtls")
    if not isinstance(mtls, Mapping):
        return "UNSET"
    return str(mtls.get("mode") or "UNSET")


def port_level_modes(policy: Policy) -> dict[int, str]:
    raw = policy.spec.get("portLevelMtls")
    if not isinstance(raw, Mapping):
        return {}
    modes: dict[int, str] = {}
    for key, value in raw.items():
        mode = value.get("mode") if isinstance(value, Mapping) else None
        modes[int(key)] = str(mode or "UNSET")
    return modes


def peer_authentication_levels(
    scenario: Scenario, workload: Workload
) -> tuple[Policy | None, Policy | None, Policy | None, list[Step]]:
    """The mesh-, namespace- and workload-level PeerAuthentications that bind ``workload`` (P1, P4)."""
    root = scenario.mesh.root_namespace
    pas = by_age(scenario.policies_of(PEER_AUTHENTICATION))
    notes: list[Step] = []

    def oldest(candidates: list[Policy], what: str) -> Policy | None:
        if not candidates:
            return None
        for newer in candidates[1:]:
            notes.append(Step("P4", f"PeerAuthentication {newer.namespace}/{newer.name} is ignored: {what} "
                                    f"{candidates[0].namespace}/{candidates[0].name} is older and wins"))
        return candidates[0]

    mesh = oldest([p for p in pas if p.namespace == root and not p.selector], "the mesh-wide policy")
    namespace = None
    workload_level = None
    if workload.namespace != root:
        namespace = oldest(
            [p for p in pas if p.namespace == workload.namespace and not p.selector],
            "the namespace-wide policy",
        )
        workload_level = oldest(
            [p for p in pas if p.namespace == workload.namespace and p.selector and p.selects(workload)],
            "the workload policy",
        )
    for ignored in pas:
        if ignored.namespace == root and ignored.selector and _labels_match(ignored.selector, workload):
            notes.append(Step("P1", f"PeerAuthentication {ignored.namespace}/{ignored.name} has a selector in the "
                                    f"root namespace {root}: Istio ignores it"))
    return mesh, namespace, workload_level, notes


def _labels_match(selector: Mapping[str, str], workload: Workload) -> bool:
    return all(workload.labels.get(k) == str(v) for k, v in selector.items())


def server_decision(scenario: Scenario, workload: Workload, target_port: int) -> ServerDecision:
    """Effective PeerAuthentication mode of ``workload`` on container port ``target_port``."""
    if not workload.sidecar:
        step = Step("P7", f"{workload.ref} has no sidecar: PeerAuthentication does not bind it; "
                          "it accepts whatever reaches it and cannot terminate mTLS")
        return ServerDecision(workload, target_port, None, "no sidecar", (step,))

    mesh, namespace, workload_level, steps = peer_authentication_levels(scenario, workload)
    mode: str = "PERMISSIVE"
    decided_by = "default: no PeerAuthentication applies"
    if not (mesh or namespace or workload_level):
        steps.append(Step("P3", f"no PeerAuthentication applies to {workload.ref}: PERMISSIVE by default"))
    # Most specific wins: each level REPLACES the one above unless it is UNSET (P2, P3).
    for level, policy in (("mesh-wide", mesh), ("namespace-wide", namespace), ("workload", workload_level)):
        if policy is None:
            continue
        policy_mode = pa_mode(policy)
        where = f"PeerAuthentication {policy.namespace}/{policy.name} ({level})"
        if policy_mode == "UNSET":
            steps.append(Step("P3", f"{where} leaves the mode UNSET: {workload.ref} inherits {mode}"))
            continue
        if decided_by.startswith("PeerAuthentication"):
            steps.append(Step("P2", f"{where} sets {policy_mode}, replacing {mode} from the less specific "
                                    f"{decided_by.removeprefix('PeerAuthentication ')}"))
        else:
            steps.append(Step("P1", f"{where} sets {policy_mode}"))
        mode, decided_by = policy_mode, where

    if workload_level is not None:
        per_port = port_level_modes(workload_level)
        if target_port in per_port:
            port_mode = per_port[target_port]
            where = (f"PeerAuthentication {workload_level.namespace}/{workload_level.name} "
                     f"portLevelMtls[{target_port}]")
            if port_mode == "UNSET":
                steps.append(Step("P5", f"{where} is UNSET: the port inherits the workload mode {mode}"))
            else:
                steps.append(Step("P5", f"{where} sets {port_mode} for container port {target_port}"))
                mode, decided_by = port_mode, where
        for key in sorted(set(per_port) - {target_port}):
            if any(p.port == key and p.target_port != key for p in workload.ports):
                steps.append(Step("P5", f"portLevelMtls[{key}] of PeerAuthentication {workload_level.namespace}/"
                                        f"{workload_level.name} names a Service port, not a container port: "
                                        "Istio ignores it"))
    assert mode in ("STRICT", "PERMISSIVE", "DISABLE")
    return ServerDecision(workload, target_port, mode, decided_by, tuple(steps))  # type: ignore[arg-type]


def namespace_mode(scenario: Scenario, namespace: str) -> tuple[Mode, str]:
    """The namespace-level (else mesh-level) mode that auto mTLS uses as its hint (O2.1).

    Workload and port-level policies are deliberately ignored here, exactly like Istio's
    ``BestEffortInferServiceMTLSMode``.
    """
    root = scenario.mesh.root_namespace
    pas = by_age(scenario.policies_of(PEER_AUTHENTICATION))
    mesh = next((p for p in pas if p.namespace == root and not p.selector), None)
    inherited: str = "PERMISSIVE"
    inherited_from = "default: no namespace or mesh PeerAuthentication"
    if mesh is not None:
        mesh_mode = pa_mode(mesh)
        inherited = "PERMISSIVE" if mesh_mode == "UNSET" else mesh_mode
        inherited_from = f"PeerAuthentication {mesh.namespace}/{mesh.name} (mesh-wide)"
    if namespace != root:
        ns_policy = next((p for p in pas if p.namespace == namespace and not p.selector), None)
        if ns_policy is not None:
            ns_mode = pa_mode(ns_policy)
            if ns_mode != "UNSET":
                return ns_mode, f"PeerAuthentication {ns_policy.namespace}/{ns_policy.name} (namespace-wide)"  # type: ignore[return-value]
            inherited_from = (f"PeerAuthentication {ns_policy.namespace}/{ns_policy.name} (namespace-wide, "
                              f"UNSET, inherits from {inherited_from})")
    return inherited, inherited_from  # type: ignore[return-value]


# --------------------------------------------------------------------------- client side (O rules)


def client_decision(scenario: Scenario, client: Workload, server: Workload, port: Port) -> ClientDecision:
    if not client.sidecar:
        step = Step("O5", f"{client.ref} has no sidecar: it sends exactly what the app sends (plaintext)")
        return ClientDecision(client, server, port, "plaintext", f"{client.ref} has no sidecar and sends plaintext",
                              (step,))

    rules, steps = destination_rule_for(scenario, client, server)
    if port.subset:
        steps.append(Step("O3", f"{client.ref} is routed to subset {port.subset} of {server.host} (cluster "
                                f"outbound|{port.port}|{port.subset}|{server.host}): the subset's traffic policy "
                                "applies, else the DestinationRule's"))
    selector_rules = [r for r in rules if r.spec.get("workloadSelector")]
    if selector_rules:
        return ClientDecision(
            client, server, port, "plaintext", "", tuple(steps),
            unknown=f"DestinationRule {selector_rules[0].namespace}/{selector_rules[0].name} uses "
                    "workloadSelector, which the oracle does not model",
        )
    tls, rule, where = dr_tls_for_port(rules, port)
    if where == "conflict" and rule is not None:
        return ClientDecision(
            client, server, port, "plaintext", "", tuple(steps), destination_rule=rule,
            unknown=f"DestinationRule {rule.namespace}/{rule.name} has a portLevelSettings entry for port {port.port} "
                    "without tls under a top-level tls: Istio's cluster and endpoint code disagree on it",
        )
    if tls is not None and rule is not None:
        # An explicit TLS setting always wins over auto mTLS, even when it breaks traffic (O3).
        mode = str(tls.get("mode") or "DISABLE")
        dr = f"DestinationRule {rule.namespace}/{rule.name} {where} mode {mode}"
        if mode == "DISABLE":
            sends: Sends = "plaintext"
            text = f"{client.ref} sends plaintext ({dr})"
        elif mode == "ISTIO_MUTUAL":
            sends = "istio-mtls"
            text = f"{client.ref} sends Istio mTLS ({dr})"
        else:
            sends = "tls"
            text = f"{client.ref} originates TLS with non-mesh credentials ({dr})"
        steps.append(Step("O3", f"{dr}: an explicit DestinationRule TLS setting overrides auto mTLS"))
        return ClientDecision(client, server, port, sends, text, tuple(steps), tls_mode=mode, destination_rule=rule)
    if rules:
        steps.append(Step("O3", "the DestinationRule sets no TLS for this port: auto mTLS decides"))

    if not scenario.mesh.auto_mtls:
        steps.append(Step("O1", "meshConfig.enableAutoMtls is false and no DestinationRule sets TLS: plaintext"))
        return ClientDecision(client, server, port, "plaintext",
                              f"{client.ref} sends plaintext (autoMtls is off and no DestinationRule sets TLS)",
                              tuple(steps))

    hint, hint_from = namespace_mode(scenario, server.namespace)
    if hint == "DISABLE":
        steps.append(Step("O2", f"auto mTLS: namespace {server.namespace} is DISABLE by {hint_from}, so the client "
                                "sends plaintext to every endpoint of the Service (workload policies are not "
                                "consulted)"))
        return ClientDecision(
            client, server, port, "plaintext",
            f"{client.ref} sends plaintext (auto mTLS: namespace {server.namespace} is DISABLE by "
            f"{hint_from.removeprefix('PeerAuthentication ')})",
            tuple(steps),
        )
    steps.append(Step("O2", f"auto mTLS: namespace hint for {server.namespace} is {hint} ({hint_from}): "
                            "the decision is made per endpoint"))
    if not server.sidecar:
        steps.append(Step("O2", f"endpoint {server.ref} has no sidecar (no tlsMode=istio label): plaintext"))
        return ClientDecision(client, server, port, "plaintext",
                              f"{client.ref} sends plaintext (auto mTLS: {server.ref} has no sidecar)", tuple(steps))
    endpoint = server_decision(scenario, server, port.target_port)
    if endpoint.mode == "DISABLE":
        steps.append(Step("O2", f"endpoint {server.ref} port {port.target_port} is DISABLE: plaintext"))
        return ClientDecision(
            client, server, port, "plaintext",
            f"{client.ref} sends plaintext (auto mTLS: {server.ref} port {port.target_port} is DISABLE)",
            tuple(steps),
        )
    steps.append(Step("O2", f"endpoint {server.ref} has a sidecar and port {port.target_port} is not DISABLE: "
                            "Istio mTLS"))
    return ClientDecision(client, server, port, "istio-mtls", f"{client.ref} sends Istio mTLS (auto mTLS)",
                          tuple(steps))


# --------------------------------------------------------------------------- outcome and limits (X rules)


def _host_list(policy: Policy) -> list[str]:
    hosts = policy.spec.get("hosts")
    return [resolve_host(str(h), policy.namespace) for h in hosts] if isinstance(hosts, list) else []


def _binds(policy: Policy, workload: Workload, root: str) -> bool:
    """Namespace-wide (or mesh-wide in the root namespace) when unselected, else by labels.

    A selector in the root namespace matches workloads of every namespace (AuthorizationPolicy,
    RequestAuthentication and EnvoyFilter all work this way), unlike PeerAuthentication (P1).
    """
    selector = policy.spec.get("selector") or policy.spec.get("workloadSelector")
    labels: Mapping[str, Any] = {}
    if isinstance(selector, Mapping):
        raw = selector.get("matchLabels") or selector.get("labels") or {}
        labels = raw if isinstance(raw, Mapping) else {}
    if not labels:
        return policy.namespace in (workload.namespace, root)
    return policy.namespace in (workload.namespace, root) and _labels_match(labels, workload)


def unmodelled(scenario: Scenario, client: Workload, server: Workload, request: Request,
               allowed: bool) -> str:
    """Why this pair cannot be predicted, or "" when every resource involved is modelled (X2, X3)."""
    root = scenario.mesh.root_namespace
    for workload in (client, server):
        if workload.ambient:
            return f"{workload.ref} is in ambient mode, which the oracle does not predict"
    for policy in by_age(scenario.policies):
        kind = policy.kind
        if kind == "RequestAuthentication" and allowed and server.sidecar and _binds(policy, server, root):
            if any(h.lower() == "authorization" for h in request.headers):
                return (f"RequestAuthentication {policy.namespace}/{policy.name} validates the request's token; "
                        "JWT validation is not predicted")
        elif kind in ("EnvoyFilter", "Sidecar"):
            for workload in (client, server):
                if workload.sidecar and _binds(policy, workload, root):
                    return f"{kind} {policy.namespace}/{policy.name} applies to {workload.ref} and is not modelled"
        elif kind in ("VirtualService", "ServiceEntry") and client.sidecar and any(
                host_matches(h, server.host) for h in _host_list(policy)):
            return (f"{kind} {policy.namespace}/{policy.name} covers host {server.host}; routing resources "
                        "are not modelled")
    return ""


def _outcome(client: ClientDecision, server: ServerDecision) -> tuple[Result, str, Step]:
    sidecar_fails = "the client sidecar's upstream connection fails and it answers 503"
    if client.sends == "plaintext":
        if server.mode is None:
            return Result.PLAINTEXT, "plaintext reaches the app", Step("X1", "plaintext to a workload without a "
                                                                             "sidecar succeeds unencrypted")
        if server.mode == "STRICT":
            if client.client.sidecar:
                return Result.UNAVAILABLE, sidecar_fails, Step(
                    "X1", "STRICT rejects plaintext from the client sidecar: " + sidecar_fails)
            return Result.REFUSED, "the server sidecar resets the plaintext connection", Step(
                "X1", "STRICT matches no filter chain for plaintext: the connection is reset (curl exit 56)")
        return Result.PLAINTEXT, f"{server.mode} accepts plaintext", Step(
            "X1", f"{server.mode} accepts plaintext: the request succeeds unencrypted")
    if client.sends == "istio-mtls":
        if server.mode is None:
            return Result.UNAVAILABLE, f"{server.workload.ref} cannot terminate mTLS; {sidecar_fails}", Step(
                "X1", "Istio mTLS to a workload without a sidecar fails: " + sidecar_fails)
        if server.mode == "DISABLE":
            return Result.UNAVAILABLE, f"DISABLE does not terminate mTLS; {sidecar_fails}", Step(
                "X1", "Istio mTLS to a DISABLE port fails: " + sidecar_fails)
        return Result.MTLS, f"{server.mode} accepts Istio mTLS", Step(
            "X1", f"{server.mode} terminates Istio mTLS: the request succeeds encrypted and authenticated")
    # SIMPLE / MUTUAL with non-mesh credentials.
    if server.mode == "STRICT" and client.tls_mode == "MUTUAL":
        return Result.UNKNOWN, "depends on whether the client certificate chains to the mesh CA", Step(
            "X3", "MUTUAL origination to a STRICT sidecar depends on the certificates: not predicted")
    return Result.UNAVAILABLE, f"nothing on the server side terminates that TLS; {sidecar_fails}", Step(
        "X1", "TLS originated with non-mesh credentials is not terminated by the server side: " + sidecar_fails)


def _server_text(server: ServerDecision, port: Port) -> str:
    target = server.workload.ref
    where = f"pod/{target}:{port.port}" if port.pod else f"{target}:{port.port}"
    if port.target_port != port.port:
        where += f" (container port {port.target_port})"
    if server.mode is None:
        return f"{target} has no sidecar and accepts plaintext"
    if server.decided_by.startswith("default"):
        return f"{where} is {server.mode} (no PeerAuthentication applies)"
    return f"{where} is {server.mode} by {server.decided_by}"


# --------------------------------------------------------------------------- pod addresses and TLS clients

TLS_CREDENTIALS = {"no-cert": "no client certificate", "foreign-cert": "a client certificate from a foreign CA",
                   "mesh-cert": "a valid mesh certificate"}


def declared(workload: Workload, container_port: int) -> bool:
    """Does a Service selecting the pod declare this container port? Else Istio's passthrough chains serve it."""
    return any(p.target_port == container_port for p in workload.ports)


def pod_address_steps(target: Workload, port: Port) -> list[Step]:
    """Why a probe of the pod address meets the same sidecar as a Service probe, and which chains serve it."""
    if not port.pod:
        return []
    steps = [Step("P6", f"the client dials the pod of {target.ref} at container port {port.target_port}, bypassing "
                        "the Service" + (": the pod's inbound capture still hands it to the sidecar"
                                         if target.sidecar else ""))]
    if target.sidecar and not declared(target, port.target_port):
        steps.append(Step("P5", f"no Service declares container port {port.target_port}: Istio's passthrough filter "
                                "chains serve it with the workload's mode, or a portLevelMtls entry for that port "
                                "(a per-port passthrough chain)"))
    return steps


def tls_client_decision(scenario: Scenario, client: Workload, server: Workload, port: Port,
                        tls: str) -> ClientDecision:
    """A client without a sidecar that opens TLS itself, as ``curl -k https://`` would (ALPN http/1.1 on http
    ports, none on tcp), presenting no certificate, a foreign one, or a mesh certificate of its own account."""
    what = TLS_CREDENTIALS[tls]
    if tls == "mesh-cert":
        what += f" ({client.spiffe(scenario.mesh.trust_domain)})"
    step = Step("O5", f"{client.ref} has no sidecar and opens TLS itself (no Istio ALPN), presenting {what}")
    return ClientDecision(client, server, port, "tls", f"{client.ref} opens TLS itself with {what}", (step,),
                          tls_mode=tls)


def _tls_client_outcome(client: ClientDecision, server: ServerDecision, port: Port) -> tuple[Result, str, Step]:
    """What the server side's filter chains (filterchain_options.go) do with TLS that is not from a sidecar."""
    protocol = port.protocol if declared(server.workload, port.target_port) else "auto-detected"
    if server.mode is None:
        return Result.UNKNOWN, "nothing on the server side terminates TLS: the app receives the handshake", Step(
            "X3", "TLS to a workload without a sidecar reaches the app unterminated: not predicted")
    if server.mode == "STRICT":
        if client.tls_mode == "mesh-cert":
            return Result.MTLS, "STRICT terminates the TLS and accepts the mesh certificate", Step(
                "P6", "STRICT terminates any TLS and requires a client certificate chaining to the mesh root: a valid "
                      "mesh certificate passes like a sidecar's, with its identity")
        why = ("STRICT requires a client certificate" if client.tls_mode == "no-cert"
               else "the client certificate does not chain to the mesh root")
        return Result.REFUSED, f"{why}: the server sidecar fails the handshake", Step(
            "P6", f"STRICT terminates any TLS and requires a client certificate chaining to the mesh root: {why}, so "
                  "the handshake fails")
    if server.mode == "DISABLE":
        return Result.REFUSED, "DISABLE has plaintext filter chains only: TLS matches none", Step(
            "P6", "DISABLE never terminates TLS: a TLS connection matches no filter chain and is closed")
    if protocol == "http":
        return Result.REFUSED, "PERMISSIVE on an http port has chains for Istio mTLS and plaintext only", Step(
            "P6", "PERMISSIVE on an http port matches Istio mTLS (by Istio's ALPN) or plaintext: TLS without "
                  "Istio's ALPN matches no filter chain and is closed")
    return Result.UNKNOWN, f"PERMISSIVE passes TLS without Istio's ALPN through to the app ({protocol} port)", Step(
        "X3", f"PERMISSIVE on a {protocol} port forwards TLS without Istio's ALPN to the app unterminated: not "
              "predicted")


def predict(scenario: Scenario, source: Workload, target: Workload, port: Port,
            request: Request | None = None) -> Prediction:
    request = request or Request()
    server = server_decision(scenario, target, port.target_port)
    if request.tls:
        client = tls_client_decision(scenario, source, target, port, request.tls)
    else:
        client = client_decision(scenario, source, target, port)
    steps = [*server.steps, *pod_address_steps(target, port), *client.steps]
    if client.unknown:
        steps.append(Step("X3", client.unknown))
        return Prediction(source, target, port, Result.UNKNOWN, client.unknown, tuple(steps),
                          server, client, request)
    result, why, step = _tls_client_outcome(client, server, port) if request.tls else _outcome(client, server)
    steps.append(step)
    limit = unmodelled(scenario, source, target, request, allowed=result in (Result.MTLS, Result.PLAINTEXT))
    if limit:
        steps.append(Step("X2", limit))
        return Prediction(source, target, port, Result.UNKNOWN, limit, tuple(steps), server, client,
                          request)
    if result in (Result.MTLS, Result.PLAINTEXT) and target.sidecar:
        # The server's sidecar accepted the connection: now its RBAC filters decide (authz, A1..A8).
        peer = source.spiffe(scenario.mesh.trust_domain) if result is Result.MTLS else None
        decision = authz.evaluate(scenario, target, port, request, peer)
        steps.extend(Step(f.rule, f.text) for f in decision.findings)
        if decision.effect == "unknown":
            return Prediction(source, target, port, Result.UNKNOWN, decision.reason, tuple(steps), server, client,
                              request)
        if decision.effect == "deny":
            result = Result.DENIED
        if decision.reason:
            why = f"{why}, then {decision.reason}"
    elif target.sidecar and port.protocol == "tcp" and (
            (client.sends == "tls" and server.mode != "STRICT") or (client.sends == "istio-mtls"
                                                                    and server.mode == "DISABLE")):
        # TLS the server sidecar does not terminate is proxied as TCP on a TCP port (PERMISSIVE's "Plain TLS" chain
        # for non-mesh TLS, DISABLE's plaintext chain for any TLS: pilot/pkg/networking/core/filterchain_options.go
        # inboundPermissiveTCPFilterChainMatchWithMxcOptions, inboundPlainTextTCPFilterChainMatchOptions), so its
        # network RBAC filter judges the connection before the handshake fails (found by crosscheck:
        # tests/unit/data/crosscheck/01-*, 02-*).
        decision = authz.evaluate(scenario, target, port, request, None)
        steps.extend(Step(f.rule, f.text) for f in decision.findings)
        if decision.effect == "unknown":
            return Prediction(source, target, port, Result.UNKNOWN, decision.reason, tuple(steps), server, client,
                              request)
        if decision.effect == "deny":
            result, why = Result.DENIED, f"{server.mode} proxies the TLS as TCP, then {decision.reason}"
    elif result in (Result.REFUSED, Result.UNAVAILABLE):
        steps.extend(Step(f.rule, f.text) for f in authz.unreached(scenario, target, result.value))
    if result is Result.UNKNOWN:
        reason = f"{_server_text(server, port)}; {client.summary} → unknown: {why}"
    else:
        reason = f"{_server_text(server, port)}; {client.summary} → {result.value} ({why})"
    return Prediction(source, target, port, result, reason, tuple(steps), server, client, request)


def predict_all(scenario: Scenario) -> list[Prediction]:
    """Every workload × every server port, in topology order (self-calls included): the fixture's default pairs and
    the backends' confirmation sweep; ``predict`` shows a scenario's own rows (or its derived ones) instead."""
    return [
        predict(scenario, source, target, port)
        for source in scenario.topology.workloads
        for target in scenario.topology.servers
        for port in target.ports
    ]
