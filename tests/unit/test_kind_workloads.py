"""Readiness on replays of real pods: native sidecars in initContainers are found, a pod without the
sidecar its topology promises is recreated once and then refused, a stuck rollout says why."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from pytest_istio_mtls.backends.base import BackendError
from pytest_istio_mtls.backends.kube.naming import Naming
from pytest_istio_mtls.backends.kube.workloads import current_pods, has_sidecar, pod_info, wait_ready
from pytest_istio_mtls.model import Namespace, Port, Topology, Workload

from .kube_replay import ReplayKube, replay

HTTPBIN = Workload("httpbin", "foo", {"app": "httpbin"}, "httpbin", True,
                   (Port("http", 8000, 8080), Port("tcp-echo", 9000, 9000, "tcp")))
CURL = Workload("curl", "foo", {"app": "curl"}, "curl", True)
LEGACY = Workload("curl", "legacy", {"app": "curl"}, "curl", False)
TOPOLOGY = Topology((Namespace("foo", True), Namespace("legacy", False)), (HTTPBIN, CURL, LEGACY))
PODS: dict[str, Any] = replay("pods_running.json")


def test_native_sidecar_in_init_containers_replay() -> None:
    pod = PODS["httpbin.foo"]
    assert not any(c["name"] == "istio-proxy" for c in pod["spec"]["containers"])
    assert has_sidecar(pod)
    info = pod_info(HTTPBIN, pod)
    assert info.ready and info.sidecar and info.proxy_ready and not info.problems
    assert (info.namespace, info.name, info.ip) == ("foo", "httpbin-6d8f7c9b5-x7kq2", "10.244.0.12")


def test_pod_without_sidecar_replay() -> None:
    info = pod_info(LEGACY, PODS["curl.legacy"])
    assert info.ready and not info.sidecar and not info.problems
    wrong = pod_info(HTTPBIN, replay("pod_not_injected.json"))
    assert "has no istio-proxy sidecar" in wrong.problems[-1]


def test_current_pods_ignores_terminating_pods_replay() -> None:
    kube = ReplayKube()
    old = copy.deepcopy(PODS["curl.foo"])
    old["metadata"]["name"] = "curl-5b7d9c8f6-old01"
    old["metadata"]["deletionTimestamp"] = "2026-10-02T10:20:00Z"
    kube.add(old, *PODS.values())
    found = current_pods(kube, TOPOLOGY.workloads, Naming(None))
    assert found["curl.foo"].name == "curl-5b7d9c8f6-p2m4w"
    assert set(found) == {"httpbin.foo", "curl.foo", "curl.legacy"}


def test_wait_ready_returns_every_pod_replay() -> None:
    kube = ReplayKube()
    kube.add(*PODS.values())
    pods = wait_ready(kube, TOPOLOGY, Naming(None), timeout=1, progress=lambda m: None, sleep_s=0.01)
    assert pods["httpbin.foo"].proxy_ready


def test_a_stuck_rollout_names_the_workload_and_why_replay() -> None:
    kube = ReplayKube()
    kube.add(PODS["curl.foo"], PODS["curl.legacy"], replay("pod_image_pull_backoff.json"), *replay("events_foo.json"))
    with pytest.raises(BackendError) as info:
        wait_ready(kube, TOPOLOGY, Naming(None), timeout=0.2, progress=lambda m: None, sleep_s=0.05)
    message = str(info.value)
    assert message.startswith("workloads not ready after 0s (--istio-timeout):")
    assert "httpbin.foo:" in message and "ImagePullBackOff" in message
    assert "toomanyrequests" in message  # the kubelet's warning event
    assert "curl.foo" not in message


def test_a_missing_workload_has_no_pod() -> None:
    kube = ReplayKube()
    kube.add(PODS["httpbin.foo"], PODS["curl.foo"])
    with pytest.raises(BackendError, match=r"curl.legacy: no pod exists"):
        wait_ready(kube, TOPOLOGY, Naming(None), timeout=0.1, progress=lambda m: None, sleep_s=0.05)


def test_an_uninjected_pod_is_recreated_once_then_refused_replay() -> None:
    kube = ReplayKube()
    kube.add(replay("pod_not_injected.json"), PODS["curl.foo"], PODS["curl.legacy"])
    original = kube.delete
    deleted: list[str] = []

    def delete(api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        deleted.append(name)
        result = original(api_version, kind, namespace, name)
        again = replay("pod_not_injected.json")  # the Deployment recreates it, still without a sidecar
        again["metadata"]["name"] = "httpbin-6d8f7c9b5-fghij"
        kube.add(again)
        return result

    kube.delete = delete  # type: ignore[method-assign]
    messages: list[str] = []
    with pytest.raises(BackendError, match=r"recreated pod httpbin-6d8f7c9b5-fghij has no istio-proxy sidecar"):
        wait_ready(kube, TOPOLOGY, Naming(None), timeout=2, progress=messages.append, sleep_s=0.01)
    assert deleted == ["httpbin-6d8f7c9b5-abcde"]
    assert "recreating it" in messages[0]
