"""The one interface every mesh backend implements.

A backend turns the scenario model into running workloads and policies, and probes into
observations with evidence. It never judges: ``verdict`` does that, identically for all backends.
The run orchestrator (``run.py``) calls the methods in this order::

    start → (deploy → apply → probe → [diagnostics] → clear)* → stop
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from ..judge.observation import Observation, Probe
from ..model import MeshSettings, Scenario, Topology

Progress = Callable[[str], None]


class BackendError(Exception):
    """A failure the user must see as one clear message (no traceback): bad environment, timeouts."""


class BackendUnavailable(BackendError):
    """The backend cannot run here at all (no Docker, no root, missing binary). Raised by ``start``."""


@runtime_checkable
class Backend(Protocol):
    name: str

    def start(self) -> None:
        """Check prerequisites and create shared infrastructure (cluster, Istio, run directory)."""

    def deploy(self, topology: Topology, mesh: MeshSettings) -> None:
        """Bring up ``topology``'s workloads; reuse them if the same topology already runs."""

    def apply(self, scenario: Scenario) -> None:
        """Replace the policies in force with ``scenario``'s and return once every proxy enforces them."""

    def probe(self, probes: Sequence[Probe]) -> list[Observation]:
        """Send every probe (a batch, grouped by source) and return one observation each, in order."""

    def diagnostics(self, probes: Sequence[Probe]) -> dict[str, str]:
        """Sections of text that help explain failed probes (proxy config, policies, logs)."""

    def clear(self) -> None:
        """Remove every policy this run applied and wait until the proxies no longer enforce them."""

    def versions(self) -> dict[str, str]:
        """Versions of everything involved (Istio, Kubernetes, Envoy, kind, node image) for reports."""

    def stop(self, keep: bool) -> str:
        """Tear down what this run created (or keep it); return instructions when something is kept."""
