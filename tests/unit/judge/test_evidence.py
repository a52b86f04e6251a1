"""Evidence readers on real data: captures recorded by the local backend, Envoy stats, XFCC, access logs."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from pytest_istio_mtls.judge import accesslog, capture, identity, stats

from ...paths import UNIT

PCAPS = UNIT / "data" / "pcap"
FLOWS = json.loads((PCAPS / "flows.json").read_text())


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def analyse(name: str, **overrides: object) -> capture.CaptureEvidence:
    flow = FLOWS[name]
    arguments: dict[str, object] = {"interface": "veth", "server": address(flow["server"]),
                                    "client": address(flow["client"]), "marker": flow["marker"]}
    arguments.update(overrides)
    return capture.analyse((PCAPS / f"{name}.pcap").read_bytes(), **arguments)  # type: ignore[arg-type]


def test_mtls_capture_shows_an_istio_handshake_and_no_marker() -> None:
    """A recorded mTLS connection: TLS records, Istio SNI and ALPN, marker never in clear."""
    evidence = analyse("mtls")
    assert evidence.found
    assert evidence.tls_records > 4
    assert evidence.client_hello
    assert evidence.sni == "outbound_.8000_._.httpbin.foo.svc.cluster.local"
    assert "istio" in evidence.alpn
    assert not evidence.marker_in_clear


def test_plaintext_capture_shows_the_marker() -> None:
    """A recorded plaintext connection carries the marker in clear and no TLS."""
    evidence = analyse("plaintext")
    assert evidence.found
    assert evidence.marker_in_clear
    assert evidence.tls_records == 0


def test_refused_capture_shows_the_attempt() -> None:
    """A plaintext request that STRICT reset is on the wire too (request sent, no answer)."""
    evidence = analyse("refused")
    assert evidence.found
    assert evidence.marker_in_clear


def test_another_flow_is_never_taken_for_ours() -> None:
    """The flow is matched on the exact client address: a wrong port finds nothing."""
    host, port = address(FLOWS["mtls"]["client"])
    evidence = analyse("mtls", client=(host, port + 1))
    assert not evidence.found
    assert "no packets from" in evidence.note


def test_unknown_client_uses_the_single_flow_only() -> None:
    """Without the client address, a capture holding exactly one connection is used."""
    assert analyse("mtls", client=None).found


def test_garbage_is_not_a_capture() -> None:
    """A damaged capture is reported as such, never as 'no marker found'."""
    evidence = capture.analyse(b"not a pcap", interface="veth", server=("10.0.0.1", 80), client=None, marker="x")
    assert not evidence.found
    assert evidence.note


def test_stats_parse_and_delta() -> None:
    """Counters parse, histograms and text values are skipped, deltas keep what moved."""
    before = stats.parse_stats("listener.0.0.0.0_15006.ssl.handshake: 3\ncluster.x.version_text: \"abc\"\n"
                               "cluster.x.upstream_cx_total: 7\nhttp.x.rq_time: P0(nan,1) P25(nan,2)\n")
    after = stats.parse_stats("listener.0.0.0.0_15006.ssl.handshake: 4\ncluster.x.upstream_cx_total: 7\n"
                              "tls_inspector.tls_found: 1\n")
    assert before == {"listener.0.0.0.0_15006.ssl.handshake": 3, "cluster.x.upstream_cx_total": 7}
    assert stats.delta(before, after) == {"listener.0.0.0.0_15006.ssl.handshake": 1, "tls_inspector.tls_found": 1}


@pytest.mark.parametrize(("value", "peer"), [
    ("By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=ab;Subject=\"\";URI=spiffe://cluster.local/ns/foo/sa/curl",
     "spiffe://cluster.local/ns/foo/sa/curl"),
    ("By=a;URI=spiffe://x/ns/a/sa/first,By=b;Subject=\"O=x,CN=y\";URI=spiffe://x/ns/b/sa/second",
     "spiffe://x/ns/b/sa/second"),
    ("By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=ab", ""),
    ("", ""),
])
def test_xfcc_peer_is_the_closest_hop(value: str, peer: str) -> None:
    """The last XFCC element is the immediate peer; quoted commas do not split elements."""
    assert identity.xfcc_peer(value) == peer


def test_echo_bodies_of_both_httpbin_flavours() -> None:
    """go-httpbin returns header lists, kennethreitz/httpbin strings: both yield the peer."""
    uri = "URI=spiffe://cluster.local/ns/foo/sa/curl"
    assert identity.peer_from_echo(json.dumps({"headers": {"X-Forwarded-Client-Cert": [f"By=a;{uri}"]}})).endswith(
        "sa/curl")
    assert identity.peer_from_echo(json.dumps({"headers": {"X-Forwarded-Client-Cert": f"By=a;{uri}"}})).endswith(
        "sa/curl")
    assert identity.peer_from_echo("<html>not json</html>") == ""


def test_access_log_lines_and_matching() -> None:
    """JSON lines are parsed, other log lines skipped, and entries matched on exact fields."""
    entries = accesslog.parse(['{"downstream_remote_address": "10.0.0.2:1", "response_flags": "NR"}',
                               "[warning] something else", '{"downstream_remote_address": "10.0.0.2:2"}'])
    assert len(entries) == 2
    assert accesslog.matching(entries, downstream_remote_address="10.0.0.2:1") == [entries[0]]


def test_an_entry_is_tied_to_its_probe_by_time_when_it_has_no_marker() -> None:
    """Ephemeral ports get reused: an earlier probe's entry for the same address must not count."""
    from pytest_istio_mtls.judge.accesslog import FORMAT, started_within

    assert FORMAT["start_time"] == "%START_TIME%"
    start = datetime.datetime(2026, 11, 30, 18, 0, 0, 500000, tzinfo=datetime.timezone.utc).timestamp()
    entry = {"start_time": "2026-11-30T18:00:00.612Z", "downstream_remote_address": "10.244.0.10:49436"}
    assert started_within(entry, start, start + 0.2)
    assert not started_within(entry, start + 0.2, start + 0.4)  # a later probe reusing the port
    assert not started_within({**entry, "start_time": "2026-11-30T17:59:58.001Z"}, start, start + 0.2)
    assert started_within({"start_time": "-"}, start, start + 0.2)  # no time logged: the address decides


