"""Envoy configuration for Istio-like sidecars, derived from the oracle's decisions.

This module plays istiod's part for the local backend: for each sidecar it turns the scenario's
policies into listeners and clusters. What each side does comes from ``semantics`` (one source of
truth); how it is expressed follows Istio's generated config, so the evidence readers see the same
names as on a real istio-proxy: listener ``0.0.0.0_15006`` (virtualInbound) with per-port filter
chains by transport protocol, ``0.0.0.0_15001`` (virtualOutbound), clusters ``outbound|PORT||HOST``
with auto-mTLS transport-socket matches, ``inbound|PORT||``, and XFCC on mTLS.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...judge.accesslog import FORMAT
from ...model import Port, Scenario, Workload
from ...oracle import mtls
from .. import support

PROXY_UID = 1337
INBOUND_PORT = 15006
OUTBOUND_PORT = 15001
ADMIN_PORT = 15000
# ALPN a sidecar offers upstream and the inbound mTLS chains match on (as Istio configures them).
UPSTREAM_ALPN = {"http": ["istio-http/1.1", "istio"], "tcp": ["istio-peer-exchange", "istio"]}
INBOUND_MTLS_ALPN = ["istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"]

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


class UnsupportedPolicy(Exception):
    """The scenario needs something the local emulation does not implement (said plainly to the user)."""


@dataclass(frozen=True)
class Addresses:
    """Where every workload lives: its pod IP and its Service's ClusterIP."""

    pod_ip: Mapping[str, str]
    service_ip: Mapping[str, str]


@dataclass(frozen=True)
class SidecarFiles:
    root_cert: Path
    cert: Path
    key: Path
    config_dir: Path
    inbound_log: Path
    outbound_log: Path

    @property
    def lds(self) -> Path:
        return self.config_dir / "lds.json"

    @property
    def cds(self) -> Path:
        return self.config_dir / "cds.json"


# --------------------------------------------------------------------------- building blocks


def _typed(type_url: str, **fields: Any) -> dict[str, Any]:
    return {"@type": type_url, **fields}


def _access_log(path: Path, direction: str) -> list[dict[str, Any]]:
    return [{
        "name": "envoy.access_loggers.file",
        "typed_config": _typed(
            "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            path=str(path),
            log_format={"json_format": {**FORMAT, "direction": direction}},
        ),
    }]


