"""build-kind's pure logic: the wrapper modules, the node image's file fixes, image fingerprints, archive
rewriting for kind's node-image build, manifest reuse decisions and the one-line errors. No network, no
docker, no real `go`."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import tarfile
from pathlib import Path

import pytest

from pytest_istio_mtls.build import images, istio, kind
from pytest_istio_mtls.build.istio import BuildError, Progress

RELEASE = istio.resolve(istio.DEFAULT_VERSION)
KUBERNETES_GOMOD = """module k8s.io/kubernetes

go 1.26.0

godebug default=go1.26

require (
\tk8s.io/api v0.0.0
\tk8s.io/client-go v0.0.0
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def test_kubernetes_wrapper_has_every_command_and_the_staging_replaces() -> None:
    text = kind.kubernetes_wrapper("v1.36.3", KUBERNETES_GOMOD)
    assert text.startswith("module kind-kubernetes-build\n")
    assert "require k8s.io/kubernetes v1.36.3" in text
    assert "\tk8s.io/api => k8s.io/api v0.36.3" in text
    assert "\tk8s.io/client-go => k8s.io/client-go v0.36.3" in text
    assert "godebug default=go1.26" in text
    tools = [line.split()[1] for line in text.splitlines() if line.startswith("tool ")]
    assert tools == [f"k8s.io/kubernetes/cmd/{c}" for c in kind.KUBERNETES_COMMANDS]


def test_kubernetes_wrapper_rejects_a_non_release() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes release"):
        kind.kubernetes_wrapper("1.36", KUBERNETES_GOMOD)


def test_etcd_wrapper() -> None:
    files = kind.etcd_wrapper("v3.6.8")
    assert "require go.etcd.io/etcd/server/v3 v3.6.8" in files["go.mod"]
    assert "etcdmain.Main(os.Args)" in files["main.go"]
    assert kind.etcd_image_tag("v3.6.8") == "3.6.8-0"
    with pytest.raises(ValueError, match="etcd v3 release"):
        kind.etcd_wrapper("3.6.8")


def test_go_targets_cover_what_the_node_image_needs() -> None:
    names = [t.name for t in kind.go_targets(RELEASE)]
    assert set(names) >= {"kind", "istioctl", "etcd", "coredns", *kind.KUBERNETES_COMMANDS}
    istioctl = next(t for t in kind.go_targets(RELEASE) if t.name == "istioctl")
    assert istioctl.version == RELEASE.pseudo_version
    assert f"buildVersion={RELEASE.version}" in istioctl.ldflags
    kubelet = next(t for t in kind.go_targets(RELEASE) if t.name == "kubelet")
    assert kubelet.wrapper == "kubernetes" and "gitVersion=v1.36.3" in kubelet.ldflags
    # a different Go changes every binary's inputs (and so rebuilds it)
    assert kubelet.inputs("go1.26.8") != kubelet.inputs("go1.27.0")


def test_containerd_config_fixes() -> None:
    source = ('[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "registry.k8s.io/pause:3.10"\n'
              "  restrict_oom_score_adj = false\n")
    fixed = images.containerd_config(source, "registry.k8s.io/pause:3.10.2")
    assert 'sandbox_image = "registry.k8s.io/pause:3.10.2"' in fixed
    assert "restrict_oom_score_adj = true" in fixed and "= false" not in fixed
    added = images.containerd_config('sandbox_image = "x"\n', "p")
    assert "restrict_oom_score_adj = true" in added
    with pytest.raises(ValueError, match="sandbox_image"):
        images.containerd_config("version = 2\n", "p")


def test_containerd_unit_fixes() -> None:
    unit = "[Service]\nExecStart=/usr/local/bin/containerd\nOOMScoreAdjust=-999\nDelegate=yes\n"
    fixed = images.containerd_unit(unit)
    assert "ExecStart=/usr/bin/containerd\n" in fixed
    assert "OOMScoreAdjust" not in fixed and "Delegate=yes" in fixed


def test_dockerfiles() -> None:
    base = images.node_base_dockerfile("r:1")
    assert base.startswith("FROM r:1\n")
    assert "STOPSIGNAL SIGRTMIN+3" in base and "ENV container=docker" in base
    assert "cri-base.json" in base and "ln -s /usr/lib/cni /opt/cni/bin" in base
    assert images.binary_dockerfile("scratch", "etcd") == (
        'FROM scratch\nCOPY etcd /usr/local/bin/etcd\nENTRYPOINT ["/usr/local/bin/etcd"]\n')
    proxy = images.proxyv2_dockerfile("slim", "1.40.0")
    assert "/var/lib/istio/envoy/envoy_bootstrap_tmpl.json" in proxy and "USER 1337:1337" in proxy
    assert 'LABEL io.pytest-istio-mtls.envoy="upstream 1.40.0"' in proxy  # backends/kind.py ENVOY_LABEL
    assert "echo.py" in images.app_dockerfile("slim")


def test_kind_config() -> None:
    text = kind.kind_config("n:1")
    assert "disableDefaultCNI: true" in text and "failCgroupV1: false" in text and "image: n:1" in text


def test_fingerprint_follows_content_mode_and_parents(tmp_path: Path) -> None:
    file = tmp_path / "a"
    file.write_text("1")
    file.chmod(0o644)
    first = images.fingerprint("FROM x\n", {"a": file}, ["sha256:1"])
    assert first == images.fingerprint("FROM x\n", {"a": file}, ["sha256:1"])
    assert first != images.fingerprint("FROM y\n", {"a": file}, ["sha256:1"])
    assert first != images.fingerprint("FROM x\n", {"a": file}, ["sha256:2"])
    assert first != images.fingerprint("FROM x\n", {"b": file}, ["sha256:1"])
    file.chmod(0o755)
    assert first != images.fingerprint("FROM x\n", {"a": file}, ["sha256:1"])
    file.chmod(0o644)
    file.write_text("2")
    assert first != images.fingerprint("FROM x\n", {"a": file}, ["sha256:1"])


def _saved_archive(path: Path) -> None:
    """A `docker save` archive of one image under two tags, manifest.json before repositories."""
    manifest = [{"Config": "c.json", "RepoTags": ["registry.k8s.io/pause:3.10.2", "kindest/kindnetd:v1"],
                 "Layers": ["abc123/layer.tar"]}]
    with tarfile.open(path, "w") as out:
        for name, data in (("abc123/layer.tar", b"layer"), ("c.json", b"{}"),
                           ("manifest.json", json.dumps(manifest).encode()),
                           ("repositories", b'{"kindest/kindnetd": {"v1": "abc123"}}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def test_rewrite_archive_puts_repositories_first_with_registry_names(tmp_path: Path) -> None:
    _saved_archive(tmp_path / "in.tar")
    images.rewrite_archive(tmp_path / "in.tar", tmp_path / "out.tar",
                           ["registry.k8s.io/pause:3.10.2", "docker.io/kindest/kindnetd:v1"])
    with tarfile.open(tmp_path / "out.tar") as archive:
        names = archive.getnames()
        assert names[0] == "repositories" and names.count("repositories") == 1
        assert set(names) == {"repositories", "abc123/layer.tar", "c.json", "manifest.json"}
        repositories = json.loads(archive.extractfile("repositories").read())  # type: ignore[union-attr]
    assert repositories == {"registry.k8s.io/pause": {"3.10.2": "abc123"}, "docker.io/kindest/kindnetd": {"v1": "abc123"}}


def test_rewrite_archive_refuses_a_missing_image(tmp_path: Path) -> None:
    _saved_archive(tmp_path / "in.tar")
    with pytest.raises(BuildError, match=re.escape("does not hold registry.k8s.io/etcd:3.6.8-0")):
        images.rewrite_archive(tmp_path / "in.tar", tmp_path / "out.tar", ["registry.k8s.io/etcd:3.6.8-0"])


def test_kind_required_extras_read_from_the_binary(tmp_path: Path) -> None:
    binary = tmp_path / "kind"
    binary.write_bytes(b"\0docker.io/kindest/kindnetd:v20260820-69b56db7\0docker.io/kindest/base:v20260820-69b56db7"
                       b"\0docker.io/kindest/local-path-helper:v20260131-7181c60a\0")
    assert kind.kind_required_extras(binary) == ["docker.io/kindest/kindnetd:v20260820-69b56db7",
                                                 "docker.io/kindest/local-path-helper:v20260131-7181c60a"]
    binary.write_bytes(b"nothing")
    with pytest.raises(BuildError, match=r"names no docker\.io/kindest images"):
        kind.kind_required_extras(binary)


def _write_binary(directory: Path, manifest: dict[str, object], name: str, inputs: str) -> Path:
    path = directory / "bin" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF" + name.encode())
    manifest.setdefault("binaries", {})[name] = {  # type: ignore[index]
        "inputs": inputs, "sha256": istio.sha256_file(path), "size": path.stat().st_size}
    return path


def test_binary_reuse_decisions(tmp_path: Path) -> None:
    manifest: dict[str, object] = {"schema": kind.MANIFEST_SCHEMA}
    assert kind.binary_reusable(tmp_path, manifest, "kind", "i") == "not built yet"
    path = _write_binary(tmp_path, manifest, "kind", "i")
    assert kind.binary_reusable(tmp_path, manifest, "kind", "i") is None
    assert kind.binary_reusable(tmp_path, manifest, "kind", "j") == "its inputs changed"
    path.write_bytes(b"\x7fELFkinX")  # same size, other bytes
    assert kind.binary_reusable(tmp_path, manifest, "kind", "i") == "bin/kind does not match its sha256 in manifest.json"
    path.unlink()
    assert kind.binary_reusable(tmp_path, manifest, "kind", "i") == "bin/kind is missing"


def test_load_manifest_tolerates_missing_broken_and_other_schemas(tmp_path: Path) -> None:
    assert kind.load_manifest(tmp_path)["binaries"] == {}
    (tmp_path / "manifest.json").write_text("{not json")
    assert kind.load_manifest(tmp_path)["images"] == {}
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 99, "binaries": {"kind": {}}}))
    assert kind.load_manifest(tmp_path)["binaries"] == {}


