"""Policy propagation on kind and existing: the readers of replayed istio-proxy config dumps (inbound filter chains
per mode, outbound cluster transport sockets), and the generation-marker wait (istiod's store at the API server's
resourceVersions, then every sidecar serving the bumped marker), reported by name when it times out."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from pytest_istio_mtls.backends.base import BackendError
from pytest_istio_mtls.backends.kube import propagation
from pytest_istio_mtls.backends.kube.apply import Applied
from pytest_istio_mtls.backends.kube.client import ExecResult
from pytest_istio_mtls.backends.kube.workloads import PodInfo

from ...kube_replay import ReplayKube, replay

STRICT, PERMISSIVE = replay("config_dump_listeners_strict.json"), replay("config_dump_listeners_permissive.json")
PORT_DISABLE, RBAC = replay("config_dump_listeners_port_disable.json"), replay("config_dump_listeners_rbac.json")
AUTO, DR = replay("config_dump_clusters_auto.json"), replay("config_dump_clusters_dr.json")

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


def pod(ref: str) -> PodInfo:
    name, namespace = ref.split(".")
    return PodInfo(ref, namespace, f"{name}-0", "10.0.0.1", True, True, True)


def listeners_with(generation: str) -> dict[str, Any]:
    """A ``resource=dynamic_listeners&name_regex=virtualOutbound`` dump stamped with ``generation``."""
    meta = {"filter_metadata": {propagation.MARKER_KEY: {"generation": generation}}} if generation else {}
    return {"configs": [{"name": "virtualOutbound", "active_state": {"listener": {
        "name": "virtualOutbound", "metadata": meta}}}]}


def istiod(kube: ReplayKube, held: list[tuple[str, str, str, str]]) -> None:
    kube.add({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "istiod-1", "namespace": "istio-system", "labels": {"app": "istiod", "istio.io/rev": "default"}},
        "status": {"phase": "Running"}})
    configz = json.dumps([{"kind": kind, "metadata": {"namespace": ns, "name": name, "resourceVersion": version}}
                          for kind, ns, name, version in held]).encode()

    def handler(namespace: str, name: str, container: str, command: list[str]) -> ExecResult:
        assert (namespace, name, container) == ("istio-system", "istiod-1", "discovery")
        assert command == ["pilot-discovery", "request", "GET", "/debug/configz"]
        return ExecResult(configz, "", 0)

    kube.exec_handler = handler


def generations(kube: ReplayKube, timeout: float = 5.0) -> propagation.Generations:
    return propagation.Generations(kube, "istio-system", "app=istiod,istio.io/rev=default", timeout,
                                   sleep=lambda seconds: None)


def test_the_marker_stamps_virtual_outbound_of_every_sidecar_in_its_namespace() -> None:
    obj = propagation.marker("foo", 3)
    assert obj["kind"] == "EnvoyFilter" and obj["metadata"]["namespace"] == "foo"
    assert "workloadSelector" not in obj["spec"]  # every sidecar of the namespace
    patch = obj["spec"]["configPatches"][0]
    assert patch["match"]["listener"]["name"] == "virtualOutbound"
    assert propagation.served_generation(listeners_with("3")) == "3"
    assert propagation.served_generation(listeners_with("")) == ""


def test_a_change_is_held_only_at_the_resource_version_the_api_server_gave() -> None:
    applied = [Applied("security.istio.io/v1", "PeerAuthentication", "foo", "default", "41")]
    removed = [Applied("security.istio.io/v1", "AuthorizationPolicy", "foo", "old", "7")]
    kube = ReplayKube()
    istiod(kube, [("PeerAuthentication", "foo", "default", "40"), ("AuthorizationPolicy", "foo", "old", "7")])
    with pytest.raises(BackendError) as info:
        generations(kube, timeout=0.0).wait_held(applied, removed)
    message = str(info.value)
    assert "istiod-1: PeerAuthentication foo/default at resourceVersion 41 (istiod has 40)" in message
    assert "AuthorizationPolicy foo/old still held after its deletion" in message
    istiod(kube, [("PeerAuthentication", "foo", "default", "41")])
    generations(kube).wait_held(applied, removed)  # returns: held exactly


def test_every_sidecar_must_serve_the_bumped_generation() -> None:
    kube = ReplayKube()
    served = {"httpbin-0": "", "curl-0": ""}
    reads: list[str] = []

    def handler(namespace: str, name: str, container: str, command: list[str]) -> ExecResult:
        assert container == "istio-proxy" and command[:3] == ["pilot-agent", "request", "GET"]
        if command[3] == propagation.MARKER_LISTENER:
            reads.append(name)
            if reads.count(name) > 2:  # istiod pushes after a while
                served[name] = "1"
            return ExecResult(json.dumps(listeners_with(served[name])).encode(), "", 0)
        return ExecResult(b"listener_manager.total_listeners_warming: 0\n", "", 0)

    kube.exec_handler = handler
    pods = [pod("httpbin.foo"), pod("curl.foo"), dataclasses.replace(pod("legacy.legacy"), sidecar=False)]
    marks = generations(kube)
    marks.confirm(["foo"], pods)
    assert marks.generation == 1 and served == {"httpbin-0": "1", "curl-0": "1"}
    assert ("apply", ("EnvoyFilter", "foo", propagation.MARKER)) in kube.calls
    assert "legacy-0" not in reads  # a pod without a sidecar has nothing to confirm
    marks.remove()
    assert ("delete", ("EnvoyFilter", "foo", propagation.MARKER)) in kube.calls


def test_a_sidecar_that_never_serves_it_is_named_with_its_rejections() -> None:
    kube = ReplayKube()

    def handler(namespace: str, name: str, container: str, command: list[str]) -> ExecResult:
        if command[3] == propagation.MARKER_LISTENER:
            return ExecResult(json.dumps(listeners_with("")).encode(), "", 0)
        return ExecResult(b"listener_manager.lds.update_rejected: 2\n", "", 0)

    kube.exec_handler = handler
    with pytest.raises(BackendError) as info:
        generations(kube, timeout=0.0).confirm(["foo"], [pod("httpbin.foo")])
    message = str(info.value)
    assert "httpbin.foo: serves generation none, want 1" in message
    assert "httpbin.foo rejected 2 configuration updates from istiod (a NACK" in message
