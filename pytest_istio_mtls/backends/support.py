"""What each backend can run, decided offline from the scenario alone.

A scenario that a backend cannot run faithfully must stop *before* anything is deployed, once, with one
message and the fix: never a traceback from deep inside a deploy, never a verdict from a data plane that
only approximates Istio. ``run.py`` asks before deploying and ``validate --backend`` asks without a mesh.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..model import Scenario

# What the emulated control plane (Envoy configuration derived from the oracle) does not reproduce;
# real istiod translates all of these itself.
EMULATED_UNSUPPORTED_KINDS = ("AuthorizationPolicy", "RequestAuthentication", "EnvoyFilter", "Sidecar",
                              "VirtualService", "ServiceEntry")


def unsupported(scenario: Scenario, backend: str, control_plane: str = "istiod") -> str | None:
    """Why `backend` cannot run `scenario`, with the fix; None when it can."""
    ambient = [w.ref for w in scenario.topology.workloads if w.ambient]
    if ambient:
        # No backend installs ztunnel yet: kind and existing would deploy sidecar-less pods and the
        # local backend has no ambient data plane, so every verdict would be about the wrong mesh.
        return (f"{_plural(len(ambient), 'workload')} in ambient mode ({', '.join(ambient)}): no backend of "
                "pytest-istio-mtls runs ambient (ztunnel) yet; fix: give the namespace `sidecars: true` "
                "instead of `ambient: true`, or leave this scenario out of the run")
    if backend != "local" or control_plane != "emulated":
        return None
    directed = _directed(scenario)
    if directed is not None:
        return (f"{directed}, which needs istiod's own logic (endpoints, routes, passthrough and TLS filter chains) "
                "that the emulated control plane does not reproduce; fix: run it with real istiod "
                "(--istio-control-plane=istiod)")
    for policy in scenario.policies:
        if policy.kind in EMULATED_UNSUPPORTED_KINDS:
            return (f"{policy.kind} {policy.namespace}/{policy.name} is not emulated by the local backend's "
                    "emulated control plane; fix: run it with real istiod (--istio-control-plane=istiod)")
        if policy.kind == "DestinationRule" and policy.spec.get("workloadSelector"):
            return (f"DestinationRule {policy.namespace}/{policy.name} uses workloadSelector, which the emulated "
                    "control plane does not emulate; fix: run it with real istiod (--istio-control-plane=istiod)")
        if policy.kind == "DestinationRule" and _uses_mutual(policy.spec):
            return (f"DestinationRule {policy.namespace}/{policy.name} uses tls.mode MUTUAL (user-supplied "
                    "certificates), which the emulated control plane does not emulate; fix: run it on kind "
                    "(--istio-backend=kind)")
    return None


def _directed(scenario: Scenario) -> str | None:
    """The first thing in the scenario that needs a probe directed beyond "a client calls a Service": a Service
    with several workloads, a subset route, a pod address, a client speaking TLS itself."""
    shared = [w for w in scenario.topology.workloads if w.joins]
    if shared:
        return f"Service {shared[0].service_ref} has several workloads behind it ({shared[0].ref} joins it)"
    for row in scenario.expectations:
        if row.port.subset:
            return f"row {row.pair} is routed to subset {row.port.subset}"
        if row.port.pod:
            return f"row {row.pair} probes a pod address"
        if row.request.tls:
            return f"row {row.pair} is a client speaking TLS itself"
    return None


def _uses_mutual(spec: Mapping[str, Any]) -> bool:
    """Does any traffic policy of a DestinationRule (top, port level, subsets) ask for MUTUAL?"""
    top = spec.get("trafficPolicy")
    policies: list[Any] = [top]
    if isinstance(top, dict):
        policies += list(top.get("portLevelSettings") or [])
    for subset in spec.get("subsets") or []:
        if isinstance(subset, dict):
            policies.append(subset.get("trafficPolicy"))
    return any(isinstance(p, dict) and isinstance(p.get("tls"), dict) and p["tls"].get("mode") == "MUTUAL"
               for p in policies)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
