"""The probe batch script: built, run for real by ``sh`` against a stand-in curl that answers like
curl 8.x does (replayed messages and exit codes), and parsed back into readings."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_istio_mtls.backends.kube import probes
from pytest_istio_mtls.backends.kube.naming import Naming
from pytest_istio_mtls.judge.observation import Probe
from pytest_istio_mtls.model import Port, Request, Workload

CURL = Workload("curl", "foo", {"app": "curl"}, "curl", True)
LEGACY = Workload("curl", "legacy", {"app": "curl"}, "curl", False)


def server(name: str, namespace: str = "foo", *ports: Port) -> Workload:
    return Workload(name, namespace, {"app": name}, name, True, ports or (Port("http", 8000, 8080),))


HTTPBIN = server("httpbin", "foo", Port("http", 8000, 8080), Port("tcp-echo", 9000, 9000, "tcp"))

# What curl 8.16 prints for these failures (exit code, stderr), as replayed from real runs.
FAKE_CURL = r'''
import json, sys
args = sys.argv[1:]
out, fmt, url = args[args.index("-o") + 1], args[args.index("-w") + 1], args[-1]
host = url.split("//", 1)[1].split(":", 1)[0]
def finish(code, ip, port, seconds, rc, err=""):
    text = fmt.replace("%{http_code}", code).replace("%{local_ip}", ip).replace("%{local_port}", port)
    sys.stdout.write(text.replace("%{time_total}", seconds))
    sys.stderr.write(err)
    sys.exit(rc)
if url.startswith("telnet://"):
    line = sys.stdin.readline()
    open(out, "w").write("hello " + line)
    finish("000", "10.244.0.9", "41001", "3.002045", 28,
           "curl: (28) Operation timed out after 3002 milliseconds with 40 bytes received\n")
headers = [args[i + 1] for i, a in enumerate(args) if a == "-H"]
body = args[args.index("--data-raw") + 1]
if host.startswith("nowhere"):
    finish("000", "", "0", "0.004132", 6, "curl: (6) Could not resolve host: " + host + "\n")
if host.startswith("strict"):
    finish("000", "10.244.0.7", "43208", "0.002311", 56, "curl: (56) Recv failure: Connection reset by peer\n")
if host.startswith("broken"):
    open(out, "w").write("upstream connect error or disconnect/reset before headers. reset reason: connection termination")
    finish("503", "10.244.0.9", "41003", "0.011", 0)
echo = {"headers": {h.split(": ", 1)[0]: [h.split(": ", 1)[1]] for h in headers}}
echo["headers"]["X-Forwarded-Client-Cert"] = ["By=spiffe://cluster.local/ns/foo/sa/httpbin;Hash=5b1c;Subject=\"\";URI=spiffe://cluster.local/ns/foo/sa/curl"]
echo["data"] = body
open(out, "w").write(json.dumps(echo, indent=2) + "\n@@not-a-record@@\n")
finish("200", "10.244.0.9", "41000", "0.004871", 0)
'''


@pytest.fixture
def fake_curl(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "curl"
    script.write_text(f"#!{sys.executable}\n{FAKE_CURL}")
    script.chmod(0o755)
    return bin_dir


def run_batch(batch: list[Probe], bin_dir: Path, naming: Naming | None = None) -> list[probes.Reading]:
    token = secrets.token_hex(6)
    text = probes.script(batch, naming or Naming(None), token)
    sh = shutil.which("sh")
    assert sh is not None
    done = subprocess.run([sh, "-c", text], capture_output=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=False)
    outputs = probes.parse(done.stdout, token, len(batch))
    assert all(o.complete for o in outputs), done.stdout
    return [probes.read(p, o) for p, o in zip(batch, outputs, strict=True)]


def test_a_batch_runs_in_sh_and_every_probe_is_read_replay(fake_curl: Path) -> None:
    batch = [Probe(CURL, HTTPBIN, HTTPBIN.ports[0]),
             Probe(CURL, HTTPBIN, HTTPBIN.ports[1]),
             Probe(LEGACY, server("strict"), Port("http", 8000, 8080)),
             Probe(CURL, server("broken"), Port("http", 8000, 8080)),
             Probe(CURL, server("nowhere"), Port("http", 8000, 8080)),
             Probe(CURL, HTTPBIN, HTTPBIN.ports[0], Request("POST", "/post", {"X-Team": "a b 'c'"}, "it's {json}"))]
    mtls, tcp, reset, unavailable, unresolved, post = run_batch(batch, fake_curl)
    assert (mtls.status, mtls.error, mtls.echoed, mtls.client) == (200, None, True, ("10.244.0.9", 41000))
    assert json.loads(mtls.body.split("\n@@")[0])["headers"]["X-Istio-Mtls-Probe"] == [batch[0].marker]
    assert mtls.latency_ms == pytest.approx(4.871)
    assert (tcp.status, tcp.error, tcp.echoed) == (None, None, True)  # curl's own deadline is the normal end
    assert tcp.body == f"hello {batch[1].marker}\n"
    assert (reset.status, reset.error, reset.client) == (None, "reset", ("10.244.0.7", 43208))
    assert reset.detail == "curl: (56) Recv failure: Connection reset by peer"
    assert (unavailable.status, unavailable.echoed) == (503, False)
    assert (unresolved.error, unresolved.client) == ("unresolved", None)
    echoed = json.loads(post.body.split("\n@@")[0])
    assert echoed["headers"]["X-Team"] == ["a b 'c'"] and echoed["data"] == "it's {json}"


def test_the_script_targets_cluster_names(fake_curl: Path) -> None:
    text = probes.script([Probe(CURL, HTTPBIN, HTTPBIN.ports[0])], Naming("abc123"), "t0k3n")
    assert "http://httpbin.foo-abc123.svc.cluster.local:8000/headers" in text
    assert "telnet://" not in text and "X-Istio-Mtls-Probe: istio-mtls-probe-" in text


def test_output_parse_keeps_bodies_exact_and_marks_missing_records() -> None:
    token = "abcdef"
    body = b'{"a": "x\n@@abcdef 9 meta 0 1|2|3|4@@ inside a body"}\n\n'
    stdout = (b"\n@@abcdef 0 meta 0 200|10.0.0.1|5555|0.001@@\n@@abcdef 0 body@@\n" + body
              + b"\n@@abcdef 0 stderr@@\n\n@@abcdef 0 end@@\n"
              + b"\n@@abcdef 1 meta 7 000||0|0.000@@\n@@abcdef 1 body@@\n")  # the script died here
    first, second, third = probes.parse(stdout, token, 3)
    assert first.complete and first.http_code == 200 and first.local_port == 5555
    assert first.body.startswith(b'{"a": "x')
    assert not second.complete and second.curl_exit == 7 and second.local_ip == ""
    assert not third.complete and third.curl_exit is None


@pytest.mark.parametrize(("code", "stderr", "error"), [
    (6, "curl: (6) Could not resolve host: httpbin.foo.svc.cluster.local", "unresolved"),
    (7, "curl: (7) Failed to connect to 10.96.0.5 port 8000 after 0 ms: Could not connect to server", "refused"),
    (7, "curl: (7) Failed to connect to 10.96.0.5 port 8000 after 3 ms: No route to host", "unreachable"),
    (28, "curl: (28) Connection timed out after 5001 milliseconds", "timeout"),
    (52, "curl: (52) Empty reply from server", "closed"),
    (56, "curl: (56) Recv failure: Connection reset by peer", "reset"),
    (56, "curl: (56) Failure when receiving data from the peer", "closed"),
    (35, "curl: (35) OpenSSL SSL_connect: SSL_ERROR_SYSCALL", "tls"),
])
def test_curl_exit_codes_replay(code: int, stderr: str, error: str) -> None:
    assert probes.transport_error(code, stderr) == error


def test_tcp_without_echo_is_closed_or_timed_out() -> None:
    probe = Probe(CURL, HTTPBIN, HTTPBIN.ports[1])
    closed = probes.read(probe, probes.Output(0, 0, 0, "10.244.0.9", 41000, 0.01, b"", "", True))
    assert (closed.error, closed.echoed) == ("closed", False)
    silent = probes.read(probe, probes.Output(0, 28, 0, "10.244.0.9", 41000, 3.0, b"", "curl: (28) timed out", True))
    assert silent.error == "timeout"


def test_an_answer_from_someone_else_is_not_echoed() -> None:
    probe = Probe(CURL, HTTPBIN, HTTPBIN.ports[0])
    reading = probes.read(probe, probes.Output(0, 0, 200, "10.0.0.1", 1, 0.1, b'{"headers": {}}', "", True))
    assert reading.status == 200 and not reading.echoed
