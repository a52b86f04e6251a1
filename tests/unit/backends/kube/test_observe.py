"""A batch of probes through the real evidence path, on replays: pods with native sidecars, the curl
batch output, pilot-agent stats, JSON access logs and packet captures recorded from real Envoys.
The observations must satisfy ``verdict`` exactly as real ones would, and every infrastructure
fault must turn into an error, never a pass."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pytest_istio_mtls.backends.kube.client import ExecResult
from pytest_istio_mtls.backends.kube.naming import Naming
from pytest_istio_mtls.backends.kube.observe import Observer, rounds
from pytest_istio_mtls.backends.kube.workloads import PodInfo
from pytest_istio_mtls.judge.observation import Probe
from pytest_istio_mtls.judge.verdict import decide
from pytest_istio_mtls.model import Port, Result, Workload

from ...kube_replay import PCAPS, FakeStream, ReplayKube, stats_text

FLOWS = json.loads((PCAPS / "flows.json").read_text())
HTTP = Port("http", 8000, 8080)
HTTPBIN_FOO = Workload("httpbin", "foo", {"app": "httpbin"}, "httpbin", True, (HTTP,))
HTTPBIN_BAR = Workload("httpbin", "bar", {"app": "httpbin"}, "httpbin", True, (HTTP,))
CURL_FOO = Workload("curl", "foo", {"app": "curl"}, "curl", True)
CURL_LEGACY = Workload("curl", "legacy", {"app": "curl"}, "curl", False)
# Pod addresses as in the recorded captures (flows.json).
IPS = {"httpbin.foo": "10.244.0.10", "httpbin.bar": "10.244.0.11", "curl.foo": "10.244.0.13", "curl.legacy": "10.244.0.15"}


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class Mesh:
    """Replays what the cluster answers for three recorded connections under namespace foo STRICT."""

    def __init__(self, naming: Naming) -> None:
        self.naming = naming
        self.kube = ReplayKube()
        self.counters: dict[str, dict[str, int]] = {ref: {} for ref in IPS}
        self.logs: dict[str, list[str]] = {ref: [] for ref in IPS}
        self.captures: dict[str, list[bytes]] = {"httpbin.foo": [], "httpbin.bar": []}
        self.stats_fail: set[str] = set()
        self.probes = {
            "mtls": Probe(CURL_FOO, HTTPBIN_FOO, HTTP, marker=FLOWS["mtls"]["marker"]),
            "refused": Probe(CURL_LEGACY, HTTPBIN_FOO, HTTP, marker=FLOWS["refused"]["marker"]),
            "plaintext": Probe(CURL_LEGACY, HTTPBIN_BAR, HTTP, marker=FLOWS["plaintext"]["marker"]),
        }
        self.pods = {ref: PodInfo(ref, naming.ns(ref.split(".")[1]), f"{ref.split('.')[0]}-5c7d8-x{i}", ip, True,
                                  ref != "curl.legacy", ref != "curl.legacy")
                     for i, (ref, ip) in enumerate(IPS.items())}
        self.by_pod = {pod.name: ref for ref, pod in self.pods.items()}
        self.kube.exec_handler = self.exec
        self.kube.stream_handler = self.stream

    def cluster(self, text: str) -> str:
        """Scenario names as the cluster spells them (identity on kind, per-run namespaces on existing)."""
        for namespace in ("foo", "bar", "legacy"):
            text = re.sub(rf"(?<![\w-]){namespace}(?![\w-])", self.naming.ns(namespace), text)
        return text

    def log(self, ref: str, **entry: Any) -> None:
        line = dict.fromkeys(("connection_termination_details", "downstream_peer_uri_san", "downstream_tls_version", "upstream_transport_failure_reason"))
        line.update({k: self.cluster(v) if isinstance(v, str) else v for k, v in entry.items()})
        self.logs[ref].append(json.dumps(line, sort_keys=True))

    def count(self, ref: str, **moved: int) -> None:
        for name, value in moved.items():
            key = self.cluster(name.replace("__", "|").replace("_0_0_0_0_15006_", "0.0.0.0_15006."))
            self.counters[ref][key] = self.counters[ref].get(key, 0) + value

    def happen(self, name: str) -> tuple[str, str, int]:
        """One recorded connection happens: counters move, logs are written, the capture is queued."""
        flow = FLOWS[name]
        wire = flow["client"]
        cluster = "outbound|8000||httpbin.{ns}.svc.cluster.local"
        if name == "mtls":
            self.count("curl.foo", **{f"cluster.{cluster.format(ns='foo')}.ssl.handshake": 1,
                                      f"cluster.{cluster.format(ns='foo')}.upstream_cx_total": 1})
            self.counters["httpbin.foo"]["listener.0.0.0.0_15006.ssl.handshake"] = \
                self.counters["httpbin.foo"].get("listener.0.0.0.0_15006.ssl.handshake", 0) + 1
            self.log("curl.foo", marker=flow["marker"], response_code=200, response_flags="-",
                     downstream_remote_address="10.244.0.13:40000", upstream_local_address=wire,
                     upstream_cluster=cluster.format(ns="foo"), upstream_host="10.244.0.10:8080")
            self.log("httpbin.foo", marker=flow["marker"], response_code=200, response_flags="-",
                     downstream_remote_address=wire, downstream_peer_uri_san="spiffe://cluster.local/ns/foo/sa/curl",
                     upstream_cluster="inbound|8080||")
            xfcc = self.cluster("By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=1f2e;Subject=\"\";"
                                "URI=spiffe://cluster.local/ns/foo/sa/curl")
            body = json.dumps({"headers": {"X-Istio-Mtls-Probe": [flow["marker"]], "X-Forwarded-Client-Cert": [xfcc]}})
            self.captures["httpbin.foo"].append((PCAPS / "mtls.pcap").read_bytes())
            return "0 200|10.244.0.13|40000|0.004412", body, 0
        if name == "refused":
            self.counters["httpbin.foo"]["listener.0.0.0.0_15006.no_filter_chain_match"] = \
                self.counters["httpbin.foo"].get("listener.0.0.0.0_15006.no_filter_chain_match", 0) + 1
            self.log("httpbin.foo", marker=None, response_code=0, response_flags="NR", downstream_remote_address=wire)
            self.captures["httpbin.foo"].append((PCAPS / "refused.pcap").read_bytes())
            host, port = address(wire)
            return f"56 000|{host}|{port}|0.002311", "", 56
        self.count("httpbin.bar", tls_inspector_tls_not_found=1)
        self.log("httpbin.bar", marker=flow["marker"], response_code=200, response_flags="-",
                 downstream_remote_address=wire, upstream_cluster="inbound|8080||")
        self.captures["httpbin.bar"].append((PCAPS / "plaintext.pcap").read_bytes())
        host, port = address(wire)
        body = json.dumps({"headers": {"X-Istio-Mtls-Probe": [flow["marker"]]}})
        return f"0 200|{host}|{port}|0.003107", body, 0

    def exec(self, namespace: str, pod: str, container: str, command: list[str]) -> ExecResult:
        ref = self.by_pod[pod]
        if container == "istio-proxy":
            if ref in self.stats_fail:
                return ExecResult(error=f"exec in {namespace}/{pod} (istio-proxy): container not found")
            assert command[:3] == ["pilot-agent", "request", "GET"] and command[3].startswith("stats?type=Counters&filter=")
            return ExecResult(stats_text(self.counters[ref]).encode(), "", 0)
        assert container == "curl" and command[:2] == ["sh", "-c"]
        token = re.search(r"@@(\w+) 0 meta", command[2])[1]  # type: ignore[index]
        out = []
        for index, marker in enumerate(re.findall(r"X-Istio-Mtls-Probe: (istio-mtls-probe-\w+)", command[2])):
            name = next(n for n, f in FLOWS.items() if f["marker"] == marker)
            meta, body, rc = self.happen(name)
            stderr = "curl: (56) Recv failure: Connection reset by peer" if rc == 56 else ""
            out.append(f"\n@@{token} {index} meta {meta}@@\n@@{token} {index} body@@\n{body}\n@@{token} {index} "
                       f"stderr@@\n{stderr}\n@@{token} {index} end@@\n")
        for ref_, lines in self.logs.items():
            pod_ = self.pods.get(ref_)
            if pod_ is None:
                continue
            self.kube.log_text[(pod_.namespace, pod_.name, "istio-proxy")] = "\n".join(
                ["2026-10-02T10:12:00.123Z\tinfo\tEnvoy proxy is ready", *lines])
        return ExecResult("".join(out).encode(), "", 0)

    def stream(self, namespace: str, pod: str, container: str, command: list[str]) -> Any:
        assert container == "capture" and "tcpdump -i eth0" in command[2] and "tcp port 8080" in command[2]
        mesh = self

        class Deferred(FakeStream):
            """The capture's bytes exist only once the probe ran: taken when tcpdump is stopped."""

            def data_at_stop(self) -> bytes:
                queue = mesh.captures[mesh.by_pod[pod]]
                return queue.pop(0) if queue else b""

        return Deferred(b"")


