"""The Python API behind the fixtures, for teams that write probes as ordinary pytest tests.

Example::

    def test_strict_foo(istio_policies, istio_probe):
        with istio_policies(STRICT_FOO_YAML):
            assert istio_probe("curl.legacy", "httpbin.foo:8000").result == "refused"
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import semantics
from .backends import Backend
from .model import MeshSettings, Request, Result, Scenario, Topology, Workload
from .observation import Observation, Probe
from .scenario import load_policies
from .verdict import Verdict, decide


@dataclass
class ProbeResult:
    """One probe: what the client saw, the judged result (None when unproven) and the prediction."""

    observation: Observation
    verdict: Verdict
    prediction: semantics.Prediction

    @property
    def result(self) -> Result | None:
        return self.verdict.result

    @property
    def status(self) -> int | None:
        return self.observation.status


class Mesh:
    """A deployed topology plus the policies in force; what the ``istio_mesh`` fixture returns."""

    def __init__(self, backend: Backend, topology: Topology, mesh: MeshSettings | None = None) -> None:
        self.backend = backend
        self.topology = topology
        self.settings = mesh or MeshSettings()
        self.scenario = Scenario(name="fixture", path=Path("<fixture>"), mesh=self.settings, topology=topology)
        backend.deploy(topology, self.settings)

    def workload(self, ref: str) -> Workload:
        workload = self.topology.workload(ref)
        if workload is not None:
            return workload
        matches = [w for w in self.topology.workloads if w.name == ref]
        if len(matches) == 1:
            return matches[0]
        raise ValueError(f"unknown or ambiguous workload {ref!r}; workloads: "
                         f"{', '.join(w.ref for w in self.topology.workloads)}")

    @contextlib.contextmanager
    def policies(self, manifests: str | Path | Sequence[Mapping[str, Any]]) -> Iterator[Scenario]:
        """Apply Istio resources (YAML text, a file, or objects), yield, then remove exactly those."""
        file = "<policies>"
        if isinstance(manifests, Path):
            file, manifests = str(manifests), manifests.read_text(encoding="utf-8")
        elif not isinstance(manifests, str):
            manifests = yaml.safe_dump_all([dict(m) for m in manifests], sort_keys=False)
        policies, warnings = load_policies(manifests, self.topology, self.settings, file)
        scenario = dataclasses.replace(self.scenario, policies=policies, warnings=warnings)
        self.backend.apply(scenario)
        previous, self.scenario = self.scenario, scenario
        try:
            yield scenario
        finally:
            self.scenario = previous
            self.backend.clear()

    def probe(self, source: str, target: str, *, request: Request | None = None) -> ProbeResult:
        """Probe ``source`` → ``target`` (``name.namespace[:port]``) under the policies in force."""
        target_ref, _, port_key = target.partition(":")
        client, server = self.workload(source), self.workload(target_ref)
        if port_key:
            port = server.port(int(port_key) if port_key.isdigit() else port_key)
        else:
            port = server.ports[0] if len(server.ports) == 1 else None
        if port is None:
            raise ValueError(f"{server.ref} has ports {', '.join(str(p.port) for p in server.ports) or 'none'}; "
                             f"write {server.ref}:PORT")
        probe = Probe(client, server, port, request or Request())
        observation = self.backend.probe([probe])[0]
        prediction = semantics.predict(self.scenario, client, server, port, probe.request)
        return ProbeResult(observation, decide(observation), prediction)
