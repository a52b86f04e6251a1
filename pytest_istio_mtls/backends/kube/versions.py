"""What the kind backend installs: pinned kind, node images paired with Istio minors, Istio version.

Istio versions are resolved from GitHub releases by tag, never from ``/releases/latest`` or the
``prerelease`` flag: release tooling creates every release as a pre-release and publishes it later,
and "latest" is sorted by creation date, so a patch of an older minor can shadow a newer minor.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..base import BackendError

if TYPE_CHECKING:
    import httpx

KIND_VERSION = "v0.32.0"
# SHA-256 of the kind v0.32.0 release binaries, also checked against each asset's .sha256sum at download.
# linux digests: several independent projects pin the same values; darwin digests: two sources each.
KIND_SHA256: dict[tuple[str, str], str] = {
    ("linux", "amd64"): "50030de23cf40a18505f20426f6a8506bedf13c6e509244bd1fa9463721b0f54",
    ("linux", "arm64"): "b92cd615e97585de8ddade28ed5cd7feb4248d717c233eea5b03c37298900f5d",
    ("darwin", "amd64"): "295ac6d0d634c9819c9907df45e3017d1f13166bd13c3404c45e79f7faa47498",
    ("darwin", "arm64"): "dca67911095a110c2b5c36e26df6cac860c602033e456c0db47be498cdef1ebb",
}
# Node images published with kind v0.32.0, by Kubernetes minor, pinned by (multi-arch) digest.
# All three are pinned identically by many independent repositories (pre-flight review, 2026-11).
# kind v0.32.0 also ships v1.33.12, whose digest has a single source: not listed.
NODE_IMAGES: dict[str, str] = {
    "1.36": "kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5",
    "1.35": "kindest/node:v1.35.5@sha256:ce977ae6d65918d0b58a5f8b5e940429c2ce42fa3a5619ec2bbc60b949c0ac95",
    "1.34": "kindest/node:v1.34.8@sha256:02722c2dedddcfc00febf5d27fbeb9b7b2c14294c82109ff4a85d89ac9ba3256",
}
# Kubernetes minors each Istio minor supports (istio.io data/compatibility/supportStatus.yml, 2026-09).
ISTIO_KUBERNETES: dict[str, tuple[str, str]] = {
    "1.31": ("1.32", "1.37"),
    "1.30": ("1.32", "1.36"),
    "1.29": ("1.31", "1.35"),
    "1.28": ("1.30", "1.34"),
}
RELEASES_URL = "https://api.github.com/repos/istio/istio/releases"
STABLE = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")
EXACT = re.compile(r"^\d+\.\d+\.\d+(-(alpha|beta|rc)\.\d+)?$")
MINOR = re.compile(r"^(\d+)\.(\d+)$")

Version = tuple[int, int, int]


def _minor_key(minor: str) -> tuple[int, int]:
    major, _, rest = minor.partition(".")
    return int(major), int(rest)


def minor_of(version: str) -> str:
    return ".".join(version.split("-", maxsplit=1)[0].split(".")[:2])


def node_image_for(istio_version: str) -> tuple[str, str]:
    """The newest pinned node image whose Kubernetes minor the Istio minor supports, and a note
    when the pairing had to be guessed (Istio minor missing from the pinned table)."""
    minor = minor_of(istio_version)
    if not MINOR.match(minor):
        raise BackendError(f"Istio {istio_version!r} names no release, so no node image pairs with it: name one with "
                           "--istio-kind-image")
    available = sorted(NODE_IMAGES, key=_minor_key)
    supported = ISTIO_KUBERNETES.get(minor)
    if supported is not None:
        low, high = (_minor_key(v) for v in supported)
        fitting = [k for k in available if low <= _minor_key(k) <= high]
        if fitting:
            return NODE_IMAGES[fitting[-1]], ""
    known = sorted(ISTIO_KUBERNETES, key=_minor_key)
    chosen = available[-1] if _minor_key(minor) > _minor_key(known[-1]) else available[0]
    return NODE_IMAGES[chosen], (f"Istio {minor} is not in the pinned support table; using Kubernetes {chosen} "
                                 "(override with --istio-kind-image)")


def stable_versions(releases: Iterable[Mapping[str, Any]]) -> list[Version]:
    """Published stable tags (``X.Y.Z`` only: junk tags like ``1.15-beta.0`` and pre-releases are skipped)."""
    versions: list[Version] = []
    for release in releases:
        if release.get("draft"):
            continue
        match = STABLE.match(str(release.get("tag_name", "")))
        if match:
            versions.append((int(match[1]), int(match[2]), int(match[3])))
    return sorted(set(versions))


def resolve(spec: str, releases: Iterable[Mapping[str, Any]] | None) -> str:
    """``latest`` → the highest stable version; ``1.30`` → its newest patch; an exact version as is."""
    spec = spec.strip()
    if EXACT.match(spec):
        return spec
    if spec != "latest" and not MINOR.match(spec):
        raise BackendError(f"--istio-version {spec!r} is not 'latest', a minor like 1.31 or a version like 1.31.1")
    versions = stable_versions(releases or ())
    if spec != "latest":
        wanted = _minor_key(spec)
        versions = [v for v in versions if (v[0], v[1]) == wanted]
    if not versions:
        raise BackendError(f"no published Istio release matches --istio-version {spec}")
    return ".".join(str(part) for part in max(versions))


def needs_releases(spec: str) -> bool:
    return not EXACT.match(spec.strip())


def fetch_releases(http: httpx.Client, token: str | None = None, pages: int = 3) -> list[dict[str, Any]]:
    """Istio's GitHub releases, newest first (``GITHUB_TOKEN`` lifts the 60 requests/hour limit)."""
    import httpx

    headers = {"Accept": "application/vnd.github+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    releases: list[dict[str, Any]] = []
    for page in range(1, pages + 1):
        try:
            response = http.get(RELEASES_URL, params={"per_page": 100, "page": page}, headers=headers)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise BackendError(f"cannot list Istio releases ({exc}); pass an exact --istio-version such as 1.31.1, "
                               "whose istioctl may already be cached") from None
        batch = response.json()
        if not isinstance(batch, list) or not batch:
            break
        releases.extend(r for r in batch if isinstance(r, dict))
    return releases