def observe(mesh: Mesh, names: list[str], pcap_dir: Path | None = None) -> dict[str, Any]:
    batch = [mesh.probes[n] for n in names]
    observer = Observer(mesh.kube, mesh.naming, mesh.pods, lambda m: None, pcap_dir)
    return dict(zip(names, observer.observe(batch), strict=True))


@pytest.mark.parametrize("naming", [Naming(None), Naming("abc123")], ids=["kind", "existing"])
def test_mtls_refused_and_plaintext_are_proven_replay(naming: Naming, tmp_path: Path) -> None:
    for namespace in ("foo", "bar", "legacy"):
        naming.ns(namespace)
    mesh = Mesh(naming)
    observations = observe(mesh, ["mtls", "refused", "plaintext"], tmp_path / "pcaps")
    verdicts = {name: decide(o) for name, o in observations.items()}
    assert {n: v.result for n, v in verdicts.items()} == {
        "mtls": Result.MTLS, "refused": Result.REFUSED, "plaintext": Result.PLAINTEXT}, \
        {n: v.error for n, v in verdicts.items()}
    mtls = observations["mtls"].evidence
    assert mtls.peer_identity == "spiffe://cluster.local/ns/foo/sa/curl" and mtls.identity_source == "xfcc"
    assert mtls.capture.flow == "10.244.0.13:56788 > 10.244.0.10:8080"  # the wire address from the client log
    assert mtls.server_proxy.stats_delta == {"listener.0.0.0.0_15006.ssl.handshake": 1}
    assert "cluster.outbound|8000||httpbin.foo.svc.cluster.local.ssl.handshake" in mtls.client_proxy.stats_delta
    assert Path(mtls.capture.pcap).read_bytes() == (PCAPS / "mtls.pcap").read_bytes()
    refused = observations["refused"]
    assert refused.error == "reset" and refused.evidence.client_proxy is None
    assert any("no_filter_chain_match" in b for b in verdicts["refused"].because)
    assert observations["plaintext"].evidence.capture.marker_in_clear


