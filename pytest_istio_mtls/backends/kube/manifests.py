"""Every object the kind/existing backends apply, rendered from the scenario model as plain dicts.

Pure functions, no cluster: ``pytest-istio-mtls render`` prints exactly these. Servers run the project's
echo app (backends/echo.py, the same program the local backend runs: http ports echo the request and its
headers, X-Forwarded-Client-Cert included; tcp ports echo bytes), shipped in a ConfigMap to an image with
python3; every pod has a ``curl`` container to probe from, pods without a sidecar a ``tls-client`` container
(python3 with backends/tlsprobe.py, for clients that speak TLS themselves), and server pods a ``capture`` container
(tcpdump) as a non-first container, so Istio's default container stays the app.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...judge.accesslog import FORMAT
from .. import echo, tlsprobe
from ..base import BackendError
from .naming import MANAGED_BY, Naming, run_labels

if TYPE_CHECKING:
    from ...model import MeshSettings, Port, Topology, Workload

FIELD_MANAGER = "pytest-istio-mtls"
WORKLOAD_LABEL = "istio-mtls.pytest.io/workload"
SERVICE_LABEL = "istio-mtls.pytest.io/service"  # on every pod of a Service with several workloads: its selector
SUBSET_ROUTE = "pytest-istio-mtls-subset"
PROXY = "istio-proxy"
APP = "app"
CURL = "curl"
CAPTURE = "capture"
TLS_CLIENT = "tls-client"  # python3 running backends/tlsprobe.py: in every pod without a sidecar (``tls:`` rows)
CREDENTIALS = "pytest-istio-mtls-credentials"  # the pod a ``mesh-cert`` client's workload certificate comes from
OUTPUT_CERTS = "/etc/istio-output-certs"
ECHO_CONFIG = "pytest-istio-mtls-echo"  # the ConfigMap holding backends/echo.py, one per namespace
ECHO_DIR = "/opt/pytest-istio-mtls"
FRESH_CONNECTIONS = "pytest-istio-mtls-fresh-connections"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SIDECAR_REQUESTS = {"sidecar.istio.io/proxyCPU": "10m", "sidecar.istio.io/proxyMemory": "40Mi"}  # 2-CPU runners
DEFAULT_HUB = "docker.io/istio"  # where every Istio release publishes istiod and proxyv2
DEFAULT_IMAGES: dict[str, str] = {
    "app": "docker.io/library/python:3.13-slim",  # runs backends/echo.py (standard library only); multi-arch
    "curl": "docker.io/curlimages/curl:8.16.0",  # Istio's curl sample image
    "capture": "docker.io/nicolaka/netshoot:v0.15",  # tcpdump; multi-arch
}


class ManifestError(BackendError):
    """The topology cannot be rendered into pods (e.g. one container port used by http and tcp)."""


def _requests() -> dict[str, Any]:
    """Small requests so a topology fits on a 2-CPU runner (a fresh dict each time: no shared state)."""
    return {"requests": {"cpu": "5m", "memory": "16Mi"}}


def images(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**DEFAULT_IMAGES, **(overrides or {})}


def stats_inclusion(namespaces: Iterable[str] | None = None) -> list[str]:
    """proxyStatsMatcher inclusionRegexps (full-match) for the stats the verdicts read.

    With ``namespaces``, outbound cluster stats are limited to those namespaces' Services, which keeps
    the extra stats small on a shared cluster.
    """
    if namespaces:
        names = "|".join(sorted(namespaces))
        # Istio >= 1.24 names cluster stats by alt_stat_name, "<cluster>;" (istio/istio#52234), so the host
        # is followed by ";." there and by "." before; any cluster domain, not only cluster.local.
        outbound = rf"cluster\.outbound\|[0-9]+\|[^|]*\|[^|;]*\.({names})\.svc\.[^|;]+;?\..*"
    else:
        outbound = r"cluster\.outbound\|.*"
    return [r"listener\.0\.0\.0\.0_15006\..*", r"tls_inspector\..*", outbound, r"cluster\.inbound\|.*",
            r"http\.inbound.*", r"tcp\.inbound.*", r".*rbac.*"]


def proxy_config(namespaces: Iterable[str] | None = None) -> dict[str, Any]:
    return {"holdApplicationUntilProxyStarts": True,
            "proxyStatsMatcher": {"inclusionRegexps": stats_inclusion(namespaces)}}


def injection_label(revision: str | None) -> dict[str, str]:
    return {"istio.io/rev": revision} if revision else {"istio-injection": "enabled"}


def port_name(port: Port) -> str:
    """Service port names start with the protocol, so Istio detects http vs tcp by name too."""
    if port.name == port.protocol or port.name.startswith(f"{port.protocol}-"):
        return port.name
    return f"{port.protocol}-{port.name}"[:63]


def access_log_format() -> str:
    return json.dumps(FORMAT, sort_keys=True)


def _labels(naming: Naming, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**MANAGED_BY, **(extra or {}), **run_labels(naming)}


def render_topology(topology: Topology, naming: Naming, image_map: Mapping[str, str],
                    revision: str | None = None) -> list[dict[str, Any]]:
    """Namespaces, ServiceAccounts, Deployments, Services and the fresh-connection EnvoyFilters."""
    objects: list[dict[str, Any]] = []
    for namespace in topology.namespaces:
        labels = _labels(naming)
        if namespace.sidecars:  # a namespace without: each pod without a sidecar opts out itself (deployment())
            labels.update(injection_label(revision))
        objects.append({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": naming.ns(namespace.name), "labels": labels}})
    for ns in sorted({w.namespace for w in topology.workloads if w.ports or w.container_ports or not w.sidecar}):
        objects.append(echo_config_map(ns, naming))
    for ns, account in sorted({(w.namespace, w.service_account) for w in topology.workloads}):
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": account, "namespace": naming.ns(ns), "labels": _labels(naming)}})
    cluster_namespaces = [naming.ns(n.name) for n in topology.namespaces]
    for workload in topology.workloads:
        objects.append(deployment(workload, topology, naming, image_map, revision, cluster_namespaces))
        if workload.ports and not workload.joins:
            objects.append(service(workload, naming))
    objects.extend(fresh_connection_filters(topology, naming))
    return objects


def echo_config_map(namespace: str, naming: Naming) -> dict[str, Any]:
    """backends/echo.py for the app containers and backends/tlsprobe.py for the tls-client containers of one
    namespace (a ConfigMap is namespaced)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ECHO_CONFIG, "namespace": naming.ns(namespace), "labels": _labels(naming)},
            "data": {"echo.py": Path(echo.__file__).read_text(encoding="utf-8"),
                     "tlsprobe.py": Path(tlsprobe.__file__).read_text(encoding="utf-8")}}


