"""A small stand-in for kube-apiserver: the Kubernetes REST API over real HTTP, objects in memory.

It answers the requests the official client really sends (server-side apply, merge patch, get, list
with a label selector, delete) with the shapes kube-apiserver returns: objects with uid,
resourceVersion and creationTimestamp, ``<Kind>List`` collections, and ``Status`` objects with the
reason and code of a real 404/415. It exists so that the real ``Kube`` class (not a fake ``KubeApi``)
is driven end to end over HTTP in the unit tests; tests/local drives the same calls against the real
kube-apiserver.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

# plural → (kind, namespaced) per group/version, as the discovery documents of a 1.34 server list them
RESOURCES: dict[str, dict[str, tuple[str, bool]]] = {
    "v1": {"namespaces": ("Namespace", False), "nodes": ("Node", False),
           "serviceaccounts": ("ServiceAccount", True), "services": ("Service", True),
           "configmaps": ("ConfigMap", True), "pods": ("Pod", True), "events": ("Event", True)},
    "apps/v1": {"deployments": ("Deployment", True), "statefulsets": ("StatefulSet", True),
                "daemonsets": ("DaemonSet", True)},
    "admissionregistration.k8s.io/v1": {"mutatingwebhookconfigurations": ("MutatingWebhookConfiguration", False)},
    "discovery.k8s.io/v1": {"endpointslices": ("EndpointSlice", True)},
    "apiextensions.k8s.io/v1": {"customresourcedefinitions": ("CustomResourceDefinition", False)},
    "security.istio.io/v1": {"peerauthentications": ("PeerAuthentication", True),
                             "authorizationpolicies": ("AuthorizationPolicy", True),
                             "requestauthentications": ("RequestAuthentication", True)},
    "networking.istio.io/v1": {"destinationrules": ("DestinationRule", True),
                               "virtualservices": ("VirtualService", True), "gateways": ("Gateway", True),
                               "serviceentries": ("ServiceEntry", True), "sidecars": ("Sidecar", True),
                               "workloadentries": ("WorkloadEntry", True), "workloadgroups": ("WorkloadGroup", True)},
    "networking.istio.io/v1alpha3": {"envoyfilters": ("EnvoyFilter", True)},
    "networking.istio.io/v1beta1": {"proxyconfigs": ("ProxyConfig", True)},
    "telemetry.istio.io/v1": {"telemetries": ("Telemetry", True)},
}
VERSION = {"major": "1", "minor": "34", "emulationMajor": "1", "emulationMinor": "34", "minCompatibilityMajor": "1",
           "minCompatibilityMinor": "33", "gitVersion": "v1.34.1",
           "gitCommit": "93248f9ae092f571eb870b7664c534bfc7d00f03", "gitTreeState": "clean",
           "buildDate": "2025-09-09T19:37:05Z", "goVersion": "go1.24.6", "compiler": "gc", "platform": "linux/amd64"}


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}


def _selected(obj: dict[str, Any], selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, op, value = term.partition("=")
        if op and labels.get(key) != value.lstrip("="):
            return False
        if not op and key not in labels:
            return False
    return True


class Store:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, content type)
        self.lock = threading.Lock()
        self.versions = itertools.count(1000)


class _Handler(BaseHTTPRequestHandler):
    store: Store

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> tuple[str, str, str, bool, str, str] | None:
        """(group/version, plural, kind, namespaced, namespace, name) of the request path."""
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group_version, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            return None
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if rest[-1:] == ["status"] and len(rest) == 3:
            rest = rest[:2]  # the status subresource is patched like the object here
        if not rest or len(rest) > 2:
            return None
        plural, name = rest[0], rest[1] if len(rest) == 2 else ""
        found = RESOURCES.get(group_version, {}).get(plural)
        if found is None:
            return None
        kind, namespaced = found
        if namespace and not namespaced:
            return None
        return group_version, plural, kind, namespaced, namespace, name

    def _common(self) -> tuple[str, str, str, bool, str, str] | None:
        self.store.requests.append((self.command, self.path, self.headers.get("Content-Type", "")))
        if urlsplit(self.path).path.rstrip("/") == "/version":
            self._send(200, VERSION)
            return None
        route = self._route()
        if route is None:
            self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))
        return route

    def _not_found(self, plural: str, group_version: str, name: str) -> None:
        group = group_version.split("/", maxsplit=1)[0] if "/" in group_version else ""
        resource = f"{plural}.{group}" if group else plural
        self._send(404, _status(404, "NotFound", f'{resource} "{name}" not found',
                                {"name": name, "group": group, "kind": plural}))

    def do_GET(self) -> None:
        parts = urlsplit(self.path).path.split("/")
        if len(parts) == 8 and parts[5] == "pods" and parts[7] == "exec":
            # The pod strategy refuses the upgrade for a container the pod does not have (HTTP 400,
            # before any stream exists): no status on channel 3.
            self.store.requests.append((self.command, self.path, ""))
            container = (parse_qs(urlsplit(self.path).query).get("container") or [""])[0]
            self._send(400, _status(400, "BadRequest", f"container {container} is not valid for pod {parts[6]}"))
            return
        route = self._common()
        if route is None:
            return
        group_version, plural, kind, _, namespace, name = route
        with self.store.lock:
            if name:
                obj = self.store.objects.get((group_version, plural, namespace, name))
                if obj is None:
                    self._not_found(plural, group_version, name)
                else:
                    self._send(200, obj)
                return
            selector = (parse_qs(urlsplit(self.path).query).get("labelSelector") or [""])[0]
            items = [o for (gv, p, ns, _), o in sorted(self.store.objects.items())
                     if gv == group_version and p == plural and (not namespace or ns == namespace)
                     and _selected(o, selector)]
        self._send(200, {"kind": f"{kind}List", "apiVersion": group_version,
                         "metadata": {"resourceVersion": str(next(self.store.versions))}, "items": items})

    def do_DELETE(self) -> None:
        route = self._common()
        if route is None:
            return
        group_version, plural, _, _, namespace, name = route
        with self.store.lock:
            obj = self.store.objects.pop((group_version, plural, namespace, name), None)
        if obj is None:
            self._not_found(plural, group_version, name)
        else:
            self._send(200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                             "details": {"name": name, "kind": plural, "uid": obj["metadata"]["uid"]}})

    def do_POST(self) -> None:
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        self.store.requests.append((self.command, self.path, self.headers.get("Content-Type", "")))
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if len(parts) == 7 and parts[4] == "serviceaccounts" and parts[6] == "token":
            namespace, account = parts[3], parts[5]
            with self.store.lock:
                found = ("v1", "serviceaccounts", namespace, account) in self.store.objects
            if not found:
                self._not_found("serviceaccounts", "v1", account)
                return
            audiences = (body.get("spec") or {}).get("audiences") or []
            self._send(201, {"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
                             "metadata": {"name": account, "namespace": namespace},
                             "spec": {"audiences": audiences, "expirationSeconds": 3600},
                             "status": {"token": f"standin.{namespace}.{account}.{','.join(audiences)}",
                                        "expirationTimestamp": "2026-12-01T00:00:00Z"}})
            return
        self._send(404, _status(404, "NotFound", "the server could not find the requested resource"))

    def do_PATCH(self) -> None:
        route = self._common()
        if route is None:
            return
        group_version, plural, kind, _, namespace, name = route
        content_type = self.headers.get("Content-Type", "")
        body = yaml.safe_load(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        key = (group_version, plural, namespace, name)
        with self.store.lock:
            existing = self.store.objects.get(key)
            if content_type == "application/apply-patch+yaml":
                if body.get("kind") != kind or body.get("apiVersion") != group_version:
                    self._send(400, _status(400, "BadRequest", f"the body is a {body.get('kind')}, not a {kind}"))
                    return
                merged = copy.deepcopy(body)
            elif content_type == "application/merge-patch+json":
                if existing is None:
                    self._not_found(plural, group_version, name)
                    return
                merged = _merge(copy.deepcopy(existing), body)
            else:
                self._send(415, _status(415, "UnsupportedMediaType",
                                        f"the body of the request was in an unknown format - accepted media types "
                                        f"include: application/json-patch+json, application/merge-patch+json, "
                                        f"application/apply-patch+yaml (got {content_type})"))
                return
            metadata = merged.setdefault("metadata", {})
            metadata.update(name=name, resourceVersion=str(next(self.store.versions)))
            if namespace:
                metadata["namespace"] = namespace
            old = (existing or {}).get("metadata") or {}
            metadata["uid"] = old.get("uid") or str(uuid.uuid4())
            metadata["creationTimestamp"] = old.get("creationTimestamp") or datetime.datetime.now(
                datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            self.store.objects[key] = merged
        self._send(200 if existing else 201, merged)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            target[key] = _merge(target[key], value)
        else:
            target[key] = value
    return target


@contextmanager
def standin_apiserver(directory: Path) -> Iterator[tuple[Path, Store]]:
    """Serve on a free loopback port; yields (kubeconfig path, store)."""
    store = Store()
    handler = type("Handler", (_Handler,), {"store": store})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = directory / "standin.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "admin", "user": {"token": "standin"}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "admin"}}],
    }))
    try:
        yield kubeconfig, store
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