def test_rounds_never_probe_one_server_twice() -> None:
    mesh = Mesh(Naming(None))
    batch = [mesh.probes[n] for n in ("mtls", "refused", "plaintext", "mtls")]
    assert rounds(batch) == [[0, 2], [1], [3]]


def test_server_counters_are_attributed_per_round_replay() -> None:
    """mtls and refused both hit httpbin.foo: separate rounds, so each sees only its own counters."""
    mesh = Mesh(Naming(None))
    observations = observe(mesh, ["refused", "mtls"])
    assert observations["refused"].evidence.server_proxy.stats_delta == {
        "listener.0.0.0.0_15006.no_filter_chain_match": 1}
    assert observations["mtls"].evidence.server_proxy.stats_delta == {"listener.0.0.0.0_15006.ssl.handshake": 1}
    stats_reads = [c for c in mesh.kube.calls if c[0] == "exec" and c[3] == "istio-proxy"]
    reads = [c[2] for c in stats_reads]
    # httpbin.foo: before round 1, after round 1 (reused as before round 2), after round 2
    assert reads.count(mesh.pods["httpbin.foo"].name) == 3
    assert reads.count(mesh.pods["curl.foo"].name) == 2


def test_a_proxy_that_cannot_be_read_makes_an_error_replay() -> None:
    mesh = Mesh(Naming(None))
    mesh.stats_fail.add("httpbin.foo")
    verdict = decide(observe(mesh, ["mtls"])["mtls"])
    assert verdict.result is None and "sidecar of httpbin.foo is not running" in verdict.error


def test_a_missing_pod_makes_an_error_never_a_pass() -> None:
    mesh = Mesh(Naming(None))
    del mesh.pods["httpbin.bar"]
    observation = observe(mesh, ["plaintext"])["plaintext"]
    verdict = decide(observation)
    assert verdict.result is None and "the server httpbin.bar has no running pod" in verdict.error


def test_a_pod_problem_is_a_fault_replay() -> None:
    mesh = Mesh(Naming(None))
    mesh.pods["httpbin.bar"].problems.append("has no istio-proxy sidecar although the topology says it has one")
    verdict = decide(observe(mesh, ["plaintext"])["plaintext"])
    assert verdict.result is None and "has no istio-proxy sidecar" in verdict.error


def test_a_failed_probe_exec_is_a_fault() -> None:
    mesh = Mesh(Naming(None))
    mesh.kube.exec_handler = lambda ns, pod, container, command: (
        ExecResult(error="exec in legacy/curl (curl): pods \"curl\" not found") if container == "curl"
        else mesh.exec(ns, pod, container, command))
    verdict = decide(observe(mesh, ["plaintext"])["plaintext"])
    assert verdict.result is None and "the probe exec in curl.legacy failed" in verdict.error