def _app_containers(workload: Workload, image_map: Mapping[str, str]) -> list[dict[str, Any]]:
    """The app: one echo process serving every http and tcp port, Service target ports and ``containerPorts``
    alike (the latter are reached at the pod address only). Ready once its first port accepts: it opens them
    all before it answers."""
    served = (*workload.ports, *workload.container_ports)
    http = sorted({p.target_port for p in served if p.protocol == "http"})
    tcp = sorted({p.target_port for p in served if p.protocol == "tcp"})
    clash = set(http) & set(tcp)
    if clash:
        raise ManifestError(f"{workload.ref}: container port {min(clash)} is used by both an http and a tcp port")
    if not http and not tcp:
        return []
    args = [f"{ECHO_DIR}/echo.py", *(f"--http={n}" for n in http), *(f"--tcp={n}" for n in tcp),
            f"--name={workload.ref}"]
    probe = {"httpGet": {"path": "/status/200", "port": http[0]}} if http else {"tcpSocket": {"port": tcp[0]}}
    return [{
        "name": APP,
        "image": image_map["app"],
        "command": ["python3", "-u"],
        "args": args,
        "ports": [{"containerPort": n, "protocol": "TCP"} for n in (*http, *tcp)],
        "readinessProbe": {**probe, "periodSeconds": 2},
        "volumeMounts": [{"name": "echo", "mountPath": ECHO_DIR, "readOnly": True}],
        "resources": _requests(),
    }]


