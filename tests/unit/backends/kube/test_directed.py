"""The directed forms on kind and existing, without a cluster: what each probe dials, which probes need a routing
state and in what groups, how a Service is narrowed to one workload and routed to a subset (and put back), and
where a TLS-speaking client's credentials come from and travel. The same forms run for real in tests/kind."""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest

from pytest_istio_mtls.backends.base import BackendError
from pytest_istio_mtls.backends.certs import CertificateAuthority
from pytest_istio_mtls.backends.kube import probes, routing
from pytest_istio_mtls.backends.kube.client import ExecResult
from pytest_istio_mtls.backends.kube.credentials import Credentials, spiffe_of
from pytest_istio_mtls.backends.kube.manifests import (
    OUTPUT_CERTS,
    SERVICE_LABEL,
    TLS_CLIENT,
    WORKLOAD_LABEL,
    credential_pod,
)
from pytest_istio_mtls.backends.kube.naming import Naming
from pytest_istio_mtls.backends.kube.observe import run_sources
from pytest_istio_mtls.backends.kube.propagation import Generations
from pytest_istio_mtls.backends.kube.workloads import PodInfo
from pytest_istio_mtls.judge.observation import Probe
from pytest_istio_mtls.model import Namespace, Port, Request, Topology, Workload

from ...kube_replay import ReplayKube

HTTP = Port("http", 8000, 8080)
V1 = Workload("httpbin", "foo", {"app": "httpbin", "version": "v1"}, "httpbin", True, (HTTP,), service="httpbin",
              shared=True)
V2 = Workload("httpbin-v2", "foo", {"app": "httpbin", "version": "v2"}, "httpbin-v2", False, (HTTP,),
              service="httpbin", shared=True)
PLAIN = Workload("web", "foo", {"app": "web"}, "web", True, (HTTP,))
CURL = Workload("curl", "foo", {"app": "curl"}, "curl", True)
LEGACY = Workload("curl", "legacy", {"app": "curl"}, "curl", False)
TOPOLOGY = Topology((Namespace("foo", True), Namespace("legacy", False)), (V1, V2, PLAIN, CURL, LEGACY))
PODS = {w.ref: PodInfo(w.ref, w.namespace, f"{w.name}-0", ip, True, w.sidecar, w.sidecar)
        for w, ip in ((V1, "10.244.0.11"), (V2, "10.244.0.12"), (PLAIN, "10.244.0.13"), (CURL, "10.244.0.14"),
                      (LEGACY, "10.244.0.15"))}


def test_a_client_without_sidecar_dials_the_endpoint_itself_keeping_the_service_name() -> None:
    naming = Naming(None)
    to_v2 = Probe(LEGACY, V2, HTTP, marker="m")
    command = probes.curl_command(to_v2, naming, "10.244.0.12")
    assert "http://httpbin.foo.svc.cluster.local:8000/" in command  # Host: the Service, as kube-proxy keeps it
    assert "--connect-to httpbin.foo.svc.cluster.local:8000:10.244.0.12:8080" in command
    pod = Probe(LEGACY, PLAIN, Port("http", 8080, 8080, pod=True), marker="m")
    assert probes.url(pod, naming, "10.244.0.13").startswith("http://10.244.0.13:8080/")
    tcp = Probe(LEGACY, V2, Port("tcp", 9000, 9001, "tcp"), marker="m")
    assert probes.url(tcp, naming, "10.244.0.12") == "telnet://10.244.0.12:9001"
    assert probes.url(Probe(CURL, V2, HTTP, marker="m"), naming).startswith("http://httpbin.foo.svc.cluster.local:8000/")


def test_only_sidecar_clients_of_a_shared_service_and_subset_probes_are_routed() -> None:
    batch = [Probe(LEGACY, PLAIN, HTTP), Probe(CURL, V2, HTTP), Probe(LEGACY, V2, HTTP), Probe(CURL, V1, HTTP),
             Probe(CURL, PLAIN, Port("http", 8000, 8080, subset="a")), Probe(CURL, V2, HTTP),
             Probe(CURL, V1, Port("http", 8080, 8080, pod=True))]
    assert [routing.routed(p) for p in batch] == [False, True, False, True, True, True, False]
    assert routing.direct(batch[2]) and not routing.direct(batch[1])
    assert routing.order(batch) == [[0, 2, 6], [1, 5], [3], [4]]


