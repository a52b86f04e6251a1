"""The kind cluster: Docker check, create or reuse, wait until usable, delete only what we created.

The lifecycle always drives our pinned kind CLI directly, with a deadline on every call, even when
pytest-kind is installed (its options are honoured, see options.py): pytest-kind's ``KindCluster``
runs ``kind create`` with no timeout and lets ``CalledProcessError`` escape from delete. Whether the
cluster pre-existed is decided from ``kind get clusters`` before anything is created: a reused
cluster is never deleted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from ..base import BackendError, BackendUnavailable
from .client import KubeApi

Run = Callable[..., subprocess.CompletedProcess[str]]
DOCKER_TIMEOUT = 15.0
# `podman info` has no .ServerVersion (its version is under .Version.Version): the template would fail
# and a working podman would be reported as unreachable.
INFO_FORMATS = {"podman": "{{.Version.Version}}"}
NO_DOCKER_HINT = "start Docker, or run without a cluster: --istio-backend=local"
FIRST_LINE = 80  # a foreign `docker`'s first line is shown up to here, never its whole dump


def check_docker(env: Mapping[str, str] | None = None, which: Callable[[str], str | None] = shutil.which,
                 run: Run = subprocess.run) -> None:
    """Fail fast (well under 30 s) with one message when kind cannot work here."""
    env = os.environ if env is None else env
    provider = env.get("KIND_EXPERIMENTAL_PROVIDER", "docker") or "docker"
    binary = which(provider)
    if binary is None:
        raise BackendUnavailable(f"the kind backend needs Docker, but `{provider}` is not on PATH; install "
                                 f"{'Docker' if provider == 'docker' else provider}, or run without a cluster: "
                                 f"--istio-backend=local")
    try:
        done = run([binary, "info", "--format", INFO_FORMATS.get(provider, "{{.ServerVersion}}")], capture_output=True,
                   text=True, timeout=DOCKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BackendUnavailable(f"the kind backend needs Docker, but `{provider} info` did not answer within "
                                 f"{DOCKER_TIMEOUT:.0f}s; {NO_DOCKER_HINT}") from None
    except OSError as exc:
        raise BackendUnavailable(f"the kind backend needs Docker, but `{provider}` cannot run ({exc}); "
                                 f"{NO_DOCKER_HINT}") from None
    if done.returncode != 0:
        output = done.stderr or done.stdout or ""
        if not _answers_like(provider, done.returncode, output):
            first = next((line.strip() for line in output.splitlines() if line.strip()), "")
            if len(first) > FIRST_LINE:
                first = first[:FIRST_LINE].rsplit(" ", 1)[0] + "…"
            shown = f"; first line: {first}" if first else ""
            raise BackendUnavailable(
                f"the kind backend needs Docker, but {binary} did not answer `{provider} info` like "
                f"{'Docker' if provider == 'docker' else provider} does (exit {done.returncode}{shown}); fix: put "
                + ("Docker's own `docker` first on PATH (for podman: KIND_EXPERIMENTAL_PROVIDER=podman)"
                   if provider == "docker" else f"{provider}'s own `{provider}` first on PATH")
                + ", or run without a cluster: --istio-backend=local")
        reason = next((line.strip() for line in output.splitlines()
                       if line.strip() and not line.startswith(("Client", " "))), f"exit {done.returncode}")
        raise BackendUnavailable(f"the kind backend needs Docker, but the Docker daemon is not reachable ({reason}); "
                                 f"{NO_DOCKER_HINT}")


def _answers_like(provider: str, code: int, output: str) -> bool:
    """Whether a failed ``info`` came from the real CLI (its daemon is down or refuses us) rather than from another
    program of that name: Docker's CLI exits 1 with a sentence, while a Go panic exits 2 with a goroutine dump and
    podman's ``docker`` shim exits 125 on Docker's template (podman itself exits 125 on every error)."""
    if any(line.startswith(("panic:", "goroutine ")) for line in output.splitlines()):
        return False
    return provider != "docker" or code == 1


def _docker(*args: str, env: Mapping[str, str] | None = None, run: Run = subprocess.run) -> tuple[int, str]:
    env = os.environ if env is None else env
    provider = env.get("KIND_EXPERIMENTAL_PROVIDER", "docker") or "docker"
    try:
        done = run([provider, *args], capture_output=True, text=True, timeout=DOCKER_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return 1, ""
    return done.returncode, done.stdout.strip()


def local_images(images: list[str], run: Run = subprocess.run) -> list[str]:
    """The images the local Docker already holds (they are loaded into the node, never pulled)."""
    return [image for image in dict.fromkeys(images) if _docker("image", "inspect", image, run=run)[0] == 0]


def image_label(image: str, label: str, run: Run = subprocess.run) -> str:
    """A label of a local image ('' when the image or the label is absent)."""
    code, out = _docker("image", "inspect", "--format", f'{{{{ index .Config.Labels "{label}" }}}}', image, run=run)
    return out if code == 0 and out != "<no value>" else ""


class Cluster:
    """One kind cluster by name; ``created`` is True only when this run created it."""

    def __init__(self, name: str, kind: Path, image: str, kubeconfig: Path, run: Run = subprocess.run,
                 timeout: float = 600.0, config: Path | None = None) -> None:
        self.name = name
        self.kind = kind
        self.image = image
        self.kubeconfig = kubeconfig
        self.config = config
        self.created = False
        self._run = run
        self._timeout = timeout

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
        self.created = True  # before the call: a create that fails half-way leaves containers to delete
        config = ("--config", str(self.config)) if self.config is not None else ()
        self._kind("create", "cluster", "--name", self.name, "--image", self.image,
                   "--kubeconfig", str(self.kubeconfig), *config)
        return False

    def load(self, images: list[str]) -> None:
        """Copy images from the local Docker into the node (``kind load``): nothing is pulled for them."""
        if images:
            self._kind("load", "docker-image", "--name", self.name, *images)

    def delete(self) -> None:
        """Delete the cluster, but only if this run created it."""
        if not self.created:
            return
        self.created = False
        try:
            self._kind("delete", "cluster", "--name", self.name, "--kubeconfig", str(self.kubeconfig), timeout=300)
        except BackendError as exc:
            raise BackendError(f"{exc}; delete it with: kind delete cluster --name {self.name}") from None

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
