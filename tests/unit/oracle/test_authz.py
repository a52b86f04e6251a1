"""Table-driven tests of Istio's AuthorizationPolicy as the oracle models it (pytest_istio_mtls/oracle/authz.py).

Every row names the rule of docs/semantics.md ("Authorization", A1..A8) it pins, and the Istio
documentation or source it encodes. Scenarios are YAML loaded like a user's and predicted end to end
(mtls.predict), so each row also checks how PeerAuthentication and authorization combine.

Sources, abbreviated in the comments:
- CONCEPTS: https://istio.io/latest/docs/concepts/security/#authorization-policy
- REF: https://istio.io/latest/docs/reference/config/security/authorization-policy/
- CONDITIONS: https://istio.io/latest/docs/reference/config/security/conditions/
- TASK-HTTP / TASK-TCP / TASK-DENY / TASK-DRYRUN: istio.io/latest/docs/tasks/security/authorization/
  authz-http/, authz-tcp/, authz-deny/, authz-dry-run/ (each verified by the page's test.sh)
- MODEL, GENERATOR, BUILDER, MATCHER: istio/istio pilot/pkg/security/authz/model/model.go,
  model/generator.go, builder/builder.go, matcher/{string,header}.go
- ATTACH: istio/istio pilot/pkg/model/policyattachment.go (ShouldAttachPolicy)
- TRUSTDOMAIN: istio/istio pilot/pkg/security/trustdomain/bundle.go
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_istio_mtls.model import MeshSettings, Policy, Request, Result, Scenario
from pytest_istio_mtls.model.diagnostics import Mark
from pytest_istio_mtls.oracle import authz, mtls
from pytest_istio_mtls.scenario.loader import load_scenario

MTLS, PLAINTEXT, REFUSED, UNAVAILABLE = Result.MTLS, Result.PLAINTEXT, Result.REFUSED, Result.UNAVAILABLE
DENIED, UNKNOWN = Result.DENIED, Result.UNKNOWN

TOPOLOGY = """\
topology:
  namespaces:
    foo: {sidecars: true}
    bar: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - name: httpbin
      namespace: foo
      labels: {app: httpbin, version: v1}
      ports: [{name: http, port: 8000, targetPort: 8080}, {name: tcp, port: 9000, targetPort: 9090, protocol: tcp}]
    - {name: httpbin, namespace: bar, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: httpbin, namespace: legacy, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: curl, namespace: foo}
    - {name: curl, namespace: bar}
    - {name: curl, namespace: legacy}
