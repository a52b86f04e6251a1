"""Validation warnings for AuthorizationPolicies that Istio accepts but that probably do not do what
their author meant. Each test loads a scenario like a user's and pins the whole warning: position,
message and fix. Which workloads a policy binds and what their ports accept come from the oracle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_istio_mtls.scenario.loader import load_scenario

from ...paths import REPO

TOPOLOGY = """\
topology:
  namespaces:
    foo: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - {name: httpbin, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - name: echo
      namespace: foo
      ports: [{name: tcp-a, port: 9000, protocol: tcp}, {name: tcp-b, port: 9001, targetPort: 9101, protocol: tcp}]
    - {name: web, namespace: legacy, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: curl, namespace: foo}
    - {name: curl, namespace: legacy}
"""
STRICT = """\
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: foo}
  spec: {mtls: {mode: STRICT}}
  ---
"""
Warnings = Callable[..., list[str]]
EXPECT = "expect:\n  - {from: curl.foo, to: httpbin.foo, result: allowed}\n"


@pytest.fixture
def warnings_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Warnings:
    """Load a scenario whose `policies:` block is ``policies`` (indented two spaces); return its warnings."""
    monkeypatch.chdir(tmp_path)

    def load(policies: str, strict: bool = True) -> list[str]:
        (tmp_path / "s.yaml").write_text(TOPOLOGY + "policies: |\n" + (STRICT if strict else "") + policies + EXPECT)
        return [str(w) for w in load_scenario(tmp_path / "s.yaml").warnings]

    return load


def ap(name: str, spec: str, namespace: str = "foo") -> str:
    """An AuthorizationPolicy in the policies block: its spec lines follow, indented four spaces."""
    return (f"  apiVersion: security.istio.io/v1\n  kind: AuthorizationPolicy\n"
            f"  metadata: {{name: {name}, namespace: {namespace}}}\n  spec:\n{spec}")


def test_http_only_fields_in_an_allow_rule_on_a_tcp_only_workload(warnings_of: Warnings) -> None:
    """A6: Istio drops an ALLOW rule with an HTTP-only field on TCP: echo then allows nothing."""
    assert warnings_of(ap("echo-reads", """\
    selector: {matchLabels: {app: echo}}
    rules:
    - to:
      - operation: {methods: [GET], paths: [/x]}
""")) == [
        "s.yaml:26:21: warning: methods, paths in rule 0 of AuthorizationPolicy foo/echo-reads are HTTP-only, but "
        "echo.foo has only TCP ports: Istio drops this ALLOW rule there, so it allows nothing\n"
        "    fix: match TCP connections by ports, principals, namespaces or ipBlocks; or, if the port speaks HTTP, "
        "declare it with protocol: http"]


def test_http_only_fields_in_a_deny_rule_on_a_tcp_only_workload(warnings_of: Warnings) -> None:
    """A6: a DENY rule loses its HTTP-only fields on TCP and denies what is left (here: every connection)."""
    assert warnings_of(ap("echo-no-post", """\
    selector: {matchLabels: {app: echo}}
    action: DENY
    rules:
    - to:
      - operation: {methods: [POST]}
      when:
      - {key: "request.headers[x-token]", notValues: [letmein]}
""")) == [
        "s.yaml:27:21: warning: methods, request.headers[x-token] in rule 0 of AuthorizationPolicy foo/echo-no-post "
        "are HTTP-only, but echo.foo has only TCP ports: Istio ignores them there, so this DENY rule denies every "
        "connection\n"
        "    fix: drop the HTTP-only fields, or narrow the rule with fields TCP connections have (ports, principals, "
        "namespaces, ipBlocks)"]


def test_identity_sources_in_an_allow_rule_on_a_permissive_workload(warnings_of: Warnings) -> None:
    """A5: a plaintext request has no principal, so the ALLOW rule never lets it in: it fails closed, as its
    author meant, so there is nothing to warn about."""
    assert warnings_of(ap("httpbin-from-curl", """\
    selector: {matchLabels: {app: httpbin}}
    rules:
    - from:
      - source: {principals: [cluster.local/ns/foo/sa/curl]}
