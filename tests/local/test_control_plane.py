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
