"""Policy propagation read from replays of istio-proxy config dumps: inbound filter chains per mode,
outbound cluster transport sockets, RBAC policy names; the wait reports stale proxies by name."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_istio_mtls.backends.base import BackendError
from pytest_istio_mtls.backends.kube import propagation
from pytest_istio_mtls.backends.kube.client import ExecResult
from pytest_istio_mtls.backends.kube.naming import Naming
from pytest_istio_mtls.backends.kube.workloads import PodInfo
from pytest_istio_mtls.scenario.loader import load_scenario

from ...kube_replay import ReplayKube, replay

STRICT, PERMISSIVE = replay("config_dump_listeners_strict.json"), replay("config_dump_listeners_permissive.json")
PORT_DISABLE, RBAC = replay("config_dump_listeners_port_disable.json"), replay("config_dump_listeners_rbac.json")
AUTO, DR = replay("config_dump_clusters_auto.json"), replay("config_dump_clusters_dr.json")

SCENARIO = """\
name: propagation
topology:
  namespaces:
    foo: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - name: httpbin
      namespace: foo
      ports:
        - {name: http, port: 8000, targetPort: 8080}
        - {name: tcp-echo, port: 9000, protocol: tcp}
    - {name: curl, namespace: foo}
    - {name: legacy, namespace: legacy, ports: [{name: http, port: 8080}]}
policies: |
  {policies}
expect:
  - {from: curl.foo, to: "httpbin.foo:8000", result: allowed}
