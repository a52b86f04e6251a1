"""The kind backend's lifecycle on replays: fail fast without Docker (before any download), start on a
replayed cluster, never delete a reused cluster, keep with instructions, mesh config patched live."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from pytest_istio_mtls.backends import kind as kind_module
from pytest_istio_mtls.backends.base import BackendError, BackendUnavailable
from pytest_istio_mtls.backends.kind import KindBackend
from pytest_istio_mtls.backends.kube import istio
from pytest_istio_mtls.backends.kube.manifests import install_overlay
from pytest_istio_mtls.model import MeshSettings
from pytest_istio_mtls.options import Settings

from ..kube_replay import ReplayKube, replay

WEBHOOK = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
           "metadata": {"name": "istio-sidecar-injector"}}
COREDNS = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system"},
           "status": {"replicas": 2, "availableReplicas": 2}}


def no_download(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("nothing may be downloaded or resolved before Docker is known to work")


def test_no_docker_fails_before_any_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("KIND_EXPERIMENTAL_PROVIDER", raising=False)
    for name in ("istioctl_binary", "kind_binary", "fetch_releases", "host_platform"):
        monkeypatch.setattr(kind_module, name, no_download)
    with pytest.raises(BackendUnavailable, match=r"needs Docker.*--istio-backend=local"):
        KindBackend(Settings(), lambda m: None).start()


class FakeCluster:
    instances: ClassVar[list[FakeCluster]] = []

    def __init__(self, name: str, kind: Path, image: str, kubeconfig: Path, timeout: float = 0,
                 config: Path | None = None) -> None:
        self.name, self.kind, self.image, self.kubeconfig, self.config = name, kind, image, kubeconfig, config
        self.loaded: list[str] = []
        self.created = False
        self.reuse = False
        self.deleted = 0
        FakeCluster.instances.append(self)

    def create(self) -> bool:
        self.created = not self.reuse
        return self.reuse

    def load(self, images: list[str]) -> None:
        self.loaded += images

    def delete(self) -> None:
        if self.created:
            self.deleted += 1

    def version(self) -> str:
        return "kind v0.32.0 go1.25.5 linux/amd64"


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ReplayKube:
    """A replayed kind cluster with Istio 1.31.1 installed by the (faked) istioctl."""
    kube = ReplayKube()
    kube.add(*replay("nodes_ready.json"), COREDNS)
    installed: list[Any] = []

    def install(istioctl: Path, kubeconfig: Path, mesh: MeshSettings, revision: str | None, timeout: float,
                hub: str, *, tag: str | None = None, upstream_envoy: bool = False) -> None:
        installed.append((istioctl, kubeconfig, mesh, revision, hub))
        kube.install_options = {"tag": tag, "upstream_envoy": upstream_envoy}  # type: ignore[attr-defined]
        kube.add(replay("istiod_deployment.json"), replay("istio_configmap.json"), WEBHOOK)

    monkeypatch.setattr(kind_module, "check_docker", lambda: None)
    monkeypatch.setattr(kind_module, "host_platform", lambda: None)
    monkeypatch.setattr(kind_module, "istioctl_binary", lambda version, target: tmp_path / "istioctl")
    monkeypatch.setattr(kind_module, "kind_binary", lambda target: tmp_path / "kind")
    monkeypatch.setattr(kind_module, "Cluster", FakeCluster)
    monkeypatch.setattr(kind_module, "local_images", lambda images: [])  # the machine's own Docker stays out of it
    monkeypatch.setattr(kind_module, "Kube", lambda kubeconfig: kube)
    monkeypatch.setattr(istio, "install", install)
    kube.installed = installed  # type: ignore[attr-defined]
    FakeCluster.instances.clear()
    return kube


def backend(tmp_path: Path, **extra: Any) -> KindBackend:
    settings = Settings(istio_version="1.31.1", rootdir=tmp_path, extra=extra, timeout=1)
    return KindBackend(settings, lambda m: None)


def test_start_creates_installs_and_reports_versions_replay(cluster: ReplayKube, tmp_path: Path) -> None:
    kind = backend(tmp_path)
    kind.start()
    made = FakeCluster.instances[-1]
    assert made.name == "pytest-istio-mtls"
    assert made.image.startswith("kindest/node:v1.36.1@sha256:")
    assert made.kubeconfig == tmp_path / ".pytest-istio-mtls" / "pytest-istio-mtls" / "kubeconfig"
    assert len(cluster.installed) == 1  # type: ignore[attr-defined]
    assert cluster.installed[0][4] == "docker.io/istio"  # type: ignore[attr-defined]
    assert kind.install is not None and kind.install.version == "1.31.1"
    versions = kind.versions()
    assert versions["istio"] == "1.31.1" and versions["kubernetes"] == "v1.36.1"
    assert versions["kind"].startswith("kind v0.32.0")


def test_pytest_kind_options_are_honoured(cluster: ReplayKube, tmp_path: Path) -> None:
    kind = backend(tmp_path, cluster_name="pytest-kind", kind_image="kindest/node:v1.35.5", kind_bin="/opt/kind")
    kind.start()
    made = FakeCluster.instances[-1]
    assert (made.name, made.image, made.kind) == ("pytest-kind", "kindest/node:v1.35.5", Path("/opt/kind"))


def test_air_gapped_start_downloads_nothing_and_loads_what_docker_holds(cluster: ReplayKube, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("istioctl_binary", "kind_binary", "fetch_releases"):
        monkeypatch.setattr(kind_module, name, no_download)
    monkeypatch.setattr(istio, "client_version", lambda istioctl: "1.31-eed52ebb66ad")
    held = {"docker.io/istio/pilot:1.31-eed52ebb66ad", "docker.io/istio/proxyv2:1.31-eed52ebb66ad", "pim/app:1"}
    monkeypatch.setattr(kind_module, "local_images", lambda images: [i for i in images if i in held])
    monkeypatch.setattr(kind_module, "image_label", lambda image, label: "upstream 1.39.3")
    settings = Settings(rootdir=tmp_path, timeout=1, istioctl=tmp_path / "istioctl", kind_bin=tmp_path / "kind-0.33",
                        kind_image="kindest/node:v1.36.3-offline", kind_config=tmp_path / "kind.yaml",
                        images={"app": "pim/app:1"})
    kind = KindBackend(settings, lambda m: None)
    kind.start()
    made = FakeCluster.instances[-1]
    assert (made.kind, made.image, made.config) == (tmp_path / "kind-0.33", "kindest/node:v1.36.3-offline",
                                                    tmp_path / "kind.yaml")
    assert made.loaded == ["docker.io/istio/pilot:1.31-eed52ebb66ad", "docker.io/istio/proxyv2:1.31-eed52ebb66ad",
                           "pim/app:1"]  # the curl and capture images are not held: the node pulls them
    assert cluster.install_options == {"tag": "1.31-eed52ebb66ad", "upstream_envoy": True}  # type: ignore[attr-defined]
    versions = kind.versions()
    assert versions["istio"] == "1.31-eed52ebb66ad"
    assert versions["proxy"] == "upstream 1.39.3 Envoy (istiod's Istio-only filters off)"


def test_a_given_istioctl_decides_the_version(cluster: ReplayKube, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(istio, "client_version", lambda istioctl: "1.31.1")
    with pytest.raises(BackendError, match=r"--istio-version 1.30 but .*istioctl installs Istio 1.31.1; drop one"):
        KindBackend(Settings(istio_version="1.30", rootdir=tmp_path, istioctl=tmp_path / "istioctl"),
                    lambda m: None).start()
    monkeypatch.setattr(istio, "client_version", lambda istioctl: "")
    with pytest.raises(BackendError, match=r"does not say which Istio it installs.*--istio-tag"):
        KindBackend(Settings(rootdir=tmp_path, istioctl=tmp_path / "istioctl"), lambda m: None).start()
    with pytest.raises(BackendError, match=r"Istio 'mine' names no release, so no node image pairs with it"):
        KindBackend(Settings(rootdir=tmp_path, istioctl=tmp_path / "istioctl", tag="mine"), lambda m: None).start()
    kind = KindBackend(Settings(rootdir=tmp_path, istioctl=tmp_path / "istioctl", tag="mine", kind_image="node:x"),
                       lambda m: None)
    kind.start()
    assert kind.versions()["istio"] == "mine" and kind.versions()["proxy"] == "Istio's proxyv2"


def test_upstream_envoy_switches_are_only_in_that_overlay() -> None:
    plain = install_overlay(MeshSettings())["spec"]
    assert "env" not in plain["values"]["pilot"] and "telemetry" not in plain["values"] and "tag" not in plain
    upstream = install_overlay(MeshSettings(), tag="1.31-eed52ebb66ad", upstream_envoy=True)["spec"]
    assert upstream["values"]["pilot"]["env"] == {"PILOT_ENABLE_ALPN_FILTER": "false",
                                                  "PILOT_ENABLE_METADATA_EXCHANGE": "false"}
    assert upstream["values"]["telemetry"] == {"enabled": False} and upstream["tag"] == "1.31-eed52ebb66ad"


def test_cluster_names_kind_rejects_are_refused_early(cluster: ReplayKube, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"lower-case"):
        backend(tmp_path, cluster_name="My_Cluster").start()


def test_a_reused_cluster_with_another_istio_is_refused_replay(cluster: ReplayKube, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeCluster, "create", lambda self: True)
    older = replay("istiod_deployment.json")
    older["spec"]["template"]["spec"]["containers"][0]["image"] = "docker.io/istio/pilot:1.30.3-distroless"
    cluster.add(older)
    with pytest.raises(BackendError, match=r"already runs Istio 1.30.3.*--istio-version 1.30.3"):
        backend(tmp_path).start()


def test_a_reused_cluster_is_never_deleted_replay(cluster: ReplayKube, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeCluster, "create", lambda self: True)
    cluster.add(replay("istiod_deployment.json"), replay("istio_configmap.json"), WEBHOOK)
    leftover = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                "metadata": {"name": "default", "namespace": "istio-system",
                             "labels": {"app.kubernetes.io/managed-by": "pytest-istio-mtls"}}}
    theirs = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
              "metadata": {"name": "theirs", "namespace": "istio-system"}}
    cluster.add(leftover, theirs)
    kind = backend(tmp_path)
    kind.start()
    assert cluster.installed == []  # type: ignore[attr-defined]  # same version: reused as is
    assert ("PeerAuthentication", "istio-system", "default") not in cluster.objects  # an earlier run's leftover
    assert ("PeerAuthentication", "istio-system", "theirs") in cluster.objects
    kind.namespaces = {"foo"}
    cluster.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "foo"}})
    message = kind.stop(keep=False)
    assert FakeCluster.instances[-1].deleted == 0
    assert "existed before this run and was left running" in message
    assert ("Namespace", "", "foo") not in cluster.objects  # what the run created is cleaned up


def test_a_created_cluster_is_deleted_unless_kept(cluster: ReplayKube, tmp_path: Path) -> None:
    kind = backend(tmp_path)
    kind.start()
    assert kind.stop(keep=False) == ""
    assert FakeCluster.instances[-1].deleted == 1


def test_keep_cluster_of_pytest_kind_keeps_it_silently(cluster: ReplayKube, tmp_path: Path) -> None:
    kind = backend(tmp_path, keep_cluster=True)
    kind.start()
    assert kind.stop(keep=False) == ""
    assert FakeCluster.instances[-1].deleted == 0


def test_keep_returns_inspection_instructions(cluster: ReplayKube, tmp_path: Path) -> None:
    kind = backend(tmp_path)
    kind.start()
    text = kind.stop(keep=True)
    config = str(tmp_path / ".pytest-istio-mtls" / "pytest-istio-mtls" / "kubeconfig")
    assert FakeCluster.instances[-1].deleted == 0
    assert f"kubectl --kubeconfig {config} get pods -A" in text
    assert "proxy-config listener" in text and "--port 15006" in text and "proxy-config cluster" in text
    assert f"{tmp_path / 'kind'} delete cluster --name pytest-istio-mtls" in text


def test_mesh_settings_are_patched_live_replay(cluster: ReplayKube, tmp_path: Path) -> None:
    kind = backend(tmp_path)
    kind.start()
    kind._ensure_mesh(MeshSettings(auto_mtls=False))
    mesh = yaml.safe_load(cluster.objects[("ConfigMap", "istio-system", "istio")]["data"]["mesh"])
    assert mesh["enableAutoMtls"] is False and mesh["accessLogEncoding"] == "JSON"  # the rest is kept
    patches = [c for c in cluster.calls if c[0] == "patch"]
    kind._ensure_mesh(MeshSettings(auto_mtls=False))
    assert [c for c in cluster.calls if c[0] == "patch"] == patches  # nothing to change: no patch
    with pytest.raises(BackendError, match=r"trust domain"):
        kind._ensure_mesh(MeshSettings(trust_domain="example.org"))


def test_istio_version_from_images_replay() -> None:
    assert istio.version_from_image("docker.io/istio/pilot:1.31.1") == "1.31.1"
    assert istio.version_from_image("docker.io/istio/pilot:1.31.1-distroless") == "1.31.1"
    assert istio.version_from_image("gcr.io/istio-release/pilot:1.32.0-beta.0@sha256:" + "a" * 64) == "1.32.0-beta.0"
    assert istio.version_from_image("my.registry/pilot:latest") == ""
    assert istio.version_from_image("docker.io/istio/pilot:1.31-eed52ebb66ad") == "1.31-eed52ebb66ad"  # a build


def test_a_cluster_created_for_a_failed_start_is_deleted(cluster: ReplayKube, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise BackendError("istioctl install failed (exit 1): Error: failed to install manifests")

    monkeypatch.setattr(istio, "install", broken)
    with pytest.raises(BackendError, match=r"failed to install manifests .the kind cluster pytest-istio-mtls created "
                                           r"for this run was deleted"):
        backend(tmp_path).start()
    assert FakeCluster.instances[-1].deleted == 1


def test_a_failed_start_keeps_the_cluster_when_asked(cluster: ReplayKube, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise BackendError("istioctl install failed")

    monkeypatch.setattr(istio, "install", broken)
    kind = KindBackend(Settings(istio_version="1.31.1", rootdir=tmp_path, keep="on-failure", timeout=1),
                       lambda m: None)
    with pytest.raises(BackendError, match=r"^istioctl install failed$"):
        kind.start()
    assert FakeCluster.instances[-1].deleted == 0