"""
HTTP, TCP, BAR_HTTP, LEGACY_HTTP = "httpbin.foo:8000", "httpbin.foo:9000", "httpbin.bar:8000", "httpbin.legacy:8000"


def ap(namespace: str, name: str, spec: str, *, annotations: str = "") -> str:
    """An AuthorizationPolicy with its spec as one YAML flow mapping."""
    meta = f"{{name: {name}, namespace: {namespace}" + (f", annotations: {annotations}" if annotations else "") + "}"
    return f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {meta}\nspec: {spec}\n"


def pa(namespace: str, mode: str) -> str:
    return (f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, "
            f"namespace: {namespace}}}\nspec: {{mtls: {{mode: {mode}}}}}\n")


def dr_disable(namespace: str) -> str:
    return ("apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            f"metadata: {{name: plaintext, namespace: {namespace}}}\n"
            "spec: {host: httpbin.foo.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}}}\n")


SELECT = "selector: {matchLabels: {app: httpbin}}"
GET = Request()
POST = Request(method="POST", path="/anything/x")


def load(tmp_path: Path, policies: tuple[str, ...] | list[str]) -> Scenario:
    text = "name: authz-case\n" + TOPOLOGY
    if policies:
        text += "policies: |\n" + textwrap.indent("---\n".join(policies), "  ")
    text += "expect:\n  - {from: curl.foo, to: httpbin.foo:8000, result: allowed}\n"
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return load_scenario(path)


def predict(scenario: Scenario, client: str, server: str, request: Request | None = None) -> mtls.Prediction:
    source = scenario.topology.workload(client)
    name, _, port_key = server.partition(":")
    target = scenario.topology.workload(name)
    assert source is not None and target is not None
    port = target.port(int(port_key))
    assert port is not None
    return mtls.predict(scenario, source, target, port, request)


def explain(prediction: mtls.Prediction) -> str:
    return "\n".join([f"{prediction.result.value}: {prediction.reason}", *(f"  {s}" for s in prediction.steps)])


@dataclass(frozen=True)
class Case:
    policies: tuple[str, ...]
    client: str
    server: str
    expected: Result
    rules: tuple[str, ...]
    reason: str = ""  # a fragment the prediction's reason must contain
    request: Request | None = None


def row(case_id: str, policies: list[str], client: str, server: str, expected: Result, rules: str,
        **kwargs: Any) -> Any:
    return pytest.param(Case(tuple(policies), client, server, expected, tuple(rules.split()), **kwargs), id=case_id)


PRINCIPAL_FOO = '"cluster.local/ns/foo/sa/curl"'

CASES = [
    # ---- A1: scope ------------------------------------------------------------------------------------
    # REF (allow-nothing example: "applies to all workloads in namespace foo"): namespace-wide.
    row("A1-namespace-wide", [ap("foo", "allow-nothing", "{}")], "curl.bar", HTTP, DENIED, "A1 A2",
        reason="foo/allow-nothing has no rule (allow-nothing)"),
    # ATTACH (lookup in the root and the workload's namespace only): another namespace does not bind.
    row("A1-other-namespace", [ap("bar", "allow-nothing", "{}")], "curl.bar", HTTP, MTLS, "X1"),
    # REF ("If set to root namespace, the policy applies to all namespaces in a mesh").
    row("A1-root-namespace-mesh-wide", [ap("istio-system", "deny-all", "{action: DENY, rules: [{}]}")],
        "curl.foo", BAR_HTTP, DENIED, "A1 A2", reason="istio-system/deny-all (DENY) ns[istio-system]-policy"),
    # REF (root-namespace selector "applies to workloads containing label version: v1 in all namespaces").
    row("A1-root-namespace-selector-all-namespaces",
        [ap("istio-system", "v1", "{selector: {matchLabels: {version: v1}}}")], "curl.bar", HTTP, DENIED, "A1"),
    row("A1-root-namespace-selector-other-labels",
        [ap("istio-system", "v1", "{selector: {matchLabels: {version: v1}}}")], "curl.foo", BAR_HTTP, MTLS, "X1"),
    # ATTACH (isSelected: matchLabels must be a subset of the pod's labels).
    row("A1-selector-no-match", [ap("foo", "other", "{selector: {matchLabels: {app: other}}}")],
        "curl.bar", HTTP, MTLS, "X1"),
    # ATTACH ("if targetRef is specified, ignore the policy altogether" for non-gateway proxies).
    row("A1-targetref-ignored-by-sidecars",
        [ap("foo", "svc", "{targetRefs: [{kind: Service, group: '', name: httpbin}]}")],
        "curl.bar", HTTP, MTLS, "A1"),
    # CONCEPTS (enforced by the server's proxy): a server without sidecar has nothing to enforce it.
    row("A1-no-sidecar-no-authz", [ap("legacy", "allow-nothing", "{}")], "curl.foo", LEGACY_HTTP, PLAINTEXT, "P7"),

    # ---- A2: actions and their order ------------------------------------------------------------------
    # CONCEPTS ("If there are any DENY policies that match the request, deny the request") before ALLOW.
    row("A2-deny-before-allow", [ap("foo", "allow-all", "{rules: [{}]}"),
                                 ap("foo", "deny-post", "{action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}")],
        "curl.bar", HTTP, DENIED, "A2", request=POST, reason="foo/deny-post (DENY) ns[foo]-policy[deny-post]-rule[0]"),
    row("A2-deny-no-match-then-allow", [ap("foo", "allow-all", "{rules: [{}]}"),
                                        ap("foo", "deny-post", "{action: DENY, rules: [{to: [{operation: "
                                                               "{methods: [POST]}}]}]}")],
        "curl.bar", HTTP, MTLS, "A2", reason="allowed by AuthorizationPolicy foo/allow-all (ALLOW)"),
    # CONCEPTS ("deny by default ... only if the workload has at least one authorization policy with the ALLOW action").
    row("A2-allow-present-no-match-denied",
        [ap("foo", "allow-foo", f"{{rules: [{{from: [{{source: {{principals: [{PRINCIPAL_FOO}]}}}}]}}]}}")],
        "curl.bar", HTTP, DENIED, "A2", reason="no ALLOW policy matched"),
    row("A2-allow-match", [ap("foo", "allow-foo", f"{{rules: [{{from: [{{source: {{principals: [{PRINCIPAL_FOO}]}}}}]}}]}}")],
        "curl.foo", HTTP, MTLS, "A2", reason="ns[foo]-policy[allow-foo]-rule[0] matches"),
    row("A2-only-deny-no-match-allowed",
        [ap("foo", "deny-bar", "{action: DENY, rules: [{from: [{source: {namespaces: [baz]}}]}]}")],
        "curl.bar", HTTP, MTLS, "A2", reason="no ALLOW policy applies"),
    # REF (allow-all example: rules: [{}]) and BUILDER (DENY without rules: rbacPolicyMatchNever).
    row("A2-allow-all", [ap("foo", "allow-all", "{rules: [{}]}")], "curl.legacy", HTTP, PLAINTEXT, "A2"),
    row("A2-deny-all", [ap("foo", "deny-all", "{action: DENY, rules: [{}]}")], "curl.foo", HTTP, DENIED, "A2"),
    row("A2-deny-without-rules-denies-nothing", [ap("foo", "deny", "{action: DENY}")], "curl.foo", HTTP, MTLS, "A2"),
    # REF (AUDIT: "Audit a request if it matches"); BUILDER builds it as RBAC_LOG, which never denies.
    row("A2-audit-never-decides", [ap("foo", "audit", "{action: AUDIT, rules: [{}]}")], "curl.foo", HTTP, MTLS, "A2"),
    # TASK-DRYRUN ("istio.io/dry-run" annotation): shadow rules, never enforced (BUILDER isDryRun).
    row("A2-dry-run-deny", [ap("foo", "deny", "{action: DENY, rules: [{}]}", annotations='{"istio.io/dry-run": "true"}')],
        "curl.foo", HTTP, MTLS, "A2"),
    row("A2-dry-run-allow-no-default-deny",
        [ap("foo", "allow", f"{{rules: [{{from: [{{source: {{principals: [{PRINCIPAL_FOO}]}}}}]}}]}}",
            annotations='{"istio.io/dry-run": "true"}')], "curl.bar", HTTP, MTLS, "A2"),

    # ---- A3: rule structure ---------------------------------------------------------------------------
    # REF (Rule: "A match occurs when at least one source, one operation and all conditions matches").
    row("A3-sources-are-ored", [ap("foo", "allow", "{rules: [{from: [{source: {namespaces: [baz]}}, "
                                                   "{source: {namespaces: [bar]}}]}]}")],
        "curl.bar", HTTP, MTLS, "A2"),
    # REF (Source: "Fields in the source are ANDed together").
    row("A3-fields-are-anded", [ap("foo", "allow", "{rules: [{from: [{source: {namespaces: [bar], "
                                                   f"principals: [{PRINCIPAL_FOO}]}}}}]}}]}}")],
        "curl.bar", HTTP, DENIED, "A2"),
    row("A3-when-is-anded", [ap("foo", "allow", "{rules: [{to: [{operation: {methods: [GET]}}], "
                                                "when: [{key: source.namespace, values: [foo]}]}]}")],
        "curl.bar", HTTP, DENIED, "A2", reason="when source.namespace [foo]"),
    # MODEL (New: "unknown attribute" makes the rule invalid; BUILDER skips it).
    row("A3-unknown-when-key-skips-rule", [ap("foo", "allow", "{rules: [{when: [{key: source.color, values: [red]}]}]}")],
        "curl.foo", HTTP, DENIED, "A3 A2"),

    # ---- A4: matching ---------------------------------------------------------------------------------
    # REF ("Prefix match: abc*", "Suffix match: *abc", "Presence match: *") on principals (MATCHER StringMatcherWithPrefix).
    row("A4-principal-prefix", [ap("foo", "allow", '{rules: [{from: [{source: {principals: ["cluster.local/ns/bar/*"]}}]}]}')],
        "curl.bar", HTTP, MTLS, "A2"),
    row("A4-principal-suffix", [ap("foo", "allow", '{rules: [{from: [{source: {principals: ["*/sa/curl"]}}]}]}')],
        "curl.bar", HTTP, MTLS, "A2"),
    row("A4-principal-exact-other", [ap("foo", "allow", f"{{rules: [{{from: [{{source: {{principals: [{PRINCIPAL_FOO}]}}}}]}}]}}")],
        "curl.bar", HTTP, DENIED, "A2", reason="needs principals [cluster.local/ns/foo/sa/curl]"),
    # GENERATOR (srcNamespaceGenerator: regex ".*/ns/<ns>/.*", '*' as '.*').
    row("A4-namespace-prefix", [ap("foo", "allow", '{rules: [{from: [{source: {namespaces: ["ba*"]}}]}]}')],
        "curl.bar", HTTP, MTLS, "A2"),
    row("A4-not-namespaces", [ap("foo", "allow", '{rules: [{from: [{source: {namespaces: ["*"], notNamespaces: [bar]}}]}]}')],
        "curl.bar", HTTP, DENIED, "A2", reason="notNamespaces [bar]"),
    # REF (serviceAccounts: "<serviceaccount> may also be used to use the same namespace as the AuthorizationPolicy").
    row("A4-service-account-policy-namespace", [ap("foo", "allow", "{rules: [{from: [{source: {serviceAccounts: [curl]}}]}]}")],
        "curl.foo", HTTP, MTLS, "A2"),
    row("A4-service-account-other-namespace", [ap("foo", "allow", "{rules: [{from: [{source: {serviceAccounts: [curl]}}]}]}")],
        "curl.bar", HTTP, DENIED, "A2"),
    row("A4-service-account-qualified", [ap("foo", "allow", "{rules: [{from: [{source: {serviceAccounts: [bar/curl]}}]}]}")],
        "curl.bar", HTTP, MTLS, "A2"),
    # GENERATOR (srcTrustDomainGenerator) and TRUSTDOMAIN ("cluster.local" is a pointer to the local trust domain).
    row("A4-trust-domain", [ap("foo", "allow", "{rules: [{from: [{source: {trustDomains: [cluster.local]}}]}]}")],
        "curl.bar", HTTP, MTLS, "A2"),
    # Operation.ports is "as specified in the connection": the container port, not the Service port (TASK-TCP
    # uses the container ports 9000/9001 of tcp-echo); GENERATOR destPortGenerator.
    row("A4-ports-are-container-ports", [ap("foo", "allow", '{rules: [{to: [{operation: {ports: ["8000"]}}]}]}')],
        "curl.bar", HTTP, DENIED, "A2", reason="needs ports [8000]"),
    row("A4-ports-container-port-matches", [ap("foo", "allow", '{rules: [{to: [{operation: {ports: ["8080"]}}]}]}')],
        "curl.bar", HTTP, MTLS, "A2"),
    # MATCHER HeaderMatcher on :method: exact and case-sensitive.
    row("A4-methods-case-sensitive", [ap("foo", "allow", "{rules: [{to: [{operation: {methods: [get]}}]}]}")],
        "curl.bar", HTTP, DENIED, "A2"),
    row("A4-not-methods", [ap("foo", "allow", "{rules: [{to: [{operation: {notMethods: [POST]}}]}]}")],
        "curl.bar", HTTP, DENIED, "A2", request=POST, reason="notMethods [POST]"),
    # MATCHER PathMatcher (Envoy url_path: the query string is removed before matching).
    row("A4-path-prefix", [ap("foo", "allow", '{rules: [{to: [{operation: {paths: ["/anything/*"]}}]}]}')],
        "curl.bar", HTTP, MTLS, "A2", request=Request(path="/anything/a/b")),
    row("A4-path-suffix", [ap("foo", "deny", '{action: DENY, rules: [{to: [{operation: {paths: ["*.secret"]}}]}]}')],
        "curl.bar", HTTP, DENIED, "A2", request=Request(path="/anything/k.secret")),
    row("A4-path-without-query", [ap("foo", "deny", '{action: DENY, rules: [{to: [{operation: {paths: ["*.secret"]}}]}]}')],
        "curl.bar", HTTP, MTLS, "A2", request=Request(path="/anything/a?f=k.secret")),
    # REF (hosts: "The match is case-insensitive"); the Host header carries the port (curl http://host:port/).
    row("A4-hosts-with-port", [ap("foo", "allow", '{rules: [{to: [{operation: {hosts: ["HTTPBIN.foo.svc.cluster.local:8000"]}}]}]}')],
        "curl.bar", HTTP, MTLS, "A2"),
    row("A4-hosts-without-port-trap", [ap("foo", "allow", '{rules: [{to: [{operation: {hosts: ["httpbin.foo.svc.cluster.local"]}}]}]}')],
        "curl.bar", HTTP, DENIED, "A2"),
    row("A4-hosts-prefix", [ap("foo", "allow", '{rules: [{to: [{operation: {hosts: ["httpbin.foo*"]}}]}]}')],
        "curl.bar", HTTP, MTLS, "A2"),
    # CONDITIONS (request.headers: "Must be used only with HTTP"); MATCHER HeaderMatcher ('*' = present).
    row("A4-header-present", [ap("foo", "allow", '{rules: [{when: [{key: "request.headers[x-token]", values: ["*"]}]}]}')],
        "curl.bar", HTTP, MTLS, "A2", request=Request(headers={"X-Token": ""})),
    row("A4-header-absent", [ap("foo", "allow", '{rules: [{when: [{key: "request.headers[x-token]", values: ["*"]}]}]}')],
        "curl.bar", HTTP, DENIED, "A2"),
    row("A4-header-not-values-absent-matches",
        [ap("foo", "deny", '{action: DENY, rules: [{when: [{key: "request.headers[x-token]", notValues: [letmein]}]}]}')],
        "curl.bar", HTTP, DENIED, "A2"),
    row("A4-when-destination-port", [ap("foo", "allow", '{rules: [{when: [{key: destination.port, values: ["9090"]}]}]}')],
        "curl.bar", TCP, MTLS, "A2"),
    row("A4-when-source-principal", [ap("foo", "deny", '{action: DENY, rules: [{when: [{key: source.principal, '
                                                       'values: ["cluster.local/ns/bar/sa/curl"]}]}]}')],
        "curl.bar", HTTP, DENIED, "A2"),

    # ---- A5: no identity without mTLS -----------------------------------------------------------------
    # CONCEPTS ("Mutual TLS must be enabled before using ... principals, namespaces").
    row("A5-plaintext-fails-allow-principals", [ap("foo", "allow", '{rules: [{from: [{source: {principals: ["*"]}}]}]}')],
        "curl.legacy", HTTP, DENIED, "A5 A2", reason="no principal (plaintext)"),
    row("A5-mtls-passes-allow-principals", [ap("foo", "allow", '{rules: [{from: [{source: {principals: ["*"]}}]}]}')],
        "curl.bar", HTTP, MTLS, "A2"),
    # istio/istio tests/integration/security TestAuthz_DenyPlaintext: DENY notPrincipals ["*"] denies plaintext.
    row("A5-plaintext-matches-not-principals",
        [ap("foo", "deny", '{action: DENY, rules: [{from: [{source: {notPrincipals: ["*"]}}]}]}')],
        "curl.legacy", HTTP, DENIED, "A5 A2", reason="ns[foo]-policy[deny]-rule[0]"),
    row("A5-forced-plaintext-from-sidecar",
        [dr_disable("bar"), ap("foo", "deny", '{action: DENY, rules: [{from: [{source: {notNamespaces: [foo]}}]}]}')],
        "curl.bar", HTTP, DENIED, "O3 A5 A2"),
    row("A5-namespaces-need-mtls", [ap("foo", "allow", '{rules: [{from: [{source: {namespaces: ["*"]}}]}]}')],
        "curl.legacy", HTTP, DENIED, "A5"),

    # ---- A6: HTTP-only fields on TCP ------------------------------------------------------------------
    # TASK-TCP ("the ALLOW policy ... becomes invalid ... and requests ... are rejected"): the ALLOW rule is dropped.
    row("A6-allow-methods-on-tcp-dropped", [ap("foo", "allow", "{rules: [{to: [{operation: {methods: [GET]}}]}]}")],
        "curl.bar", TCP, DENIED, "A6 A2", reason="rule[0] is dropped on a TCP port: methods [GET] (HTTP only)"),
    row("A6-allow-methods-on-http-kept", [ap("foo", "allow", "{rules: [{to: [{operation: {methods: [GET]}}]}]}")],
        "curl.bar", HTTP, MTLS, "A2"),
    # TASK-TCP (DENY with methods: "the HTTP-only fields ... are ignored ... the policy denies all TCP traffic").
    row("A6-deny-methods-on-tcp-widened",
        [ap("foo", "deny", "{action: DENY, rules: [{from: [{source: {namespaces: [bar]}}], "
                           "to: [{operation: {methods: [POST]}}]}]}")],
        "curl.bar", TCP, DENIED, "A6 A2"),
    row("A6-deny-methods-on-tcp-keeps-other-fields",
        [ap("foo", "deny", "{action: DENY, rules: [{from: [{source: {namespaces: [bar]}}], "
                           "to: [{operation: {methods: [POST]}}]}]}")],
        "curl.foo", TCP, MTLS, "A6"),
    row("A6-deny-not-paths-on-tcp-dropped",
        [ap("foo", "deny", '{action: DENY, rules: [{to: [{operation: {notPaths: ["/public"], ports: ["9090"]}}]}]}')],
        "curl.foo", TCP, DENIED, "A6"),
    # GENERATOR (requestPrincipalGenerator: "is HTTP only" on TCP): dropped like methods, so not a JWT question.
    row("A6-allow-request-principals-on-tcp", [ap("foo", "allow", '{rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]}')],
        "curl.foo", TCP, DENIED, "A6"),
    # MODEL (checkError): an invalid port makes an ALLOW rule disappear on any port.
    row("A6-allow-invalid-port-dropped", [ap("foo", "allow", '{rules: [{to: [{operation: {ports: ["http"]}}]}]}')],
        "curl.foo", HTTP, DENIED, "A6", reason="ports [http] (not a port number)"),

    # ---- A7: what is not predicted --------------------------------------------------------------------
    row("A7-custom-unknown", [ap("foo", "ext", "{action: CUSTOM, provider: {name: opa}, rules: [{}]}")],
        "curl.foo", HTTP, UNKNOWN, "A7", reason="extension provider 'opa'"),
    row("A7-request-principals-on-http-unknown",
        [ap("foo", "allow", '{rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]}')],
        "curl.foo", HTTP, UNKNOWN, "A7", reason="JWT"),
    row("A7-jwt-claims-unknown", [ap("foo", "allow", '{rules: [{when: [{key: "request.auth.claims[iss]", values: [me]}]}]}')],
        "curl.foo", HTTP, UNKNOWN, "A7", reason="JWT"),
    row("A7-ip-blocks-unknown", [ap("foo", "allow", '{rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]}]}')],
        "curl.foo", HTTP, UNKNOWN, "A7", reason="pod IP addresses"),
    row("A7-ip-blocks-everything", [ap("foo", "allow", '{rules: [{from: [{source: {ipBlocks: ["0.0.0.0/0"]}}]}]}')],
        "curl.foo", HTTP, MTLS, "A2"),
    row("A7-remote-ip-blocks-unknown", [ap("foo", "deny", '{action: DENY, rules: [{from: [{source: {remoteIpBlocks: ["1.2.3.4"]}}]}]}')],
        "curl.foo", HTTP, UNKNOWN, "A7"),
    # An unknown DENY does not matter when no ALLOW rule matches: denied either way.
    row("A7-unknown-deny-but-allow-denies",
        [ap("foo", "deny", '{action: DENY, rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8"]}}]}]}'),
         ap("foo", "allow", f"{{rules: [{{from: [{{source: {{principals: [{PRINCIPAL_FOO}]}}}}]}}]}}")],
        "curl.bar", HTTP, DENIED, "A2", reason="denied either way"),
    row("A7-ip-rule-irrelevant-when-other-field-fails",
        [ap("foo", "deny", '{action: DENY, rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8"], namespaces: [baz]}}]}]}')],
        "curl.bar", HTTP, MTLS, "A2"),
    row("A7-path-template-unknown", [ap("foo", "allow", '{rules: [{to: [{operation: {paths: ["/anything/{*}"]}}]}]}')],
        "curl.foo", HTTP, UNKNOWN, "A7", request=Request(path="/anything/x")),
    row("A7-path-normalization-unknown", [ap("foo", "allow", '{rules: [{to: [{operation: {paths: ["/anything/*"]}}]}]}')],
        "curl.foo", HTTP, UNKNOWN, "A7", request=Request(path="/anything/../admin")),
    row("A7-proxy-header-unknown", [ap("foo", "allow", '{rules: [{when: [{key: "request.headers[user-agent]", values: ["curl*"]}]}]}')],
        "curl.foo", HTTP, UNKNOWN, "A7"),
    row("A7-sni-unknown", [ap("foo", "allow", '{rules: [{when: [{key: connection.sni, values: ["*"]}]}]}')],
        "curl.foo", HTTP, UNKNOWN, "A7"),

    # ---- A8: how mTLS and authorization combine -------------------------------------------------------
    # A plaintext client refused by STRICT never reaches the RBAC filter.
    row("A8-strict-refuses-before-authz", [pa("foo", "STRICT"), ap("foo", "allow-all", "{rules: [{}]}")],
        "curl.legacy", HTTP, REFUSED, "X1 A8"),
    row("A8-unavailable-before-authz", [pa("foo", "STRICT"), dr_disable("bar"), ap("foo", "allow-all", "{rules: [{}]}")],
        "curl.bar", HTTP, UNAVAILABLE, "A8"),
    # TASK-HTTP ("RBAC: access denied", 403) and TASK-TCP (the connection is closed): the reason says which.
    row("A8-http-denial-is-403", [ap("foo", "deny-all", "{action: DENY, rules: [{}]}")], "curl.foo", HTTP, DENIED, "A2",
        reason="HTTP 403 'RBAC: access denied' (rbac_access_denied_matched_policy[ns[foo]-policy[deny-all]-rule[0]])"),
    row("A8-tcp-denial-closes", [ap("foo", "deny-all", "{action: DENY, rules: [{}]}")], "curl.foo", TCP, DENIED, "A2",
        reason="RBAC network filter closes it (tcp.rbac.denied"),
]


@pytest.mark.parametrize("case", CASES)
def test_authorization(case: Case, tmp_path: Path) -> None:
    """The oracle predicts the row's result and cites the row's rule(s) in its decision chain."""
    scenario = load(tmp_path, case.policies)
    prediction = predict(scenario, case.client, case.server, case.request)
    assert prediction.result is case.expected, explain(prediction)
    cited = {step.rule for step in prediction.steps}
    assert set(case.rules) <= cited, f"missing {set(case.rules) - cited}\n{explain(prediction)}"
    assert case.reason in prediction.reason, explain(prediction)


@pytest.mark.parametrize(("pattern", "value", "expected"), [
    ("abc", "abc", True), ("abc", "abcd", False), ("abc*", "abc", True), ("abc*", "abcd", True),
    ("*abc", "xabc", True), ("*abc", "abcx", False), ("*", "x", True), ("*", "", False), ("ABC", "abc", False),
])
def test_string_match(pattern: str, value: str, expected: bool) -> None:
    """REF (Rule): exact, prefix ``abc*``, suffix ``*abc`` and presence ``*`` (non-empty), case-sensitive."""
    assert authz.string_match(pattern, value) is expected


def test_hosts_ignore_case() -> None:
    """MATCHER HostMatcher builds its string matchers with ignore_case."""
    assert authz.string_match("*.FOO.svc.cluster.local:8000", "httpbin.foo.svc.cluster.local:8000", ignore_case=True)


def test_first_matching_deny_rule_by_envoy_name_decides(tmp_path: Path) -> None:
    """Envoy keeps an RBAC filter's policies in a sorted map, so the policy named in the access log (and in the
    reason) is the first match by name: ns[foo]-policy[a-...] before ns[foo]-policy[b-...] whatever the age."""
    scenario = load(tmp_path, [ap("foo", "b-deny", "{action: DENY, rules: [{}]}"),
                               ap("foo", "a-deny", "{action: DENY, rules: [{}]}")])
    assert "rbac_access_denied_matched_policy[ns[foo]-policy[a-deny]-rule[0]]" in predict(
        scenario, "curl.foo", HTTP).reason


def test_explain_names_scope_identity_and_decision(tmp_path: Path) -> None:
    """The decision chain says which policies bind (and how), what identity the request carries, and what decided."""
    scenario = load(tmp_path, [ap("istio-system", "mesh-audit", "{action: AUDIT, rules: [{}]}"),
                               ap("foo", "allow-foo", f"{{{SELECT}, rules: [{{from: [{{source: {{principals: "
                                                      f"[{PRINCIPAL_FOO}]}}}}]}}]}}")])
    steps = [str(s) for s in predict(scenario, "curl.bar", HTTP).steps]
    assert "[A1] AuthorizationPolicy istio-system/mesh-audit (AUDIT) applies to httpbin.foo (mesh-wide)" in steps
    assert "[A1] AuthorizationPolicy foo/allow-foo (ALLOW) applies to httpbin.foo (by selector)" in steps
    assert ("[A5] the request reaches httpbin.foo's sidecar on HTTP port 8080 with principal "
            "spiffe://cluster.local/ns/bar/sa/curl") in steps
    assert any(s.startswith("[A2] AuthorizationPolicy istio-system/mesh-audit (AUDIT) is only logged") for s in steps)
    assert any(s.startswith("[A2] no ALLOW policy matched: ns[foo]-policy[allow-foo]-rule[0] needs principals "
                            "[cluster.local/ns/foo/sa/curl]") for s in steps), steps


def test_cluster_local_stands_for_the_mesh_trust_domain(tmp_path: Path) -> None:
    """TRUSTDOMAIN (ReplaceTrustDomainAliases): a principal written with trust domain "cluster.local" is
    rewritten to the mesh's trust domain, so it keeps matching after a trust-domain change."""
    scenario = load(tmp_path, [ap("foo", "allow", '{rules: [{from: [{source: {principals: '
                                                  '["cluster.local/ns/bar/sa/curl"]}}]}]}')])
    renamed = dataclasses.replace(scenario, mesh=MeshSettings(trust_domain="example.org"))
    prediction = predict(renamed, "curl.bar", HTTP)
    assert prediction.result is MTLS, explain(prediction)
    assert "spiffe://example.org/ns/bar/sa/curl" in explain(prediction)


