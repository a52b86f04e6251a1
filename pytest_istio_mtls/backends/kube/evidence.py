"""Evidence from real sidecars, over the Kubernetes API: stats, access logs and packet captures.

- Stats: ``pilot-agent request GET 'stats?filter=…'`` in the ``istio-proxy`` container (works with
  both the TCP and the Unix-socket admin transport; curl is not in distroless proxies).
- Access logs: the ``istio-proxy`` container's log (JSON lines in our format), read since a time.
- Captures: ``tcpdump -w -`` in the server pod's capture container, streamed as bytes over exec
  (stdout only; stderr is read separately for "listening on" and tcpdump's summary).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_result, stop_after_delay, wait_fixed

from ...judge import accesslog
from ...judge.stats import STATS_PATH, parse_stats
from .client import ExecStream, KubeApi, KubeError
from .manifests import CAPTURE, PROXY
from .workloads import PodInfo

MAX_PACKETS = 20000
T = TypeVar("T")


def snapshot(kube: KubeApi, pod: PodInfo) -> tuple[dict[str, int] | None, str]:
    """The proxy's counters now, or (None, why) when the proxy could not be read (not live)."""
    result = kube.exec(pod.namespace, pod.name, PROXY, ["pilot-agent", "request", "GET", STATS_PATH], timeout=30)
    if not result.ok:
        return None, f"reading stats of {pod.ref} failed: {result.describe()}"
    return parse_stats(result.stdout.decode("utf-8", "replace")), ""


def access_log(kube: KubeApi, pod: PodInfo, since_s: float) -> tuple[list[dict[str, Any]], str]:
    try:
        text = kube.logs(pod.namespace, pod.name, PROXY, since_seconds=max(int(since_s) + 2, 1))
    except KubeError as exc:
        return [], f"reading the access log of {pod.ref} failed: {exc}"
    return accesslog.parse(text.splitlines()), ""


def parse_address(text: Any) -> tuple[str, int] | None:
    """``10.0.0.3:41234`` or ``[fd00::3]:41234`` → (ip, port); anything else → None."""
    text = str(text or "")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def format_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def capture_command(ports: list[int], interface: str = "eth0") -> list[str]:
    """tcpdump on eth0 (never ``any``: sidecar→app traffic on lo is plaintext even under mTLS) for the
    app's container ports, pcap to stdout, stopped when a line (or EOF) arrives on stdin. A sidecar's call to
    its own pod never reaches eth0: iptables redirects it on lo to the inbound listener, captured there.

    A non-interactive shell gives background jobs /dev/null as stdin and ignores SIGINT in them, so
    stdin is kept on fd 3 for the watcher and tcpdump gets SIGTERM (it flushes on TERM too; ``-U``
    writes every packet as it comes anyway). If tcpdump exits by itself, the shell ends with it.
    """
    expression = " or ".join(f"tcp port {p}" for p in sorted(set(ports)))
    dump = f"tcpdump -i {interface} -p -U --immediate-mode -s 0 -c {MAX_PACKETS} -w - '{expression}'"
    watcher = '( read x <&3; kill -TERM "$p" ) >/dev/null 2>&1 &'
    return ["sh", "-c", f'exec 3<&0; {dump} & p=$!; {watcher} wait "$p"']


class Capture:
    """One tcpdump in a server pod's capture container, from ``start`` to ``stop``."""

    def __init__(self, kube: KubeApi, pod: PodInfo, ports: list[int], interface: str = "eth0") -> None:
        self.kube = kube
        self.pod = pod
        self.ports = ports
        self.interface = interface
        self.pcap = bytearray()
        self.stderr = bytearray()
        self.error = ""
        self._stream: ExecStream | None = None
        self._listening = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _pump(self) -> None:
        stream = self._stream
        assert stream is not None
        try:
            while stream.is_open():
                out, err = stream.pump(0.2)
                self.pcap += out
                self.stderr += err
                if b"listening on" in self.stderr:
                    self._listening.set()
            out, err = stream.pump(0)
            self.pcap += out
            self.stderr += err
        except Exception as exc:  # a broken stream ends the capture; what was read is kept
            self.error = f"capture stream broke: {type(exc).__name__}: {exc}"
        finally:
            self._done.set()
            self._listening.set()

    def start(self, timeout: float = 15.0) -> bool:
        try:
            self._stream = self.kube.exec_stream(self.pod.namespace, self.pod.name, CAPTURE,
                                                 capture_command(self.ports, self.interface))
        except KubeError as exc:
            self.error = f"capture did not start: {exc}"
            return False
        self._thread = threading.Thread(target=self._pump, name=f"capture-{self.pod.name}", daemon=True)
        self._thread.start()
        self._listening.wait(timeout)
        if b"listening on" not in self.stderr:
            tail = self.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
            self.error = self.error or ("tcpdump did not start listening" + (f": {tail[0]}" if tail else
                                                                              f" within {timeout:.0f}s"))
            self.stop(timeout=2)
            return False
        return True

    def stop(self, timeout: float = 10.0) -> bytes:
        stream = self._stream
        if stream is not None and not self._done.is_set():
            with contextlib.suppress(Exception):
                stream.write_stdin(b"\n")
            self._done.wait(timeout)
            if not self._done.is_set():
                self.error = self.error or f"tcpdump did not stop within {timeout:.0f}s"
                stream.close()
                self._done.wait(2)
        return bytes(self.pcap)


def wait_for_logs(fetch: Callable[[], T], needed: Callable[[T], bool], timeout: float = 6.0,
                  interval: float = 0.5) -> T:
    """Envoy flushes access logs about once a second: re-read until ``needed(logs)`` or the deadline,
    then go on with what there is (missing entries are missing evidence, judged by the verdict)."""
    retrying = Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(interval),
                        retry=retry_if_result(lambda logs: not needed(logs)),
                        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None)
    return retrying(fetch)