def deployment(workload: Workload, topology: Topology, naming: Naming, image_map: Mapping[str, str],
               revision: str | None, cluster_namespaces: Iterable[str]) -> dict[str, Any]:
    namespace = topology.namespace(workload.namespace)
    namespace_injects = namespace is not None and namespace.sidecars
    labels = {**workload.labels, **_labels(naming, {WORKLOAD_LABEL: workload.name})}
    if workload.shared:
        labels[SERVICE_LABEL] = workload.service
    annotations: dict[str, str] = {}
    if not workload.sidecar:  # opt out both ways: the label wins on current Istio, the annotation on old ones
        labels["sidecar.istio.io/inject"] = annotations["sidecar.istio.io/inject"] = "false"
    elif not namespace_injects:
        if revision:
            labels["istio.io/rev"] = revision
        else:
            labels["sidecar.istio.io/inject"] = annotations["sidecar.istio.io/inject"] = "true"
    if workload.sidecar:
        scoped = cluster_namespaces if naming.mapped else None
        annotations["proxy.istio.io/config"] = json.dumps(proxy_config(scoped), sort_keys=True)
        annotations.update(SIDECAR_REQUESTS)
    app = _app_containers(workload, image_map)
    containers = [*app]
    containers.append({"name": CURL, "image": image_map["curl"], "command": ["/bin/sleep", "infinity"],
                       "resources": _requests()})
    if not workload.sidecar:
        containers.append({"name": TLS_CLIENT, "image": image_map["app"], "command": ["sleep", "infinity"],
                           "volumeMounts": [{"name": "echo", "mountPath": ECHO_DIR, "readOnly": True}],
                           "resources": _requests()})
    if workload.ports or workload.container_ports:  # anything probed is captured, pod addresses too
        containers.append({
            "name": CAPTURE, "image": image_map["capture"], "command": ["sleep", "infinity"],
            "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
            "resources": _requests(),
        })
    annotations["kubectl.kubernetes.io/default-container"] = containers[0]["name"]
    volumes = [{"name": "echo", "configMap": {"name": ECHO_CONFIG}}] if app or not workload.sidecar else []
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": workload.name, "namespace": naming.ns(workload.namespace),
                     "labels": _labels(naming, {WORKLOAD_LABEL: workload.name})},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # never two pods (two endpoints) for one workload
            "selector": {"matchLabels": {WORKLOAD_LABEL: workload.name}},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {"serviceAccountName": workload.service_account, "terminationGracePeriodSeconds": 0,
                         "containers": containers, **({"volumes": volumes} if volumes else {})},
            },
        },
    }


def service(workload: Workload, naming: Naming) -> dict[str, Any]:
    """The Service ``workload`` is an endpoint of. It selects the workload's pod by its workload label, or every
    workload behind it by the service label when it has several (``service: <owner>`` in the topology)."""
    name = workload.service or workload.name
    selector = {SERVICE_LABEL: name} if workload.shared else {WORKLOAD_LABEL: workload.name}
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": naming.ns(workload.namespace),
                     "labels": _labels(naming, {WORKLOAD_LABEL: name})},
        "spec": {
            "selector": selector,
            "ports": [{"name": port_name(p), "port": p.port, "targetPort": p.target_port, "protocol": "TCP",
                       "appProtocol": p.protocol} for p in workload.ports],
        },
    }


def fresh_connection_filters(topology: Topology, naming: Naming) -> list[dict[str, Any]]:
    """One EnvoyFilter per sidecar namespace: our client sidecars open a new upstream connection for
    every HTTP request (``max_requests_per_connection: 1`` on the outbound clusters of our http
    Services), so every probe has its own TLS handshake and its own flow in the capture.

    Istio replaces the whole ``typed_extension_protocol_options`` entry on MERGE, so the value is a
    complete HttpProtocolOptions (explicit HTTP/1.1, as Istio configures ``http`` ports). TLS settings
    are not touched.
    """
    targets = list(dict.fromkeys((naming.host(w.service or w.name, w.namespace), p.port)
                                 for w in topology.workloads for p in w.ports if p.protocol == "http"))
    if not targets:
        return []
    options = {"@type": f"type.googleapis.com/{HTTP_OPTIONS}",
               "explicit_http_config": {"http_protocol_options": {}},
               "common_http_protocol_options": {"max_requests_per_connection": 1}}
    patches = [{"applyTo": "CLUSTER",
                "match": {"context": "SIDECAR_OUTBOUND", "cluster": {"service": host, "portNumber": port}},
                "patch": {"operation": "MERGE", "value": {"typed_extension_protocol_options": {HTTP_OPTIONS: options}}}}
               for host, port in targets]
    return [{"apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
             "metadata": {"name": FRESH_CONNECTIONS, "namespace": naming.ns(ns), "labels": _labels(naming)},
             "spec": {"workloadSelector": {"labels": dict(MANAGED_BY)}, "configPatches": patches}}
            for ns in sorted({w.namespace for w in topology.workloads if w.sidecar})]


def subset_route(workload: Workload, subset: str, naming: Naming) -> dict[str, Any]:
    """The VirtualService that routes every client of ``workload``'s Service to one DestinationRule subset, on
    every port (http and tcp): how a probe with ``subset:`` reaches the subset's cluster, whose traffic policy
    Istio applies only to traffic routed there."""
    name = workload.service or workload.name
    host = naming.host(name, workload.namespace)
    route = [{"destination": {"host": host, "subset": subset}}]
    spec: dict[str, Any] = {"hosts": [host]}
    if any(p.protocol == "http" for p in workload.ports):
        spec["http"] = [{"route": route}]
    if any(p.protocol == "tcp" for p in workload.ports):
        spec["tcp"] = [{"route": route}]
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": f"{SUBSET_ROUTE}-{name}", "namespace": naming.ns(workload.namespace),
                         "labels": _labels(naming)},
            "spec": spec}


