"""Setup errors a new user meets first, through the real loading code: a missing or garbage kubeconfig, and a
`docker` on PATH that is not Docker. Each is one line naming the file, what is wrong with it, and the fix."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pytest_istio_mtls.backends.base import BackendError, BackendUnavailable
from pytest_istio_mtls.backends.kube.client import Kube, KubeconfigError
from pytest_istio_mtls.backends.kube.cluster import check_docker

SHAPE = "(YAML mapping with clusters, contexts, users expected)"
POINT = "(`kubectl config view --raw` prints the one kubectl uses)"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME without ~/.kube/config and no KUBECONFIG: what a fresh machine has."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return tmp_path / "home"


def message(kubeconfig: Path | str | None) -> str:
    with pytest.raises(BackendError) as info:
        Kube(kubeconfig)
    text = str(info.value)
    assert "\n" not in text
    return text


def test_no_kubeconfig_names_the_path_it_looked_at(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not "Invalid kube-config file. No configuration found.": the path, why that path, and the fix."""
    assert message(None) == (f"no kubeconfig at {home}/.kube/config (KUBECONFIG unset); "
                             "fix: pass --istio-kubeconfig FILE or set KUBECONFIG")
    monkeypatch.setenv("KUBECONFIG", f"{home}/a:{home}/b")  # read when the client is made, as kubectl does
    assert message(None) == (f"no kubeconfig at {home}/a or {home}/b (KUBECONFIG={home}/a:{home}/b); "
                             "fix: point KUBECONFIG at an existing file, or pass --istio-kubeconfig FILE")
    assert message(home / "nope") == (f"no kubeconfig at {home}/nope: no such file; "
                                      "fix: check the path given to --istio-kubeconfig")


@pytest.mark.parametrize(("text", "what"), [
    ("hello\n", "it holds the text 'hello'"),
    ("- a\n- b\n", "it holds a list"),
    ("apiVersion: apps/v1\nkind: Deployment\n", "it has none of clusters, contexts, users (its keys: apiVersion, kind)"),
    ("clusters: hello\n", "clusters is a string, not a list of named entries"),
    ("clusters: [{server: x}]\n", "clusters entry 1 is not a mapping with a name"),
    ("a: [\n", "not YAML (line 2, column 1: expected the node content, but found '<stream end>')"),
    ("", "it is empty"),
    ("{}\n", "it is an empty mapping"),
], ids=["text", "list", "manifest", "clusters-text", "nameless-cluster", "not-yaml", "empty", "empty-mapping"])
def test_a_file_that_is_not_a_kubeconfig_says_so(home: Path, text: str, what: str) -> None:
    """Not "'str' object does not support item assignment" (or a YAML traceback): which file, and why."""
    path = home.parent / "kubeconfig"
    path.write_text(text)
    assert message(path) == (f"{path} is not a kubeconfig {SHAPE}: {what}; "
                             f"fix: point --istio-kubeconfig at your cluster's kubeconfig {POINT}")


def test_a_garbage_kubeconfig_from_the_environment_names_kubeconfig(home: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (home / ".kube").mkdir(parents=True)
    (home / ".kube/config").write_text("hello\n")
    assert message(None) == (f"{home}/.kube/config is not a kubeconfig {SHAPE}: it holds the text 'hello'; "
                             f"fix: point --istio-kubeconfig or KUBECONFIG at your cluster's kubeconfig {POINT}")
    monkeypatch.setenv("KUBECONFIG", f"{home}/.kube/config")
    assert message(None).endswith(f"; fix: point KUBECONFIG at your cluster's kubeconfig {POINT}")


def test_a_directory_is_not_a_kubeconfig(home: Path) -> None:
    home.mkdir()
    assert message(home) == (f"{home} is a directory, not a kubeconfig file; "
                             f"fix: point --istio-kubeconfig at your cluster's kubeconfig {POINT}")


def test_the_option_named_is_the_callers(home: Path) -> None:
    """`import` takes --kubeconfig: its fix names that option, and a CLI can print problem and fix apart."""
    with pytest.raises(KubeconfigError) as info:
        Kube(None, option="--kubeconfig")
    assert (info.value.problem, info.value.fix) == (f"no kubeconfig at {home}/.kube/config (KUBECONFIG unset)",
                                                    "pass --kubeconfig FILE or set KUBECONFIG")


# --------------------------------------------------------------------------- a `docker` that is not Docker

GO_PANIC = """\
#!/bin/sh
echo 'panic: template: :1:2: executing "" at <.ServerVersion>: can'"'"'t evaluate field ServerVersion in type *x.Info' >&2
echo '' >&2
echo 'goroutine 1 [running]:' >&2
echo 'main.main()' >&2
echo '	/src/main.go:12 +0x1d' >&2
exit 2
"""
DAEMON_DOWN = """\
#!/bin/sh
echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?' >&2
exit 1
"""


def fake_docker(directory: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = directory / "docker"
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(directory))
    monkeypatch.delenv("KIND_EXPERIMENTAL_PROVIDER", raising=False)
    return path


def test_a_docker_that_is_not_docker_is_named_without_its_panic(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Another `docker` first on PATH: name the binary, say it did not answer like Docker; its first line at most."""
    docker = fake_docker(tmp_path, GO_PANIC, monkeypatch)
    with pytest.raises(BackendUnavailable) as info:
        check_docker()
    assert str(info.value) == (
        f"the kind backend needs Docker, but {docker} did not answer `docker info` like Docker does (exit 2; "
        "first line: panic: template: :1:2: executing \"\" at <.ServerVersion>: can't evaluate field…); "
        "fix: put Docker's own `docker` first on PATH (for podman: KIND_EXPERIMENTAL_PROVIDER=podman), "
        "or run without a cluster: --istio-backend=local")
    assert "goroutine" not in str(info.value)


def test_a_real_docker_without_its_daemon_still_says_start_docker(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    fake_docker(tmp_path, DAEMON_DOWN, monkeypatch)
    with pytest.raises(BackendUnavailable) as info:
        check_docker()
    assert str(info.value) == (
        "the kind backend needs Docker, but the Docker daemon is not reachable (Cannot connect to the Docker "
        "daemon at unix:///var/run/docker.sock. Is the docker daemon running?); start Docker, or run "
        "without a cluster: --istio-backend=local")

