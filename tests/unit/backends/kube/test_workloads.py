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

from ...kube_replay import ReplayKube, replay

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
    assert message.startswith("workloads not ready after 0s (--istio-timeout, not counting image pulls):")
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


def _pulling(pod: str, image: str, reason: str = "Pulling") -> dict[str, Any]:
    words = {"Pulling": f'Pulling image "{image}"',
             "Pulled": f'Successfully pulled image "{image}" in 41.2s (41.2s including waiting). Image size: 9 bytes.'}
    return {"apiVersion": "v1", "kind": "Event", "type": "Normal", "reason": reason, "message": words[reason],
            "metadata": {"name": f"{pod}.{reason.lower()}", "namespace": "foo"},
            "involvedObject": {"kind": "Pod", "namespace": "foo", "name": pod, "fieldPath": "spec.containers{httpbin}"}}


def test_image_pulls_do_not_count_against_the_timeout_and_are_shown() -> None:
    """The first deploy pulls every image: --istio-timeout starts after the pulls (review finding C5)."""
    kube = ReplayKube()
    image = "docker.io/mccutchen/go-httpbin:v2.15.0"
    waiting = replay("pod_image_pull_backoff.json")
    name = waiting["metadata"]["name"]
    for status in waiting["status"]["containerStatuses"]:
        status["state"] = {"waiting": {"reason": "ContainerCreating"}}
    kube.add(PODS["curl.foo"], PODS["curl.legacy"], waiting, _pulling(name, image))
    now = [0.0]
    messages: list[str] = []

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 120:  # the pull ends after two minutes, then the pod becomes ready
            kube.delete("v1", "Pod", "foo", name)
            kube.add(_pulling(name, image, "Pulled"), PODS["httpbin.foo"])

    pods = wait_ready(kube, TOPOLOGY, Naming(None), timeout=10, progress=messages.append, sleep_s=2,
                      clock=lambda: now[0], sleep=sleep)
    assert pods["httpbin.foo"].ready and now[0] >= 120
    assert messages[0] == f"pulling images (0s so far; --istio-timeout starts after them): {image}"
    assert len(messages) == 120 // 15  # one line every 15 s of pulling


def test_a_pull_that_never_ends_has_its_own_deadline() -> None:
    kube = ReplayKube()
    waiting = replay("pod_image_pull_backoff.json")
    kube.add(PODS["curl.foo"], PODS["curl.legacy"], waiting,
             _pulling(waiting["metadata"]["name"], "docker.io/mccutchen/go-httpbin:v2.15.0"))
    now = [0.0]
    with pytest.raises(BackendError, match=r"^images still being pulled after 60s: docker.io/mccutchen/go-httpbin:"
                                           r"v2.15.0; pre-load them"):
        wait_ready(kube, TOPOLOGY, Naming(None), timeout=10, progress=lambda m: None, sleep_s=5,
                   clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s), pull_timeout=60)