def test_a_capture_that_never_started_cannot_prove_plaintext_replay() -> None:
    mesh = Mesh(Naming(None))
    mesh.kube.stream_handler = lambda *a: FakeStream(b"", stderr=b"tcpdump: eth0: You don't have permission to "
                                                                 b"capture on that device\n")
    observation = observe(mesh, ["plaintext"])["plaintext"]
    assert observation.echoed
    verdict = decide(observation)
    assert verdict.result is None and "not found in the capture" in verdict.error
    assert "permission" in observation.evidence.capture.note


def test_a_tcp_mtls_row_waits_for_the_servers_late_log_entry_replay() -> None:
    """TCP access logs are written at close and flushed on each sidecar's own 1 s timer: the client's entry
    can be visible before the server's, which alone carries the peer identity (review finding W3)."""
    from pytest_istio_mtls.backends.kube.observe import Round
    from pytest_istio_mtls.backends.kube.probes import Reading

    tcp = Port("tcp", 9000, 9000, "tcp")
    echo = Workload("tcp-echo", "foo", {"app": "tcp-echo"}, "tcp-echo", True, (tcp,))
    naming = Naming(None)
    pods = {"curl.foo": PodInfo("curl.foo", "foo", "curl-1", "10.244.0.13", True, True, True),
            "tcp-echo.foo": PodInfo("tcp-echo.foo", "foo", "tcp-echo-1", "10.244.0.12", True, True, True)}
    client_line = json.dumps({"response_flags": "-", "downstream_remote_address": "10.244.0.13:41000",
                              "upstream_local_address": "10.244.0.13:52000", "upstream_host": "10.244.0.12:9000"})
    server_line = json.dumps({"response_flags": "-", "downstream_remote_address": "10.244.0.13:52000",
                              "downstream_peer_uri_san": "spiffe://cluster.local/ns/foo/sa/curl"})
    reads: list[str] = []

    class LateServer(ReplayKube):
        def logs(self, namespace: str, pod: str, container: str, since_seconds: int | None = None,
                 tail_lines: int | None = None) -> str:
            reads.append(pod)
            if pod == "curl-1":
                return client_line
            return server_line if reads.count("tcp-echo-1") >= 3 else ""  # flushed on the third read

    probe = Probe(CURL_FOO, echo, tcp, marker="istio-mtls-probe-tcp1")
    observer = Observer(LateServer(), naming, pods, lambda m: None)
    current = Round([0])
    current.readings = {0: Reading(None, None, "", True, "hello", 2.0, ("10.244.0.13", 41000))}
    logs = observer._logs([probe], current, ["curl.foo", "tcp-echo.foo"], set())
    assert reads.count("tcp-echo-1") == 3
    assert logs["tcp-echo.foo"][0][0]["downstream_peer_uri_san"] == "spiffe://cluster.local/ns/foo/sa/curl"


def test_a_client_speaking_tls_over_tcp_waits_for_the_servers_late_log_entry() -> None:
    """A client without a sidecar that presents a mesh certificate on a TCP port: its peer identity is only in the
    server's entry, written at close; the first CI run of scenario 24 on kind judged it once before it came."""
    from pytest_istio_mtls.backends.kube.observe import Round
    from pytest_istio_mtls.backends.kube.probes import Reading
    from pytest_istio_mtls.model import Request

    tcp = Port("tcp", 9000, 9000, "tcp")
    echo = Workload("echo", "foo", {"app": "echo"}, "echo", True, (tcp,))
    pods = {"curl.legacy": PodInfo("curl.legacy", "legacy", "curl-1", "10.244.0.15", True, False, False),
            "echo.foo": PodInfo("echo.foo", "foo", "echo-1", "10.244.0.12", True, True, True)}
    server_line = json.dumps({"response_flags": "-", "downstream_remote_address": "10.244.0.15:41000",
                              "downstream_peer_uri_san": "spiffe://cluster.local/ns/legacy/sa/curl"})
    reads: list[str] = []

    class LateServer(ReplayKube):
        def logs(self, namespace: str, pod: str, container: str, since_seconds: int | None = None,
                 tail_lines: int | None = None) -> str:
            reads.append(pod)
            return server_line if reads.count("echo-1") >= 3 else ""  # flushed on the third read

    probe = Probe(CURL_LEGACY, echo, tcp, Request(tls="mesh-cert"), marker="istio-mtls-probe-tls1")
    observer = Observer(LateServer(), Naming(None), pods, lambda m: None)
    current = Round([0])
    current.readings = {0: Reading(None, None, "", True, "hello", 2.0, ("10.244.0.15", 41000))}
    logs = observer._logs([probe], current, ["echo.foo"], set())
    assert reads.count("echo-1") == 3
    assert logs["echo.foo"][0][0]["downstream_peer_uri_san"] == "spiffe://cluster.local/ns/legacy/sa/curl"