def credential_pod(client: Workload, naming: Naming, image_map: Mapping[str, str],
                   revision: str | None) -> dict[str, Any]:
    """A pod of ``client``'s service account whose injected sidecar writes its workload certificate and key into a
    memory volume (pilot-agent's OUTPUT_CERTS, the way Istio lets Prometheus scrape with mTLS): the certificate the
    cluster's own CA issues that identity, as a stolen workload key would give it. Its ``reader`` container runs as
    the proxy's uid (the key is 0600) and only sleeps; nothing in it is intercepted or served."""
    labels = _labels(naming, {"istio.io/rev": revision} if revision else {"sidecar.istio.io/inject": "true"})
    annotations = {"proxy.istio.io/config": json.dumps({"proxyMetadata": {"OUTPUT_CERTS": OUTPUT_CERTS}}),
                   "sidecar.istio.io/userVolumeMount": json.dumps({"output-certs": {"mountPath": OUTPUT_CERTS}}),
                   **SIDECAR_REQUESTS}
    if not revision:
        annotations["sidecar.istio.io/inject"] = "true"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{CREDENTIALS}-{client.service_account}"[:63].rstrip("-"),
                     "namespace": naming.ns(client.namespace), "labels": labels, "annotations": annotations},
        "spec": {"serviceAccountName": client.service_account, "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "reader", "image": image_map["app"], "command": ["sleep", "infinity"],
                                 "securityContext": {"runAsUser": 1337, "runAsGroup": 1337},
                                 "volumeMounts": [{"name": "output-certs", "mountPath": OUTPUT_CERTS,
                                                   "readOnly": True}],
                                 "resources": _requests()}],
                 "volumes": [{"name": "output-certs", "emptyDir": {"medium": "Memory"}}]},
    }


def mesh_settings(mesh: MeshSettings) -> dict[str, Any]:
    """The meshConfig keys a scenario controls (set at install, patched live between scenarios)."""
    return {"enableAutoMtls": mesh.auto_mtls, "rootNamespace": mesh.root_namespace}


# istiod's switches for a proxy image carrying upstream Envoy: with any of them on, istiod sends Istio-only
# extensions (istio.alpn, istio.metadata_exchange, istio.stats) that upstream Envoy rejects, and new sidecars
# never get their listeners (docs/kind.md, docs/real-istio.md).
UPSTREAM_ENVOY_ENV = {"PILOT_ENABLE_ALPN_FILTER": "false", "PILOT_ENABLE_METADATA_EXCHANGE": "false"}


def install_overlay(mesh: MeshSettings, revision: str | None = None, hub: str = DEFAULT_HUB, tag: str | None = None,
                    upstream_envoy: bool = False) -> dict[str, Any]:
    """The IstioOperator given to ``istioctl install -f``: minimal profile, images from ``hub`` (at ``tag`` when
    given, else istioctl's own version), our mesh settings, JSON access logs in the evidence format, the stats the
    verdicts need, small resource requests; with ``upstream_envoy``, istiod's switches for a proxy image that
    carries upstream Envoy instead of Istio's build.

    ``hub`` is always set: an overlay overrides the hub compiled into istioctl, and Istio 1.30's istioctl
    compiles in the GCP-hosted registry.istio.io, which Istio is retiring (1.31 upgrade notes).
    """
    spec: dict[str, Any] = {"profile": "minimal", "hub": hub}
    if tag:
        spec["tag"] = tag
    if revision:
        spec["revision"] = revision
    spec["meshConfig"] = {
        **mesh_settings(mesh),
        "trustDomain": mesh.trust_domain,
        "accessLogFile": "/dev/stdout",
        "accessLogEncoding": "JSON",
        "accessLogFormat": access_log_format(),
        "defaultConfig": proxy_config(),
    }
    # istiod's requests through components.pilot.k8s and the sidecars' through pod annotations
    # (deployment()): values.pilot.resources and values.global.proxy.resources are deprecated
    # (operator values_types.proto).
    spec["components"] = {"pilot": {"k8s": {"resources": {"requests": {"cpu": "50m", "memory": "256Mi"}}}}}
    spec["values"] = {"pilot": {"autoscaleEnabled": False}}
    if upstream_envoy:
        spec["values"]["pilot"]["env"] = dict(UPSTREAM_ENVOY_ENV)
        spec["values"]["telemetry"] = {"enabled": False}  # its istio.stats filter is Istio's own too
    return {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
            "metadata": {"name": "pytest-istio-mtls", "namespace": "istio-system"}, "spec": spec}
