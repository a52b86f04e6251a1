"""Scenarios as platform teams deploy them, on real Envoy sidecars configured by real istiod: several workloads
behind one Service (each probe routed to the workload it names, subsets with their own TLS), probes of a pod's
own address (ports no Service declares), and clients that speak TLS themselves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pytest_istio_mtls.backends.kube.propagation import poll
from pytest_istio_mtls.backends.kube.routing import cluster_hosts
from pytest_istio_mtls.backends.local import LocalBackend, prober
from pytest_istio_mtls.model import Scenario
from pytest_istio_mtls.oracle import mtls

from .conftest import CONTROL_PLANE
from .lab import Lab, Probed

pytestmark = pytest.mark.skipif(CONTROL_PLANE != "istiod", reason="the emulated control plane refuses these rows "
                                                                   "(tests/unit checks the refusal)")
BUILTIN = Path(__file__).parents[2] / "pytest_istio_mtls" / "scenarios"

ONE_SERVICE = """
topology:
  namespaces:
    foo: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - name: httpbin
      namespace: foo
      labels: {app: httpbin, version: v1}
      ports: [{name: http, port: 8000, targetPort: 8080}, {name: tcp, port: 9000, protocol: tcp}]
    - {name: httpbin-v2, namespace: foo, service: httpbin, labels: {app: httpbin, version: v2}, sidecar: false}
    - {name: curl, namespace: foo}
    - {name: curl, namespace: legacy}
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: foo}
  spec: {mtls: {mode: STRICT}}
  ---
  apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: httpbin, namespace: foo}
  spec:
    host: httpbin.foo.svc.cluster.local
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
    subsets:
      - {name: v1, labels: {version: v1}, trafficPolicy: {tls: {mode: DISABLE}}}
      - {name: v2, labels: {version: v2}}
expect:
  - {from: curl.foo, to: "httpbin.foo:8000", endpoint: httpbin, result: mtls}
  - {from: curl.legacy, to: "httpbin.foo:8000", endpoint: httpbin-v2, result: plaintext}
  - {from: curl.foo, to: "httpbin.foo:8000", endpoint: httpbin-v2, result: unavailable}
  - {from: curl.legacy, to: "httpbin.foo:9000", endpoint: httpbin, result: refused}
  - {from: curl.legacy, to: "httpbin.foo:8000", endpoint: httpbin, result: refused}
  - {from: curl.foo, to: "httpbin.foo:8000", subset: v1, result: unavailable}
  - {from: curl.foo, to: "httpbin.foo:9000", subset: v2, result: unavailable}
  - {from: curl.foo, to: "httpbin.foo:9000", endpoint: httpbin, result: mtls}
"""


def judged_as_predicted(scenario: Scenario, probed: dict[str, Probed]) -> None:
    for row in scenario.expectations:
        got = probed[row.pair]
        prediction = mtls.predict(scenario, row.source, row.target, row.port, row.request)
        assert got.result == row.result.value == prediction.result.value, (
            f"{row.pair}: {got.verdict.error or got.verdict.because}")


def test_each_probe_reaches_the_workload_it_names(lab: Lab, local_backend: LocalBackend) -> None:
    """Per-endpoint auto mTLS, an explicit DestinationRule mode, and subsets with their own TLS, each probe answered
    by the workload its row names; afterwards the Service has every workload again and no subset route."""
    scenario = lab.load(ONE_SERVICE)
    probed = lab.run(scenario)
    judged_as_predicted(scenario, probed)
    answered = probed["curl.legacy->httpbin.foo@httpbin-v2:8000"]
    assert json.loads(answered.observation.body)["workload"] == "httpbin-v2.foo"
    assert answered.verdict.because[0] == "the app of httpbin-v2.foo answered"
    subset = probed["curl.foo->httpbin.foo/v1@httpbin:8000"].observation.evidence.client_proxy
    assert subset is not None
    assert subset.access_log[0]["upstream_cluster"] == "outbound|8000|v1|httpbin.foo.svc.cluster.local"
    # The route and the endpoint selection are gone once the batch is done.
    istiod = local_backend.istiod
    assert istiod is not None and istiod.kube is not None
    assert istiod.kube.get("networking.istio.io/v1", "VirtualService", "foo", "pytest-istio-mtls-subset-httpbin") is None
    for name in ("httpbin-local", "httpbin-v2-local"):
        slice_ = istiod.kube.get("discovery.k8s.io/v1", "EndpointSlice", "foo", name)
        assert slice_ is not None and slice_["endpoints"], name
    curl = local_backend.pods["curl.foo"]
    wanted = {f"{local_backend.pods[ref].ip}:8080" for ref in ("httpbin.foo", "httpbin-v2.foo")}

    def listed() -> set[str]:
        return cluster_hosts(prober.admin(curl.netns, "/clusters", 5.0), "outbound|8000||httpbin.foo.svc.cluster.local")

    assert poll(lambda: "" if listed() == wanted else f"{sorted(listed())}", 30, 0.05) == ""


POD_ADDRESSES = """
topology:
  namespaces:
    foo: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - name: httpbin
      namespace: foo
      ports: [{name: http, port: 8000, targetPort: 8080}]
      containerPorts: [{port: 9000, protocol: tcp}, {name: metrics, port: 9090}, {port: 9091, protocol: tcp}]
    - {name: dashboard, namespace: foo, containerPorts: [3000]}
    - {name: curl, namespace: legacy}
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: httpbin, namespace: foo}
  spec:
    selector: {matchLabels: {app: httpbin}}
    mtls: {mode: STRICT}
    portLevelMtls: {9090: {mode: DISABLE}, 9091: {mode: PERMISSIVE}}