def test_a_denial_of_a_client_without_sidecar_waits_for_the_servers_late_log_entry_replay() -> None:
    """Seen on kind: the server counted tcp.rbac.denied for a plaintext client, and its access-log entry (which
    names the policy) came after the first read; the run must wait for it, as it does for a peer identity."""
    from pytest_istio_mtls.backends.kube.observe import Round
    from pytest_istio_mtls.backends.kube.probes import Reading

    tcp = Port("tcp", 9000, 9000, "tcp")
    echo = Workload("tcp-echo", "foo", {"app": "tcp-echo"}, "tcp-echo", True, (tcp,))
    legacy = Workload("curl", "legacy", {"app": "curl"}, "curl", False, ())
    pods = {"curl.legacy": PodInfo("curl.legacy", "legacy", "curl-2", "10.244.0.14", True, False, False),
            "tcp-echo.foo": PodInfo("tcp-echo.foo", "foo", "tcp-echo-1", "10.244.0.12", True, True, True)}
    server_line = json.dumps({"response_flags": "-", "downstream_remote_address": "10.244.0.14:41000",
                              "connection_termination_details": "rbac_access_denied_matched_policy[ns[foo]-policy[x]-rule[0]]"})
    reads: list[str] = []

    class LateServer(ReplayKube):
        def logs(self, namespace: str, pod: str, container: str, since_seconds: int | None = None,
                 tail_lines: int | None = None) -> str:
            reads.append(pod)
            return server_line if reads.count("tcp-echo-1") >= 3 else ""

    probe = Probe(legacy, echo, tcp, marker="istio-mtls-probe-tcp2")
    observer = Observer(LateServer(), Naming(None), pods, lambda m: None)
    current = Round([0])
    current.readings = {0: Reading(None, "closed", "", False, "", 2.0, ("10.244.0.14", 41000))}
    before = {"tcp-echo.foo": ({"tcp.rbac.denied": 0}, "")}
    after = {"tcp-echo.foo": ({"tcp.rbac.denied": 1}, "")}
    denied = observer._denied([probe], [0], before, after)
    assert denied == {0}
    logs = observer._logs([probe], current, ["tcp-echo.foo"], denied)
    assert reads.count("tcp-echo-1") == 3
    assert "rbac_access_denied" in logs["tcp-echo.foo"][0][0]["connection_termination_details"]
    assert observer._denied([probe], [0], before, before) == set()  # nothing counted: nothing to wait for


def test_a_sidecar_calling_itself_is_captured_on_lo_at_the_inbound_listener() -> None:
    """Its connection never reaches eth0: iptables redirects it on lo to 127.0.0.1:15006 (seen on kind)."""
    from pytest_istio_mtls.backends.kube.evidence import capture_command
    from pytest_istio_mtls.backends.kube.observe import self_call

    port = Port("http", 8080, 8080, "http")
    backend = Workload("backend", "app", {"app": "backend"}, "backend", True, (port,))
    assert self_call(Probe(backend, backend, port)) and not self_call(Probe(CURL_FOO, backend, port))
    assert "tcpdump -i lo -p" in capture_command([15006], "lo")[-1] and "'tcp port 15006'" in capture_command(
        [15006], "lo")[-1]
    assert "tcpdump -i eth0 -p" in capture_command([8080])[-1]
    # Both sides of the call are in the pod's one log, with the same marker: the wire is the outbound entry's.
    probe = Probe(backend, backend, port, marker="istio-mtls-probe-self")
    outbound = {"marker": probe.marker, "upstream_cluster": "outbound|8080||backend.app.svc.cluster.local",
                "upstream_local_address": "10.244.0.7:40000"}
    inbound = {"marker": probe.marker, "upstream_cluster": "inbound|8080||",
               "upstream_local_address": "127.0.0.6:51080", "downstream_remote_address": "10.244.0.7:40000"}
    pods = {"backend.app": PodInfo("backend.app", "app", "backend-1", "10.244.0.7", True, True, True)}
    observer = Observer(ReplayKube(), Naming(None), pods, lambda m: None)
    logs = {"backend.app": ([inbound, outbound], "")}
    assert observer._client_entries(probe, logs, None) == [outbound]
    assert observer._server_entries(probe, logs, ("10.244.0.7", 40000)) == [inbound]
