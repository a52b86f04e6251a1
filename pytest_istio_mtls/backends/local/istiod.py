"""The local backend with real Istio as the judge: istiod configures the sidecars, not our model.

``IstiodMesh`` is what the local backend calls when ``--istio-control-plane=istiod``: it starts the
control plane (``controlplane.py``), registers the topology with the API server as a kubelet would
(``kubelet.py``), prepares each pod's pilot-agent (``agent.py``), and applies scenario policies with
the same client and the same oldest-wins ordering as the kind and existing backends.

A policy is in force when each sidecar's own configuration proves it was generated after istiod
held the policy: first istiod's config store must show every applied object at the resourceVersion
the API server gave it (and none that was removed); then a generation marker (an EnvoyFilter that
stamps the sidecars' virtualOutbound listener) is bumped, and every sidecar must serve a listener
with that stamp, nothing warming and nothing rejected. A push is built from the whole config store,
so a sidecar serving generation N was configured from a store that already held the scenario.
No sleep, and nothing here consults the oracle.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ...build.istio import IstioBuild
from ...model import MeshSettings, Scenario, Topology, Workload
from ..base import BackendError
from ..kube import propagation
from ..kube.apply import Applied, Applier
from ..kube.client import Kube
from ..kube.manifests import fresh_connection_filters, service
from ..kube.naming import Naming
from ..kube.propagation import marker, poll, served_generation
from . import agent, kubelet, prober
from .controlplane import NODE, ControlPlane, Spawn

NACK_SETTLE_S = 2.0  # istiod pushes within its 100 ms debounce: a rejection still the latest after this is final
LISTENERS = "/config_dump?resource=dynamic_listeners"
XDS_STATS = "/" + propagation.XDS_STATS


class IstiodMesh:
    def __init__(self, build: IstioBuild, directory: Path, hub: str, hub_ip: str, spawn: Spawn,
                 progress: Callable[[str], None], timeout: float) -> None:
        self.build = build
        self.hub_ip = hub_ip
        self.progress = progress
        self.timeout = timeout
        self.control = ControlPlane(build, directory, hub, hub_ip, spawn, progress, timeout)
        self.applier: Applier | None = None
        self.mesh: MeshSettings | None = None
        self.generation = 0
        self.registered: list[tuple[str, str, str, str]] = []  # (apiVersion, kind, namespace, name)
        self.pilot_agent = ""
        self.envoy = ""
        self.root_cert = b""

    # -- control plane -----------------------------------------------------------------------------------

    @property
    def kube(self) -> Kube | None:
        """The plugin's client of the control plane's API server (None until it is up)."""
        return self.control.kube

    def start(self, mesh: MeshSettings, ca_directory: Path, envoy_path: str) -> None:
        self.applier = Applier(self.control.start(mesh, ca_directory), self.progress)
        self.mesh = mesh
        self.pilot_agent = agent.executable_copy(self.build.pilot_agent)
        self.envoy = agent.executable_copy(envoy_path)
        self.root_cert = (ca_directory / "root-cert.pem").read_bytes()

    def versions(self) -> dict[str, str]:
        return {"control_plane": "istiod", "istiod": self.build.version,
                "kubernetes": self.control.kubernetes_version, "etcd": self.build.etcd_version}

    def ensure_mesh(self, mesh: MeshSettings) -> None:
        if mesh != self.mesh:
            if self.mesh is not None and mesh.trust_domain != self.mesh.trust_domain:
                raise BackendError(f"this scenario's trust domain {mesh.trust_domain} differs from the running "
                                   f"local istiod's ({self.mesh.trust_domain}): the workload certificates would "
                                   "all change; run it in a session of its own")
            self.control.set_mesh(mesh)
            self.mesh = mesh
        # The root namespace exists in every cluster (istio-system is created at start): policies and the
        # generation marker go there even when the topology does not name it.
        if self.kube is not None and self.kube.get("v1", "Namespace", None, mesh.root_namespace) is None:
            self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": mesh.root_namespace}})

    # -- topology ----------------------------------------------------------------------------------------

    def _apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        assert self.kube is not None
        result = self.kube.apply(obj)
        meta = obj["metadata"]
        key = (str(obj["apiVersion"]), str(obj["kind"]), str(meta.get("namespace") or ""), str(meta["name"]))
        if key not in self.registered:
            self.registered.append(key)
        return result

    def register_services(self, topology: Topology) -> dict[str, str]:
        """Namespaces, ServiceAccounts and Services; returns workload ref → allocated ClusterIP."""
        for obj in kubelet.namespaces(topology):
            self._apply(obj)
        addresses = {}
        naming = Naming(None)
        for workload in topology.workloads:
            if workload.ports:
                created = self._apply(service(workload, naming))
                addresses[workload.ref] = str((created.get("spec") or {}).get("clusterIP") or "")
        for obj in fresh_connection_filters(topology, naming):
            self._apply(obj)
        return addresses

    def register_pods(self, pods: Iterable[tuple[Workload, str]]) -> None:
        """Pods reported Running and Ready at their netns address, and their Services' EndpointSlices."""
        assert self.kube is not None
        started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        for workload, ip in pods:
            self._apply(kubelet.pod(workload, NODE))
            self.kube.patch_pod_status(workload.namespace, workload.name, kubelet.pod_status(ip, self.hub_ip, started))
            if workload.ports:
                self._apply(kubelet.endpoint_slice(workload, ip, NODE))

    def unregister(self) -> None:
        """Delete the topology's objects (newest first); Namespaces stay, as nothing would finalize them."""
        assert self.kube is not None
        for api_version, kind, namespace, name in reversed(self.registered):
            if kind != "Namespace":
                self.kube.delete(api_version, kind, namespace or None, name, grace_period_seconds=0)
        self.registered = [r for r in self.registered if r[1] == "Namespace"]

    def sidecar(self, workload: Workload, ip: str, directory: Path) -> tuple[list[str], dict[str, str]]:
        """Prepare the pod's istio-proxy files; returns pilot-agent's command and environment."""
        assert self.kube is not None and self.mesh is not None
        token = self.kube.token(workload.namespace, workload.service_account, "istio-ca", 43200)
        agent.prepare(directory, kubelet.pod_labels(workload), token, self.root_cert, self.build.bootstrap_template)
        env = agent.environment(directory, workload, ip, self.hub_ip, self.envoy, self.mesh.trust_domain, NODE)
        return agent.command(self.pilot_agent, workload), env

    # -- policies ----------------------------------------------------------------------------------------

    def apply(self, scenario: Scenario) -> None:
        """Replace the policies in force by the scenario's, and wait until istiod's store holds exactly them."""
        assert self.applier is not None
        removed = self.applier.delete_all()
        self.applier.wait_gone(removed, self.timeout)
        self.applier.apply([(p, dict(p.manifest)) for p in scenario.policies])
        self._wait_istiod_holds(self.applier.applied, removed)

    def _wait_istiod_holds(self, applied: Sequence[Applied], removed: Sequence[Applied]) -> None:
        def check() -> str:
            try:
                held = self.control.configz()
            except (OSError, ValueError) as exc:
                return f"istiod's config store cannot be read ({exc})"
            return "; ".join(propagation.pending_in_store(held, applied, removed))

        pending = poll(check, self.timeout, 0.05)
        if pending:
            raise BackendError(f"istiod did not pick up the scenario's policies within {self.timeout:.0f}s: {pending}")

    def confirm(self, sidecars: Sequence[tuple[str, str, Callable[[], int | None], Callable[[], str]]]) -> None:
        """Bump the marker and wait until every sidecar serves it.

        ``sidecars``: (ref, netns, the agent's exit code or None while it runs, its log tail). A dead agent
        fails at once: its orphaned Envoy may still answer, but that pod's sidecar is gone. A sidecar
        that rejected istiod's latest push (a NACK) fails within NACK_SETTLE_S: a push built before the
        change (already debounced when the scenario's policies arrived) may still be sent and rejected, and
        is superseded by the push of the new generation; a rejection that stays the latest is the answer.
        """
        assert self.mesh is not None
        earlier = self._sent()  # a NACK counts only for a push made after the bump, never a stale one
        self.generation += 1
        self._apply(marker(self.mesh.root_namespace, self.generation))
        wanted = str(self.generation)
        done: set[str] = set()  # sidecars already serving the generation (it never goes back)
        rejections: dict[str, tuple[str, float]] = {}  # ref → (istiod's error, when it was first seen)

        def check() -> str:
            pending: dict[str, str] = {}
            nacks: list[str] = []
            for ref, netns, exited, tail in sidecars:
                if ref in done:
                    continue
                code = exited()
                if code is not None:
                    raise BackendError(f"the sidecar of {ref} is not running (pilot-agent exit {code}): {tail()}")
                try:
                    values = dict(line.split(": ", 1) for line in prober.admin(netns, XDS_STATS).splitlines()
                                  if ": " in line)
                    dump = prober.admin(netns, LISTENERS, 5.0)
                except OSError as exc:
                    pending[ref] = f"Envoy admin not answering ({exc})"
                    continue
                try:
                    served = served_generation(json.loads(dump))
                except ValueError:  # no dynamic listener accepted yet: an empty answer
                    served = ""
                if served != wanted:
                    pending[ref] = f"serves generation {served or 'none'}, want {wanted}"
                    rejected = int(values.get("listener_manager.lds.update_rejected", "0")) + int(
                        values.get("cluster_manager.cds.update_rejected", "0"))
                    error = self._nack(ref, earlier) if rejected else ""
                    if error:
                        seen = rejections.setdefault(ref, (error, time.monotonic()))
                        if seen[0] != error:
                            rejections[ref] = (error, time.monotonic())
                        elif time.monotonic() - seen[1] > NACK_SETTLE_S:
                            nacks.append(f"the sidecar of {ref} rejected configuration from istiod (a NACK): "
                                         f"{error}")
                elif values.get("listener_manager.total_listeners_warming", "0") != "0" or values.get(
                        "cluster_manager.warming_clusters", "0") != "0":
                    pending[ref] = "listeners or clusters still warming"
                else:
                    done.add(ref)
            if nacks:
                raise BackendError("; ".join(nacks))
            return "; ".join(f"{k}: {v}" for k, v in pending.items())

        pending = poll(check, self.timeout, 0.02)
        if pending:
            raise BackendError(f"timed out after {self.timeout:.0f} s waiting for istiod's configuration on every "
                               f"sidecar: {pending}")

    def _sent(self) -> dict[tuple[str, str], str]:
        """(proxy, resource type) → the nonce istiod sent last."""
        try:
            statuses = self.control.syncz()
        except (OSError, ValueError):
            return {}
        return {(str(s.get("proxy")), kind): str(res.get("sent") or "") for s in statuses
                for kind, res in (s.get("resources") or {}).items()}

    def _nack(self, ref: str, earlier: dict[tuple[str, str], str]) -> str:
        """istiod's error for a resource type whose latest push, made after ``earlier``, the proxy rejected."""
        try:
            statuses = self.control.syncz()
        except (OSError, ValueError):
            return ""
        for status in statuses:
            if status.get("proxy") != ref:
                continue
            return "; ".join(f"{kind.rsplit('.', 1)[-1]}: {res.get('lastError')}"
                             for kind, res in (status.get("resources") or {}).items()
                             if res.get("lastError") and res.get("sent") != res.get("acked")
                             and res.get("sent") != earlier.get((ref, kind)))
        return ""

    def stop(self) -> None:
        self.control.stop()