"""


def scenario(tmp_path: Path, policies: str) -> Any:
    path = tmp_path / "s.yaml"
    text = SCENARIO.replace("{policies}", policies.replace("\n", "\n  "))
    if not policies:
        text = text.replace("policies: |\n  \n", "")
    path.write_text(text)
    return load_scenario(path)


@pytest.mark.parametrize(("dump", "port", "transports", "mode"), [
    (STRICT, 8080, {"tls"}, "STRICT"),
    (PERMISSIVE, 8080, {"tls", "raw_buffer"}, "PERMISSIVE"),
    (PORT_DISABLE, 8080, {"raw_buffer"}, "DISABLE"),
    (PORT_DISABLE, 9000, {"tls"}, "STRICT"),
])
def test_inbound_chains_show_the_mode_replay(dump: Any, port: int, transports: set[str], mode: str) -> None:
    seen = propagation.inbound_transports(propagation.inbound_chains(dump, port))
    assert seen == transports and propagation.mode_of(seen) == mode


def test_only_the_inbound_listener_counts_replay() -> None:
    """The outbound 0.0.0.0_8000 listener also has a chain for destination port 8080: ignored."""
    chains = propagation.inbound_chains(STRICT, 8080)
    assert all(c["name"] == "0.0.0.0_8080" for c in chains) and len(chains) == 1
    assert propagation.inbound_chains(STRICT, 1234) == []


def test_cluster_transport_sockets_replay() -> None:
    auto, fixed = propagation.clusters(AUTO), propagation.clusters(DR)
    assert propagation.cluster_tls(auto["outbound|8000||httpbin.foo.svc.cluster.local"]) == "auto"
    assert propagation.cluster_tls(fixed["outbound|8000||httpbin.foo.svc.cluster.local"]) == "tls"
    assert propagation.cluster_tls(fixed["outbound|8080||legacy.legacy.svc.cluster.local"]) == "none"
    assert propagation.cluster_fresh(auto["outbound|8000||httpbin.foo.svc.cluster.local"])
    assert not propagation.cluster_fresh(fixed["outbound|9000||httpbin.foo.svc.cluster.local"])


def test_full_config_dump_shape_is_read_too_replay() -> None:
    full = {"configs": [{"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {}},
                        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                         "dynamic_active_clusters": AUTO["configs"]},
                        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
                         "dynamic_listeners": STRICT["configs"]}]}
    assert "outbound|8000||httpbin.foo.svc.cluster.local" in propagation.clusters(full)
    assert propagation.inbound_transports(propagation.inbound_chains(full, 8080)) == {"tls"}


def evaluate(expectations: list[propagation.Expectation], dumps: dict[tuple[str, str], Any]) -> dict[str, tuple[bool, str]]:
    return {f"{e.workload.ref} {e.what}": e.check(dumps[(e.workload.ref, e.dump)]) for e in expectations}


def test_expectations_for_no_policy_match_the_default_dumps_replay(tmp_path: Path) -> None:
    s = scenario(tmp_path, "")
    found = propagation.expectations(s, Naming(None))
    whats = {f"{e.workload.ref} {e.what}" for e in found}
    assert "httpbin.foo inbound port 8080" in whats and "httpbin.foo inbound port 9000" in whats
    assert "curl.foo cluster outbound|8000||httpbin.foo.svc.cluster.local" in whats
    assert not any(e.workload.ref == "legacy.legacy" for e in found)  # no sidecar, nothing to check
    dumps = {(ref, kind): dump for ref in ("httpbin.foo", "curl.foo")
             for kind, dump in ((propagation.LISTENERS, PERMISSIVE), (propagation.CLUSTERS, AUTO))}
    results = evaluate(found, dumps)
    assert all(ok for ok, _ in results.values()), results


def test_strict_namespace_is_stale_until_the_chains_change_replay(tmp_path: Path) -> None:
    s = scenario(tmp_path, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                           "metadata: {name: default, namespace: foo}\nspec: {mtls: {mode: STRICT}}")
    inbound = next(e for e in propagation.expectations(s, Naming(None)) if "inbound port 8080" in e.what)
    ok, shown = inbound.check(PERMISSIVE)
    assert not ok and shown == "raw_buffer+tls (PERMISSIVE)"
    assert "tls (STRICT: PeerAuthentication foo/default (namespace-wide))" in inbound.describe(shown)
    assert inbound.check(STRICT)[0]


def test_port_level_disable_replay(tmp_path: Path) -> None:
    s = scenario(tmp_path, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                           "metadata: {name: httpbin, namespace: foo}\nspec:\n  selector: {matchLabels: {app: httpbin}}\n"
                           "  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: DISABLE}")
    found = {e.what: e for e in propagation.expectations(s, Naming(None)) if e.workload.ref == "httpbin.foo"}
    assert found["inbound port 8080"].check(PORT_DISABLE)[0] and found["inbound port 9000"].check(PORT_DISABLE)[0]
    assert not found["inbound port 8080"].check(STRICT)[0]


def test_destination_rule_means_a_fixed_tls_socket_replay(tmp_path: Path) -> None:
    s = scenario(tmp_path, "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
                           "metadata: {name: httpbin, namespace: foo}\nspec:\n  host: httpbin\n"
                           "  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}\n---\n"
                           "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
                           "metadata: {name: legacy, namespace: foo}\nspec:\n  host: legacy.legacy.svc.cluster.local\n"
                           "  trafficPolicy: {tls: {mode: DISABLE}}")
    found = {e.what: e for e in propagation.expectations(s, Naming(None)) if e.workload.ref == "curl.foo"}
    assert found["cluster outbound|8000||httpbin.foo.svc.cluster.local"].check(DR)[0]
    assert found["cluster outbound|8080||legacy.legacy.svc.cluster.local"].check(DR)[0]
    ok, shown = found["cluster outbound|8000||httpbin.foo.svc.cluster.local"].check(AUTO)
    assert not ok and shown == "auto"
    # the fresh-connection setting is required on http clusters, not on tcp ones (9000 has none)
    assert found["cluster outbound|9000||httpbin.foo.svc.cluster.local"].check(DR)[0]


def test_missing_fresh_connection_setting_is_stale_replay(tmp_path: Path) -> None:
    s = scenario(tmp_path, "")
    http = next(e for e in propagation.expectations(s, Naming(None))
            if e.what == "cluster outbound|8000||httpbin.foo.svc.cluster.local")
    stripped = json.loads(json.dumps(AUTO))
    for entry in stripped["configs"]:
        entry["cluster"].pop("typed_extension_protocol_options", None)
    ok, shown = http.check(stripped)
    assert not ok and "without the fresh-connection setting" in shown


def test_authorization_policy_names_must_appear_and_disappear_replay(tmp_path: Path) -> None:
    policy = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-curl, namespace: foo}\n"
              "spec:\n  selector: {matchLabels: {app: httpbin}}\n  rules:\n  - from:\n    - source:\n"
              "        principals: [cluster.local/ns/foo/sa/curl]")
    s = scenario(tmp_path, policy)
    rbac = next(e for e in propagation.expectations(s, Naming(None)) if e.what == "RBAC on port 8080")
    assert rbac.check(RBAC)[0]
    ok, shown = rbac.check(PERMISSIVE)
    assert not ok and "ns[foo]-policy[allow-curl]-rule[ missing" in shown
    cleared = dataclasses.replace(s, policies=())
    gone = next(e for e in propagation.expectations(cleared, Naming(None), removed=s.policies) if e.what == "RBAC on port 8080")
    assert gone.check(PERMISSIVE)[0]
    ok, shown = gone.check(RBAC)
    assert not ok and "still present" in shown


def test_cluster_names_and_rbac_names_use_the_cluster_namespaces(tmp_path: Path) -> None:
    policy = ("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: foo}\n"
              "spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {paths: [/admin]}")
    s = scenario(tmp_path, policy)
    naming = Naming("abc123")
    whats = {e.what for e in propagation.expectations(s, naming)}
    assert "cluster outbound|8000||httpbin.foo-abc123.svc.cluster.local" in whats
    rbac = next(e for e in propagation.expectations(s, naming) if e.what == "RBAC on port 8080")
    assert "ns[foo-abc123]-policy[deny]-rule[" in rbac.because


def pod(ref: str) -> PodInfo:
    name, namespace = ref.split(".")
    return PodInfo(ref, namespace, f"{name}-0", "10.0.0.1", True, True, True)


def test_wait_in_force_polls_until_the_proxies_catch_up_replay(tmp_path: Path) -> None:
    s = scenario(tmp_path, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                           "metadata: {name: default, namespace: foo}\nspec: {mtls: {mode: STRICT}}")
    kube = ReplayKube()
    reads: list[str] = []

    def handler(namespace: str, name: str, container: str, command: list[str]) -> ExecResult:
        assert container == "istio-proxy" and command[:3] == ["pilot-agent", "request", "GET"]
        reads.append(name)
        if command[3] == propagation.CLUSTERS:
            return ExecResult(json.dumps(AUTO).encode(), "", 0)
        dump = STRICT if reads.count(name) > 2 else PERMISSIVE  # istiod pushes after a while
        return ExecResult(json.dumps(dump).encode(), "", 0)

    kube.exec_handler = handler
    pods = {ref: pod(ref) for ref in ("httpbin.foo", "curl.foo")}
    messages: list[str] = []
    propagation.wait_in_force(kube, pods, propagation.expectations(s, Naming(None)), timeout=5,
                              progress=messages.append, interval=0.01)
    assert messages and "checks passed" in messages[0]


def test_wait_in_force_reports_each_stale_proxy_replay(tmp_path: Path) -> None:
    s = scenario(tmp_path, "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
                           "metadata: {name: default, namespace: foo}\nspec: {mtls: {mode: STRICT}}")
    kube = ReplayKube()

    def handler(namespace: str, name: str, container: str, command: list[str]) -> ExecResult:
        if name == "curl-0":
            return ExecResult(error='exec in foo/curl-0 (istio-proxy): container not found ("istio-proxy")')
        return ExecResult(json.dumps(PERMISSIVE).encode(), "", 0)

    kube.exec_handler = handler
    pods = {ref: pod(ref) for ref in ("httpbin.foo", "curl.foo")}
    with pytest.raises(BackendError) as info:
        propagation.wait_in_force(kube, pods, propagation.expectations(s, Naming(None)), timeout=0.2,
                                  progress=lambda m: None, interval=0.05)
    message = str(info.value)
    assert message.startswith("policies not in force after 0s (--istio-timeout); stale proxies:")
    assert "httpbin.foo inbound port 8080: shows raw_buffer+tls (PERMISSIVE), expected tls (STRICT" in message
    assert "curl.foo cluster outbound|8000||httpbin.foo.svc.cluster.local: shows config unavailable" in message
