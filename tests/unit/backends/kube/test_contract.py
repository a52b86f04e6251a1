"""The real ``Kube`` client over real HTTP against the apiserver stand-in: every kind, every verb.

tests/local/test_control_plane.py runs the same contract against the real kube-apiserver.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pytest_istio_mtls.backends.kube.client import BUILTIN, Kube, KubeError

from ....apiserver_standin import Store, standin_apiserver
from ....kube_contract import OBJECTS, drive, drive_kubelet_calls, every_kind


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Kube, Store]]:
    with standin_apiserver(tmp_path_factory.mktemp("apiserver")) as (kubeconfig, store):
        yield Kube(kubeconfig, request_timeout=5), store


def test_every_addressable_kind_has_a_contract_object() -> None:
    assert sorted(OBJECTS) == every_kind()


@pytest.mark.parametrize("kind", every_kind())
def test_the_real_client_drives_every_kind_over_http(standin: tuple[Kube, Store], kind: str) -> None:
    kube, _ = standin
    drive(kube, kind)  # raises AssertionError or anything but a BackendError on a broken client


def test_every_builtin_api_object_exists_with_its_methods(standin: tuple[Kube, Store]) -> None:
    kube, _ = standin
    for kind, (api, suffix, namespaced) in BUILTIN.items():
        listing = f"list_{suffix.removeprefix('namespaced_')}_for_all_namespaces" if namespaced else f"list_{suffix}"
        for method in (f"patch_{suffix}", f"read_{suffix}", f"delete_{suffix}", f"list_{suffix}", listing):
            assert callable(getattr(getattr(kube, api), method, None)), f"{kind}: {api}.{method}"


def test_server_side_apply_is_what_goes_over_the_wire(standin: tuple[Kube, Store]) -> None:
    kube, store = standin
    store.requests.clear()
    drive(kube, "Deployment")
    applies = [(path, ctype) for method, path, ctype in store.requests if method == "PATCH" and "deployments" in path]
    assert applies[0] == ("/apis/apps/v1/namespaces/contract/deployments/contract-deployment"
                          "?fieldManager=pytest-istio-mtls&force=True", "application/apply-patch+yaml")
    assert applies[-1][1] == "application/merge-patch+json"


def test_server_errors_are_one_line_kube_errors(standin: tuple[Kube, Store]) -> None:
    kube, _ = standin
    assert kube.get("apps/v1", "Deployment", "contract", "nosuch") is None
    with pytest.raises(KubeError, match=r'^patch Pod contract/nosuch: pods "nosuch" not found$') as info:
        kube.patch("v1", "Pod", "contract", "nosuch", {"metadata": {"labels": {"a": "b"}}})
    assert info.value.status == 404
    assert kube.server_version() == "v1.34.1"


def test_a_refused_exec_says_what_the_server_said(standin: tuple[Kube, Store]) -> None:
    """A missing container is refused on the WebSocket upgrade (HTTP 400), not on channel 3; kubernetes 36
    then trips over its own ``e.body.decode``. The user must see the server's message, not that."""
    kube, _ = standin
    result = kube.exec("contract", "curl-0", "capture", ["true"], timeout=5)
    assert result.returncode is None
    assert result.error == "exec in contract/curl-0 (capture): container capture is not valid for pod curl-0"


def test_the_kubelet_calls_of_the_local_control_plane(standin: tuple[Kube, Store]) -> None:
    kube, _ = standin
    drive_kubelet_calls(kube)
