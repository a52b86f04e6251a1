"""Has every affected proxy received the policies? Read each proxy's config and compare it with
what the oracle (``semantics``) says Istio should have configured.

There is no "policy acknowledged" signal in Istio since 1.23, and sleeping a fixed time is a guess.
So each sidecar's ``config_dump`` is polled until:

- server side, the inbound listener ``0.0.0.0:15006`` has, for each container port, exactly the
  filter chains the effective PeerAuthentication mode implies (STRICT: tls only, PERMISSIVE: tls and
  raw_buffer, DISABLE: raw_buffer only), and the RBAC policies of the AuthorizationPolicies that bind
  it (``ns[NS]-policy[NAME]-rule[N]``), and none of those just removed;
- client side, each outbound cluster ``outbound|PORT||HOST`` has the transport socket the client
  decision implies (a fixed TLS socket for a DestinationRule TLS mode, tlsMode-istio socket matches
  for auto mTLS, no TLS when plaintext is decided for every endpoint), and our fresh-connection
  setting on http ports.

Pairs the oracle cannot predict are not checked here; the consecutive probes that follow cover them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from ...model import Policy, Scenario, Workload
from ...oracle import authz, mtls
from ..base import BackendError
from .client import KubeApi
from .manifests import HTTP_OPTIONS, PROXY
from .naming import Naming
from .workloads import PodInfo

MODE_CHAINS: dict[str, frozenset[str]] = {
    "STRICT": frozenset({"tls"}),
    "PERMISSIVE": frozenset({"tls", "raw_buffer"}),
    "DISABLE": frozenset({"raw_buffer"}),
}
LISTENERS = "config_dump?resource=dynamic_listeners"
CLUSTERS = "config_dump?resource=dynamic_active_clusters"


@dataclass(frozen=True)
class Expectation:
    """One fact a proxy's config must show."""

    workload: Workload
    dump: str  # LISTENERS or CLUSTERS
    what: str  # "inbound port 8080", "cluster outbound|8000||httpbin.foo.svc.cluster.local"
    check: Callable[[Any], tuple[bool, str]]  # parsed dump → (as expected, what it shows)
    because: str

    def describe(self, shown: str) -> str:
        return f"{self.workload.ref} {self.what}: shows {shown}, expected {self.because}"


# -- reading config dumps -----------------------------------------------------------------------------------


