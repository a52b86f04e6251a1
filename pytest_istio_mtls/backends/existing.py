"""The existing backend: a cluster that already runs Istio, reached through a kubeconfig.

It never installs, upgrades or reconfigures Istio. Each run works in its own namespaces
(``<ns>-<runid>``), rewrites every namespaced reference in the policies to match, refuses
mesh-wide policies unless ``--istio-allow-mesh-wide``, and deletes what it created at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex

from ..model import MeshSettings, Scenario
from ..options import Settings
from .base import BackendError, BackendUnavailable, Progress
from .kube import istio
from .kube.backend import KubeBackend
from .kube.client import Kube, KubeconfigError
from .kube.manifests import images
from .kube.naming import Naming, refuse_mesh_wide
from .kube.versions import minor_of

ROOT_KINDS = {"PeerAuthentication": "security.istio.io/v1", "AuthorizationPolicy": "security.istio.io/v1",
              "DestinationRule": "networking.istio.io/v1"}


class ExistingBackend(KubeBackend):
    name = "existing"

    def __init__(self, settings: Settings, progress: Progress) -> None:
        super().__init__(settings, progress)
        self.run_id = secrets.token_hex(3)
        self.mesh_config: dict[str, object] = {}

    @property
    def where(self) -> str:
        config = str(self.settings.kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config")
        return config + (f" (context {self.settings.context})" if self.settings.context else "")

    def start(self) -> None:
        fix = ("fix: point --istio-kubeconfig (or KUBECONFIG) and --istio-context at a cluster that runs Istio, "
               "or use --istio-backend=kind (creates one) or --istio-backend=local (no cluster)")
        try:
            self.kube = Kube(self.settings.kubeconfig, self.settings.context, request_timeout=15.0)
        except KubeconfigError as exc:  # its own fix names the file; one fix, not two
            raise BackendUnavailable(f"{exc.problem}; fix: {exc.fix}, or use --istio-backend=kind (creates one) or "
                                     "--istio-backend=local (no cluster)") from None
        except BackendError as exc:
            raise BackendUnavailable(f"{exc}; {fix}") from None
        try:
            self.kube.server_version()
        except BackendError as exc:
            raise BackendUnavailable(f"cannot reach the cluster of {self.where}: {exc}; {fix}") from None
        self.install = istio.choose(istio.detect(self.kube, self.settings.istio_revision),
                                    self.settings.istio_revision, f"the cluster of {self.where} (the existing "
                                    "backend never installs Istio; use --istio-backend=kind for that)")
        wanted = self.settings.istio_version
        if wanted not in ("latest", self.install.version) and minor_of(self.install.version) != wanted:
            raise BackendError(f"the cluster runs Istio {self.install.version}, not {wanted}; the existing backend "
                               "never installs or upgrades Istio (drop --istio-version to use what is installed)")
        self.revision = self.settings.istio_revision or (
            None if self.install.revision == "default" else self.install.revision)
        self.mesh_config = istio.mesh_config(self.kube, self.install)
        root = str(self.mesh_config.get("rootNamespace") or "istio-system")
        trust = str(self.mesh_config.get("trustDomain") or "cluster.local")
        self.naming = Naming(self.run_id, root, trust)
        gaps = istio.access_log_gaps(self.mesh_config)
        self.access_logs = not gaps
        if gaps:
            self.progress(f"{gaps}: access logs are not used as evidence, so TCP mtls rows cannot be proven (no peer "
                          "identity) and failures lose Envoy's reasons; to fix, set meshConfig.accessLogFormat to "
                          "the one in `pytest-istio-mtls render --backend kind` (see docs/kind.md)")
        self._warn_foreign_mesh_policies(root)
        self.progress(f"Istio {self.install.version} (revision {self.install.revision}) on {self.where}; this run's "
                      f"namespaces end in -{self.run_id}")

    def _warn_foreign_mesh_policies(self, root: str) -> None:
        """Mesh-wide policies we did not write change every scenario's outcome: say so up front."""
        assert self.kube is not None
        found = []
        for kind, api_version in ROOT_KINDS.items():
            try:
                found += [f"{kind} {root}/{(i.get('metadata') or {}).get('name')}"
                          for i in self.kube.list(api_version, kind, root)]
            except BackendError:
                continue
        if found:
            self.progress(f"the cluster has mesh-wide policies the scenarios do not know about: {', '.join(found)}; "
                          "the oracle's predictions assume there are none")

    def _ensure_mesh(self, mesh: MeshSettings) -> None:
        assert self.kube is not None and self.install is not None
        if mesh.root_namespace != self.naming.root:
            raise BackendError(f"the scenario's root namespace is {mesh.root_namespace} but the cluster's is "
                               f"{self.naming.root}")
        differences = istio.mesh_differences(istio.mesh_config(self.kube, self.install), mesh)
        if differences:
            wanted = ", ".join(f"{k}={v}" for k, v in differences.items())
            raise BackendError(f"the scenario needs meshConfig {wanted}, which the cluster does not have; the existing "
                               "backend never changes the mesh config (use --istio-backend=kind)")

    def _check_policies(self, scenario: Scenario) -> None:
        if not self.settings.allow_mesh_wide:
            refuse_mesh_wide(scenario.policies, scenario.mesh.root_namespace, scenario.name)

    def versions(self) -> dict[str, str]:
        found = {"backend": "existing"}
        if self.install is not None:
            found.update({"istio": self.install.version, "istio revision": self.install.revision})
        found.update({f"image {key}": image for key, image in images(self.settings.images).items()})
        if self.kube is not None:
            with contextlib.suppress(BackendError):
                found["kubernetes"] = self.kube.server_version()
        return found

    def stop(self, keep: bool) -> str:
        if self.kube is None:
            return ""
        if keep:
            return self.instructions()
        problems = self._cleanup()
        return f"cleanup problems: {'; '.join(problems)}" if problems else ""

    def instructions(self) -> str:
        config = f"--kubeconfig {shlex.quote(str(self.settings.kubeconfig))} " if self.settings.kubeconfig else ""
        context = f"--context {shlex.quote(self.settings.context)} " if self.settings.context else ""
        namespaces = " ".join(sorted(self.namespaces))
        lines = [f"kept this run's namespaces on {self.where}: {namespaces or 'none'}",
                 f"  kubectl {config}{context}get pods -n <namespace>",
                 f"  istioctl {config}{context}proxy-config listener <pod> -n <namespace> --port 15006"]
        applied = self.applier.applied if self.applier is not None else []
        mesh_wide = [a for a in applied if a.namespace == self.naming.root]
        if namespaces:
            lines.append(f"delete them: kubectl {config}{context}delete namespace {namespaces}")
        for item in mesh_wide:
            lines.append(f"and the mesh-wide {item.kind}: kubectl {config}{context}delete "
                         f"{item.kind.lower()} -n {item.namespace} {item.name}")
        return "\n".join(lines)