def _address(ip: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": ip, "port_value": port}}


def _files_cert(files: SidecarFiles) -> dict[str, Any]:
    return {"certificate_chain": {"filename": str(files.cert)}, "private_key": {"filename": str(files.key)}}


def _http_manager(stat_prefix: str, cluster: str, log: list[dict[str, Any]], *, mtls: bool | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",
        "route_config": {
            "name": cluster,
            "validate_clusters": False,
            "virtual_hosts": [{
                "name": cluster,
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "10s"}}],
            }],
        },
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": _typed("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"),
        }],
        "access_log": log,
    }
    if mtls is True:  # inbound over mTLS: tell the app who called, like Istio's sidecar does
        config["forward_client_cert_details"] = "APPEND_FORWARD"
        config["set_current_client_cert_details"] = {"uri": True}
    elif mtls is False:  # inbound plaintext: strip any XFCC a client tried to forge
        config["forward_client_cert_details"] = "SANITIZE"
    return {"name": "envoy.filters.network.http_connection_manager",
            "typed_config": _typed("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                                   "HttpConnectionManager", **config)}


def _tcp_proxy(stat_prefix: str, cluster: str, log: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "envoy.filters.network.tcp_proxy",
            "typed_config": _typed("type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                   stat_prefix=stat_prefix, cluster=cluster, access_log=log)}


def _app_filter(port: Port, stat_prefix: str, cluster: str, log: list[dict[str, Any]], *,
                mtls: bool | None) -> dict[str, Any]:
    if port.protocol == "http":
        return _http_manager(stat_prefix, cluster, log, mtls=mtls)
    return _tcp_proxy(stat_prefix, cluster, log)


# --------------------------------------------------------------------------- inbound (PeerAuthentication)


def _inbound_chains(scenario: Scenario, workload: Workload, files: SidecarFiles) -> list[dict[str, Any]]:
    chains: list[dict[str, Any]] = []
    log = _access_log(files.inbound_log, "inbound")
    seen: set[int] = set()
    for port in workload.ports:
        target = port.target_port
        if target in seen:
            continue
        seen.add(target)
        mode = mtls.server_decision(scenario, workload, target).mode
        cluster = f"inbound|{target}||"
        prefix = f"inbound_0.0.0.0_{target}"
        if mode in ("STRICT", "PERMISSIVE"):
            tls_context = _typed(
                "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                require_client_certificate=True,
                common_tls_context={
                    "tls_certificates": [_files_cert(files)],
                    "validation_context": {
                        "trusted_ca": {"filename": str(files.root_cert)},
                        "match_typed_subject_alt_names": [
                            {"san_type": "URI", "matcher": {"prefix": f"spiffe://{scenario.mesh.trust_domain}/"}}],
                    },
                    "alpn_protocols": ["istio-peer-exchange", "istio", "istio-http/1.1", "h2", "http/1.1"],
                },
            )
            chains.append({
                "name": f"0.0.0.0_{target}_mtls",
                "filter_chain_match": {"destination_port": target, "transport_protocol": "tls",
                                       "application_protocols": INBOUND_MTLS_ALPN},
                "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls_context},
                "filters": [_app_filter(port, prefix, cluster, log, mtls=True)],
            })
        if mode in ("PERMISSIVE", "DISABLE"):
            chains.append({
                "name": f"0.0.0.0_{target}_plaintext",
                "filter_chain_match": {"destination_port": target, "transport_protocol": "raw_buffer"},
                "filters": [_app_filter(port, prefix, cluster, log, mtls=False)],
            })
        if mode == "PERMISSIVE":  # non-Istio TLS passes through untouched, as on a real sidecar
            chains.append({
                "name": f"0.0.0.0_{target}_tls_passthrough",
                "filter_chain_match": {"destination_port": target, "transport_protocol": "tls"},
                "filters": [_tcp_proxy(f"{prefix}_passthrough", cluster, log)],
            })
    return chains


def _inbound_listener(scenario: Scenario, workload: Workload, files: SidecarFiles) -> dict[str, Any]:
    return {
        "@type": LISTENER_TYPE,
        "name": "virtualInbound",
        "stat_prefix": f"0.0.0.0_{INBOUND_PORT}",
        "address": _address("0.0.0.0", INBOUND_PORT),
        "listener_filters": [
            {"name": "envoy.filters.listener.original_dst", "typed_config": _typed(
                "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst")},
            {"name": "envoy.filters.listener.tls_inspector", "typed_config": _typed(
                "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector")},
        ],
        "filter_chains": _inbound_chains(scenario, workload, files),
        # Logs connections no chain accepts (response flag NR): positive evidence of a rejection.
        "access_log": _access_log(files.inbound_log, "inbound"),
    }


# --------------------------------------------------------------------------- outbound (DestinationRule, auto mTLS)


def _upstream_tls(scenario: Scenario, client: Workload, server: Workload, port: Port,
                  files: SidecarFiles) -> dict[str, Any]:
    context = _typed(
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        sni=f"outbound_.{port.port}_._.{server.host}",
        common_tls_context={
            "tls_certificates": [_files_cert(files)],
            "validation_context": {
                "trusted_ca": {"filename": str(files.root_cert)},
                "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": server.spiffe(scenario.mesh.trust_domain)}}],
            },
            "alpn_protocols": UPSTREAM_ALPN[port.protocol],
        },
    )
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _simple_tls(server: Workload) -> dict[str, Any]:
    """DestinationRule SIMPLE: TLS with no client certificate and no mesh identity."""
    context = _typed("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                     sni=server.host)
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _outbound_cluster(scenario: Scenario, client: Workload, server: Workload, port: Port,
                      addresses: Addresses, files: SidecarFiles) -> dict[str, Any]:
    name = f"outbound|{port.port}||{server.host}"
    decision = mtls.client_decision(scenario, client, server, port)
    endpoint: dict[str, Any] = {"endpoint": {"address": _address(addresses.pod_ip[server.ref], port.target_port)}}
    cluster: dict[str, Any] = {
        "@type": CLUSTER_TYPE,
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }
    if port.protocol == "http":
        # A fresh upstream connection per request: every probe shows its own handshake.
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _typed(
                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                common_http_protocol_options={"max_requests_per_connection": 1},
                explicit_http_config={"http_protocol_options": {}},
            )}
    if decision.tls_mode is not None:  # an explicit DestinationRule TLS setting (O3)
        if decision.tls_mode == "ISTIO_MUTUAL":
            cluster["transport_socket"] = _upstream_tls(scenario, client, server, port, files)
        elif decision.tls_mode == "SIMPLE":
            cluster["transport_socket"] = _simple_tls(server)
        elif decision.tls_mode == "MUTUAL":
            rule = decision.destination_rule.ref if decision.destination_rule else "DestinationRule"
            raise UnsupportedPolicy(f"{rule} uses tls.mode "
                                    "MUTUAL with user-supplied certificates, which the local backend does not "
                                    "emulate; run this scenario on kind")
        return cluster
    hint, _ = mtls.namespace_mode(scenario, server.namespace)
    if not scenario.mesh.auto_mtls or hint == "DISABLE":
        return cluster  # no TLS at all (O1, O2.1)
    # Auto mTLS (O2): TLS only to endpoints labelled tlsMode=istio, decided per endpoint.
    cluster["transport_socket_matches"] = [
        {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
         "transport_socket": _upstream_tls(scenario, client, server, port, files)},
        {"name": "tlsMode-disabled", "match": {},
         "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": _typed(
             "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer")}},
    ]
    if decision.sends == "istio-mtls":
        endpoint["metadata"] = {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}
    return cluster