def _entries(dump: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    configs = dump.get("configs")
    return [c for c in configs if isinstance(c, Mapping)] if isinstance(configs, list) else []


def listeners(dump: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Active listeners from a full dump or a ``resource=dynamic_listeners`` dump."""
    found = []
    for entry in _entries(dump):
        for item in entry.get("dynamic_listeners") or [entry]:
            listener = (item.get("active_state") or {}).get("listener")
            if isinstance(listener, Mapping):
                found.append(listener)
    return found


def clusters(dump: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Active clusters by name, from a full dump or a ``resource=dynamic_active_clusters`` dump."""
    found: dict[str, Mapping[str, Any]] = {}
    for entry in _entries(dump):
        for item in entry.get("dynamic_active_clusters") or [entry]:
            cluster = item.get("cluster")
            if isinstance(cluster, Mapping) and cluster.get("name"):
                found[str(cluster["name"])] = cluster
    return found


def inbound_chains(dump: Mapping[str, Any], port: int) -> list[Mapping[str, Any]]:
    """Filter chains of the inbound listener (0.0.0.0:15006) that match destination ``port``."""
    chains: list[Mapping[str, Any]] = []
    for listener in listeners(dump):
        address = (listener.get("address") or {}).get("socket_address") or {}
        if listener.get("name") != "virtualInbound" and address.get("port_value") != 15006:
            continue
        for chain in listener.get("filter_chains") or []:
            match = chain.get("filter_chain_match") or {}
            if int(match.get("destination_port", 0) or 0) == port:
                chains.append(chain)
    return chains


def inbound_transports(chains: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Transport protocols accepted; a chain without one accepts both."""
    found: set[str] = set()
    for chain in chains:
        protocol = (chain.get("filter_chain_match") or {}).get("transport_protocol")
        found.update({"tls", "raw_buffer"} if not protocol else {str(protocol)})
    return frozenset(found)


def mode_of(transports: frozenset[str]) -> str:
    return next((mode for mode, chains in MODE_CHAINS.items() if chains == transports), "no known mode")


def _is_tls(socket: Any) -> bool:
    return "UpstreamTlsContext" in json.dumps(socket) or (
        isinstance(socket, Mapping) and socket.get("name") == "envoy.transport_sockets.tls")


def cluster_tls(cluster: Mapping[str, Any]) -> str:
    """``tls`` (always TLS), ``auto`` (TLS for tlsMode=istio endpoints, else plaintext) or ``none``."""
    options = [m.get("transport_socket") for m in cluster.get("transport_socket_matches") or []]
    if cluster.get("transport_socket") is not None or not options:
        options.append(cluster.get("transport_socket"))
    tls = [_is_tls(o) for o in options if o is not None] or [False]
    if all(tls):
        return "tls"
    return "auto" if any(tls) else "none"


def cluster_fresh(cluster: Mapping[str, Any]) -> bool:
    options = (cluster.get("typed_extension_protocol_options") or {}).get(HTTP_OPTIONS) or {}
    limit = (options.get("common_http_protocol_options") or {}).get("max_requests_per_connection")
    return str(limit) == "1"


# -- what the oracle implies --------------------------------------------------------------------------------


def _inbound(workload: Workload, port: int, mode: str, decided_by: str) -> Expectation:
    want = MODE_CHAINS[mode]

    def check(dump: Any) -> tuple[bool, str]:
        chains = inbound_chains(dump, port)
        if not chains:
            return False, f"no filter chain for port {port}"
        seen = inbound_transports(chains)
        return seen == want, f"{'+'.join(sorted(seen))} ({mode_of(seen)})"

    return Expectation(workload, LISTENERS, f"inbound port {port}", check,
                       f"{'+'.join(sorted(want))} ({mode}: {decided_by})")


def _binds(policy: Policy, workload: Workload, root: str) -> bool:
    if policy.spec.get("targetRef") or policy.spec.get("targetRefs"):
        return False
    if policy.namespace not in (workload.namespace, root):
        return False
    return all(workload.labels.get(k) == str(v) for k, v in policy.selector.items())


def _rbac(workload: Workload, port: int, present: Sequence[str], absent: Sequence[str], any_rbac: bool) -> Expectation:
    def check(dump: Any) -> tuple[bool, str]:
        text = json.dumps(inbound_chains(dump, port))
        missing = [name for name in present if name not in text]
        stale = [name for name in absent if name in text]
        rbac = ".rbac" in text
        ok = not missing and not stale and (rbac or not any_rbac)
        shown = "; ".join([*(f"{n} missing" for n in missing), *(f"{n} still present" for n in stale)]
                          + ([] if rbac or not any_rbac else ["no RBAC filter"])) or "the expected RBAC policies"
        return ok, shown

    wanted = ", ".join(present) if present else ("an RBAC filter" if any_rbac else "no removed policy")
    return Expectation(workload, LISTENERS, f"RBAC on port {port}", check, wanted)


def _cluster(client: Workload, name: str, want: str, fresh: bool, because: str) -> Expectation:
    def check(dump: Any) -> tuple[bool, str]:
        cluster = clusters(dump).get(name)
        if cluster is None:
            return False, "no such cluster"
        tls = cluster_tls(cluster)
        ok = tls == want and (cluster_fresh(cluster) or not fresh)
        note = "" if cluster_fresh(cluster) or not fresh else ", without the fresh-connection setting"
        return ok, f"{tls}{note}"

    note = " with max_requests_per_connection 1" if fresh else ""
    return Expectation(client, CLUSTERS, f"cluster {name}", check, f"{want}{note} ({because})")


def client_want(scenario: Scenario, client: Workload, server: Workload, port: Any) -> tuple[str, str] | None:
    """The cluster transport the client decision implies, or None when the oracle cannot say."""
    decision = mtls.client_decision(scenario, client, server, port)
    if decision.unknown:
        return None
    if decision.tls_mode is not None:
        return ("none" if decision.tls_mode == "DISABLE" else "tls"), f"DestinationRule tls.mode {decision.tls_mode}"
    if not scenario.mesh.auto_mtls:
        return "none", "autoMtls off and no DestinationRule TLS"
    mode, decided_by = mtls.namespace_mode(scenario, server.namespace)
    if mode == "DISABLE":
        return "none", f"auto mTLS, namespace DISABLE by {decided_by}"
    return "auto", "auto mTLS"


def expectations(scenario: Scenario, naming: Naming, removed: Sequence[Policy] = ()) -> list[Expectation]:
    """Everything the sidecars of ``scenario``'s topology must show with its policies in force."""
    topology, root = scenario.topology, scenario.mesh.root_namespace
    found: list[Expectation] = []
    aps = scenario.policies_of("AuthorizationPolicy")
    kept = {(p.namespace, p.name) for p in aps}
    gone = [p for p in removed if p.kind == "AuthorizationPolicy" and (p.namespace, p.name) not in kept]

    def rbac_name(policy: Policy) -> str:
        return f"ns[{naming.ns(policy.namespace)}]-policy[{naming.policy_name(policy.name, policy.namespace)}]-rule["

    for server in topology.servers:
        if not server.sidecar:
            continue
        binding = [p for p in aps if _binds(p, server, root)]
        for target_port in sorted({p.target_port for p in server.ports}):
            decision = mtls.server_decision(scenario, server, target_port)
            if decision.mode is not None:
                found.append(_inbound(server, target_port, decision.mode, decision.decided_by))
            # The rules istiod generates depend on the chain: on TCP an ALLOW rule with an HTTP-only field is dropped.
            tcp = all(p.protocol == "tcp" for p in server.ports if p.target_port == target_port)
            generated = {p: bool(authz.compile_rules(p, str(p.spec.get("action") or "ALLOW"), tcp).rules)
                         for p in binding}
            present = [rbac_name(p) for p in binding if generated[p]]
            rule_less = not all(generated.values())
            absent = [rbac_name(p) for p in gone]
            if present or absent or rule_less:
                found.append(_rbac(server, target_port, present, absent, rule_less))
    for client in topology.workloads:
        if not client.sidecar:
            continue
        for server in topology.servers:
            for port in server.ports:
                want = client_want(scenario, client, server, port)
                if want is not None:
                    name = f"outbound|{port.port}||{naming.host(server.name, server.namespace)}"
                    found.append(_cluster(client, name, want[0], port.protocol == "http", want[1]))
    return found


# -- waiting ----------------------------------------------------------------------------------------------


def fetch_dump(kube: KubeApi, pod: PodInfo, resource: str) -> tuple[Any, str]:
    result = kube.exec(pod.namespace, pod.name, PROXY, ["pilot-agent", "request", "GET", resource], timeout=30)
    if not result.ok:
        return None, f"config unavailable ({result.describe()})"
    try:
        return json.loads(result.stdout), ""
    except ValueError:
        return None, "config unavailable (not JSON)"


def stale(kube: KubeApi, pods: Mapping[str, PodInfo], pending: Sequence[Expectation]) -> list[tuple[Expectation, str]]:
    """The expectations a fresh read of the proxies still contradicts, with what each proxy shows."""
    dumps: dict[tuple[str, str], tuple[Any, str]] = {}
    result = []
    for expectation in pending:
        pod = pods.get(expectation.workload.ref)
        if pod is None:
            result.append((expectation, "no pod"))
            continue
        key = (pod.name, expectation.dump)
        if key not in dumps:
            dumps[key] = fetch_dump(kube, pod, expectation.dump)
        dump, error = dumps[key]
        ok, shown = expectation.check(dump) if dump is not None else (False, error)
        if not ok:
            result.append((expectation, shown))
    return result


def wait_in_force(kube: KubeApi, pods: Mapping[str, PodInfo], wanted: Sequence[Expectation], timeout: float,
                  progress: Callable[[str], None], interval: float = 1.0,
                  sleep: Callable[[float], None] | None = None) -> None:
    """Poll until every expectation holds; at the deadline, report each stale proxy and what it shows."""
    pending = list(wanted)
    last: list[tuple[Expectation, str]] = []

    def check() -> list[tuple[Expectation, str]]:
        nonlocal pending, last
        last = stale(kube, pods, pending)
        pending = [expectation for expectation, _ in last]
        return last

    options: dict[str, Any] = {"sleep": sleep} if sleep is not None else {}
    try:
        Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(interval), retry=retry_if_result(bool),
                 **options)(check)
    except RetryError:
        details = "\n".join(f"  {e.describe(shown)}" for e, shown in last)
        raise BackendError(f"policies not in force after {timeout:.0f}s (--istio-timeout); stale proxies:\n"
                           f"{details}") from None
    progress(f"{len(wanted)} proxy config checks passed")
