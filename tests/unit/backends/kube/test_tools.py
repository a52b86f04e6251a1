"""Pinned tools and versions: checksum verification (a mismatch aborts), caching, Istio version
resolution from a replay of GitHub's releases API, node image pairing. No network."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import httpx
import pytest

from pytest_istio_mtls.backends.base import BackendError, BackendUnavailable
from pytest_istio_mtls.backends.kube import tools, versions

from ...kube_replay import replay

LINUX = tools.Platform("linux", "amd64")


def transport(files: dict[str, bytes], seen: list[str] | None = None) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(str(request.url))
        body = files.get(str(request.url))
        return httpx.Response(200, content=body) if body is not None else httpx.Response(404)

    return httpx.MockTransport(handler)


def istioctl_tarball(payload: bytes = b"#!/bin/sh\necho istioctl\n") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("istioctl")
        info.size = len(payload)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


@pytest.mark.parametrize(("text", "asset", "expected"), [
    ("a" * 64 + " istioctl-1.31.1-linux-amd64.tar.gz\n", "istioctl-1.31.1-linux-amd64.tar.gz", "a" * 64),  # Istio: one space
    ("b" * 64 + "  kind-linux-amd64\n", "kind-linux-amd64", "b" * 64),  # sha256sum: two spaces
    ("c" * 64 + " *kind-darwin-arm64\n", "kind-darwin-arm64", "c" * 64),  # binary marker
    ("d" * 64 + "  other\n" + "e" * 64 + "  kind-linux-arm64\n", "kind-linux-arm64", "e" * 64),
    ("F" * 64 + "\n", "anything", "f" * 64),  # bare digest
])
def test_checksum_files_of_both_layouts_replay(text: str, asset: str, expected: str) -> None:
    assert tools.parse_checksum(text, asset) == expected


def test_a_checksum_file_without_a_digest_is_refused() -> None:
    with pytest.raises(BackendError, match="does not hold a SHA-256"):
        tools.parse_checksum("<html>rate limited</html>", "kind-linux-amd64")


def test_istioctl_download_is_verified_extracted_and_cached(tmp_path: Path) -> None:
    archive = istioctl_tarball()
    url = "https://github.com/istio/istio/releases/download/1.31.1/istioctl-1.31.1-linux-amd64.tar.gz"
    digest = hashlib.sha256(archive).hexdigest()
    seen: list[str] = []
    files = {url: archive, url + ".sha256": f"{digest} istioctl-1.31.1-linux-amd64.tar.gz\n".encode()}
    with httpx.Client(transport=transport(files, seen)) as http:
        path = tools.istioctl_binary("1.31.1", LINUX, http, cache=tmp_path)
    assert path == tmp_path / "istioctl" / "1.31.1" / "istioctl"
    assert path.read_bytes().startswith(b"#!/bin/sh")
    assert path.stat().st_mode & 0o100
    assert seen == [url, url + ".sha256"]
    with httpx.Client(transport=transport({}, seen)) as http:  # cached: no request at all
        assert tools.istioctl_binary("1.31.1", LINUX, http, cache=tmp_path) == path
    assert len(seen) == 2


def test_checksum_mismatch_aborts_and_caches_nothing(tmp_path: Path) -> None:
    archive = istioctl_tarball()
    url = "https://github.com/istio/istio/releases/download/1.31.1/istioctl-1.31.1-linux-amd64.tar.gz"
    files = {url: archive, url + ".sha256": b"0" * 64 + b" istioctl-1.31.1-linux-amd64.tar.gz\n"}
    with httpx.Client(transport=transport(files)) as http, pytest.raises(BackendError, match="checksum mismatch"):
        tools.istioctl_binary("1.31.1", LINUX, http, cache=tmp_path)
    assert not (tmp_path / "istioctl" / "1.31.1" / "istioctl").exists()


def test_kind_download_must_also_match_the_pinned_digest(tmp_path: Path) -> None:
    """The published .sha256sum agrees with the (tampered) binary, but our pin does not: refused."""
    binary = b"\x7fELF not the real kind"
    url = f"https://github.com/kubernetes-sigs/kind/releases/download/{versions.KIND_VERSION}/kind-linux-amd64"
    files = {url: binary, url + ".sha256sum": f"{hashlib.sha256(binary).hexdigest()}  kind-linux-amd64\n".encode()}
    with httpx.Client(transport=transport(files)) as http, pytest.raises(BackendError, match="pinned"):
        tools.kind_binary(LINUX, http, cache=tmp_path)


def test_a_tampered_cache_is_downloaded_again(tmp_path: Path) -> None:
    archive = istioctl_tarball(b"real")
    url = "https://github.com/istio/istio/releases/download/1.30.3/istioctl-1.30.3-osx-arm64.tar.gz"
    files = {url: archive, url + ".sha256": hashlib.sha256(archive).hexdigest().encode() + b" x\n"}
    darwin = tools.Platform("darwin", "arm64")
    with httpx.Client(transport=transport(files)) as http:
        path = tools.istioctl_binary("1.30.3", darwin, http, cache=tmp_path)
        path.write_bytes(b"evil")
        seen: list[str] = []
    with httpx.Client(transport=transport(files, seen)) as http:
        assert tools.istioctl_binary("1.30.3", darwin, http, cache=tmp_path).read_bytes() == b"real"
    assert seen  # the tampered copy was not trusted


def test_a_failed_download_is_one_clear_error(tmp_path: Path) -> None:
    with httpx.Client(transport=transport({})) as http, pytest.raises(BackendError, match="download failed: https://"):
        tools.istioctl_binary("1.31.1", LINUX, http, cache=tmp_path)


@pytest.mark.parametrize(("system", "machine", "expected"), [
    ("Linux", "x86_64", ("linux", "amd64")), ("Linux", "aarch64", ("linux", "arm64")),
    ("Darwin", "arm64", ("darwin", "arm64")), ("Darwin", "x86_64", ("darwin", "amd64")),
])
def test_platform_names_follow_the_release_assets(system: str, machine: str, expected: tuple[str, str]) -> None:
    found = tools.host_platform(system, machine)
    assert (found.os, found.arch) == expected


def test_unsupported_platform_is_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="--istio-backend=existing"):
        tools.host_platform("Windows", "AMD64")


def test_istioctl_asset_names() -> None:
    assert tools.istioctl_asset("1.31.1", LINUX) == "istioctl-1.31.1-linux-amd64.tar.gz"
    assert tools.istioctl_asset("1.31.1", tools.Platform("darwin", "amd64")) == "istioctl-1.31.1-osx-amd64.tar.gz"


def test_cache_dir_honours_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tools.cache_dir() == tmp_path / "pytest-istio-mtls"


# -- versions --------------------------------------------------------------------------------------------


RELEASES = replay("github_istio_releases.json")


def test_latest_is_the_highest_stable_tag_not_the_newest_release_replay() -> None:
    """The replay's newest release by date is 1.29.9 (what /releases/latest returns), 1.31.1 still
    carries the prerelease flag, 1.31.2 is a draft and 1.32.0-beta.0 is a pre-release."""
    assert RELEASES[1]["tag_name"] == "1.29.9" and RELEASES[4]["prerelease"] is True
    assert versions.resolve("latest", RELEASES) == "1.31.1"


@pytest.mark.parametrize(("spec", "expected"), [("1.30", "1.30.3"), ("1.29", "1.29.9"), ("1.31", "1.31.1"),
                                                ("1.28.6", "1.28.6"), ("1.32.0-beta.0", "1.32.0-beta.0")])
def test_minor_and_exact_versions_replay(spec: str, expected: str) -> None:
    assert versions.resolve(spec, RELEASES) == expected


def test_exact_versions_need_no_release_list() -> None:
    assert not versions.needs_releases("1.31.1")
    assert versions.needs_releases("latest") and versions.needs_releases("1.31")
    assert versions.resolve("1.31.1", None) == "1.31.1"


@pytest.mark.parametrize(("spec", "message"), [("1.99", "no published Istio release"),
                                               ("newest", "is not 'latest'"), ("1.31.x", "is not 'latest'")])
def test_unresolvable_versions_are_clear_errors_replay(spec: str, message: str) -> None:
    with pytest.raises(BackendError, match=message):
        versions.resolve(spec, RELEASES)


def test_junk_and_draft_tags_are_never_versions_replay() -> None:
    found = versions.stable_versions(RELEASES)
    assert (1, 31, 2) not in found  # draft
    assert all(len(v) == 3 for v in found) and (1, 15, 0) not in found


@pytest.mark.parametrize(("istio", "kubernetes"), [("1.31.1", "v1.36.1"), ("1.30.3", "v1.36.1"),
                                                   ("1.29.9", "v1.35.5"), ("1.28.6", "v1.34.8")])
def test_node_image_is_the_newest_kubernetes_the_istio_minor_supports(istio: str, kubernetes: str) -> None:
    image, note = versions.node_image_for(istio)
    assert image.startswith(f"kindest/node:{kubernetes}@sha256:") and len(image.split("@sha256:")[1]) == 64
    assert note == ""


def test_unknown_minors_get_a_guessed_image_with_a_note() -> None:
    newer, note = versions.node_image_for("1.33.0-alpha.0")
    assert newer == versions.NODE_IMAGES["1.36"] and "not in the pinned support table" in note
    older, note = versions.node_image_for("1.20.1")
    assert older == versions.NODE_IMAGES["1.34"] and "--istio-kind-image" in note


def test_pinned_kind_digests_cover_every_supported_platform() -> None:
    assert set(versions.KIND_SHA256) == {(o, a) for o in ("linux", "darwin") for a in ("amd64", "arm64")}
    assert all(len(d) == 64 and int(d, 16) >= 0 for d in versions.KIND_SHA256.values())


def test_fetch_releases_uses_the_token_and_stops_at_an_empty_page_replay() -> None:
    pages: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        pages.append(request)
        return httpx.Response(200, json=RELEASES if request.url.params["page"] == "1" else [])

    with httpx.Client(transport=httpx.MockTransport(handler)) as http:
        found = versions.fetch_releases(http, token="t0ken")
    assert found == RELEASES
    assert len(pages) == 2 and pages[0].headers["Authorization"] == "Bearer t0ken"


def test_an_unreachable_release_list_suggests_an_exact_version() -> None:
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(403))) as http, \
            pytest.raises(BackendError, match="exact --istio-version"):
        versions.fetch_releases(http)