def test_the_local_backend_joins_only_the_probes_own_entries() -> None:
    from pytest_istio_mtls.backends.local.backend import LocalBackend
    from pytest_istio_mtls.backends.local.pods import Pod
    from pytest_istio_mtls.judge.observation import Probe
    from pytest_istio_mtls.model import Port, Workload
    from pytest_istio_mtls.options import Settings

    backend = LocalBackend(Settings(backend="local"), lambda m: None)
    client = Workload("curl", "foo", {"app": "curl"}, "curl", True)
    server = Workload("echo", "foo", {"app": "echo"}, "echo", True, (Port("tcp", 9000, 9000, "tcp"),))
    pod = Pod(client, "ns", "veth", "10.244.0.10", "10.96.0.10", Path("/nonexistent"))
    key = ("outbound", "10.244.0.10:49436")
    old = {"marker": "-", "start_time": "2026-11-30T17:59:58.001Z", "upstream_local_address": "10.244.0.10:40000"}
    new = {"marker": "-", "start_time": "2026-11-30T18:00:00.612Z", "upstream_local_address": "10.244.0.10:40001"}
    pod.log_index[key] = [old, new]
    backend.pods = {client.ref: pod}
    probe = Probe(client, server, server.ports[0], marker="istio-mtls-probe-1")
    start = datetime.datetime(2026, 11, 30, 18, 0, 0, 500000, tzinfo=datetime.timezone.utc).timestamp()
    backend._windows[probe.marker] = (start, start + 0.3)
    assert backend._entries(client.ref, "outbound", ("10.244.0.10", 49436), probe) == [new]
    http = Probe(client, server, Port("http", 8000, 8080), marker="istio-mtls-probe-2")
    backend._windows[http.marker] = (start + 5, start + 6)
    mine = {"marker": "istio-mtls-probe-2", "start_time": "2026-11-30T18:00:05.612Z"}
    pod.log_index[key].append(mine)
    assert backend._entries(client.ref, "outbound", ("10.244.0.10", 49436), http) == [mine]


def test_the_summary_shows_rbac_denials_first_and_the_policy_that_denied() -> None:
    """A real 403 on istio-proxy moves 29 counters; the summary shows 8, the RBAC denial first, and the access
    log's response_code_details names the policy. An entry logged in an older format (no such key) still reads."""
    from pytest_istio_mtls.judge.observation import Evidence, ProxyEvidence

    recorded = json.loads((UNIT / "data" / "evidence" / "http-rbac-denied-server.json").read_text())
    server = ProxyEvidence(**recorded)
    assert len(server.stats_delta) > 8
    (line,) = Evidence(server_proxy=server).summary()
    assert line.startswith("server sidecar httpbin.foo: http.inbound_0.0.0.0_8080;.rbac.denied +1, ")
    assert line.count(" +") == 8
    assert line.endswith("; access log flags -, rbac_access_denied_matched_policy[ns[foo]-policy["
                         "deny-get-without-token]-rule[0]]")
    assert accesslog.FORMAT["response_code_details"] == "%RESPONSE_CODE_DETAILS%"
    older = {k: v for k, v in server.access_log[0].items() if k != "response_code_details"}
    (entry,) = accesslog.parse([json.dumps(older)])
    (line,) = Evidence(server_proxy=ProxyEvidence("httpbin.foo", server.stats_delta, [entry])).summary()
    assert line.endswith("; access log flags -")
