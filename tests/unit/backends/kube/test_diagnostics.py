"""Diagnostics for failed probes, built from replays: the server's inbound chains for the port, the
client's cluster, the policies as the API server holds them, proxy log tails and warning events."""

from __future__ import annotations

import json

from pytest_istio_mtls.backends.kube.apply import Applied
from pytest_istio_mtls.backends.kube.client import ExecResult
from pytest_istio_mtls.backends.kube.diagnostics import cluster_summary, inbound_summary, sections
from pytest_istio_mtls.backends.kube.naming import Naming
from pytest_istio_mtls.backends.kube.propagation import CLUSTERS
from pytest_istio_mtls.backends.kube.workloads import PodInfo
from pytest_istio_mtls.judge.observation import Probe
from pytest_istio_mtls.model import Port, Workload

from ...kube_replay import ReplayKube, replay

HTTPBIN = Workload("httpbin", "foo", {"app": "httpbin"}, "httpbin", True, (Port("http", 8000, 8080),))
CURL = Workload("curl", "foo", {"app": "curl"}, "curl", True)


def test_inbound_and_cluster_summaries_replay() -> None:
    text = inbound_summary(replay("config_dump_listeners_rbac.json"), 8080)
    assert "transport=tls" in text and "transport=raw_buffer" in text
    assert "envoy.filters.http.rbac" in text and "RBAC policies: ns[foo]-policy[allow-curl]-rule[0]" in text
    assert inbound_summary(replay("config_dump_listeners_strict.json"), 7) == "no inbound filter chain for port 7"
    summary = cluster_summary(replay("config_dump_clusters_auto.json"), "outbound|8000||httpbin.foo.svc.cluster.local")
    assert summary == ("outbound|8000||httpbin.foo.svc.cluster.local: transport=auto "
                       "matches=tlsMode-istio,tlsMode-disabled sni=outbound_.8000_._.httpbin.foo.svc.cluster.local "
                       "fresh-connections=yes")


def test_sections_replay() -> None:
    kube = ReplayKube()
    kube.add(*replay("events_foo.json"))
    kube.add({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
              "metadata": {"name": "default", "namespace": "foo", "creationTimestamp": "2026-10-02T10:12:00Z",
                           "managedFields": [{"manager": "pytest-istio-mtls"}]}, "spec": {"mtls": {"mode": "STRICT"}}})

    def answer(namespace: str, pod: str, container: str, command: list[str]) -> ExecResult:
        dump = replay("config_dump_clusters_auto.json") if command[3] == CLUSTERS else \
            replay("config_dump_listeners_strict.json")
        return ExecResult(json.dumps(dump).encode(), "", 0)

    kube.exec_handler = answer
    kube.log_text[("foo", "httpbin-0", "istio-proxy")] = "\n".join(f"line {i}" for i in range(30))
    pods = {"httpbin.foo": PodInfo("httpbin.foo", "foo", "httpbin-0", "10.0.0.2", True, True, True),
            "curl.foo": PodInfo("curl.foo", "foo", "curl-0", "10.0.0.3", True, True, True)}
    found = sections(kube, Naming(None), pods, [Probe(CURL, HTTPBIN, HTTPBIN.ports[0])],
                     [Applied("security.istio.io/v1", "PeerAuthentication", "foo", "default"),
                      Applied("security.istio.io/v1", "PeerAuthentication", "foo", "gone")])
    assert "transport=tls" in found["server httpbin.foo inbound port 8080"]
    assert "transport=auto" in found["client curl.foo cluster for httpbin.foo:8000"]
    policies = found["policies in force"]
    assert "mode: STRICT" in policies and "creationTimestamp: '2026-10-02T10:12:00Z'" in policies
    assert "managedFields" not in policies and "# PeerAuthentication foo/gone: not found" in policies
    assert "line 29" in found["proxy logs"] and "line 21" not in found["proxy logs"]
    assert "toomanyrequests" in found["events"] and "SuccessfulCreate" not in found["events"]
    assert "namespaces" not in found