"""), strict=False) == []


def test_identity_sources_in_a_deny_rule_on_a_port_level_disable_port(warnings_of: Warnings) -> None:
    """A5: a DENY on namespaces never stops plaintext; the port the mode opens is named with its policy."""
    assert warnings_of("""\
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: echo, namespace: foo}
  spec: {selector: {matchLabels: {app: echo}}, portLevelMtls: {9101: {mode: DISABLE}}}
  ---
""" + ap("echo-not-legacy", """\
    action: DENY
    rules:
    - from:
      - source: {namespaces: [legacy]}
""")) == [
        "s.yaml:31:18: warning: rule 0 of AuthorizationPolicy foo/echo-not-legacy matches namespaces, which need "
        "mTLS, but echo.foo:9001 accepts plaintext (DISABLE, by PeerAuthentication foo/echo portLevelMtls[9101]): a "
        "plaintext request carries no identity, so this DENY rule never matches one: a client that sends plaintext "
        "gets past it\n"
        "    fix: make echo.foo STRICT (PeerAuthentication mtls.mode: STRICT), or also deny requests without an "
        "identity: from: [{source: {notPrincipals: ['*']}}]"]


def test_not_principals_and_strict_workloads_give_no_identity_warning(warnings_of: Warnings) -> None:
    """notPrincipals: ['*'] is how plaintext is denied on purpose; on STRICT, principals are always there."""
    assert warnings_of(ap("require-identity", """\
    action: DENY
    rules:
    - from:
      - source: {notPrincipals: ["*"]}
"""), strict=False) == []
    assert warnings_of(ap("httpbin-from-curl", """\
    rules:
    - from:
      - source: {principals: [cluster.local/ns/foo/sa/curl]}
""")) == []


def test_ports_naming_the_service_port(warnings_of: Warnings) -> None:
    """A4: ports match the container port; 9001 is echo's Service port (container port 9101)."""
    assert warnings_of(ap("echo-ports", """\
    selector: {matchLabels: {app: echo}}
    rules:
    - to:
      - operation: {ports: ["9000", "9001"]}
""")) == [
        "s.yaml:26:37: warning: port 9001 in ports of AuthorizationPolicy foo/echo-ports is the Service port of "
        "echo.foo; authorization matches the container port (9101), so this value never matches\n"
        '    fix: use "9101"']


def test_hosts_without_a_port(warnings_of: Warnings) -> None:
    """A4: the Host header carries the port (authz.request_attributes), so a host without one never matches."""
    assert warnings_of(ap("httpbin-host", """\
    selector: {matchLabels: {app: httpbin}}
    rules:
    - to:
      - operation: {hosts: [httpbin.foo.svc.cluster.local, "httpbin.foo.svc.cluster.local:*"]}
""")) == [
        "s.yaml:26:29: warning: hosts value 'httpbin.foo.svc.cluster.local' in AuthorizationPolicy foo/httpbin-host "
        "has no port: Istio compares hosts with the Host header, which carries the port "
        "('httpbin.foo.svc.cluster.local:8000' for httpbin.foo:8000), so it never matches requests to ports other "
        "than 80\n"
        "    fix: write 'httpbin.foo.svc.cluster.local:8000', or 'httpbin.foo.svc.cluster.local:*' for any port"]


def test_target_refs_on_sidecar_workloads(warnings_of: Warnings) -> None:
    """A1: targetRefs attach to gateways and waypoints; the sidecars ignore the whole policy."""
    assert warnings_of(ap("via-service", """\
    targetRefs:
    - {kind: Service, group: "", name: httpbin}
    action: DENY
    rules: [{}]
""")) == [
        "s.yaml:23:5: warning: AuthorizationPolicy foo/via-service uses targetRefs, which attaches a policy to "
        "gateways and waypoints: the sidecars of httpbin.foo, echo.foo and curl.foo ignore it\n"
        "    fix: to bind sidecars, use a selector instead, e.g. selector: {matchLabels: {app: httpbin}}"]


def test_selector_that_matches_no_workload(warnings_of: Warnings) -> None:
    """A1: a selector in the root namespace is looked up in every namespace, and still matches nothing here."""
    assert warnings_of(ap("typo", """\
    selector: {matchLabels: {app: httbin}}
    rules: [{}]
""", namespace="istio-system")) == [
        "s.yaml:23:15: warning: selector app=httbin of AuthorizationPolicy istio-system/typo matches no workload "
        "of the mesh: the policy has no effect\n"
        "    fix: workloads there: httpbin.foo, echo.foo, web.legacy, curl.foo, curl.legacy"]