def test_print_env_names_the_images_as_the_kind_options_env_twins(tmp_path: Path) -> None:
    assert kind.print_env(cache_dir=tmp_path) == ""
    directory = kind.build_dir(RELEASE, tmp_path)
    directory.mkdir(parents=True)
    images_ = {key: {"ref": f"pytest-istio-mtls/{key}:t", "id": "sha256:1"} for key in ("node", "pilot", "proxyv2", "app")}
    (directory / "manifest.json").write_text(json.dumps({"schema": kind.MANIFEST_SCHEMA, "images": images_}))
    text = kind.print_env(cache_dir=tmp_path)
    assert f"export ISTIO_MTLS_KIND_BUILD={directory}\n" in text
    assert f"export ISTIO_MTLS_KIND_BIN={directory}/bin/kind\n" in text
    assert f"export ISTIO_MTLS_ISTIOCTL={directory}/bin/istioctl\n" in text
    assert f"export ISTIO_MTLS_KIND_CONFIG={directory}/kind-config.yaml\n" in text
    assert "export ISTIO_MTLS_KIND_IMAGE=pytest-istio-mtls/node:t\n" in text
    app = "pytest-istio-mtls/app:t"
    assert f"export ISTIO_MTLS_IMAGES=app={app},curl={app},capture={app}\n" in text
    assert "export ISTIO_MTLS_HUB=docker.io/pytest-istio-mtls\n" in text
    assert f"export ISTIO_MTLS_TAG={RELEASE.version}\n" in text
    assert kind.build_dir(RELEASE, tmp_path).name == f"v1.36.3-{RELEASE.version}"


