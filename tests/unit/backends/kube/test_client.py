"""The API wrapper: exec statuses replayed from real API servers, a private client built from an
explicit kubeconfig, and every failure as one line (no cluster: the server address refuses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_istio_mtls.backends.base import BackendError
from pytest_istio_mtls.backends.kube.client import ExecResult, Kube, KubeError, parse_exec_status

from ...kube_replay import replay

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: someone
  user: {token: not-a-real-token}
contexts:
- name: nowhere
  context: {cluster: nowhere, user: someone}
- name: other
  context: {cluster: nowhere, user: someone, namespace: x}
current-context: nowhere
"""


def test_exec_statuses_replay() -> None:
    assert parse_exec_status(json.dumps(replay("exec_status_success.json"))) == (0, "")
    assert parse_exec_status(json.dumps(replay("exec_status_nonzero.json"))) == (3, "")
    assert parse_exec_status("") == (None, "the exec ended without a status")


def test_exec_result_descriptions() -> None:
    assert ExecResult(b"", "curl: (6) Could not resolve host\n", 6).describe() == \
        "exit code 6: curl: (6) Could not resolve host"
    assert not ExecResult(returncode=0, error="broke").ok and ExecResult(returncode=0).ok


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    return path


def test_the_client_is_private_and_failures_are_one_line(kubeconfig: Path) -> None:
    from kubernetes import client

    before = client.Configuration.get_default_copy().host
    kube = Kube(kubeconfig, context="other", request_timeout=2)
    assert kube.api.configuration.host == "https://127.0.0.1:1"
    assert client.Configuration.get_default_copy().host == before  # the process-wide default is untouched
    with pytest.raises(KubeError) as info:
        kube.get("v1", "Namespace", None, "foo")
    assert "\n" not in str(info.value) and str(info.value).startswith("get Namespace foo: ")
    with pytest.raises(KubeError, match=r"^list PeerAuthentication in foo: "):
        kube.list("security.istio.io/v1", "PeerAuthentication", "foo")
    result = kube.exec("foo", "curl-0", "curl", ["true"], timeout=5)
    assert not result.ok and result.error.startswith("exec in foo/curl-0 (curl): ")


def test_unknown_kinds_are_refused_before_any_request(kubeconfig: Path) -> None:
    with pytest.raises(KubeError, match=r"do not know how to address"):
        Kube(kubeconfig).apply({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})


def test_a_bad_kubeconfig_or_context_is_one_clear_error(tmp_path: Path, kubeconfig: Path) -> None:
    with pytest.raises(BackendError, match=r"^no kubeconfig at .*missing: no such file; fix: "):
        Kube(tmp_path / "missing")
    with pytest.raises(BackendError, match=r"context nope"):
        Kube(kubeconfig, context="nope")
