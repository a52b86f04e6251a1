"""Per-run namespaces on a shared cluster: every namespaced reference inside a policy follows the
mapping, mesh-wide policies are renamed (and refused unless allowed), evidence maps back."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_istio_mtls.backends.base import BackendError
from pytest_istio_mtls.backends.kube.naming import Naming, mesh_wide, refuse_mesh_wide

KNOWN = ["foo", "bar", "legacy"]


def rewrite(manifest: dict[str, Any], run_id: str | None = "r1x2y3") -> dict[str, Any]:
    return Naming(run_id).rewrite(manifest, KNOWN)


def test_kind_keeps_names_and_adds_the_managed_label() -> None:
    policy = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
              "metadata": {"name": "default", "namespace": "foo", "labels": {"team": "a"}},
              "spec": {"mtls": {"mode": "STRICT"}, "portLevelMtls": {8080: {"mode": "DISABLE"}}}}
    out = rewrite(policy, None)
    assert out["metadata"] == {"name": "default", "namespace": "foo",
                               "labels": {"team": "a", "app.kubernetes.io/managed-by": "pytest-istio-mtls"}}
    assert out["spec"]["portLevelMtls"] == {"8080": {"mode": "DISABLE"}}  # as the API server receives it
    assert policy["metadata"]["labels"] == {"team": "a"}  # the scenario's object is untouched


@pytest.mark.parametrize(("host", "mapped"), [
    ("httpbin", "httpbin"),  # short names resolve in the (mapped) policy namespace
    ("httpbin.foo", "httpbin.foo-r1x2y3"),
    ("httpbin.foo.svc", "httpbin.foo-r1x2y3.svc"),
    ("httpbin.foo.svc.cluster.local", "httpbin.foo-r1x2y3.svc.cluster.local"),
    ("*.bar.svc.cluster.local", "*.bar-r1x2y3.svc.cluster.local"),
    ("*", "*"),
    ("httpbin.other.svc.cluster.local", "httpbin.other.svc.cluster.local"),  # not ours: untouched
    ("www.example.com", "www.example.com"),
])
def test_destination_rule_hosts(host: str, mapped: str) -> None:
    out = rewrite({"kind": "DestinationRule", "metadata": {"name": "dr", "namespace": "foo"},
                   "spec": {"host": host, "exportTo": [".", "bar", "*"]}})
    assert out["spec"]["host"] == mapped
    assert out["spec"]["exportTo"] == [".", "bar-r1x2y3", "*"]
    assert out["metadata"]["namespace"] == "foo-r1x2y3"


def test_authorization_policy_sources_principals_hosts_and_conditions() -> None:
    policy = {"kind": "AuthorizationPolicy", "metadata": {"name": "ap", "namespace": "foo"},
              "spec": {"selector": {"matchLabels": {"app": "httpbin"}}, "action": "ALLOW", "rules": [{
                  "from": [{"source": {"principals": ["cluster.local/ns/bar/sa/curl", "*/ns/legacy/sa/*",
                                                      "cluster.local/ns/kube-system/sa/x"],
                                       "namespaces": ["foo", "istio-system"], "notNamespaces": ["legacy"]}}],
                  "to": [{"operation": {"hosts": ["httpbin.foo.svc.cluster.local:8000"], "paths": ["/foo"]}}],
                  "when": [{"key": "source.namespace", "values": ["bar"]},
                           {"key": "source.principal", "notValues": ["cluster.local/ns/foo/sa/admin"]},
                           {"key": "request.headers[x-ns]", "values": ["foo"]}]}]}}
    rule = rewrite(policy)["spec"]["rules"][0]
    source = rule["from"][0]["source"]
    assert source["principals"] == ["cluster.local/ns/bar-r1x2y3/sa/curl", "*/ns/legacy-r1x2y3/sa/*",
                                    "cluster.local/ns/kube-system/sa/x"]
    assert source["namespaces"] == ["foo-r1x2y3", "istio-system"] and source["notNamespaces"] == ["legacy-r1x2y3"]
    assert rule["to"][0]["operation"] == {"hosts": ["httpbin.foo-r1x2y3.svc.cluster.local:8000"], "paths": ["/foo"]}
    assert rule["when"][0]["values"] == ["bar-r1x2y3"]
    assert rule["when"][1]["notValues"] == ["cluster.local/ns/foo-r1x2y3/sa/admin"]
    assert rule["when"][2]["values"] == ["foo"]  # a header value is not a namespace
    assert rewrite(policy)["spec"]["selector"] == {"matchLabels": {"app": "httpbin"}}


def test_sidecar_egress_hosts() -> None:
    out = rewrite({"kind": "Sidecar", "metadata": {"name": "default", "namespace": "foo"},
                   "spec": {"egress": [{"hosts": ["./*", "bar/*", "istio-system/*", "legacy/httpbin.legacy.svc"]}]}})
    assert out["spec"]["egress"][0]["hosts"] == ["./*", "bar-r1x2y3/*", "istio-system/*",
                                                 "legacy-r1x2y3/httpbin.legacy-r1x2y3.svc"]


def test_mesh_wide_policies_keep_the_root_namespace_but_get_the_run_suffix() -> None:
    out = rewrite({"kind": "PeerAuthentication", "metadata": {"name": "default", "namespace": "istio-system"},
                   "spec": {"mtls": {"mode": "STRICT"}}})
    assert out["metadata"]["namespace"] == "istio-system" and out["metadata"]["name"] == "default-r1x2y3"
    assert out["metadata"]["labels"]["istio-mtls.pytest.io/run"] == "r1x2y3"


def test_long_namespaces_stay_valid_labels() -> None:
    naming = Naming("abcdef")
    mapped = naming.ns("n" * 63)
    assert len(mapped) <= 63 and mapped.endswith("-abcdef")


class Policy:
    def __init__(self, kind: str, namespace: str, name: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name


def test_mesh_wide_refusal() -> None:
    policies = [Policy("PeerAuthentication", "foo", "a"), Policy("PeerAuthentication", "istio-system", "default"),
                Policy("AuthorizationPolicy", "istio-system", "deny-all")]
    assert mesh_wide(policies, "istio-system") == ["PeerAuthentication istio-system/default",
                                                   "AuthorizationPolicy istio-system/deny-all"]
    with pytest.raises(BackendError, match=r"scenario s applies mesh-wide policies.*--istio-allow-mesh-wide"):
        refuse_mesh_wide(policies, "istio-system", "s")
    refuse_mesh_wide(policies[:1], "istio-system", "s")


def test_evidence_maps_back_to_scenario_names() -> None:
    naming = Naming("r1x2y3", cluster_trust_domain="corp.example")
    for namespace in KNOWN:
        naming.ns(namespace)
    assert naming.unmap("cluster.outbound|8000||httpbin.foo-r1x2y3.svc.cluster.local.ssl.handshake") == \
        "cluster.outbound|8000||httpbin.foo.svc.cluster.local.ssl.handshake"
    assert naming.unmap("spiffe://corp.example/ns/bar-r1x2y3/sa/curl") == "spiffe://cluster.local/ns/bar/sa/curl"
    assert naming.unmap("foo-r1x2y3x") == "foo-r1x2y3x"  # only whole names
    assert Naming(None).unmap("httpbin.foo-r1x2y3") == "httpbin.foo-r1x2y3"


def test_authorization_policy_service_accounts_follow_their_namespace() -> None:
    """serviceAccounts are <namespace>/<name> (no wildcards); a bare name is in the policy's own namespace, which
    the mapping renames already. source.serviceAccount in `when` follows the same way; principals and namespaces
    in `when` too."""
    policy = {"kind": "AuthorizationPolicy", "metadata": {"name": "ap", "namespace": "foo"},
              "spec": {"action": "DENY", "rules": [{
                  "from": [{"source": {"serviceAccounts": ["bar/curl", "curl", "kube-system/x"],
                                       "notServiceAccounts": ["legacy/web"]}}],
                  "when": [{"key": "source.serviceAccount", "values": ["bar/curl"], "notValues": ["foo/admin"]},
                           {"key": "source.namespace", "notValues": ["legacy"]},
                           {"key": "source.principal", "values": ["cluster.local/ns/bar/sa/curl"]}]}]}}
    rule = rewrite(policy)["spec"]["rules"][0]
    assert rule["from"][0]["source"] == {"serviceAccounts": ["bar-r1x2y3/curl", "curl", "kube-system/x"],
                                         "notServiceAccounts": ["legacy-r1x2y3/web"]}
    assert rule["when"] == [
        {"key": "source.serviceAccount", "values": ["bar-r1x2y3/curl"], "notValues": ["foo-r1x2y3/admin"]},
        {"key": "source.namespace", "notValues": ["legacy-r1x2y3"]},
        {"key": "source.principal", "values": ["cluster.local/ns/bar-r1x2y3/sa/curl"]}]
    assert rewrite(policy, None)["spec"] == policy["spec"]  # kind: names as written
