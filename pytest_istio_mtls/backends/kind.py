"""The kind backend (default): a kind cluster with a chosen Istio, created for the run.

``start`` checks Docker first (one clear message in seconds when it is missing), resolves the Istio
version, fetches verified kind and istioctl binaries, creates (or reuses) the cluster, waits for
nodes and CoreDNS, loads the images the local Docker holds into the node, installs Istio with our overlay
and waits for istiod and its injector. A cluster that existed before the run is never deleted;
pytest-kind's ``--cluster-name``, ``--keep-cluster``, ``--kind-image`` and ``--kind-bin`` are honoured when
that plugin is installed.

Air-gapped use: everything downloaded can be given instead (``--istio-kind-bin``, ``--istio-istioctl``,
``--istio-kind-image``, ``--istio-hub``/``--istio-tag``, ``--istio-images``), and what is given is never
downloaded: an image the local Docker holds is loaded into the node, and a given istioctl decides the version.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

from ..model import MeshSettings
from ..options import Settings
from .base import BackendError, Progress
from .kube import istio
from .kube.backend import KubeBackend
from .kube.client import PLURALS, Kube
from .kube.cluster import Cluster, check_docker, image_label, local_images, wait_usable
from .kube.manifests import UPSTREAM_ENVOY_ENV, images
from .kube.naming import MANAGED_BY
from .kube.tools import cache_dir, host_platform, istioctl_binary, kind_binary
from .kube.versions import KIND_VERSION, fetch_releases, needs_releases, node_image_for, resolve

# On a proxyv2 image built by `pytest-istio-mtls build-images`: "upstream <Envoy version>" (docs/kind.md).
ENVOY_LABEL = "io.pytest-istio-mtls.envoy"
STAGE_TIMEOUT_S = 300.0  # cluster creation and Istio install, each (a 5-minute budget per stage)
CLUSTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
POLICY_API = {"PeerAuthentication": "security.istio.io/v1", "AuthorizationPolicy": "security.istio.io/v1",
              "RequestAuthentication": "security.istio.io/v1", "DestinationRule": "networking.istio.io/v1",
              "VirtualService": "networking.istio.io/v1", "ServiceEntry": "networking.istio.io/v1",
              "Sidecar": "networking.istio.io/v1", "EnvoyFilter": "networking.istio.io/v1alpha3"}


class KindBackend(KubeBackend):
    name = "kind"

    def __init__(self, settings: Settings, progress: Progress) -> None:
        super().__init__(settings, progress)
        self.cluster: Cluster | None = None
        self.istio_version = ""
        self.istioctl: Path | None = None
        self.image = ""
        self.tag = ""
        self.envoy = ""  # "upstream 1.39.3" when the proxy image carries upstream Envoy
        self.reused = False

    def start(self) -> None:
        check_docker()
        target = host_platform()
        settings, extra = self.settings, self.settings.extra
        name = str(extra.get("cluster_name") or settings.kind_cluster)
        if not CLUSTER_NAME.match(name):
            raise BackendError(f"kind cluster name {name!r} must be lower-case letters, digits and '-'")
        if settings.istioctl is not None:
            self.istioctl = settings.istioctl
            self.istio_version = self._given_version(settings.istioctl)
        else:
            self.istio_version = self._resolve_version()
            self.progress(f"Istio {self.istio_version}: fetching verified istioctl")
            self.istioctl = istioctl_binary(self.istio_version, target)
        self.tag = settings.tag or self.istio_version
        kind_bin = settings.kind_bin or (Path(extra["kind_bin"]) if extra.get("kind_bin") else None)
        if kind_bin is None:
            self.progress(f"fetching verified kind {KIND_VERSION}")
        kind = kind_bin or kind_binary(target)
        self.image = str(settings.kind_image or extra.get("kind_image") or "")
        if not self.image:
            self.image, note = node_image_for(self.istio_version)
            if note:
                self.progress(note)
        stage = max(self.settings.timeout, STAGE_TIMEOUT_S)
        kubeconfig = self.settings.rootdir / ".pytest-istio-mtls" / name / "kubeconfig"
        self.cluster = Cluster(name, kind, self.image, kubeconfig, timeout=stage, config=settings.kind_config)
        self.progress(f"kind cluster {name}: creating with {self.image} (or reusing one of that name)")
        self.reused = self.cluster.create()
        if self.reused:
            self.progress(f"kind cluster {name} already existed: reusing it; it will not be deleted")
        try:
            self.kube = Kube(kubeconfig)
            wait_usable(self.kube, stage)
            self._load_images()
            self.install = self._ensure_istio(kubeconfig, stage)
            istio.wait_control_plane(self.kube, self.install, stage)
            if self.reused:
                self._remove_leftovers()
        except BaseException as exc:
            # run.py only stops a started backend: a cluster created for a failed start is removed here.
            if self.cluster.created and self.settings.keep == "never" and not extra.get("keep_cluster"):
                with contextlib.suppress(BackendError):
                    self.cluster.delete()
                if isinstance(exc, BackendError):
                    raise type(exc)(f"{exc} (the kind cluster {name} created for this run was deleted)") from None
            raise

    def _given_version(self, istioctl: Path) -> str:
        """The version a given istioctl installs; ``--istio-version`` must agree with it when set."""
        version = istio.client_version(istioctl) or self.settings.tag or ""
        if not version:
            raise BackendError(f"{istioctl} does not say which Istio it installs (istioctl version reports none); "
                               "name the image tag with --istio-tag")
        wanted = self.settings.istio_version
        if wanted not in ("latest", version) and not version.startswith(wanted + "."):
            raise BackendError(f"--istio-version {wanted} but {istioctl} installs Istio {version}; drop one")
        return version

    def _istio_images(self) -> list[str]:
        return [f"{self.settings.hub}/{component}:{self.tag}" for component in ("pilot", "proxyv2")]

    def _load_images(self) -> None:
        """Images the local Docker holds go into the node, so nothing given is downloaded (air-gapped use)."""
        assert self.cluster is not None
        wanted = [*self._istio_images(), *images(self.settings.images).values()]
        local = local_images(wanted)
        proxy = self._istio_images()[1]
        if proxy in local:
            self.envoy = image_label(proxy, ENVOY_LABEL)
            if self.envoy:
                self.progress(f"{proxy} carries {self.envoy} Envoy: istiod is installed with the switches for it "
                              f"({', '.join(f'{k}=false' for k in UPSTREAM_ENVOY_ENV)}, telemetry off)")
        if local:
            started = time.monotonic()
            self.progress(f"loading {len(local)} local image(s) into the kind node: {', '.join(local)}")
            self.cluster.load(local)
            self.progress(f"images loaded in {time.monotonic() - started:.0f} s")

    def _resolve_version(self) -> str:
        spec = self.settings.istio_version
        if not needs_releases(spec):
            return resolve(spec, None)
        import httpx

        with httpx.Client(timeout=30.0, headers={"User-Agent": "pytest-istio-mtls"}) as http:
            return resolve(spec, fetch_releases(http, os.environ.get("GITHUB_TOKEN")))

    def _ensure_istio(self, kubeconfig: Path, timeout: float) -> istio.IstioInstall:
        assert self.kube is not None and self.istioctl is not None
        revision = self.revision or "default"
        found = istio.detect(self.kube, revision)
        if found and found[0].version not in (self.istio_version, self.tag):
            raise BackendError(f"kind cluster {self.cluster.name if self.cluster else ''} already runs Istio "
                               f"{found[0].version} (revision {revision}), not {self.istio_version}; delete the "
                               f"cluster or pass --istio-version {found[0].version}")
        if not found:
            self.progress(f"installing Istio {self.istio_version} (profile minimal"
                          + (f", revision {self.revision}" if self.revision else "") + ")")
            istio.install(self.istioctl, kubeconfig, MeshSettings(), self.revision, timeout, self.settings.hub,
                          tag=self.tag,
                          upstream_envoy=self.envoy.startswith("upstream"))
            found = istio.detect(self.kube, revision)
        return istio.choose(found, self.revision, "the kind cluster")

    def _remove_leftovers(self) -> None:
        """Policies an interrupted earlier run left behind would change every scenario: remove them."""
        assert self.kube is not None
        selector = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        for kind, api_version in POLICY_API.items():
            if kind not in PLURALS:
                continue
            for item in self.kube.list(api_version, kind, None, selector):
                metadata = item.get("metadata") or {}
                self.progress(f"removing {kind} {metadata.get('namespace')}/{metadata.get('name')} left by an "
                              "earlier run")
                self.kube.delete(api_version, kind, metadata.get("namespace"), str(metadata.get("name")))

    def _ensure_mesh(self, mesh: MeshSettings) -> None:
        assert self.kube is not None and self.install is not None
        current = istio.mesh_config(self.kube, self.install)
        if current.get("trustDomain", "cluster.local") != mesh.trust_domain:
            raise BackendError(f"the scenario's trust domain {mesh.trust_domain} differs from the installed one "
                               f"{current.get('trustDomain')}; that needs a new cluster")
        changes = istio.set_mesh(self.kube, self.install, mesh)
        if changes:
            self.progress("mesh config changed live: " + ", ".join(f"{k}={v}" for k, v in changes.items()))

    def versions(self) -> dict[str, str]:
        found: dict[str, str] = {"backend": "kind", "istio": self.istio_version, "node image": self.image,
                                 "kind": (self.cluster.version() if self.cluster else "") or KIND_VERSION}
        if self.revision:
            found["istio revision"] = self.revision
        found["istio hub"] = self.settings.hub
        if self.tag != self.istio_version:
            found["istio tag"] = self.tag
        found["proxy"] = (f"{self.envoy} Envoy (istiod's Istio-only filters off)" if self.envoy.startswith("upstream")
                          else "Istio's proxyv2")
        found.update({f"image {key}": image for key, image in images(self.settings.images).items()})
        if self.kube is not None:
            with contextlib.suppress(BackendError):
                found["kubernetes"] = self.kube.server_version()
        return found

    def stop(self, keep: bool) -> str:
        cluster = self.cluster
        if cluster is None:
            return ""
        if keep or self.settings.extra.get("keep_cluster"):
            return self.instructions() if keep else ""
        if not cluster.created:
            problems = self._cleanup() if self.kube is not None else []
            note = f"kind cluster {cluster.name} existed before this run and was left running"
            return note + (f" (cleanup problems: {'; '.join(problems)})" if problems else "")
        try:
            cluster.delete()
        except BackendError as exc:
            return f"could not delete kind cluster {cluster.name}: {exc}; delete it with: " \
                   f"{shlex.quote(str(cluster.kind))} delete cluster --name {cluster.name}"
        return ""

    def instructions(self) -> str:
        assert self.cluster is not None
        config = shlex.quote(str(self.cluster.kubeconfig))
        istioctl = shlex.quote(str(self.istioctl or "istioctl"))
        pod: Any = next(iter(self.pods.values()), None)
        where = f"{pod.name} -n {pod.namespace}" if pod is not None else "<pod> -n <namespace>"
        return "\n".join([
            f"kind cluster {self.cluster.name} kept (kubeconfig {self.cluster.kubeconfig})",
            f"  kubectl --kubeconfig {config} get pods -A",
            f"  {istioctl} --kubeconfig {config} proxy-config listener {where} --port 15006",
            f"  {istioctl} --kubeconfig {config} proxy-config cluster {where}",
            f"  (istioctl {self.istio_version}: {cache_dir() / 'istioctl' / self.istio_version / 'istioctl'})",
            f"delete it: {shlex.quote(str(self.cluster.kind))} delete cluster --name {self.cluster.name}",
        ])
