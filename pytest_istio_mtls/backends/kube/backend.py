"""The part of the Backend protocol that is the same on kind and on an existing cluster:
deploy the topology, put policies in force (and prove they are), probe, explain, clear.

Subclasses provide ``start``/``versions``/``stop`` and how the mesh settings are honoured
(``_ensure_mesh``: patched live on kind, only checked on a shared cluster).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from ...judge.observation import Observation, Probe
from ...model import MeshSettings, Scenario, Topology
from ...options import Settings
from ...oracle import mtls
from ..base import BackendError, Progress
from . import routing
from .apply import Applied, Applier
from .client import KubeApi
from .credentials import Credentials
from .diagnostics import sections
from .istio import IstioInstall
from .manifests import images, render_topology
from .naming import Naming, run_labels
from .observe import Observer, sweep
from .propagation import Generations
from .workloads import PodInfo, current_pods, wait_ready

Ref = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


def _ref(obj: dict[str, Any]) -> Ref:
    metadata = obj.get("metadata") or {}
    return (str(obj.get("apiVersion")), str(obj.get("kind")), str(metadata.get("namespace") or ""),
            str(metadata.get("name")))


def confirmation_probes(scenario: Scenario) -> list[Probe]:
    """The scenario's own rows, or every client × server port when it has none (fixture use); without the ones
    that need a routing state or a client certificate, which are set up only for their own probes."""
    if scenario.expectations:
        probes = [Probe(e.source, e.target, e.port, e.request) for e in scenario.expectations]
    else:
        probes = [Probe(p.source, p.target, p.port) for p in mtls.predict_all(scenario)]
    return [p for p in probes if not routing.routed(p) and not p.request.tls]


class KubeBackend:
    name = "kube"

    def __init__(self, settings: Settings, progress: Progress) -> None:
        self.settings = settings
        self.progress = progress
        self.kube: KubeApi | None = None
        self.naming = Naming(None)
        self.revision: str | None = settings.istio_revision
        self.topology: Topology | None = None
        self.mesh: MeshSettings | None = None
        self.pods: dict[str, PodInfo] = {}
        self.applier: Applier | None = None
        self.scenario: Scenario | None = None  # whose policies are in force
        self.workload_objects: list[Ref] = []
        self.namespaces: set[str] = set()  # cluster namespaces this run created
        self.access_logs = True
        self.install: IstioInstall | None = None  # the control plane in use (set by start)
        self.generations: Generations | None = None
        self.credentials: Credentials | None = None

    # -- hooks ------------------------------------------------------------------------------------------

    def _ensure_mesh(self, mesh: MeshSettings) -> None:
        raise NotImplementedError

    def _check_policies(self, scenario: Scenario) -> None:
        """Refuse policies this backend must not apply (existing: mesh-wide without permission)."""

    # -- helpers ----------------------------------------------------------------------------------------

    def _api(self) -> KubeApi:
        if self.kube is None:
            raise BackendError(f"the {self.name} backend was not started")
        return self.kube

    def _applier(self) -> Applier:
        if self.applier is None:
            self.applier = Applier(self._api(), self.progress)
        return self.applier

    def _generations(self) -> Generations:
        if self.generations is None:
            if self.install is None:
                raise BackendError(f"the {self.name} backend has no control plane")
            self.generations = Generations(self._api(), self.install.namespace,
                                           f"app=istiod,istio.io/rev={self.install.revision}", self.settings.timeout,
                                           run_labels(self.naming))
        return self.generations

    def _sidecar_namespaces(self) -> list[str]:
        topology = self.topology
        return sorted({self.naming.ns(w.namespace) for w in topology.workloads if w.sidecar}) if topology else []

    # -- Backend protocol -------------------------------------------------------------------------------

    def deploy(self, topology: Topology, mesh: MeshSettings) -> None:
        kube = self._api()
        self._ensure_mesh(mesh)
        self.mesh = mesh
        if self.topology is not None and topology.signature() == self.topology.signature():
            self.pods = current_pods(kube, topology.workloads, self.naming)
            return
        ambient = [w.ref for w in topology.workloads if w.ambient]
        if ambient:
            raise BackendError(f"ambient workloads ({', '.join(ambient)}) are not supported by the {self.name} "
                               "backend")
        objects = render_topology(topology, self.naming, images(self.settings.images), self.revision)
        wanted = {_ref(o) for o in objects}
        for stale in reversed(self.workload_objects):
            if stale not in wanted and stale[1] != "Namespace":
                kube.delete(*stale)
        self.progress(f"deploying {len(topology.workloads)} workloads in "
                      f"{', '.join(self.naming.ns(n.name) for n in topology.namespaces)}")
        for obj in objects:
            if obj["kind"] == "Namespace" and kube.get("v1", "Namespace", None, obj["metadata"]["name"]) is None:
                self.namespaces.add(obj["metadata"]["name"])  # created by this run: ours to delete
            kube.apply(obj)
        self.workload_objects = [_ref(o) for o in objects]
        self.pods = wait_ready(kube, topology, self.naming, self.settings.timeout, self.progress)
        self.topology = topology

    def apply(self, scenario: Scenario) -> None:
        self._check_policies(scenario)
        applier = self._applier()
        removed = applier.delete_all()
        applier.wait_gone(removed)
        known = [n.name for n in scenario.topology.namespaces]
        items = [(p, self.naming.rewrite(p.manifest, known)) for p in scenario.policies]
        self.scenario = scenario
        applier.apply(items)
        self._settle(scenario, removed, confirm=True)

    def clear(self) -> None:
        if self.scenario is None:
            return
        applier = self._applier()
        removed = applier.delete_all()
        applier.wait_gone(removed)
        self.scenario = dataclasses.replace(self.scenario, policies=(), expectations=())
        self._settle(self.scenario, removed, confirm=False)

    def probe(self, probes: Sequence[Probe]) -> list[Observation]:
        """Probe in groups that need the same routing state (routing.py), each put in force before its group."""
        kube = self._api()
        if self.topology is None:
            raise BackendError(f"the {self.name} backend has nothing deployed")
        if self.credentials is None:
            self.credentials = Credentials(kube, self.naming, images(self.settings.images), self.revision,
                                           self.settings.timeout, self.progress)
        pcaps = self.settings.report / "pcaps" if self.settings.report is not None else None
        router = routing.Router(kube, self.naming, self.topology, lambda: self.pods, self._generations(),
                                self._sidecar_namespaces(), self.settings.timeout, self.progress)
        observations: dict[int, Observation] = {}
        self.pods = current_pods(kube, self.topology.workloads, self.naming)  # routing changes no pod
        observer = Observer(kube, self.naming, self.pods, self.progress, pcaps, self.access_logs, self.credentials)
        try:
            for group in routing.order(probes):
                router.route(probes[group[0]])
                observations.update(zip(group, observer.observe([probes[i] for i in group]), strict=True))
        finally:
            router.reset()
        return [observations[i] for i in range(len(probes))]

    def diagnostics(self, probes: Sequence[Probe]) -> dict[str, str]:
        applied = list(self.applier.applied) if self.applier is not None else []
        try:
            return sections(self._api(), self.naming, self.pods, probes, applied)
        except BackendError as exc:
            return {"diagnostics": f"could not be collected: {exc}"}

    def _cleanup(self) -> list[str]:
        """Delete the policies and the namespaces this run created; return what could not be deleted."""
        problems = []
        kube = self._api()
        try:
            if self.applier is not None:
                self.applier.delete_all()
            if self.generations is not None:
                self.generations.remove()
        except BackendError as exc:
            problems.append(str(exc))
        for namespace in sorted(self.namespaces):
            try:
                kube.delete("v1", "Namespace", None, namespace)
            except BackendError as exc:
                problems.append(str(exc))
        self.namespaces.clear()
        return problems

    # -- propagation ------------------------------------------------------------------------------------

    def _settle(self, scenario: Scenario, removed: Sequence[Applied], confirm: bool) -> None:
        """istiod holds exactly the scenario's policies, then every sidecar serves a generation pushed after that
        (propagation.py); with ``confirm``, two sweeps of the scenario's probes agree too."""
        generations = self._generations()
        applied = list(self.applier.applied) if self.applier is not None else []
        generations.wait_held(applied, removed)
        generations.confirm(self._sidecar_namespaces(), self.pods.values())
        self.progress(f"policies in force on {sum(1 for p in self.pods.values() if p.sidecar)} sidecars "
                      f"(generation {generations.generation})")
        if confirm:
            self._confirm(scenario)

    def _confirm(self, scenario: Scenario, interval: float = 1.0) -> None:
        """Two consecutive sweeps of the scenario's probes must agree: no connection still runs under
        the previous policies (Envoy drains, it does not cut)."""
        probes = confirmation_probes(scenario)
        if not probes:
            return
        kube = self._api()
        previous = sweep(kube, self.naming, self.pods, probes)
        changed: list[int] = []

        def unsettled() -> list[int]:
            nonlocal previous, changed
            current = sweep(kube, self.naming, self.pods, probes)
            changed = [i for i in current if current[i] != previous.get(i)]
            previous = current
            return changed

        try:
            Retrying(stop=stop_after_delay(self.settings.timeout), wait=wait_fixed(interval),
                     retry=retry_if_result(bool))(unsettled)
        except RetryError:
            pairs = ", ".join(probes[i].pair for i in changed)
            raise BackendError(f"outcomes still changing after {self.settings.timeout:.0f}s (--istio-timeout): "
                               f"{pairs}") from None
