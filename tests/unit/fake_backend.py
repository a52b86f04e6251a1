"""A backend that runs nothing, on a clock the tests move: the plugin's session, timing and interruption
without a mesh.

``install`` puts it behind ``backends.create`` (and its clock behind ``run.clock``) for an in-process
``pytester.runpytest``: each phase advances the clock by a fixed amount, so the times the plugin reports are
exact. Its probes all come back as plaintext with the marker seen in clear, which ``decide`` judges
``plaintext``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from pytest_istio_mtls import backends, run
from pytest_istio_mtls.backends import BackendError
from pytest_istio_mtls.judge.observation import CaptureEvidence, Evidence, Observation, Probe
from pytest_istio_mtls.model import MeshSettings, Scenario, Topology
from pytest_istio_mtls.options import Settings


@dataclass
class Clock:
    """time.monotonic, moved only by the fake backend."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeBackend:
    """Each call advances the clock: start 7 s, deploy 2 s, apply 1 s, probe 0.5 s per probe, diagnostics 0.25 s."""

    clock: Clock
    interrupt: str = ""  # the call that raises KeyboardInterrupt once it took its time, as Ctrl-C there would
    fail: str = ""  # the call that raises BackendError once it took its time
    calls: list[str] = field(default_factory=list)
    name: str = "fake"

    def _call(self, name: str, seconds: float) -> None:
        self.calls.append(name)
        self.clock.advance(seconds)
        if name.split(maxsplit=1)[0] == self.interrupt:
            raise KeyboardInterrupt
        if name.split(maxsplit=1)[0] == self.fail:
            raise BackendError(f"{name} failed (fake)")

    def start(self) -> None:
        self._call("start", 7.0)

    def deploy(self, topology: Topology, mesh: MeshSettings) -> None:
        self._call("deploy", 2.0)

    def apply(self, scenario: Scenario) -> None:
        self._call("apply", 1.0)

    def probe(self, probes: Sequence[Probe]) -> list[Observation]:
        self._call(f"probe {len(probes)}", 0.5 * len(probes))
        capture = CaptureEvidence("eth0", flow="10.0.0.2:40000 > 10.0.0.3:8080", packets=8, marker_in_clear=True)
        return [Observation(p, status=200, echoed=True, evidence=Evidence(capture=capture)) for p in probes]

    def diagnostics(self, probes: Sequence[Probe]) -> dict[str, str]:
        self._call("diagnostics", 0.25)
        return {}

    def clear(self) -> None:
        self.calls.append("clear")

    def versions(self) -> dict[str, str]:
        return {"fake": "1"}

    def stop(self, keep: bool) -> str:
        self.calls.append(f"stop keep={keep}")
        return ""


def install(monkeypatch: pytest.MonkeyPatch, *, interrupt: str = "", fail: str = "") -> FakeBackend:
    """The backend every Run of this process creates (pytester's in-process runs included), and its clock."""
    clock = Clock()
    backend = FakeBackend(clock, interrupt, fail)

    def create(settings: Settings, progress: backends.Progress) -> backends.Backend:
        return backend

    monkeypatch.setattr(backends, "create", create)
    monkeypatch.setattr(run, "clock", clock)
    return backend