def test_compile_rules_on_tcp() -> None:
    """A6, MODEL checkError: on a TCP chain an ALLOW rule with an HTTP-only value is dropped whole, while a DENY
    rule keeps its other fields (and the HTTP-only field's other values) and loses only what Istio cannot use."""
    spec = {"rules": [{"from": [{"source": {"namespaces": ["bar"]}}],
                       "to": [{"operation": {"methods": ["POST"], "ports": ["9090", "x"]}}]}]}
    policy = Policy("security.istio.io/v1", "AuthorizationPolicy", "p", "foo", {"spec": spec}, 0, Mark("f", 1, 1))
    allow = authz.compile_rules(policy, "ALLOW", tcp=True)
    assert allow.rules == [] and allow.skipped == [
        "ns[foo]-policy[p]-rule[0] is dropped on a TCP port: methods [POST] (HTTP only), ports [x] (not a port number)"]
    deny = authz.compile_rules(policy, "DENY", tcp=True)
    assert deny.rules[0].text() == "from namespaces [bar], to ports [9090]"
    assert deny.notes[0].text == ("ns[foo]-policy[p]-rule[0]: on a TCP port Istio ignores methods [POST] (HTTP only), "
                                  "ports [x] (not a port number) in this DENY rule, so the rule matches more")
    http = authz.compile_rules(policy, "DENY", tcp=False)
    assert http.rules[0].text() == "from namespaces [bar], to methods [POST] and ports [9090]"
