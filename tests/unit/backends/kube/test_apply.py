"""Policies applied in file order so "oldest wins" follows the file; exactly what was applied is deleted;
apply() replaces the previous scenario's policies; existing clusters refuse mesh-wide policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_istio_mtls.backends.base import BackendError
from pytest_istio_mtls.backends.kube import backend as kube_backend
from pytest_istio_mtls.backends.kube.apply import Applier, age_group
from pytest_istio_mtls.backends.kube.backend import KubeBackend
from pytest_istio_mtls.backends.kube.naming import Naming
from pytest_istio_mtls.options import Settings
from pytest_istio_mtls.scenario.loader import load_scenario

from ...kube_replay import ReplayKube

POLICIES = """\
name: ordering
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: zz-first, namespace: app}
  spec: {mtls: {mode: STRICT}}
  ---
  apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: allow-all, namespace: app}
  spec: {rules: [{}]}
  ---
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: aa-second, namespace: app}
  spec: {mtls: {mode: DISABLE}}
  ---
  apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: one, namespace: app}
  spec: {host: backend, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
  ---
  apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: two, namespace: app}
  spec: {host: backend.app.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}}}
expect:
  - {from: frontend.app, to: backend.app, result: allowed}
"""


def load(tmp_path: Path, text: str = POLICIES) -> Any:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_scenario(path)


class Clock:
    def __init__(self, kube: ReplayKube) -> None:
        self.kube = kube
        self.value = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.value

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.value += seconds
        self.kube.now += seconds  # the API server's clock moves too


def test_age_groups_follow_istios_tie_breaks(tmp_path: Path) -> None:
    scenario = load(tmp_path)
    groups = [age_group(p) for p in scenario.policies]
    assert groups[0] == groups[2] == ("PeerAuthentication", "app")
    assert groups[1] is None  # AuthorizationPolicy: age never matters
    assert groups[3] == groups[4] == ("DestinationRule", "app", "backend.app.svc.cluster.local")


def test_competing_policies_get_strictly_increasing_timestamps(tmp_path: Path) -> None:
    scenario = load(tmp_path)
    kube = ReplayKube()
    clock = Clock(kube)
    applier = Applier(kube, lambda m: None, clock=clock, sleep=clock.sleep)
    applier.apply([(p, Naming(None).rewrite(p.manifest, ["app"])) for p in scenario.policies])
    assert len(clock.slept) == 2 and all(s > 1.0 for s in clock.slept)  # one wait per competing pair
    first = kube.get("security.istio.io/v1", "PeerAuthentication", "app", "zz-first")
    second = kube.get("security.istio.io/v1", "PeerAuthentication", "app", "aa-second")
    assert first and second
    assert first["metadata"]["creationTimestamp"] < second["metadata"]["creationTimestamp"]
    assert [a.name for a in applier.applied] == ["zz-first", "allow-all", "aa-second", "one", "two"]


def test_a_violated_order_is_an_error(tmp_path: Path) -> None:
    """An object that already existed keeps its old timestamp: the file order would not hold."""
    scenario = load(tmp_path)
    kube = ReplayKube()
    kube.now += 3600
    kube.add({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
              "metadata": {"name": "aa-second", "namespace": "app", "creationTimestamp": "2020-01-01T00:00:00Z"}})
    clock = Clock(kube)
    applier = Applier(kube, lambda m: None, clock=clock, sleep=clock.sleep)
    with pytest.raises(BackendError, match=r"PeerAuthentication app/aa-second was not created after "
                                           "PeerAuthentication app/zz-first"):
        applier.apply([(p, Naming(None).rewrite(p.manifest, ["app"])) for p in scenario.policies])


def test_delete_all_removes_exactly_what_was_applied(tmp_path: Path) -> None:
    scenario = load(tmp_path)
    kube = ReplayKube()
    foreign = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": "theirs", "namespace": "app"}}
    kube.add(foreign)
    clock = Clock(kube)
    applier = Applier(kube, lambda m: None, clock=clock, sleep=clock.sleep)
    applier.apply([(p, Naming(None).rewrite(p.manifest, ["app"])) for p in scenario.policies])
    deleted = applier.delete_all()
    assert [d.name for d in deleted] == ["two", "one", "aa-second", "allow-all", "zz-first"]
    assert list(kube.objects) == [("PeerAuthentication", "app", "theirs")]
    applier.wait_gone(deleted, timeout=1)


def test_wait_gone_reports_what_lingers(tmp_path: Path) -> None:
    kube = ReplayKube()
    applier = Applier(kube, lambda m: None)
    policy = load(tmp_path).policies[0]
    applier.apply([(policy, Naming(None).rewrite(policy.manifest, ["app"]))])
    lingering = list(applier.applied)
    with pytest.raises(BackendError, match=r"still present 0s after deletion: PeerAuthentication app/zz-first"):
        applier.wait_gone(lingering, timeout=0.1)


class Recorder(KubeBackend):
    """The shared backend with propagation checks recorded instead of run."""

    name = "test"

    def __init__(self, naming: Naming, allow: bool = True) -> None:
        super().__init__(Settings(timeout=5, allow_mesh_wide=allow), lambda m: None)
        self.kube = kube = ReplayKube()
        clock = Clock(kube)
        self.applier = Applier(kube, lambda m: None, clock=clock, sleep=clock.sleep)
        self.naming = naming
        self.settled: list[tuple[str, int, bool]] = []

    def _settle(self, scenario: Any, removed: Any, confirm: bool) -> None:
        self.settled.append((scenario.name, len(list(removed)), confirm))

    def _check_policies(self, scenario: Any) -> None:
        if not self.settings.allow_mesh_wide:
            from pytest_istio_mtls.backends.kube.naming import refuse_mesh_wide

            refuse_mesh_wide(scenario.policies, scenario.mesh.root_namespace, scenario.name)


def test_apply_replaces_the_previous_scenarios_policies(tmp_path: Path) -> None:
    backend = Recorder(Naming(None))
    first = load(tmp_path)
    backend.apply(first)
    (tmp_path / "b").mkdir()
    second = load(tmp_path / "b", POLICIES.replace("name: ordering", "name: second").split("  ---")[0]
                  + "expect:\n  - {from: frontend.app, to: backend.app, result: allowed}\n")
    backend.apply(second)
    kube = backend.kube
    assert isinstance(kube, ReplayKube)
    assert sorted(k[2] for k in kube.objects) == ["zz-first"]
    assert backend.settled == [("ordering", 0, True), ("second", 5, True)]
    backend.clear()
    assert kube.objects == {} and backend.settled[-1] == ("second", 1, False)


def test_existing_clusters_get_mapped_names_and_refuse_mesh_wide(tmp_path: Path) -> None:
    mesh_wide = POLICIES.replace("{name: zz-first, namespace: app}", "{name: default, namespace: istio-system}")
    scenario = load(tmp_path, mesh_wide)
    with pytest.raises(BackendError, match=r"mesh-wide policies .PeerAuthentication istio-system/default.*"
                                           "--istio-allow-mesh-wide"):
        Recorder(Naming("abc123"), allow=False).apply(scenario)
    allowed = Recorder(Naming("abc123"))
    allowed.apply(scenario)
    names = {(k[1], k[2]) for k in allowed.kube.objects}  # type: ignore[attr-defined]
    assert ("istio-system", "default-abc123") in names and ("app-abc123", "aa-second") in names
    dr = allowed.kube.get("networking.istio.io/v1", "DestinationRule", "app-abc123", "two")
    assert dr is not None and dr["spec"]["host"] == "backend.app-abc123.svc.cluster.local"
    assert dr["metadata"]["labels"]["istio-mtls.pytest.io/run"] == "abc123"


def test_confirmation_probes_default_to_every_pair(tmp_path: Path) -> None:
    scenario = load(tmp_path)
    assert [p.pair for p in kube_backend.confirmation_probes(scenario)] == ["frontend.app->backend.app:8080"]
    from dataclasses import replace

    everything = kube_backend.confirmation_probes(replace(scenario, expectations=()))
    assert len(everything) == 4 * 3  # every workload × every server port of the default topology
