"""Helpers for the real-Envoy tests: a known topology, and scenarios run and judged on the local backend."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytest_istio_mtls.backends.local import LocalBackend
from pytest_istio_mtls.judge.observation import Observation, Probe
from pytest_istio_mtls.judge.verdict import Verdict, decide
from pytest_istio_mtls.model import Scenario
from pytest_istio_mtls.scenario.loader import load_scenario

FOO_BAR_LEGACY = """
topology:
  namespaces:
    foo: {sidecars: true}
    bar: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - {name: httpbin, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}, {name: tcp, port: 9000, protocol: tcp}]}
    - {name: httpbin, namespace: bar, ports: [{name: http, port: 8000, targetPort: 8080}, {name: tcp, port: 9000, protocol: tcp}]}
    - {name: httpbin, namespace: legacy, ports: [{name: http, port: 8000, targetPort: 8080}, {name: tcp, port: 9000, protocol: tcp}]}
    - {name: curl, namespace: foo}
    - {name: curl, namespace: bar}
    - {name: curl, namespace: legacy}
"""
# The policies block that makes namespace foo STRICT (append to FOO_BAR_LEGACY, then add expect rows).
STRICT_FOO = """
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: foo}
  spec: {mtls: {mode: STRICT}}
"""


@dataclass
class Probed:
    observation: Observation
    verdict: Verdict

    @property
    def result(self) -> str | None:
        return self.verdict.result.value if self.verdict.result else None


class Lab:
    """Runs scenarios (YAML text) on the session's local backend and returns judged probes."""

    def __init__(self, backend: LocalBackend, directory: Path) -> None:
        self.backend = backend
        self.directory = directory
        self.count = 0

    def load(self, text: str) -> Scenario:
        self.count += 1
        path = self.directory / f"scenario-{self.count}.yaml"
        path.write_text(text, encoding="utf-8")
        return load_scenario(path)

    def run(self, scenario: Scenario, *, fresh: bool = False) -> dict[str, Probed]:
        if fresh:
            self.backend.signature = None  # new pods: faults injected earlier never leak into this test
        self.backend.deploy(scenario.topology, scenario.mesh)
        self.backend.apply(scenario)
        probes = [Probe(e.source, e.target, e.port, e.request) for e in scenario.expectations]
        observations = self.backend.probe(probes)
        return {p.pair: Probed(o, decide(o)) for p, o in zip(probes, observations, strict=True)}