def _outbound_listener(scenario: Scenario, client: Workload, addresses: Addresses,
                       files: SidecarFiles) -> dict[str, Any]:
    log = _access_log(files.outbound_log, "outbound")
    chains = []
    for server in scenario.topology.servers:
        service_ip = addresses.service_ip[server.ref]
        for port in server.ports:
            cluster = f"outbound|{port.port}||{server.host}"
            chains.append({
                "name": f"{service_ip}_{port.port}",
                "filter_chain_match": {"prefix_ranges": [{"address_prefix": service_ip, "prefix_len": 32}],
                                       "destination_port": port.port},
                "filters": [_app_filter(port, f"outbound_{service_ip}_{port.port}", cluster, log, mtls=None)],
            })
    return {
        "@type": LISTENER_TYPE,
        "name": "virtualOutbound",
        "stat_prefix": f"0.0.0.0_{OUTBOUND_PORT}",
        "address": _address("0.0.0.0", OUTBOUND_PORT),
        "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": _typed(
            "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst")}],
        "filter_chains": chains,
        "default_filter_chain": {"filters": [_tcp_proxy("PassthroughCluster", "PassthroughCluster", log)]},
    }


# --------------------------------------------------------------------------- whole documents


def check_supported(scenario: Scenario) -> None:
    """Refuse, in one sentence, what the local emulation cannot reproduce faithfully."""
    reason = support.unsupported(scenario, "local", "emulated")
    if reason is not None:
        raise UnsupportedPolicy(reason)


def listeners(scenario: Scenario, workload: Workload, addresses: Addresses, files: SidecarFiles) -> dict[str, Any]:
    resources = [_outbound_listener(scenario, workload, addresses, files)]
    if workload.ports:  # a client-only workload serves nothing (Envoy refuses a listener without chains)
        resources.append(_inbound_listener(scenario, workload, files))
    return _discovery(resources)


def clusters(scenario: Scenario, workload: Workload, addresses: Addresses, files: SidecarFiles) -> dict[str, Any]:
    resources: list[dict[str, Any]] = [{
        "@type": CLUSTER_TYPE, "name": "PassthroughCluster", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "2s",
    }]
    for port in workload.ports:
        name = f"inbound|{port.target_port}||"
        if any(r["name"] == name for r in resources):
            continue
        resources.append({
            "@type": CLUSTER_TYPE, "name": name, "type": "STATIC", "connect_timeout": "1s",
            # Istio's inbound clusters bind 127.0.0.6 so the iptables rules let them reach the app.
            "upstream_bind_config": {"source_address": {"address": "127.0.0.6", "port_value": 0}},
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _address("127.0.0.1", port.target_port)}}]}]},
        })
    for server in scenario.topology.servers:
        for port in server.ports:
            resources.append(_outbound_cluster(scenario, workload, server, port, addresses, files))
    return _discovery(resources)


def _discovery(resources: list[dict[str, Any]]) -> dict[str, Any]:
    body = json.dumps(resources, sort_keys=True)
    version = hashlib.sha256(body.encode()).hexdigest()[:16]
    return {"version_info": version, "resources": resources}


def bootstrap(workload: Workload, pod_ip: str, files: SidecarFiles, run_id: str) -> dict[str, Any]:
    def source(path: Path) -> dict[str, Any]:
        return {"resource_api_version": "V3",
                "path_config_source": {"path": str(path), "watched_directory": {"path": str(files.config_dir)}}}

    return {
        "node": {"id": f"sidecar~{pod_ip}~{workload.name}.{workload.namespace}~{workload.namespace}"
                       f".svc.cluster.local", "cluster": f"{workload.ref}.{run_id}"},
        "admin": {"address": _address("127.0.0.1", ADMIN_PORT)},
        "dynamic_resources": {"lds_config": source(files.lds), "cds_config": source(files.cds)},
        # An explicit connection limit (as istio-proxy sets) also keeps Envoy's startup warning out of the logs.
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": _typed("type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
                                   "DownstreamConnectionsConfig", max_active_downstream_connections=100000),
        }]},
    }
