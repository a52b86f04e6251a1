"""Deploying the topology and waiting until every pod is Running, Ready and has (or lacks) a sidecar.

The wait has a reported deadline: when it passes, the error names each workload that is not ready
and why (pod conditions, waiting container reasons, recent warning events). A pod whose sidecar
presence contradicts the topology is a failure too, never something probes run against.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...model import Topology, Workload
from ..base import BackendError
from .client import KubeApi
from .manifests import PROXY, WORKLOAD_LABEL
from .naming import Naming

Progress = Callable[[str], None]


@dataclass
class PodInfo:
    """One workload's pod as the probes need it."""

    ref: str
    namespace: str  # cluster namespace
    name: str
    ip: str = ""
    ready: bool = False
    sidecar: bool = False  # an istio-proxy container exists (in containers or, native, in initContainers)
    proxy_ready: bool = False
    problems: list[str] = field(default_factory=list)


def _statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def has_sidecar(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    return any(c.get("name") == PROXY for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])])


def pod_info(workload: Workload, pod: Mapping[str, Any]) -> PodInfo:
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    ready = (status.get("phase") == "Running" and conditions.get("Ready", {}).get("status") == "True"
             and not metadata.get("deletionTimestamp"))
    info = PodInfo(workload.ref, str(metadata.get("namespace", "")), str(metadata.get("name", "")),
                   str(status.get("podIP") or ""), ready, has_sidecar(pod))
    info.proxy_ready = any(s.get("name") == PROXY and s.get("ready") for s in _statuses(pod))
    if status.get("phase") != "Running":
        info.problems.append(f"phase {status.get('phase', 'unknown')}")
    for condition in conditions.values():
        if condition.get("status") != "True" and condition.get("reason"):
            info.problems.append(f"{condition.get('type')}: {condition.get('reason')} {condition.get('message', '')}"
                                 .strip())
    for container in _statuses(pod):
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "PodInitializing", "ContainerCreating"):
            info.problems.append(f"container {container.get('name')}: {waiting.get('reason')} "
                                 f"{waiting.get('message', '')}".strip())
    if info.sidecar != workload.sidecar:
        info.problems.append("has an istio-proxy sidecar although the topology says it has none" if info.sidecar
                             else "has no istio-proxy sidecar although the topology says it has one")
    return info


def current_pods(kube: KubeApi, workloads: Iterable[Workload], naming: Naming) -> dict[str, PodInfo]:
    """Each workload's live pod (the newest not being deleted); missing workloads are absent."""
    pods: dict[str, PodInfo] = {}
    for workload in workloads:
        items = kube.list("v1", "Pod", naming.ns(workload.namespace), f"{WORKLOAD_LABEL}={workload.name}")
        alive = [p for p in items if not (p.get("metadata") or {}).get("deletionTimestamp")]
        if alive:
            newest = max(alive, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp", "")))
            pods[workload.ref] = pod_info(workload, newest)
    return pods


def _warnings(kube: KubeApi, namespace: str, names: Sequence[str]) -> list[str]:
    try:
        events = kube.list("v1", "Event", namespace)
    except BackendError:
        return []
    found = [e for e in events if e.get("type") == "Warning"
             and any(str((e.get("involvedObject") or {}).get("name", "")).startswith(n) for n in names)]
    found.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return [f"event {e.get('reason')}: {e.get('message', '').strip()}" for e in found[-3:]]


def explain(kube: KubeApi, pending: Mapping[Workload, PodInfo | None], naming: Naming) -> str:
    lines = []
    for workload, info in pending.items():
        detail = ["no pod exists"] if info is None else list(info.problems or ["not Ready yet"])
        detail += _warnings(kube, naming.ns(workload.namespace),
                            [workload.name] + ([info.name] if info is not None else []))
        lines.append(f"  {workload.ref}: " + "; ".join(detail))
    return "\n".join(lines)


PULL_TIMEOUT_S = 900.0  # image pulls on a slow link or a cold node; --istio-timeout starts after them
PULL_REPORT_S = 15.0


def pulls_in_progress(kube: KubeApi, namespaces: Iterable[str]) -> list[str]:
    """Images the kubelet has started but not finished pulling, from the namespaces' events."""
    started: dict[str, str] = {}
    finished: set[str] = set()
    for namespace in namespaces:
        try:
            events = kube.list("v1", "Event", namespace)
        except BackendError:
            continue
        for event in events:
            message = str(event.get("message") or "")
            image = message.split('"')[1] if message.count('"') >= 2 else ""
            key = f"{namespace}/{(event.get('involvedObject') or {}).get('name')}/{image}"
            if event.get("reason") == "Pulling":
                started[key] = image
            elif event.get("reason") in ("Pulled", "Failed", "BackOff", "ErrImageNeverPull"):
                finished.add(key)
    return sorted({image for key, image in started.items() if key not in finished})


def wait_ready(kube: KubeApi, topology: Topology, naming: Naming, timeout: float,
               progress: Progress, sleep_s: float = 2.0, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep, pull_timeout: float = PULL_TIMEOUT_S) -> dict[str, PodInfo]:
    """Block until every workload's pod is Ready with the right sidecar presence.

    ``timeout`` (--istio-timeout) counts only while no image is being pulled: the first deploy on a fresh
    node pulls every image, which says nothing about the workloads, so pulls have their own deadline and
    are shown as progress. A pod created before the injector worked has no sidecar: it is deleted once
    so its Deployment recreates it through the webhook; a second wrong pod is an error.
    """
    recreated: set[str] = set()
    namespaces = sorted({naming.ns(w.namespace) for w in topology.workloads})

    def pending() -> dict[Workload, PodInfo | None]:
        pods = current_pods(kube, topology.workloads, naming)
        waiting: dict[Workload, PodInfo | None] = {}
        for workload in topology.workloads:
            info = pods.get(workload.ref)
            if info is not None and info.ready and info.sidecar != workload.sidecar:
                if workload.ref in recreated:
                    raise BackendError(f"{workload.ref}: the recreated pod {info.name} "
                                       + info.problems[-1] + "; check the namespace's injection labels and the "
                                       "sidecar injector webhook")
                recreated.add(workload.ref)
                progress(f"{workload.ref}: pod {info.name} {info.problems[-1]}; recreating it")
                kube.delete("v1", "Pod", info.namespace, info.name)
                waiting[workload] = info
            elif info is None or not info.ready:
                waiting[workload] = info
        return waiting

    start = last_tick = clock()
    waited = pulling_for = 0.0
    reported = -PULL_REPORT_S
    while True:
        last = pending()
        if not last:
            return current_pods(kube, topology.workloads, naming)
        pulling = pulls_in_progress(kube, namespaces)
        now = clock()
        step, last_tick = now - last_tick, now
        if pulling:
            pulling_for += step
            if pulling_for - reported >= PULL_REPORT_S:
                reported = pulling_for
                progress(f"pulling images ({now - start:.0f}s so far; --istio-timeout starts after them): "
                         + ", ".join(pulling))
            if pulling_for > pull_timeout:
                raise BackendError(f"images still being pulled after {pull_timeout:.0f}s: {', '.join(pulling)}; "
                                   "pre-load them (kind load docker-image) or use a mirror (--istio-images)")
        else:
            waited += step
            if waited > timeout:
                raise BackendError(f"workloads not ready after {timeout:.0f}s (--istio-timeout, not counting image "
                                   f"pulls):\n" + explain(kube, last, naming))
        sleep(sleep_s)