def test_env_names_are_the_options_twins() -> None:
    from pytest_istio_mtls import options

    twins = {option.env for option in options.OPTIONS} if hasattr(options, "OPTIONS") else set()
    if not twins:
        pytest.skip("options.py exposes no OPTIONS list")
    for name in ("ISTIO_MTLS_KIND_IMAGE", "ISTIO_MTLS_KIND_CONFIG", "ISTIO_MTLS_KIND_BIN", "ISTIO_MTLS_ISTIOCTL",
                 "ISTIO_MTLS_HUB", "ISTIO_MTLS_TAG", "ISTIO_MTLS_IMAGES"):
        assert name in twins


def _fake_tool(directory: Path, name: str, script: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_no_docker_daemon_is_one_clear_error(tmp_path: Path) -> None:
    _fake_tool(tmp_path, "docker", "echo 'Cannot connect to the Docker daemon at unix:///x.sock' >&2; exit 1\n")
    docker = images.Docker({"PATH": str(tmp_path), "DOCKER_HOST": "unix:///x.sock"}, Progress(io.StringIO()))
    with pytest.raises(BuildError, match=r"no docker daemon reachable at unix:///x.sock: Cannot connect") as info:
        docker.check()
    assert info.value.exit_code == images.EXIT_DOCKER and ".ci/kind-env up" in str(info.value)


def test_no_docker_cli(tmp_path: Path) -> None:
    docker = images.Docker({"PATH": str(tmp_path)}, Progress(io.StringIO()))
    with pytest.raises(BuildError, match="docker is not installed") as info:
        docker.check()
    assert info.value.exit_code == images.EXIT_DOCKER


def test_missing_tool_names_its_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images.shutil, "which", lambda name, path=None: None)
    with pytest.raises(BuildError, match=r"debootstrap is not installed: apt-get install debootstrap") as info:
        images.require_tool("debootstrap", "debootstrap", {"PATH": str(tmp_path)})
    assert info.value.exit_code == images.EXIT_TOOL


