"""Fixtures for the real kind cluster: the user's main path, with real Istio and its injection webhook.

These tests need a Docker daemon (on this project's machines: `.ci/kind-env up`, then run them inside
`.ci/kind-env exec -- python -m pytest tests/kind`). Without Docker they are skipped on a workstation, and they
FAIL when ISTIO_MTLS_KIND_REQUIRED is set, as `.ci/run` sets it: the kind path must never go untested there.

One cluster serves the session: created here through the kind backend itself (the node image, config, kind and
istioctl the environment names, as for any run), with Istio installed once, and deleted at the end. Every run
under test names it with --istio-kind-cluster and so reuses it (a run never deletes a cluster it did not create).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from pytest_istio_mtls.backends.base import BackendUnavailable
from pytest_istio_mtls.backends.kind import KindBackend
from pytest_istio_mtls.backends.kube.client import Kube
from pytest_istio_mtls.backends.kube.cluster import check_docker
from pytest_istio_mtls.options import resolve

CLUSTER = "imtls-tests"


@pytest.fixture(scope="session", autouse=True)
def _docker() -> None:
    try:
        check_docker()
    except BackendUnavailable as exc:
        if os.environ.get("ISTIO_MTLS_KIND_REQUIRED"):
            pytest.fail(f"the kind tests must run here: {exc}")
        pytest.skip(f"{exc}; on this project's machines: .ci/kind-env up && .ci/kind-env exec -- python -m pytest "
                    "tests/kind")


class SessionCluster(NamedTuple):
    kube: Kube  # for the tests to look with
    kubeconfig: Path


@pytest.fixture(scope="session")
def kind_cluster(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionCluster]:
    """The session's cluster with Istio, as the kind backend creates it."""
    root = tmp_path_factory.mktemp("kind")
    settings = dataclasses.replace(resolve(pytestconfig), backend="kind", kind_cluster=CLUSTER, rootdir=root,
                                   timeout=300.0)
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[tests/kind] starting kind cluster {CLUSTER} with Istio (reused by every run of this session)",
              flush=True)
    backend = KindBackend(settings, lambda message: print(f"[tests/kind] {message}", flush=True))
    backend.start()
    assert backend.cluster is not None
    try:
        yield SessionCluster(Kube(backend.cluster.kubeconfig), backend.cluster.kubeconfig)
    finally:
        backend.cluster.delete()
