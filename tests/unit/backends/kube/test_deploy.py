"""deploy() on a replayed cluster (pods with native sidecars), topology reuse and replacement, and the
consecutive-probe confirmation that follows the proxy config checks."""

from __future__ import annotations

from typing import Any

import pytest

from pytest_istio_mtls.backends.base import BackendError
from pytest_istio_mtls.backends.kube import backend as kube_backend
from pytest_istio_mtls.backends.kube.backend import KubeBackend
from pytest_istio_mtls.backends.kube.naming import Naming
from pytest_istio_mtls.judge.observation import Probe
from pytest_istio_mtls.model import MeshSettings, Namespace, Port, Scenario, Topology, Workload
from pytest_istio_mtls.options import Settings

from ...kube_replay import ReplayKube, replay

HTTPBIN = Workload("httpbin", "foo", {"app": "httpbin"}, "httpbin", True,
                   (Port("http", 8000, 8080), Port("tcp-echo", 9000, 9000, "tcp")))
CURL = Workload("curl", "foo", {"app": "curl"}, "curl", True)
LEGACY = Workload("curl", "legacy", {"app": "curl"}, "curl", False)
TOPOLOGY = Topology((Namespace("foo", True), Namespace("legacy", False)), (HTTPBIN, CURL, LEGACY))


class Backend(KubeBackend):
    name = "test"

    def __init__(self) -> None:
        super().__init__(Settings(timeout=1), lambda m: None)
        self.kube = ReplayKube()
        self.kube.add(*replay("pods_running.json").values())
        self.naming = Naming(None)
        self.meshes: list[MeshSettings] = []

    def _ensure_mesh(self, mesh: MeshSettings) -> None:
        self.meshes.append(mesh)


def applied(kube: Any) -> list[tuple[str, str, str]]:
    return [c[1] for c in kube.calls if c[0] == "apply"]


def test_deploy_applies_the_topology_and_waits_for_the_pods_replay() -> None:
    backend = Backend()
    backend.kube.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "legacy"}})  # pre-existing
    backend.deploy(TOPOLOGY, MeshSettings())
    kinds = [k for k, _, _ in applied(backend.kube)]
    assert kinds[:2] == ["Namespace", "Namespace"] and kinds.count("Deployment") == 3 and "EnvoyFilter" in kinds
    assert backend.namespaces == {"foo"}  # legacy existed before: never ours to delete
    assert set(backend.pods) == {"httpbin.foo", "curl.foo", "curl.legacy"}
    calls = len(backend.kube.calls)
    backend.deploy(TOPOLOGY, MeshSettings(auto_mtls=False))  # same pods: reused, only the mesh settings change
    assert not [c for c in backend.kube.calls[calls:] if c[0] == "apply"]
    assert backend.meshes[-1].auto_mtls is False


def test_a_new_topology_removes_workloads_that_left_replay() -> None:
    backend = Backend()
    backend.deploy(TOPOLOGY, MeshSettings())
    smaller = Topology(TOPOLOGY.namespaces, (HTTPBIN, CURL))
    backend.kube.objects.pop(("Pod", "legacy", "curl-7c9f5d6b8-zq8rt"))
    backend.deploy(smaller, MeshSettings())
    deleted = [c[1] for c in backend.kube.calls if c[0] == "delete"]
    assert ("Deployment", "legacy", "curl") in deleted
    assert not any(kind == "Namespace" for kind, _, _ in deleted)


def test_ambient_workloads_are_refused() -> None:
    ambient = Workload("z", "amb", {"app": "z"}, "z", False, ambient=True)
    with pytest.raises(BackendError, match=r"ambient workloads .z.amb. are not supported"):
        Backend().deploy(Topology((Namespace("amb", False, True),), (ambient,)), MeshSettings())


def scenario() -> Scenario:
    from pathlib import Path

    from pytest_istio_mtls.model import Expectation, Result

    expectation = Expectation(CURL, HTTPBIN, HTTPBIN.ports[0], Result.MTLS)
    return Scenario("confirm", Path("x.yaml"), topology=TOPOLOGY, expectations=(expectation,))


def test_confirmation_waits_for_two_equal_sweeps(monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes = iter([{0: (503, None, False)}, {0: (200, None, True)}, {0: (200, None, True)}])
    calls: list[list[Probe]] = []

    def sweep(kube: Any, naming: Any, pods: Any, probes: list[Probe]) -> dict[int, tuple[object, ...]]:
        calls.append(probes)
        return next(outcomes)

    monkeypatch.setattr(kube_backend, "sweep", sweep)
    Backend()._confirm(scenario(), interval=0)
    assert len(calls) == 3 and calls[0][0].pair == "curl.foo->httpbin.foo:8000"


def test_outcomes_that_keep_changing_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    flip = [False]

    def sweep(kube: Any, naming: Any, pods: Any, probes: list[Probe]) -> dict[int, tuple[object, ...]]:
        flip[0] = not flip[0]
        return {0: (200 if flip[0] else 503, None, flip[0])}

    monkeypatch.setattr(kube_backend, "sweep", sweep)
    with pytest.raises(BackendError, match=r"outcomes still changing after 1s .--istio-timeout.: curl.foo->httpbin.foo:8000"):
        Backend()._confirm(scenario(), interval=0.05)