def test_policy_that_binds_only_workloads_without_a_sidecar(warnings_of: Warnings) -> None:
    """A1: AuthorizationPolicy is enforced by the server's sidecar; web in legacy has none."""
    assert warnings_of(ap("web-allow-nothing", "    {}\n", namespace="legacy")) == [
        "s.yaml:21:50: warning: AuthorizationPolicy legacy/web-allow-nothing applies only to web.legacy, which has no "
        "sidecar: nothing enforces it\n"
        "    fix: AuthorizationPolicy is enforced by the server's sidecar; inject one, or drop the policy"]


def test_unknown_when_key(warnings_of: Warnings) -> None:
    """A3: istiod skips a rule with an unknown key (Istio's webhook rejects the policy outright)."""
    assert warnings_of(ap("header-typo", """\
    selector: {matchLabels: {app: httpbin}}
    action: DENY
    rules:
    - when:
      - {key: "request.header[x-token]", values: [bad]}
""")) == [
        "s.yaml:27:15: warning: unknown when key 'request.header[x-token]' in rule 0 of AuthorizationPolicy "
        "foo/header-typo: Istio's validating webhook rejects the policy (unknown attribute), and where it gets in "
        "anyway istiod skips this rule; did you mean 'request.headers[...]'?\n"
        "    fix: use one of destination.ip, destination.port, connection.sni, source.ip, remote.ip, "
        "source.namespace, source.serviceAccount, source.trustDomain, source.principal, request.auth.principal, "
        "request.auth.audiences, request.auth.presenter, request.headers[...], request.auth.claims[...], "
        "experimental.envoy.filters.*"]


def test_custom_without_a_provider(warnings_of: Warnings) -> None:
    """CUSTOM needs meshConfig's extension provider; without one istiod generates DENY rules instead."""
    assert warnings_of(ap("ext", """\
    selector: {matchLabels: {app: httpbin}}
    action: CUSTOM
    rules: [{}]
""")) == [
        "s.yaml:24:13: warning: AuthorizationPolicy foo/ext has action CUSTOM but no provider.name: Istio's "
        "validating webhook rejects it, and where it gets in anyway istiod finds no such extension provider and "
        "turns its rules into DENY rules\n"
        "    fix: name an extension provider of meshConfig.extensionProviders, e.g. provider: {name: ext-authz}"]


def test_the_builtin_authz_scenarios_warn_only_about_their_traps() -> None:
    """The library shows the traps it is about (Service port, plaintext without identity) and nothing else, and
    says so (expectWarnings): a plain run of the library reports no warning."""
    library = REPO / "pytest_istio_mtls" / "scenarios"
    loaded = {path.stem: load_scenario(path) for path in sorted(library.glob("*-authz-*.yaml"))}
    assert {name: s.warnings for name, s in loaded.items() if s.warnings} == {}
    found = {name: [w.message.split(":")[0] for w in s.expected_warnings] for name, s in loaded.items()}
    assert found == {
        "14-authz-allow-only-frontend": [],
        "15-authz-deny-get-without-token": [],
        "16-authz-allow-nothing-then-allow": [],
        "17-authz-namespace-sources": [
            "rule 0 of AuthorizationPolicy istio-system/bar-no-admin matches namespaces, which need mTLS, but "
            "httpbin.foo and httpbin.bar accept plaintext (PERMISSIVE, no PeerAuthentication applies)"],
        "18-authz-deny-before-allow-paths": [],
        "19-authz-tcp-port-allow-list": [
            "port 9001 in ports of AuthorizationPolicy foo/echo-ports is the Service port of echo.foo; authorization "
            "matches the container port (9101), so this value never matches"],
        "20-authz-http-fields-on-tcp": [
            "rule 0 of AuthorizationPolicy foo/echo-b-no-post-from-bar matches namespaces, which need mTLS, but "
            "echo-b.foo accepts plaintext (PERMISSIVE, no PeerAuthentication applies)"],
        "21-authz-plaintext-vs-not-principals": [],
    }
