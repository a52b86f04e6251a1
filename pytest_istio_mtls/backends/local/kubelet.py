"""The local backend's pods as the API server must see them, so real istiod configures them.

The plugin plays kubelet and endpoints controller: Namespaces, ServiceAccounts, a Node, Pods reported
Running and Ready at their network namespace's address with the labels the sidecar injector would add,
Services (the API server allocates their ClusterIPs) and EndpointSlices. Services are the same objects
the kind and existing backends render (``kube.manifests.service``).
"""

from __future__ import annotations

from typing import Any

from ...model import Topology, Workload
from ..kube.manifests import SERVICE_LABEL, WORKLOAD_LABEL, port_name
from ..kube.naming import MANAGED_BY

MANAGED_BY_SLICE = "pytest-istio-mtls.local"
APP_CONTAINER = "app"


def namespaces(topology: Topology) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n.name, "labels": dict(MANAGED_BY)}}
        for n in topology.namespaces]
    objects += [{"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": account, "namespace": ns, "labels": dict(MANAGED_BY)}}
                for ns, account in sorted({(w.namespace, w.service_account) for w in topology.workloads})]
    return objects


def pod_labels(workload: Workload) -> dict[str, str]:
    """The workload's labels plus what the sidecar injector adds (tlsMode drives auto mTLS per endpoint)."""
    labels = {**workload.labels, WORKLOAD_LABEL: workload.name, **MANAGED_BY}
    if workload.shared:
        labels[SERVICE_LABEL] = workload.service
    if workload.sidecar:
        labels.update({"security.istio.io/tlsMode": "istio", "service.istio.io/canonical-name": workload.name,
                       "service.istio.io/canonical-revision": "latest"})
    return labels


def pod(workload: Workload, node: str) -> dict[str, Any]:
    numbers = {p.target_port for p in (*workload.ports, *workload.container_ports)}
    ports = [{"containerPort": n, "protocol": "TCP"} for n in sorted(numbers)]
    containers: list[dict[str, Any]] = [{"name": APP_CONTAINER, "image": "pytest-istio-mtls.local/app", "ports": ports}]
    if workload.sidecar:
        containers.append({"name": "istio-proxy", "image": "pytest-istio-mtls.local/pilot-agent"})
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": workload.name, "namespace": workload.namespace, "labels": pod_labels(workload)},
            "spec": {"nodeName": node, "serviceAccountName": workload.service_account,
                     "automountServiceAccountToken": False, "containers": containers}}


def pod_status(ip: str, host_ip: str, started: str) -> dict[str, Any]:
    conditions = [{"type": t, "status": "True", "lastTransitionTime": started}
                  for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    return {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
            "startTime": started, "conditions": conditions}


def endpoint_slice(workload: Workload, ip: str | None, node: str) -> dict[str, Any]:
    """What the EndpointSlice controller would write for the workload's pod in its Service: one slice per
    workload, so a Service with several workloads has one slice each. ``ip=None``: the pod is out of the
    Service's endpoints (while a probe needs another workload of that Service to answer)."""
    endpoints = [{"addresses": [ip], "conditions": {"ready": True, "serving": True, "terminating": False},
                  "nodeName": node,
                  "targetRef": {"kind": "Pod", "namespace": workload.namespace, "name": workload.name}}]
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{workload.name}-local", "namespace": workload.namespace,
                     "labels": {"kubernetes.io/service-name": workload.service or workload.name,
                                "endpointslice.kubernetes.io/managed-by": MANAGED_BY_SLICE, **MANAGED_BY}},
        "addressType": "IPv4",
        "endpoints": endpoints if ip is not None else [],
        "ports": [{"name": port_name(p), "port": p.target_port, "protocol": "TCP", "appProtocol": p.protocol}
                  for p in workload.ports],
    }
