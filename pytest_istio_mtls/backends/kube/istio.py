"""Istio on the cluster: find the installed control plane, install one with istioctl (kind only),
read and (kind only) change the mesh config the scenarios depend on.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from ...judge.accesslog import EVIDENCE_KEYS, FORMAT
from ...model import MeshSettings
from ..base import BackendError
from .client import KubeApi
from .manifests import DEFAULT_HUB, install_overlay, mesh_settings

Progress = Callable[[str], None]
TAG = re.compile(r":(\d+\.\d+\.\d+(?:-(?:alpha|beta|rc)\.\d+)?)(?:-distroless)?(?:@sha256:[0-9a-f]+)?$")
ANY_TAG = re.compile(r":([\w][\w.-]*)(?:@sha256:[0-9a-f]+)?$")  # a build of one's own: 1.31-eed52ebb66ad


@dataclass(frozen=True)
class IstioInstall:
    version: str
    revision: str  # "default" when unrevisioned
    namespace: str
    istiod: str

    @property
    def config_map(self) -> str:
        return "istio" if self.revision == "default" else f"istio-{self.revision}"

    @property
    def injector(self) -> str:
        return "istio-sidecar-injector" if self.revision == "default" else f"istio-sidecar-injector-{self.revision}"


def version_from_image(image: str) -> str:
    """``docker.io/istio/pilot:1.31.1`` (or ``-distroless``, or with a digest) → ``1.31.1``; another tag (a build of
    one's own) as it is; '' if none."""
    match = TAG.search(image) or ANY_TAG.search(image.rpartition("/")[2])
    return match[1] if match and match[1] != "latest" else ""


def _install_of(deployment: Mapping[str, Any]) -> IstioInstall | None:
    metadata = deployment.get("metadata") or {}
    labels = metadata.get("labels") or {}
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    image = next((str(c.get("image", "")) for c in containers if c.get("name") == "discovery"),
                 str(containers[0].get("image", "")) if containers else "")
    version = version_from_image(image) or str(labels.get("operator.istio.io/version", ""))
    if not version:
        return None
    return IstioInstall(version, str(labels.get("istio.io/rev") or "default"), str(metadata.get("namespace")),
                        str(metadata.get("name")))


def detect(kube: KubeApi, revision: str | None = None) -> list[IstioInstall]:
    """Installed control planes (istiod Deployments), optionally only ``revision``."""
    try:
        deployments = kube.list("apps/v1", "Deployment", None, "app=istiod")
    except BackendError:  # no cluster-wide list permission: look where Istio usually is
        deployments = kube.list("apps/v1", "Deployment", "istio-system", "app=istiod")
    installs = [i for i in (_install_of(d) for d in deployments) if i is not None]
    if revision is not None:
        installs = [i for i in installs if i.revision == revision]
    return sorted(installs, key=lambda i: (i.revision != "default", i.revision))


def choose(installs: list[IstioInstall], revision: str | None, where: str) -> IstioInstall:
    """The one control plane the run uses, or a clear error when there is none or the choice is ambiguous."""
    if not installs:
        wanted = f" with revision {revision}" if revision else ""
        raise BackendError(f"no istiod{wanted} found in {where}")
    if len(installs) > 1 and revision is None and not any(i.revision == "default" for i in installs):
        raise BackendError(f"{where} runs several Istio revisions ({', '.join(i.revision for i in installs)}); "
                           "choose one with --istio-revision")
    return installs[0]


def mesh_config(kube: KubeApi, install: IstioInstall) -> dict[str, Any]:
    config_map = kube.get("v1", "ConfigMap", install.namespace, install.config_map)
    text = ((config_map or {}).get("data") or {}).get("mesh", "")
    try:
        mesh = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as exc:
        raise BackendError(f"the mesh config in {install.namespace}/{install.config_map} is not YAML: {exc}") from None
    return mesh if isinstance(mesh, dict) else {}


def access_log_gaps(mesh: Mapping[str, Any]) -> str:
    """Why the mesh's access logs cannot serve as evidence ('' when they can).

    "The mesh logs JSON" is not enough: Istio's default JSON format (``EnvoyJSONLogFormatIstio``,
    pilot/pkg/model/telemetry_logging.go) has no probe marker and no peer URI SAN, so HTTP entries cannot
    be joined to probes and TCP peer identities are never seen. Every key the evidence reads must be
    logged with the same Envoy operator as ours.
    """
    if not mesh.get("accessLogFile"):
        return "the mesh writes no access log (meshConfig.accessLogFile is empty)"
    if mesh.get("accessLogEncoding") != "JSON":
        return "the mesh's access log is not JSON (meshConfig.accessLogEncoding is not JSON)"
    text = str(mesh.get("accessLogFormat") or "")
    try:
        logged = json.loads(text) if text.strip() else {}
    except ValueError:
        logged = None
    if not isinstance(logged, dict):
        return "meshConfig.accessLogFormat is not a JSON object"
    missing = [key for key in EVIDENCE_KEYS if logged.get(key) != FORMAT[key]]
    if missing:
        source = "Istio's default JSON format" if not text.strip() else "meshConfig.accessLogFormat"
        return f"{source} lacks the keys the evidence joins on: " + ", ".join(
            f"{key} ({FORMAT[key]})" for key in missing)
    return ""


def mesh_differences(current: Mapping[str, Any], wanted: MeshSettings) -> dict[str, Any]:
    """The scenario-controlled meshConfig keys whose live value differs (absent keys use Istio's defaults)."""
    defaults = {"enableAutoMtls": True, "rootNamespace": "istio-system"}
    return {key: value for key, value in mesh_settings(wanted).items()
            if current.get(key, defaults[key]) != value}


def set_mesh(kube: KubeApi, install: IstioInstall, wanted: MeshSettings) -> dict[str, Any]:
    """Patch the live mesh config (kind only); istiod watches the ConfigMap and pushes. Returns the changes."""
    current = mesh_config(kube, install)
    changes = mesh_differences(current, wanted)
    if changes:
        text = yaml.safe_dump({**current, **changes}, sort_keys=False)
        kube.patch("v1", "ConfigMap", install.namespace, install.config_map, {"data": {"mesh": text}})
    return changes


def install(istioctl: Path, kubeconfig: Path, mesh: MeshSettings, revision: str | None, timeout: float,
            hub: str = DEFAULT_HUB, run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run, *,
            tag: str | None = None, upstream_envoy: bool = False) -> None:
    """``istioctl install`` with our overlay; istioctl itself waits for readiness (bounded by ``timeout``)."""
    with tempfile.TemporaryDirectory(prefix="pytest-istio-mtls-") as tmp:
        overlay = Path(tmp, "overlay.yaml")
        overlay.write_text(yaml.safe_dump(install_overlay(mesh, revision, hub, tag, upstream_envoy), sort_keys=False))
        command = [str(istioctl), "install", "-y", "--kubeconfig", str(kubeconfig), "-f", str(overlay),
                   "--readiness-timeout", f"{int(timeout)}s"]
        try:
            done = run(command, capture_output=True, text=True, timeout=timeout + 60)
        except subprocess.TimeoutExpired:
            raise BackendError(f"istioctl install did not finish within {timeout + 60:.0f}s") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise BackendError(f"istioctl install failed (exit {done.returncode}): {tail}")


def client_version(istioctl: Path, run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run) -> str:
    """The Istio version an istioctl binary installs (``istioctl version --remote=false``); '' if it cannot say."""
    try:
        done = run([str(istioctl), "version", "--remote=false", "-o", "json"], capture_output=True, text=True,
                   timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"cannot run {istioctl}: {exc}") from None
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
        raise BackendError(f"`{istioctl} version` failed (exit {done.returncode}): {tail}")
    try:
        version = str(json.loads(done.stdout)["clientVersion"]["version"])
    except (ValueError, KeyError, TypeError):
        return ""
    return "" if version in ("", "unknown") else version


def wait_control_plane(kube: KubeApi, install_: IstioInstall, timeout: float) -> None:
    """istiod available and the injection webhook registered: pods created after this get sidecars."""
    def missing() -> list[str]:
        gaps = []
        deployment = kube.get("apps/v1", "Deployment", install_.namespace, install_.istiod) or {}
        status = deployment.get("status") or {}
        if not status.get("availableReplicas"):
            gaps.append(f"deployment {install_.namespace}/{install_.istiod} has no available replica")
        if kube.get("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", None,
                    install_.injector) is None:
            gaps.append(f"mutating webhook {install_.injector} is not registered")
        return gaps

    last: list[str] = []

    def check() -> list[str]:
        nonlocal last
        last = missing()
        return last

    try:
        Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(2), retry=retry_if_result(bool))(check)
    except RetryError:
        raise BackendError(f"Istio control plane not ready after {timeout:.0f}s: {'; '.join(last)}") from None
