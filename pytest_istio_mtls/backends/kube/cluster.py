"""The kind cluster: Docker check, create or reuse, wait until usable, delete only what we created.

The lifecycle goes through pytest-kind's ``KindCluster`` when that optional extra is installed
(always with our pinned kind binary and node image, never its stale defaults), else through the
kind CLI directly. pytest-kind silently reuses an existing cluster of the same name, so whether
the cluster pre-existed is decided here, from ``kind get clusters``, before anything is created:
a reused cluster is never deleted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from ..base import BackendError, BackendUnavailable
from .client import KubeApi

Run = Callable[..., subprocess.CompletedProcess[str]]
DOCKER_TIMEOUT = 15.0
NO_DOCKER_HINT = "start Docker, or run without a cluster: --istio-backend=local"


def check_docker(env: Mapping[str, str] | None = None, which: Callable[[str], str | None] = shutil.which,
                 run: Run = subprocess.run) -> None:
    """Fail fast (well under 30 s) with one message when kind cannot work here."""
    env = os.environ if env is None else env
    provider = env.get("KIND_EXPERIMENTAL_PROVIDER", "docker") or "docker"
    binary = which(provider)
    if binary is None:
        raise BackendUnavailable(f"the kind backend needs Docker, but `{provider}` is not on PATH; {NO_DOCKER_HINT}")
    try:
        done = run([binary, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                   timeout=DOCKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BackendUnavailable(f"the kind backend needs Docker, but `{provider} info` did not answer within "
                                 f"{DOCKER_TIMEOUT:.0f}s; {NO_DOCKER_HINT}") from None
    except OSError as exc:
        raise BackendUnavailable(f"the kind backend needs Docker, but `{provider}` cannot run ({exc}); "
                                 f"{NO_DOCKER_HINT}") from None
    if done.returncode != 0:
        reason = next((line.strip() for line in (done.stderr or done.stdout).splitlines()
                       if line.strip() and not line.startswith(("Client", " "))), f"exit {done.returncode}")
        raise BackendUnavailable(f"the kind backend needs Docker, but the Docker daemon is not reachable ({reason}); "
                                 f"{NO_DOCKER_HINT}")


def _pytest_kind() -> Any:
    try:
        from pytest_kind import KindCluster
    except ImportError:
        return None
    return KindCluster


class Cluster:
    """One kind cluster by name; ``created`` is True only when this run created it."""

    def __init__(self, name: str, kind: Path, image: str, kubeconfig: Path, run: Run = subprocess.run,
                 pytest_kind: Any = None, timeout: float = 600.0) -> None:
        """``pytest_kind``: a KindCluster-like class (default: pytest-kind's when installed); False: the kind CLI."""
        self.name = name
        self.kind = kind
        self.image = image
        self.kubeconfig = kubeconfig
        self.created = False
        self._run = run
        self._timeout = timeout
        factory = _pytest_kind() if pytest_kind is None else pytest_kind
        self._delegate = factory(name, kubeconfig=kubeconfig, image=image, kind_path=kind) if factory else None

    def _kind(self, *args: str, timeout: float | None = None) -> str:
        command = [str(self.kind), *args]
        try:
            done = self._run(command, capture_output=True, text=True, timeout=timeout or self._timeout)
        except subprocess.TimeoutExpired:
            limit = timeout or self._timeout
            raise BackendError(f"`kind {' '.join(args)}` did not finish within {limit:.0f}s") from None
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise BackendError(f"`kind {' '.join(args)}` failed (exit {done.returncode}): {tail}")
        return done.stdout

    def exists(self) -> bool:
        return self.name in self._kind("get", "clusters", timeout=60).split()

    def create(self) -> bool:
        """Create the cluster unless one of that name exists; returns whether it was reused."""
        self.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        if self.exists():
            self._kind("export", "kubeconfig", "--name", self.name, "--kubeconfig", str(self.kubeconfig), timeout=60)
            return True
        if self._delegate is not None:
            try:
                self._delegate.create()
            except subprocess.CalledProcessError as exc:
                raise BackendError(f"kind could not create cluster {self.name} (exit {exc.returncode}); "
                                   "see kind's output above") from None
        else:
            self._kind("create", "cluster", "--name", self.name, "--image", self.image,
                       "--kubeconfig", str(self.kubeconfig))
        self.created = True
        return False

    def delete(self) -> None:
        """Delete the cluster, but only if this run created it."""
        if not self.created:
            return
        if self._delegate is not None:
            self._delegate.delete()
        else:
            self._kind("delete", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig))
        self.created = False

    def version(self) -> str:
        try:
            return self._kind("version", timeout=30).strip()
        except BackendError:
            return ""


def wait_usable(kube: KubeApi, timeout: float) -> None:
    """kind create is not asked to --wait (pytest-kind never passes it): wait for nodes and CoreDNS here."""
    def gaps() -> list[str]:
        found = []
        nodes = kube.list("v1", "Node")
        if not nodes:
            found.append("no nodes yet")
        for node in nodes:
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (node.get("status") or {}).get("conditions") or [])
            if not ready:
                found.append(f"node {(node.get('metadata') or {}).get('name')} is not Ready")
        coredns = kube.get("apps/v1", "Deployment", "kube-system", "coredns") or {}
        if not (coredns.get("status") or {}).get("availableReplicas"):
            found.append("CoreDNS has no available replica")
        return found

    last: list[str] = []

    def check() -> list[str]:
        nonlocal last
        try:
            last = gaps()
        except BackendError as exc:  # the API server may still be starting
            last = [str(exc)]
        return last

    try:
        Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(2), retry=retry_if_result(bool))(check)
    except RetryError:
        raise BackendError(f"kind cluster not usable after {timeout:.0f}s: {'; '.join(last)}") from None
