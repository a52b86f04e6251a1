"""The kind cluster lifecycle on replays of kind/docker output: the Docker check fails fast with one
message, a cluster that already existed is reused and never deleted, readiness is waited for."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from pytest_istio_mtls.backends.base import BackendError, BackendUnavailable
from pytest_istio_mtls.backends.kube.cluster import Cluster, check_docker, wait_usable

from ...kube_replay import ReplayKube, replay


class Runner:
    """Answers commands by their first arguments; records every call."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(self, command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(command)
        for prefix, (code, out, err) in self.answers.items():
            if tuple(command[1:1 + len(prefix)]) == prefix:
                return subprocess.CompletedProcess(command, code, out, err)
        return subprocess.CompletedProcess(command, 0, "", "")


def test_no_docker_binary_is_unavailable_with_one_message() -> None:
    with pytest.raises(BackendUnavailable) as info:
        check_docker(env={}, which=lambda name: None)
    message = str(info.value)
    assert "Docker" in message and "--istio-backend=local" in message and "\n" not in message


def test_docker_daemon_down_replay() -> None:
    runner = Runner({("info",): (1, "", replay("docker_info_no_daemon.txt"))})
    with pytest.raises(BackendUnavailable) as info:
        check_docker(env={}, which=lambda name: f"/usr/bin/{name}", run=runner)
    assert "Cannot connect to the Docker daemon" in str(info.value)
    assert "--istio-backend=local" in str(info.value)


def test_docker_info_that_hangs_is_cut_short() -> None:
    def hangs(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert kwargs["timeout"] < 30
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    with pytest.raises(BackendUnavailable, match="did not answer"):
        check_docker(env={}, which=lambda name: "/usr/bin/docker", run=hangs)


def test_podman_provider_is_checked_instead_of_docker() -> None:
    asked: list[str] = []
    runner = Runner({("info",): (0, "5.2.0\n", "")})
    check_docker(env={"KIND_EXPERIMENTAL_PROVIDER": "podman"},
                 which=lambda name: asked.append(name) or f"/usr/bin/{name}",  # type: ignore[func-returns-value]
                 run=runner)
    assert asked == ["podman"]
    # podman info has no .ServerVersion: that template would fail and report a working podman as down
    assert runner.calls == [["/usr/bin/podman", "info", "--format", "{{.Version.Version}}"]]


def make_cluster(tmp_path: Path, runner: Runner) -> Cluster:
    return Cluster("pytest-istio-mtls", tmp_path / "kind", "kindest/node:v1.36.1@sha256:" + "0" * 64,
                   tmp_path / "cfg" / "kubeconfig", run=runner)


def test_an_existing_cluster_is_reused_and_never_deleted_replay(tmp_path: Path) -> None:
    runner = Runner({("get", "clusters"): (0, replay("kind_get_clusters.txt"), "")})
    cluster = make_cluster(tmp_path, runner)
    assert cluster.create() is True
    assert runner.calls[1][1:5] == ["export", "kubeconfig", "--name", "pytest-istio-mtls"]
    assert not any("create" in call for call in runner.calls)
    cluster.delete()
    assert not any("delete" in call for call in runner.calls)


def test_a_new_cluster_is_created_and_deleted_by_the_run(tmp_path: Path) -> None:
    runner = Runner({("get", "clusters"): (0, "dev\n", "")})
    cluster = make_cluster(tmp_path, runner)
    assert cluster.create() is False
    create = runner.calls[1]
    assert create[1:3] == ["create", "cluster"] and "--image" in create and "--kubeconfig" in create
    cluster.delete()
    assert runner.calls[-1][1:3] == ["delete", "cluster"]
    cluster.delete()  # a second stop never deletes twice
    assert sum(1 for call in runner.calls if call[1:3] == ["delete", "cluster"]) == 1


def test_every_kind_call_has_a_deadline_and_a_timeout_is_one_clean_error(tmp_path: Path) -> None:
    """kind is always driven directly (pytest-kind's create has no timeout): a hung create ends in one
    message, and the half-created cluster is still deleted by the run."""
    deadlines: list[float] = []

    def hangs_on_create(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        deadlines.append(kwargs["timeout"])
        if command[1:3] == ["create", "cluster"]:
            raise subprocess.TimeoutExpired(command, kwargs["timeout"])
        return subprocess.CompletedProcess(command, 0, "", "")

    cluster = Cluster("pytest-istio-mtls", tmp_path / "kind", "kindest/node:v1.36.1", tmp_path / "kubeconfig",
                      run=hangs_on_create, timeout=42)
    with pytest.raises(BackendError, match=r"^`kind create cluster .*` did not finish within 42s$"):
        cluster.create()
    assert deadlines == [60, 42]
    cluster.delete()
    assert len(deadlines) == 3 and deadlines[-1] == 300


def test_a_failed_delete_says_how_to_delete_by_hand(tmp_path: Path) -> None:
    runner = Runner({("get", "clusters"): (0, "", ""),
                     ("delete", "cluster"): (1, "", "ERROR: failed to delete cluster: permission denied\n")})
    cluster = make_cluster(tmp_path, runner)
    cluster.create()
    with pytest.raises(BackendError, match=r"permission denied; delete it with: kind delete cluster --name "
                                           r"pytest-istio-mtls$"):
        cluster.delete()


def test_kind_failures_are_one_line_with_kinds_last_words(tmp_path: Path) -> None:
    runner = Runner({("get", "clusters"): (0, "", ""),
                     ("create", "cluster"): (1, "", "Creating cluster ...\n ✗ Preparing nodes\n"
                                                     "ERROR: failed to create cluster: node(s) already exist\n")})
    with pytest.raises(BackendError, match="failed to create cluster: node"):
        make_cluster(tmp_path, runner).create()


def test_wait_usable_on_ready_nodes_and_coredns_replay() -> None:
    kube = ReplayKube()
    kube.add(*replay("nodes_ready.json"))
    kube.add({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system"},
              "status": {"replicas": 2, "availableReplicas": 2, "readyReplicas": 2}})
    wait_usable(kube, timeout=1)


def test_wait_usable_reports_what_is_missing_replay() -> None:
    kube = ReplayKube()
    nodes = replay("nodes_ready.json")
    nodes[0]["status"]["conditions"][-1] = {"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                                            "message": "container runtime network not ready: cni plugin not initialized"}
    kube.add(*nodes)
    with pytest.raises(BackendError) as info:
        wait_usable(kube, timeout=0.1)
    assert "node pytest-istio-mtls-control-plane is not Ready" in str(info.value)
    assert "CoreDNS has no available replica" in str(info.value)
