"""A ``KubeApi`` that answers from replays of real API objects and command outputs: no cluster.

Objects live in a dict keyed by (kind, namespace, name); server-side apply assigns
``creationTimestamp`` from a settable clock (second resolution, like the API server). Exec, exec
streams and logs are answered by handlers the tests install.
"""

from __future__ import annotations

import copy
import datetime
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pytest_istio_mtls.backends.kube.client import ExecResult, KubeError

REPLAYS = Path(__file__).parent / "replays"
PCAPS = Path(__file__).parent / "data" / "pcap"


def replay(name: str) -> Any:
    """A replay file: JSON/YAML-as-text parsed when .json, text otherwise."""
    path = REPLAYS / name
    return json.loads(path.read_text()) if path.suffix == ".json" else path.read_text()


def stats_text(counters: dict[str, int]) -> str:
    """Counters in pilot-agent's ``stats`` text format (plus a histogram line, which readers skip)."""
    lines = [f"{name}: {value}" for name, value in sorted(counters.items())]
    lines.append("listener.0.0.0.0_15006.downstream_cx_length_ms: P0(nan,0) P25(nan,1.025) P50(nan,1.05) P100(nan,4.1)")
    return "\n".join(lines) + "\n"


class FakeStream:
    """tcpdump over exec: says "listening on" (or, if ``stderr`` says otherwise, exits at once, as
    tcpdump does when it cannot capture) and, once stdin gets a line, yields the pcap and ends."""

    def __init__(self, data: bytes, stderr: bytes = b"tcpdump: listening on eth0, link-type EN10MB (Ethernet), "
                                                      b"snapshot length 262144 bytes\n") -> None:
        self.data = data
        self.pending_err = stderr
        self.stopped = False
        self.open = True
        self.stdin: list[bytes] = []
        self.lock = threading.Lock()

    def data_at_stop(self) -> bytes:
        return self.data

    def pump(self, timeout: float) -> tuple[bytes, bytes]:
        with self.lock:
            err, self.pending_err = self.pending_err, b""
            if err and b"listening on" not in err:
                self.open = False  # tcpdump failed and exited
                return b"", err
            if self.stopped and self.open:
                self.open = False
                return self.data_at_stop(), err + b"3 packets captured\n0 packets dropped by kernel\n"
        time.sleep(min(timeout, 0.01))
        return b"", err

    def write_stdin(self, data: bytes) -> None:
        with self.lock:
            self.stdin.append(data)
            self.stopped = True

    def is_open(self) -> bool:
        return self.open

    def close(self) -> None:
        self.open = False


def _selected(obj: dict[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386), what ``Kube.patch`` sends: maps merge recursively, null deletes a key."""
    for field, value in patch.items():
        if value is None:
            target.pop(field, None)
        elif isinstance(value, dict) and isinstance(target.get(field), dict):
            merge_patch(target[field], value)
        else:
            target[field] = copy.deepcopy(value)


class ReplayKube:
    def __init__(self, now: float = 1_790_000_000.0) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.now = now
        self.calls: list[tuple[Any, ...]] = []
        self.exec_handler: Callable[[str, str, str, list[str]], ExecResult] = \
            lambda ns, pod, container, command: ExecResult(error="no exec handler")
        self.stream_handler: Callable[[str, str, str, list[str]], Any] = \
            lambda ns, pod, container, command: FakeStream(b"")
        self.log_text: dict[tuple[str, str, str], str] = {}
        self.version = "v1.36.1"

    # -- helpers ---------------------------------------------------------------------------------------

    @staticmethod
    def key(obj: dict[str, Any]) -> tuple[str, str, str]:
        metadata = obj.get("metadata") or {}
        return str(obj.get("kind")), str(metadata.get("namespace") or ""), str(metadata.get("name"))

    def add(self, *objects: dict[str, Any]) -> None:
        for obj in objects:
            self.objects[self.key(obj)] = copy.deepcopy(obj)

    def stamp(self) -> str:
        moment = datetime.datetime.fromtimestamp(int(self.now), tz=datetime.timezone.utc)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    # -- KubeApi ---------------------------------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("apply", self.key(obj)))
        stored = copy.deepcopy(obj)
        previous = self.objects.get(self.key(obj))
        metadata = stored.setdefault("metadata", {})
        metadata["creationTimestamp"] = (previous or {}).get("metadata", {}).get("creationTimestamp") or self.stamp()
        self.objects[self.key(obj)] = stored
        return copy.deepcopy(stored)

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(found) if found is not None else None

    def list(self, api_version: str, kind: str, namespace: str | None = None,
             label_selector: str = "") -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, ns, _), o in sorted(self.objects.items())
                if k == kind and (namespace is None or ns == namespace) and _selected(o, label_selector)]

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        self.calls.append(("delete", (kind, namespace or "", name)))
        return self.objects.pop((kind, namespace or "", name), None) is not None

    def patch(self, api_version: str, kind: str, namespace: str | None, name: str,
              body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", (kind, namespace or "", name), body))
        stored = self.objects.get((kind, namespace or "", name))
        if stored is None:
            raise KubeError(f"patch {kind} {namespace}/{name}: not found", 404)
        merge_patch(stored, body)
        return copy.deepcopy(stored)

    def exec(self, namespace: str, pod: str, container: str, command: Sequence[str],
             timeout: float = 60.0, stdin: bytes | None = None) -> ExecResult:
        self.calls.append(("exec", namespace, pod, container, list(command)))
        return self.exec_handler(namespace, pod, container, list(command))

    def exec_stream(self, namespace: str, pod: str, container: str, command: Sequence[str]) -> Any:
        self.calls.append(("stream", namespace, pod, container, list(command)))
        return self.stream_handler(namespace, pod, container, list(command))

    def logs(self, namespace: str, pod: str, container: str, since_seconds: int | None = None,
             tail_lines: int | None = None) -> str:
        self.calls.append(("logs", namespace, pod, container, since_seconds))
        return self.log_text.get((namespace, pod, container), "")

    def server_version(self) -> str:
        return self.version
