"""What each backend refuses to run, decided offline: one message with the fix, before any deploy."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_istio_mtls.backends.support import unsupported
from pytest_istio_mtls.model import Scenario
from pytest_istio_mtls.scenario.loader import load_scenario

from ...paths import REPO

AMBIENT = """\
topology:
  namespaces:
    mesh: {sidecars: true}
    amb: {sidecars: false, ambient: true}
  workloads:
    - {name: client, namespace: mesh}
    - {name: server, namespace: amb, ports: [{name: http, port: 8080}]}
expect:
  - {from: client.mesh, to: server.amb, result: mtls}
"""

AUTHZ = """\
policies: |
  apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: only-frontend, namespace: app}
  spec:
    selector: {matchLabels: {app: backend}}
    rules: [{from: [{source: {principals: [cluster.local/ns/app/sa/frontend]}}]}]
expect:
  - {from: frontend.app, to: backend.app, result: mtls}
"""

MUTUAL = """\
policies: |
  apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: backend, namespace: app}
  spec:
    host: backend.app.svc.cluster.local
    trafficPolicy:
      portLevelSettings:
        - port: {number: 8080}
          tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem}
expect:
  - {from: frontend.app, to: backend.app, result: mtls}
"""


def scenario(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return load_scenario(path)


@pytest.mark.parametrize("backend", ["local", "kind", "existing"])
def test_ambient_is_refused_by_every_backend_with_the_fix(tmp_path: Path, backend: str) -> None:
    reason = unsupported(scenario(tmp_path, AMBIENT), backend)
    assert reason == ("1 workload in ambient mode (server.amb): no backend of pytest-istio-mtls runs ambient "
                      "(ztunnel) yet; fix: give the namespace `sidecars: true` instead of `ambient: true`, "
                      "or leave this scenario out of the run")


def test_authorization_policy_runs_on_istiod_and_is_refused_by_the_emulation(tmp_path: Path) -> None:
    loaded = scenario(tmp_path, AUTHZ)
    assert unsupported(loaded, "local", "istiod") is None
    assert unsupported(loaded, "kind") is None
    assert unsupported(loaded, "local", "emulated") == (
        "AuthorizationPolicy app/only-frontend is not emulated by the local backend's emulated control plane; "
        "fix: run it with real istiod (--istio-control-plane=istiod)")


def test_port_level_mutual_tls_is_refused_by_the_emulation_only(tmp_path: Path) -> None:
    loaded = scenario(tmp_path, MUTUAL)
    assert unsupported(loaded, "local", "istiod") is None
    reason = unsupported(loaded, "local", "emulated")
    assert reason is not None and reason.startswith("DestinationRule app/backend uses tls.mode MUTUAL")
    assert reason.endswith("fix: run it on kind (--istio-backend=kind)")


def test_the_builtin_library_runs_everywhere() -> None:
    """Every built-in scenario runs on real istiod; the emulated control plane refuses exactly the authorization
    ones (it does not translate AuthorizationPolicy) and the directed ones (a Service with several workloads, a
    subset route, a pod address, a client speaking TLS), pointing to real istiod; kind and existing refuse none."""
    library = REPO / "pytest_istio_mtls" / "scenarios"
    for path in sorted(library.glob("*.yaml")):
        loaded = load_scenario(path)
        directed = any(w.joins for w in loaded.topology.workloads) or any(
            e.port.subset or e.port.pod or e.request.tls for e in loaded.expectations)
        for backend, control_plane in (("local", "istiod"), ("local", "emulated"), ("kind", "istiod"),
                                       ("existing", "istiod")):
            refusal = unsupported(loaded, backend, control_plane)
            if control_plane == "emulated" and (loaded.policies_of("AuthorizationPolicy") or directed):
                assert refusal is not None and refusal.endswith("(--istio-control-plane=istiod)"), path.name
            else:
                assert refusal is None, (path.name, backend, control_plane)