expect:
  - {from: curl.legacy, to: "pod/httpbin.foo:8080", result: refused}
  - {from: curl.legacy, to: "pod/httpbin.foo:9000", result: refused}
  - {from: curl.legacy, to: "pod/httpbin.foo:9090", result: plaintext}
  - {from: curl.legacy, to: "pod/httpbin.foo:9091", result: plaintext}
  - {from: curl.legacy, to: "pod/dashboard.foo:3000", result: plaintext}
"""


def test_pod_addresses_meet_the_passthrough_chains(lab: Lab) -> None:
    """PeerAuthentication holds at the pod address: the workload's STRICT on a declared and an undeclared port,
    its port-level DISABLE and PERMISSIVE on undeclared ones, PERMISSIVE on a pod without a Service."""
    scenario = lab.load(POD_ADDRESSES)
    probed = lab.run(scenario)
    judged_as_predicted(scenario, probed)
    refused = probed["curl.legacy->pod/httpbin.foo:9000"].verdict.because
    assert "server sidecar listener.0.0.0.0_15006.no_filter_chain_match +1" in refused
    plain = probed["curl.legacy->pod/httpbin.foo:9090"].observation.evidence.capture
    assert plain is not None and plain.marker_in_clear and plain.flow.endswith(":9090")


TLS_CLIENTS = """
topology:
  namespaces:
    foo: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - {name: httpbin, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}, {port: 9000, protocol: tcp}]}
    - {name: curl, namespace: legacy, serviceAccount: frontend}
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: foo}
  spec: {mtls: {mode: STRICT}}
expect:
  - {from: curl.legacy, to: "httpbin.foo:8000", tls: no-cert, result: refused}
  - {from: curl.legacy, to: "httpbin.foo:8000", tls: foreign-cert, result: refused}
  - {from: curl.legacy, to: "httpbin.foo:8000", tls: mesh-cert, result: mtls}
  - {from: curl.legacy, to: "httpbin.foo:9000", tls: foreign-cert, result: refused}
  - {from: curl.legacy, to: "httpbin.foo:9000", tls: mesh-cert, result: mtls}
"""


def test_clients_speaking_tls_meet_the_sidecars_tls_checks(lab: Lab) -> None:
    """A STRICT sidecar fails the handshake without a certificate or with a foreign one, each with its own
    counter, and takes a mesh certificate for the identity it names."""
    scenario = lab.load(TLS_CLIENTS)
    probed = lab.run(scenario)
    judged_as_predicted(scenario, probed)
    counters = {pair: [b for b in probed[pair].verdict.because if b.startswith("server sidecar")]
                for pair in ("curl.legacy+tls-no-cert->httpbin.foo:8000", "curl.legacy+tls-foreign-cert->httpbin.foo:8000",
                             "curl.legacy+tls-foreign-cert->httpbin.foo:9000")}
    assert counters == {
        "curl.legacy+tls-no-cert->httpbin.foo:8000": ["server sidecar listener.0.0.0.0_15006.ssl.fail_verify_no_cert +1"],
        "curl.legacy+tls-foreign-cert->httpbin.foo:8000": [
            "server sidecar listener.0.0.0.0_15006.ssl.fail_verify_error +1"],
        "curl.legacy+tls-foreign-cert->httpbin.foo:9000": [
            "server sidecar listener.0.0.0.0_15006.ssl.fail_verify_error +1"]}
    for pair, source in (("curl.legacy+tls-mesh-cert->httpbin.foo:8000", "xfcc"),
                         ("curl.legacy+tls-mesh-cert->httpbin.foo:9000", "access-log")):
        evidence = probed[pair].observation.evidence
        # The stolen key's identity: the service account the client's certificate names, not the client's pod.
        assert (evidence.peer_identity, evidence.identity_source) == ("spiffe://cluster.local/ns/legacy/sa/frontend",
                                                                      source)


def test_the_builtin_scenarios_pass_on_real_istiod(pytester: pytest.Pytester) -> None:
    """The README's command on the three built-in scenarios of these forms: every row passes, and the truth table
    names each row's workload, subset, pod address and TLS client."""
    directory = pytester.mkdir("scenarios")
    for name in ("22-one-service-two-workloads", "23-pod-address-bypass", "24-clients-speaking-tls"):
        shutil.copy(BUILTIN / f"{name}.yaml", directory / f"{name}.yaml")
    result = pytester.runpytest_subprocess("--istio-scenarios", "--istio-backend=local", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=18)
    result.stdout.fnmatch_lines([
        "             httpbin.foo@httpbin:8000  httpbin.foo@httpbin-v2:8000  httpbin.foo/v1@httpbin:8000  "
        "httpbin.foo/v2@httpbin-v2:8000",
        "curl.foo     ✓ mtls                    ✓ plaintext                  ✓ mtls                       "
        "✓ unavailable",
        "curl.legacy  ✓ refused                 ✓ plaintext                  ·                            ·",
        "*",
        "             httpbin.foo:8000  pod/httpbin.foo:8080  pod/httpbin.foo:9000  pod/httpbin.foo:9090  "
        "pod/dashboard.foo:3000",
        "curl.legacy  ✓ refused         ✓ refused             ✓ refused             ✓ plaintext           ✓ plaintext",
        "*",
        "                              httpbin.foo:8000  echo.foo:9000  web.foo:8000",
        "curl.legacy+tls-no-cert       ✓ refused         ✓ refused      ·",
        "curl.legacy+tls-foreign-cert  ✓ refused         ·              ·",
        "curl.legacy+tls-mesh-cert     ✓ mtls            ✓ mtls         ✓ refused",
        "curl.legacy                   ·                 ·              ✓ plaintext",
        "total: 18 correct, 0 wrong, 0 errors",
    ])
