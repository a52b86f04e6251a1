"""Pinned command-line tools (kind, istioctl): downloaded once, verified by SHA-256, cached.

Every download is checked against the checksum file published beside the asset, and against a
pinned digest when we ship one. A mismatch aborts the run: an unverified binary is never used.
Cached copies are re-hashed on every use, so a corrupted or replaced cache file is noticed too.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import re
import tarfile
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..base import BackendError, BackendUnavailable
from .versions import KIND_SHA256, KIND_VERSION

if TYPE_CHECKING:
    import httpx

SHA256 = re.compile(r"^[0-9a-f]{64}$")
GITHUB = "https://github.com"


@dataclass(frozen=True)
class Platform:
    os: str  # linux | darwin
    arch: str  # amd64 | arm64


def host_platform(system: str | None = None, machine: str | None = None) -> Platform:
    """The platform names kind and Istio use for their release assets."""
    system = (system or platform.system()).lower()
    machine = (machine or platform.machine()).lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    if system not in ("linux", "darwin") or arch is None:
        raise BackendUnavailable(f"the kind backend supports linux and macOS on amd64/arm64, not {system}/{machine}; "
                                 "use --istio-backend=existing with a cluster you run elsewhere")
    return Platform(system, arch)


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pytest-istio-mtls``, else ``~/.cache/pytest-istio-mtls``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-istio-mtls"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_checksum(text: str, asset: str) -> str:
    """The digest in a ``.sha256``/``.sha256sum`` file: the first token of the line naming ``asset``
    (or of the first line when no line names it). Both one-space (Istio) and two-space
    (sha256sum) layouts are accepted, with or without the ``*`` binary marker."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    chosen = next((parts for parts in lines if len(parts) > 1 and parts[-1].lstrip("*").endswith(asset)), None)
    if chosen is None and lines:
        chosen = lines[0]
    digest = chosen[0].lower() if chosen else ""
    if not SHA256.match(digest):
        raise BackendError(f"the checksum file for {asset} does not hold a SHA-256 digest: {text[:80]!r}")
    return digest


def _get(http: httpx.Client, url: str) -> bytes:
    import httpx

    try:
        response = http.get(url, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise BackendError(f"download failed: {url}: {exc}") from None
    return response.content


def verified_download(http: httpx.Client, url: str, pinned: str | None = None) -> bytes:
    """Fetch ``url`` and its checksum file; return the bytes only if every digest agrees."""
    asset = url.rsplit("/", 1)[-1]
    data = _get(http, url)
    checksum_url = url + (".sha256sum" if "kubernetes-sigs/kind" in url else ".sha256")
    published = parse_checksum(_get(http, checksum_url).decode("utf-8", "replace"), asset)
    actual = sha256_bytes(data)
    if actual != published:
        raise BackendError(f"checksum mismatch for {url}: the download hashes to {actual} but {checksum_url} says "
                           f"{published}; refusing to use it")
    if pinned is not None and actual != pinned:
        raise BackendError(f"checksum mismatch for {url}: the download hashes to {actual} but the digest pinned in "
                           f"pytest-istio-mtls is {pinned}; refusing to use it")
    return data


def _cached(path: Path) -> bool:
    """A cached file is used only if it still hashes to the digest recorded when it was verified."""
    record = path.with_name(path.name + ".sha256")
    if not path.is_file() or not record.is_file():
        return False
    return sha256_bytes(path.read_bytes()) == record.read_text().strip()


def _store(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".partial")
    temporary.write_bytes(data)
    temporary.chmod(0o755)
    temporary.replace(path)
    path.with_name(path.name + ".sha256").write_text(sha256_bytes(data) + "\n")
    return path


def _client(http: httpx.Client | None) -> AbstractContextManager[httpx.Client]:
    """The caller's client (left open) or a fresh one (closed after use)."""
    if http is not None:
        return nullcontext(http)
    import httpx

    return httpx.Client(timeout=120.0, headers={"User-Agent": "pytest-istio-mtls"})


def kind_binary(target: Platform, http: httpx.Client | None = None, cache: Path | None = None) -> Path:
    """The pinned kind release for ``target``, verified against its ``.sha256sum`` and our pin."""
    path = (cache or cache_dir()) / "kind" / KIND_VERSION / f"kind-{target.os}-{target.arch}"
    if _cached(path):
        return path
    url = f"{GITHUB}/kubernetes-sigs/kind/releases/download/{KIND_VERSION}/kind-{target.os}-{target.arch}"
    with _client(http) as client:
        data = verified_download(client, url, KIND_SHA256.get((target.os, target.arch)))
    return _store(path, data)


def istioctl_asset(version: str, target: Platform) -> str:
    os_name = "osx" if target.os == "darwin" else target.os
    return f"istioctl-{version}-{os_name}-{target.arch}.tar.gz"


def istioctl_binary(version: str, target: Platform, http: httpx.Client | None = None,
                    cache: Path | None = None) -> Path:
    """istioctl ``version`` from its GitHub release asset, verified against the asset's ``.sha256``."""
    path = (cache or cache_dir()) / "istioctl" / version / "istioctl"
    if _cached(path):
        return path
    url = f"{GITHUB}/istio/istio/releases/download/{version}/{istioctl_asset(version, target)}"
    with _client(http) as client:
        archive = verified_download(client, url)
    return _store(path, _extract_istioctl(archive, url))


def _extract_istioctl(archive: bytes, url: str) -> bytes:
    """The single regular file ``istioctl`` from the release tarball (nothing else is extracted)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and Path(member.name).name == "istioctl":
                    extracted = tar.extractfile(member)
                    if extracted is not None:
                        return extracted.read()
    except tarfile.TarError as exc:
        raise BackendError(f"{url} is not a readable tar.gz: {exc}") from None
    raise BackendError(f"{url} holds no istioctl binary")
