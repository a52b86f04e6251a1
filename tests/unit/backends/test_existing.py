"""The existing backend on a replayed shared cluster: detects the installed Istio and never changes it,
works in per-run namespaces, refuses what would touch other tenants, cleans up what it created."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_istio_mtls.backends import existing as existing_module
from pytest_istio_mtls.backends.base import BackendError, BackendUnavailable
from pytest_istio_mtls.backends.existing import ExistingBackend
from pytest_istio_mtls.backends.kube.manifests import render_topology
from pytest_istio_mtls.model import MeshSettings, default_topology
from pytest_istio_mtls.options import Settings

from ..kube_replay import ReplayKube, replay


def cluster(monkeypatch: pytest.MonkeyPatch, *objects: dict[str, Any]) -> ReplayKube:
    kube = ReplayKube()
    kube.add(*objects)
    monkeypatch.setattr(existing_module, "Kube", lambda kubeconfig, context, request_timeout: kube)
    return kube


def start(monkeypatch: pytest.MonkeyPatch, *objects: dict[str, Any], **settings: Any) -> tuple[ExistingBackend, list[str]]:
    cluster(monkeypatch, *objects)
    messages: list[str] = []
    backend = ExistingBackend(Settings(backend="existing", kubeconfig=Path("/tmp/kc"), **settings), messages.append)
    backend.start()
    return backend, messages


def test_detects_the_installed_istio_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, messages = start(monkeypatch, replay("istiod_deployment.json"), replay("istio_configmap.json"))
    assert backend.install is not None and backend.install.version == "1.31.1"
    assert backend.revision is None and backend.access_logs
    versions = backend.versions()
    assert {k: v for k, v in versions.items() if not k.startswith("image ")} == {
        "backend": "existing", "istio": "1.31.1", "istio revision": "default", "kubernetes": "v1.36.1"}
    assert versions["image app"] == "docker.io/library/python:3.13-slim"  # pinned images are reported too
    assert f"namespaces end in -{backend.run_id}" in messages[-1]
    assert backend.naming.ns("foo") == f"foo-{backend.run_id}"


def test_an_unreachable_cluster_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = cluster(monkeypatch)

    def down() -> str:
        raise BackendError("server version: MaxRetryError: HTTPSConnectionPool(host='10.0.0.1', port=6443)")

    kube.server_version = down  # type: ignore[method-assign]
    with pytest.raises(BackendUnavailable, match=r"cannot reach the cluster of /tmp/kc.*6443"):
        ExistingBackend(Settings(backend="existing", kubeconfig=Path("/tmp/kc")), lambda m: None).start()


def test_no_istio_is_an_error_that_never_installs(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError, match=r"no istiod found.*never installs Istio"):
        start(monkeypatch)


@pytest.mark.parametrize("wanted", ["latest", "1.31", "1.31.1"])
def test_matching_version_requests_are_accepted_replay(monkeypatch: pytest.MonkeyPatch, wanted: str) -> None:
    start(monkeypatch, replay("istiod_deployment.json"), istio_version=wanted)


@pytest.mark.parametrize("wanted", ["1.30", "1.31.0"])
def test_other_versions_are_refused_not_installed_replay(monkeypatch: pytest.MonkeyPatch, wanted: str) -> None:
    with pytest.raises(BackendError, match=r"runs Istio 1.31.1.*never installs or upgrades"):
        start(monkeypatch, replay("istiod_deployment.json"), istio_version=wanted)


def test_a_revisioned_install_labels_namespaces_with_its_revision_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    istiod = replay("istiod_deployment.json")
    istiod["metadata"]["name"] = "istiod-1-31-1"
    istiod["metadata"]["labels"]["istio.io/rev"] = "1-31-1"
    mesh = replay("istio_configmap.json")
    mesh["metadata"]["name"] = "istio-1-31-1"
    backend, _ = start(monkeypatch, istiod, mesh)
    assert backend.revision == "1-31-1" and backend.access_logs
    namespaces = [o for o in render_topology(default_topology(), backend.naming, {"app": "a", "curl": "c",
                                                                                  "capture": "n"},
                                             backend.revision) if o["kind"] == "Namespace"]
    app = next(n for n in namespaces if n["metadata"]["name"].startswith("app-"))
    assert app["metadata"]["labels"]["istio.io/rev"] == "1-31-1" and "istio-injection" not in app["metadata"]["labels"]


def test_several_revisions_need_a_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    one, two = replay("istiod_deployment.json"), replay("istiod_deployment.json")
    one["metadata"].update(name="istiod-a"), one["metadata"]["labels"].update({"istio.io/rev": "a"})
    two["metadata"].update(name="istiod-b"), two["metadata"]["labels"].update({"istio.io/rev": "b"})
    with pytest.raises(BackendError, match=r"several Istio revisions .a, b.*--istio-revision"):
        start(monkeypatch, one, two)


def test_no_json_access_logs_is_said_up_front_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    mesh = replay("istio_configmap.json")
    mesh["data"]["mesh"] = "rootNamespace: istio-system\ntrustDomain: cluster.local\n"
    backend, messages = start(monkeypatch, replay("istiod_deployment.json"), mesh)
    assert not backend.access_logs
    assert any(m.startswith("the mesh writes no access log (meshConfig.accessLogFile is empty)") for m in messages)


def test_istios_default_json_log_format_is_not_evidence_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    mesh = replay("istio_configmap.json")
    mesh["data"]["mesh"] = "accessLogEncoding: JSON\naccessLogFile: /dev/stdout\nrootNamespace: istio-system\n"
    backend, messages = start(monkeypatch, replay("istiod_deployment.json"), mesh)
    assert not backend.access_logs
    said = next(m for m in messages if "access log" in m)
    assert said.startswith("Istio's default JSON format lacks the keys the evidence joins on: marker "
                           "(%REQ(X-ISTIO-MTLS-PROBE)%), response_flags (%RESPONSE_FLAGS%)")
    assert "TCP mtls rows cannot be proven" in said and "render --backend kind" in said


def test_a_format_with_our_keys_under_other_operators_is_not_evidence() -> None:
    from pytest_istio_mtls.backends.kube.istio import access_log_gaps
    from pytest_istio_mtls.judge.accesslog import FORMAT

    ours = {"accessLogFile": "/dev/stdout", "accessLogEncoding": "JSON", "accessLogFormat": json.dumps(FORMAT)}
    assert access_log_gaps(ours) == ""
    other = {**ours, "accessLogFormat": json.dumps({**FORMAT, "downstream_peer_uri_san": "%DOWNSTREAM_PEER_SUBJECT%"})}
    assert access_log_gaps(other) == ("meshConfig.accessLogFormat lacks the keys the evidence joins on: "
                                      "downstream_peer_uri_san (%DOWNSTREAM_PEER_URI_SAN%)")
    assert access_log_gaps({**ours, "accessLogFormat": "[%START_TIME%] %REQ(:METHOD)%"}) == \
        "meshConfig.accessLogFormat is not a JSON object"


def test_foreign_mesh_wide_policies_are_reported_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    strict = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
              "metadata": {"name": "default", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "STRICT"}}}
    _, messages = start(monkeypatch, replay("istiod_deployment.json"), replay("istio_configmap.json"), strict)
    assert any("mesh-wide policies the scenarios do not know about: PeerAuthentication istio-system/default" in m
               for m in messages)


def test_the_mesh_config_is_never_changed_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, _ = start(monkeypatch, replay("istiod_deployment.json"), replay("istio_configmap.json"))
    backend._ensure_mesh(MeshSettings())
    with pytest.raises(BackendError, match=r"enableAutoMtls=False.*never changes the mesh config"):
        backend._ensure_mesh(MeshSettings(auto_mtls=False))
    with pytest.raises(BackendError, match=r"root namespace is istio-config"):
        backend._ensure_mesh(MeshSettings(root_namespace="istio-config"))
    assert not [c for c in backend.kube.calls if c[0] in ("patch", "apply")]  # type: ignore[union-attr]


def test_stop_deletes_only_what_the_run_created(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, _ = start(monkeypatch, replay("istiod_deployment.json"), replay("istio_configmap.json"))
    kube = backend.kube
    assert isinstance(kube, ReplayKube)
    kube.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}})
    ours = f"foo-{backend.run_id}"
    kube.add({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ours}})
    backend.namespaces = {ours}
    assert backend.stop(keep=False) == ""
    assert ("Namespace", "", ours) not in kube.objects and ("Namespace", "", "team-a") in kube.objects


def test_keep_lists_the_namespaces_and_how_to_delete_them(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, _ = start(monkeypatch, replay("istiod_deployment.json"), replay("istio_configmap.json"),
                       context="prod-ish")
    backend.namespaces = {f"foo-{backend.run_id}"}
    text = backend.stop(keep=True)
    assert f"kubectl --kubeconfig /tmp/kc --context prod-ish delete namespace foo-{backend.run_id}" in text
    assert ("Namespace", "", f"foo-{backend.run_id}") not in [c[1] for c in backend.kube.calls  # type: ignore[union-attr]
                                                             if c[0] == "delete"]