class Cluster:
    """A ReplayKube whose EndpointSlices follow the Service selector and whose client sidecar lists what it selects."""

    def __init__(self) -> None:
        self.kube = ReplayKube()
        self.kube.add({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "httpbin", "namespace": "foo"},
                       "spec": {"selector": {SERVICE_LABEL: "httpbin"}}})
        self.kube.exec_handler = self.exec
        patch = self.kube.patch

        def patched(*args: Any) -> dict[str, Any]:
            result = patch(*args)
            self.sync()
            return result

        self.kube.patch = patched  # type: ignore[method-assign]
        self.marks = Generations(self.kube, "istio-system", "app=istiod", 5.0, sleep=lambda s: None)
        self.confirmed = 0
        self.held: list[tuple[list[Any], list[Any]]] = []
        self.marks.confirm = self.confirm  # type: ignore[method-assign]
        self.marks.wait_held = lambda applied, removed: self.held.append((list(applied), list(removed)))  # type: ignore[method-assign]
        self.sync()

    def confirm(self, namespaces: Any, pods: Any) -> None:
        self.confirmed += 1

    def selected(self) -> list[Workload]:
        selector = self.kube.objects[("Service", "foo", "httpbin")]["spec"]["selector"]
        return [w for w in (V1, V2) if WORKLOAD_LABEL not in selector or selector[WORKLOAD_LABEL] == w.name]

    def sync(self) -> None:
        """The EndpointSlice controller, at once."""
        self.kube.add({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": "httpbin-abc", "namespace": "foo",
                                    "labels": {"kubernetes.io/service-name": "httpbin"}},
                       "endpoints": [{"addresses": [PODS[w.ref].ip], "conditions": {"ready": True}}
                                     for w in self.selected()]})

    def exec(self, namespace: str, pod: str, container: str, command: list[str]) -> ExecResult:
        assert command == ["pilot-agent", "request", "GET", "clusters"]
        self.sync()
        subset = next((o["spec"]["http"][0]["route"][0]["destination"]["subset"] for (k, _, _), o in
                       self.kube.objects.items() if k == "VirtualService"), "")
        lines = [f"outbound|8000|{subset}|httpbin.foo.svc.cluster.local::{PODS[w.ref].ip}:8080::health_flags::healthy"
                 for w in self.selected()]
        return ExecResult("\n".join(lines).encode(), "", 0)


def test_a_service_is_narrowed_to_the_probed_workload_then_put_back() -> None:
    cluster = Cluster()
    router = routing.Router(cluster.kube, Naming(None), TOPOLOGY, lambda: PODS, cluster.marks, ["foo"], 5.0,
                            lambda m: None)
    router.route(Probe(CURL, V2, HTTP))
    assert cluster.kube.objects[("Service", "foo", "httpbin")]["spec"]["selector"] == {
        SERVICE_LABEL: "httpbin", WORKLOAD_LABEL: "httpbin-v2"}
    assert cluster.confirmed == 0  # endpoints need no push marker: the client's own endpoint list proves them
    router.route(Probe(CURL, V1, Port("http", 8000, 8080, subset="v1")))
    assert [a.ref for a in cluster.held[-1][0]] == ["VirtualService foo/pytest-istio-mtls-subset-httpbin"]
    assert cluster.confirmed == 1
    router.reset()
    assert cluster.kube.objects[("Service", "foo", "httpbin")]["spec"]["selector"] == {SERVICE_LABEL: "httpbin"}
    assert not [k for k in cluster.kube.objects if k[0] == "VirtualService"]
    assert [r.ref for r in cluster.held[-1][1]] == ["VirtualService foo/pytest-istio-mtls-subset-httpbin"]
    assert cluster.confirmed == 2


def test_a_client_sidecar_that_keeps_listing_the_other_workload_is_a_timeout_naming_it() -> None:
    cluster = Cluster()
    cluster.selected = lambda: [V1, V2]  # type: ignore[method-assign]  # istiod never narrows the endpoints
    router = routing.Router(cluster.kube, Naming(None), TOPOLOGY, lambda: PODS, cluster.marks, ["foo"], 0.0,
                            lambda m: None)
    with pytest.raises(BackendError, match=r"Service foo/httpbin has endpoints 10.244.0.11, 10.244.0.12, want "
                                           r"10.244.0.12"):
        router.route(Probe(CURL, V2, HTTP))


def test_foreign_certificates_are_made_in_memory_with_the_clients_identity() -> None:
    credentials = Credentials(ReplayKube(), Naming("r1"), {"app": "a"}, None, 5.0, lambda m: None)
    chain, key = credentials(Probe(LEGACY, PLAIN, HTTP, Request(tls="foreign-cert"))) or (b"", b"")
    assert spiffe_of(chain) == "spiffe://cluster.local/ns/legacy-r1/sa/curl" and b"PRIVATE KEY" in key
    assert credentials(Probe(LEGACY, PLAIN, HTTP, Request(tls="no-cert"))) is None