def test_run_cli_without_go_is_exit_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    out, err = io.StringIO(), io.StringIO()
    assert kind.run_cli(cache_dir=str(tmp_path), out=out, err=err) == istio.EXIT_GO
    assert err.getvalue().startswith("error: Go is not installed")
    assert len(err.getvalue().strip().splitlines()) == 1


def test_run_cli_unknown_version(tmp_path: Path) -> None:
    err = io.StringIO()
    assert kind.run_cli("0.1", cache_dir=str(tmp_path), out=io.StringIO(), err=err) == istio.EXIT_UNKNOWN_VERSION
    assert "unknown Istio version '0.1'" in err.getvalue()


def test_the_harness_never_uses_an_imtls_namespace() -> None:
    harness = Path(__file__).resolve().parents[3] / ".ci" / "kind-env"
    text = harness.read_text()
    assert os.access(harness, os.X_OK)
    assert "imtls-*) die" in text and "ip netns exec" not in text.replace("`ip netns exec`", "")


def test_node_files_get_the_dockerfile_modes_and_this_machines_fixes(tmp_path: Path) -> None:
    files = tmp_path / "kind/images/base/files"
    for relative, text in (("usr/local/bin/entrypoint", "#!/bin/bash\n"), ("kind/bin/mount-product-files.sh", "x"),
                           ("etc/containerd/config.toml",
                            'sandbox_image = "registry.k8s.io/pause:3.10"\nrestrict_oom_score_adj = false\n'),
                           ("etc/systemd/system/containerd.service",
                            "ExecStart=/usr/local/bin/containerd\nOOMScoreAdjust=-999\n")):
        (files / relative).parent.mkdir(parents=True, exist_ok=True)
        (files / relative).write_text(text)
        (files / relative).chmod(0o444)  # as in Go's module cache
    builder = kind.Builder(RELEASE, tmp_path / "build", {"PATH": ""}, Progress(io.StringIO()), False)
    builder.manifest["pause_tag"] = "3.10.2"
    staged = builder.node_files(tmp_path / "kind")
    assert stat.S_IMODE(staged["files/usr/local/bin/entrypoint"].stat().st_mode) == 0o755
    assert stat.S_IMODE(staged["files/kind/bin/mount-product-files.sh"].stat().st_mode) == 0o755
    assert stat.S_IMODE(staged["files/etc/containerd/config.toml"].stat().st_mode) == 0o644
    config = staged["files/etc/containerd/config.toml"].read_text()
    assert 'pause:3.10.2"' in config and "restrict_oom_score_adj = true" in config
    assert "OOMScoreAdjust" not in staged["files/etc/systemd/system/containerd.service"].read_text()
    assert staged["files/usr/local/bin/ctr"].read_text() == images.CTR_SHIM
    conflist = json.loads(staged["files/etc/cni/net.d/10-bridge.conflist"].read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["bridge", "portmap"]
