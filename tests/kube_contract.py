"""The contract of the real ``Kube`` client: every kind the backends address, applied, read, listed,
patched and deleted over HTTP. Run against the apiserver stand-in (tests/unit) and the real
kube-apiserver (tests/local). Any exception other than a ``BackendError`` escaping the client fails,
which is how a missing API object (``AttributeError``) or a client-version mismatch (``ApiTypeError``)
shows up before a user's first run does.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_istio_mtls.backends.base import BackendError
from pytest_istio_mtls.backends.kube.client import BUILTIN, PLURALS, Kube

NAMESPACE = "contract"
LABEL = {"istio-mtls.pytest.io/contract": "yes"}

# kind → (apiVersion, spec-ish body fields): the smallest objects a real 1.3x apiserver with Istio's CRDs accepts.
OBJECTS: dict[str, tuple[str, dict[str, Any]]] = {
    "Namespace": ("v1", {}),
    "Node": ("v1", {}),
    "ServiceAccount": ("v1", {}),
    "Service": ("v1", {"spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                                "selector": {"app": "contract"}}}),
    "ConfigMap": ("v1", {"data": {"key": "value"}}),
    # The ServiceAccount admission plugin wants the pod's account to exist: drive() creates it first.
    "Pod": ("v1", {"spec": {"serviceAccountName": "contract-serviceaccount", "automountServiceAccountToken": False,
                            "containers": [{"name": "app", "image": "example.invalid/app:1"}]}}),
    "Event": ("v1", {"involvedObject": {"kind": "Pod", "namespace": NAMESPACE, "name": "contract-pod"},
                     "reason": "Contract", "message": "a contract event", "type": "Normal"}),
    "Deployment": ("apps/v1", {"spec": {
        "replicas": 0, "selector": {"matchLabels": {"app": "contract"}},
        "template": {"metadata": {"labels": {"app": "contract"}},
                     "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}}}),
    "StatefulSet": ("apps/v1", {"spec": {
        "replicas": 0, "serviceName": "contract", "selector": {"matchLabels": {"app": "contract"}},
        "template": {"metadata": {"labels": {"app": "contract"}},
                     "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}}}),
    "DaemonSet": ("apps/v1", {"spec": {
        "selector": {"matchLabels": {"app": "contract"}},
        "template": {"metadata": {"labels": {"app": "contract"}},
                     "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1"}]}}}}),
    "MutatingWebhookConfiguration": ("admissionregistration.k8s.io/v1", {"webhooks": [{
        "name": "contract.istio-mtls.pytest.io", "clientConfig": {"url": "https://127.0.0.1:1/never"},
        "rules": [], "sideEffects": "None", "admissionReviewVersions": ["v1"], "failurePolicy": "Ignore",
        "objectSelector": {"matchLabels": {"never": "matches"}}}]}),
    "EndpointSlice": ("discovery.k8s.io/v1", {
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["10.244.0.10"], "conditions": {"ready": True}}]}),
    "CustomResourceDefinition": ("apiextensions.k8s.io/v1", {"spec": {
        "group": "contract.istio-mtls.pytest.io", "scope": "Namespaced",
        "names": {"plural": "contractcustomresourcedefinitions", "singular": "contractcustomresourcedefinition",
                  "kind": "ContractWidget"},
        "versions": [{"name": "v1", "served": True, "storage": True,
                      "schema": {"openAPIV3Schema": {"type": "object"}}}]}}),
    "PeerAuthentication": ("security.istio.io/v1", {"spec": {"mtls": {"mode": "STRICT"}}}),
    "AuthorizationPolicy": ("security.istio.io/v1", {"spec": {}}),
    "RequestAuthentication": ("security.istio.io/v1", {"spec": {}}),
    "DestinationRule": ("networking.istio.io/v1", {"spec": {"host": "contract.example.com"}}),
    "VirtualService": ("networking.istio.io/v1", {"spec": {"hosts": ["contract.example.com"]}}),
    "Gateway": ("networking.istio.io/v1", {"spec": {"selector": {"istio": "none"}}}),
    "ServiceEntry": ("networking.istio.io/v1", {"spec": {"hosts": ["contract.example.com"],
                                                         "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                                                         "resolution": "DNS"}}),
    "Sidecar": ("networking.istio.io/v1", {"spec": {}}),
    "WorkloadEntry": ("networking.istio.io/v1", {"spec": {"address": "192.0.2.1"}}),
    "WorkloadGroup": ("networking.istio.io/v1", {"spec": {"template": {}}}),
    "EnvoyFilter": ("networking.istio.io/v1alpha3", {"spec": {"configPatches": []}}),
    "ProxyConfig": ("networking.istio.io/v1beta1", {"spec": {"concurrency": 1}}),
    "Telemetry": ("telemetry.istio.io/v1", {"spec": {}}),
}
CLUSTER_SCOPED = {"Namespace", "Node", "MutatingWebhookConfiguration", "CustomResourceDefinition"}


def every_kind() -> list[str]:
    """Every kind the client can address: a kind added to BUILTIN or PLURALS must be added above."""
    return sorted(set(BUILTIN) | set(PLURALS))


def manifest(kind: str) -> dict[str, Any]:
    api_version, fields = OBJECTS[kind]
    name = NAMESPACE if kind == "Namespace" else f"contract-{kind.lower()}"
    if kind == "CustomResourceDefinition":  # a CRD's name must be <plural>.<group>
        name = "contractcustomresourcedefinitions.contract.istio-mtls.pytest.io"
    metadata: dict[str, Any] = {"name": name, "labels": dict(LABEL)}
    if kind not in CLUSTER_SCOPED:
        metadata["namespace"] = NAMESPACE
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **fields}


def _gone(kube: Kube, kind: str, namespace: str | None, name: str) -> bool:
    """Deleted, or (a Namespace without a namespace controller) terminating."""
    left = kube.get(OBJECTS[kind][0], kind, namespace, name)
    return left is None or bool((left.get("metadata") or {}).get("deletionTimestamp"))


def drive(kube: Kube, kind: str) -> None:
    """apply (create, then again as an update) → get → list → patch (built-in kinds) → delete → get → delete."""
    obj = manifest(kind)
    api_version = obj["apiVersion"]
    name = obj["metadata"]["name"]
    namespace = obj["metadata"].get("namespace")
    if namespace:
        kube.apply(manifest("Namespace"))
    if kind == "Pod":
        kube.apply(manifest("ServiceAccount"))
    created = kube.apply(obj)
    assert created["metadata"]["name"] == name and created["metadata"].get("uid"), created
    again = kube.apply(obj)
    assert again["metadata"]["uid"] == created["metadata"]["uid"]
    read = kube.get(api_version, kind, namespace, name)
    assert read is not None and read["metadata"]["uid"] == created["metadata"]["uid"]
    assert read["kind"] == kind or kind in BUILTIN  # typed models drop nothing we read; custom objects keep kind
    selector = ",".join(f"{k}={v}" for k, v in LABEL.items())
    listed = kube.list(api_version, kind, namespace, label_selector=selector)
    assert [i["metadata"]["name"] for i in listed] == [name]
    assert kube.list(api_version, kind, namespace, label_selector="istio-mtls.pytest.io/contract=no") == []
    if namespace:
        everywhere = kube.list(api_version, kind, None, label_selector=selector)
        assert name in [i["metadata"]["name"] for i in everywhere]
    if kind in BUILTIN:
        patched = kube.patch(api_version, kind, namespace, name, {"metadata": {"labels": {"patched": "yes"}}})
        assert patched["metadata"]["labels"]["patched"] == "yes"
    else:
        with pytest.raises(BackendError, match="only built-in kinds are patched"):
            kube.patch(api_version, kind, namespace, name, {})
    assert kube.delete(api_version, kind, namespace, name) is True
    assert _gone(kube, kind, namespace, name)
    # Deleting again: gone (False), unless finalizers kept it terminating a moment (a CRD's cleanup; a
    # Namespace without a namespace controller), when the server may still accept the repeated delete.
    left = kube.get(api_version, kind, namespace, name)
    again = kube.delete(api_version, kind, namespace, name)
    assert again is False or (left is not None and left["metadata"].get("deletionTimestamp")), (again, left)


def drive_kubelet_calls(kube: Kube) -> None:
    """What the local control plane does as a kubelet: report a pod Running and Ready, mint a token."""
    kube.apply(manifest("Namespace"))
    kube.apply(manifest("ServiceAccount"))
    pod = manifest("Pod")
    kube.apply(pod)
    status = {"phase": "Running", "podIP": "10.244.0.10", "podIPs": [{"ip": "10.244.0.10"}],
              "conditions": [{"type": "Ready", "status": "True"}]}
    patched = kube.patch_pod_status(NAMESPACE, pod["metadata"]["name"], status)
    assert patched["status"]["podIP"] == "10.244.0.10" and patched["status"]["phase"] == "Running"
    read = kube.get("v1", "Pod", NAMESPACE, pod["metadata"]["name"])
    assert read is not None and read["status"]["conditions"][0]["status"] == "True"
    token = kube.token(NAMESPACE, manifest("ServiceAccount")["metadata"]["name"], "istio-ca", 3600)
    assert token.count(".") >= 2  # a JWT (the stand-in's is shaped like one too)
    with pytest.raises(BackendError, match=r"^token for ServiceAccount contract/nosuch: "):
        kube.token(NAMESPACE, "nosuch", "istio-ca")
    kube.delete("v1", "Pod", NAMESPACE, pod["metadata"]["name"])