def test_a_mesh_certificate_comes_from_an_injected_pod_of_the_clients_service_account() -> None:
    pod = credential_pod(LEGACY, Naming(None), {"app": "app-image"}, None)
    assert pod["spec"]["serviceAccountName"] == "curl" and pod["metadata"]["namespace"] == "legacy"
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "true"
    assert json.loads(pod["metadata"]["annotations"]["proxy.istio.io/config"]) == {
        "proxyMetadata": {"OUTPUT_CERTS": OUTPUT_CERTS}}
    assert pod["spec"]["volumes"] == [{"name": "output-certs", "emptyDir": {"medium": "Memory"}}]
    issued = CertificateAuthority(None).leaf("legacy", "curl")
    kube = ReplayKube()
    reads: list[list[str]] = []

    def handler(namespace: str, name: str, container: str, command: list[str]) -> ExecResult:
        reads.append(command)
        return ExecResult(issued[0] if command[1].endswith("cert-chain.pem") else issued[1], "", 0)

    kube.exec_handler = handler
    credentials = Credentials(kube, Naming(None), {"app": "a"}, None, 5.0, lambda m: None)
    probe = Probe(LEGACY, PLAIN, HTTP, Request(tls="mesh-cert"))
    assert credentials(probe) == issued and credentials(probe) == issued  # read once, kept for the run
    assert len(reads) == 2 and ("delete", ("Pod", "legacy", pod["metadata"]["name"])) in kube.calls


def test_a_mesh_certificate_for_another_identity_is_refused() -> None:
    other = CertificateAuthority(None).leaf("foo", "httpbin")
    kube = ReplayKube()
    kube.exec_handler = lambda ns, pod, container, command: ExecResult(
        other[0] if command[1].endswith("cert-chain.pem") else other[1], "", 0)
    credentials = Credentials(kube, Naming(None), {"app": "a"}, None, 5.0, lambda m: None)
    with pytest.raises(BackendError, match=r"issued spiffe://cluster\.local/ns/foo/sa/httpbin to legacy/"):
        credentials(Probe(LEGACY, PLAIN, HTTP, Request(tls="mesh-cert")))


def test_tls_probes_run_in_the_tls_client_container_with_their_keys_on_stdin_only() -> None:
    pair = CertificateAuthority(None).leaf("legacy", "curl")
    kube = ReplayKube()
    seen: dict[str, Any] = {}

    def execute(namespace: str, pod: str, container: str, command: list[str], timeout: float = 60.0,
                stdin: bytes | None = None) -> ExecResult:
        seen.update(container=container, command=command, stdin=stdin)
        token = command[-1]
        return ExecResult(f"\n@@{token} 0 meta 35 000|10.244.0.15|40000|0.01@@\n@@{token} 0 body@@\n\n@@{token} 0 "
                          f"stderr@@\nTLS alert\n@@{token} 0 end@@\n".encode(), "", 0)

    kube.exec = execute  # type: ignore[method-assign]
    probe = Probe(LEGACY, PLAIN, HTTP, Request(tls="mesh-cert"), marker="mk")
    readings = run_sources(kube, Naming(None), PODS, [probe], [0], lambda p: pair)
    reading = readings[0]
    assert not isinstance(reading, str) and reading.error == "tls" and reading.client == ("10.244.0.15", 40000)
    assert seen["container"] == TLS_CLIENT and seen["command"][:2] == ["python3", "/opt/pytest-istio-mtls/tlsprobe.py"]
    assert pair[1].decode() not in shlex.join(seen["command"])  # the key is never in a command line
    sent = json.loads(seen["stdin"])["probes"][0]
    assert sent["key"] == pair[1].decode() and sent["host"] == "web.foo.svc.cluster.local" and sent["port"] == 8000
    assert seen["stdin"].endswith(b"\n") and seen["stdin"].count(b"\n") == 1  # one line: exec cannot close stdin


def test_a_client_certificate_that_cannot_be_had_is_a_fault_of_those_probes_only() -> None:
    def refuse(probe: Probe) -> tuple[bytes, bytes] | None:
        raise BackendError("the sidecar wrote no workload certificate")

    kube = ReplayKube()
    kube.exec_handler = lambda ns, pod, container, command: ExecResult(b"", "", 0)
    readings = run_sources(kube, Naming(None), PODS, [Probe(LEGACY, PLAIN, HTTP, Request(tls="mesh-cert"))], [0],
                           refuse)
    assert readings[0] == "no client certificate for curl.legacy: the sidecar wrote no workload certificate"
