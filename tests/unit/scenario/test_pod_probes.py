"""Probes of a pod's own address (``to: pod/<workload>:<container port>``), ports no Service declares
(``containerPorts``), their validation, the oracle (Istio's passthrough filter chains) and the rendering.

The data path on real istiod is in tests/local/test_scenario_forms.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_istio_mtls.backends.kube.manifests import render_topology
from pytest_istio_mtls.backends.kube.naming import Naming
from pytest_istio_mtls.backends.local import kubelet
from pytest_istio_mtls.backends.support import unsupported
from pytest_istio_mtls.model import Port, Result, Scenario
from pytest_istio_mtls.model.diagnostics import ScenarioError
from pytest_istio_mtls.oracle import mtls
from pytest_istio_mtls.scenario.loader import load_scenario

TOPOLOGY = """\
topology:
  namespaces:
    foo: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - name: httpbin
      namespace: foo
      ports: [{name: http, port: 8000, targetPort: 8080}]
      containerPorts: [{port: 9000, protocol: tcp}, {name: metrics, port: 9090}]
    - {name: dashboard, namespace: foo, containerPorts: [3000]}
    - {name: curl, namespace: foo}
    - {name: curl, namespace: legacy}
"""
STRICT_HTTPBIN = """\
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: httpbin, namespace: foo}
  spec:
    selector: {matchLabels: {app: httpbin}}
    mtls: {mode: STRICT}
    portLevelMtls: {9090: {mode: DISABLE}}
"""


def load(tmp_path: Path, text: str) -> Scenario:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_scenario(path)


def test_a_pod_probe_dials_the_container_port(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect:\n"
                    "  - {from: curl.legacy, to: 'pod/httpbin.foo:8080', result: plaintext}\n"
                    "  - {from: curl.legacy, to: 'pod/httpbin.foo:metrics', result: plaintext}\n"
                    "  - {from: curl.legacy, to: pod/dashboard.foo, result: plaintext}\n")
    ports = [row.port for row in scenario.expectations]
    assert ports == [Port("http", 8080, 8080, "http", pod=True), Port("metrics", 9090, 9090, "http", pod=True),
                     Port("http-3000", 3000, 3000, "http", pod=True)]
    assert [row.pair for row in scenario.expectations] == [
        "curl.legacy->pod/httpbin.foo:8080", "curl.legacy->pod/httpbin.foo:9090", "curl.legacy->pod/dashboard.foo:3000"]
    httpbin = scenario.topology.workload("httpbin.foo")
    assert httpbin is not None and [p.port for p in httpbin.container_ports] == [9000, 9090]
    dashboard = scenario.topology.workload("dashboard.foo")
    assert dashboard is not None and not dashboard.is_server  # no Service: only its pod is reachable


def test_errors_name_the_line_and_the_fix(tmp_path: Path) -> None:
    text = TOPOLOGY.replace("[3000]", "[3000, 8080, 15020, 3000, {port: 4000, protocol: udp}]") + """\
expect:
  - {from: curl.foo, to: 'pod/httpbin.foo:9000', result: refused}
  - {from: curl.legacy, to: 'pod/httpbin.foo:8000', result: refused}
  - {from: curl.legacy, to: 'pod/httpbin.foo:9001', result: refused}
  - {from: curl.legacy, to: pod/httpbin.foo, result: refused}
  - {from: curl.legacy, to: 'pod/httpbin.foo:9000', endpoint: httpbin, result: refused}
  - {from: curl.legacy, to: pod/curl.foo, result: refused}
"""
    with pytest.raises(ScenarioError) as raised:
        load(tmp_path, text)
    assert [f"{d.mark.line}:{d.mark.col}: {d.message} | {d.fix}" for d in raised.value.diagnostics] == [
        "10:70: port 15020 is reserved by the Istio sidecar | pick a port outside 15000-15090",
        "10:77: container port 3000 is declared twice on workload 'dashboard' | delete one of them",
        "10:106: invalid protocol 'udp' | use one of http, tcp",
        "14:26: curl.foo has a sidecar: a pod probe comes from a workload without one (a sidecar would send it "
        "through its passthrough cluster, which is not modelled) | probe the pod from a client with sidecar: false",
        "15:29: 8000 is a Service port of httpbin.foo; a pod probe names the container port | write "
        "pod/httpbin.foo:8080",
        "16:29: the pod of httpbin.foo listens on no port '9001'; did you mean '9090'? | its container ports: 8080, "
        "9000, 9090",
        "17:29: the pod of httpbin.foo listens on several ports (8080, 9000, 9090); say which one | write "
        "pod/httpbin.foo:8080",
        "18:53: a pod probe names its pod in 'to'; endpoint applies to Service probes | drop endpoint",
        "19:29: the pod of curl.foo listens on no port | give the workload ports or containerPorts",
    ]


def test_a_container_port_that_is_a_target_port_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as raised:
        load(tmp_path, TOPOLOGY.replace("{port: 9000, protocol: tcp}", "8080") + "expect: derived\n")
    assert [f"{d.mark.line}:{d.mark.col}: {d.message} | {d.fix}" for d in raised.value.diagnostics] == [
        "9:24: container port 8080 is already the targetPort of Service port 8000 | drop it from containerPorts: "
        "pod probes reach it anyway"]


def predictions(scenario: Scenario) -> list[tuple[str, Result, list[str]]]:
    out = []
    for row in scenario.expectations:
        prediction = mtls.predict(scenario, row.source, row.target, row.port, row.request)
        out.append((row.pair, prediction.result, [str(step) for step in prediction.steps]))
    return out


def test_peer_authentication_applies_at_the_pod_address_too(tmp_path: Path) -> None:
    """P5/P6: a declared port keeps its chains; an undeclared one gets the passthrough chains, with the workload's
    mode or its portLevelMtls entry; a pod without a Service and without a policy is PERMISSIVE."""
    scenario = load(tmp_path, TOPOLOGY + STRICT_HTTPBIN + "expect:\n"
                    "  - {from: curl.legacy, to: 'pod/httpbin.foo:8080', result: refused}\n"
                    "  - {from: curl.legacy, to: 'pod/httpbin.foo:9000', result: refused}\n"
                    "  - {from: curl.legacy, to: 'pod/httpbin.foo:9090', result: plaintext}\n"
                    "  - {from: curl.legacy, to: pod/dashboard.foo, result: plaintext}\n")
    predicted = predictions(scenario)
    assert [(pair, result) for pair, result, _ in predicted] == [
        ("curl.legacy->pod/httpbin.foo:8080", Result.REFUSED), ("curl.legacy->pod/httpbin.foo:9000", Result.REFUSED),
        ("curl.legacy->pod/httpbin.foo:9090", Result.PLAINTEXT), ("curl.legacy->pod/dashboard.foo:3000",
                                                                   Result.PLAINTEXT)]
    declared, undeclared, port_level, _ = (steps for _, _, steps in predicted)
    assert ("[P6] the client dials the pod of httpbin.foo at container port 8080, bypassing the Service: the pod's "
            "inbound capture still hands it to the sidecar") in declared
    assert not any(step.startswith("[P5] no Service declares") for step in declared)
    assert ("[P5] no Service declares container port 9000: Istio's passthrough filter chains serve it with the "
            "workload's mode, or a portLevelMtls entry for that port (a per-port passthrough chain)") in undeclared
    assert "[P5] PeerAuthentication foo/httpbin portLevelMtls[9090] sets DISABLE for container port 9090" in port_level
    row = scenario.expectations[1]
    reason = mtls.predict(scenario, row.source, row.target, row.port).reason
    assert reason.startswith("pod/httpbin.foo:9000 is STRICT by PeerAuthentication foo/httpbin (workload)")


def test_a_port_level_entry_for_an_undeclared_port_is_no_warning(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + STRICT_HTTPBIN + "expect: derived\n")
    assert not scenario.warnings


def test_backends_start_the_app_on_every_container_port(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect: derived\n")
    httpbin = scenario.topology.workload("httpbin.foo")
    assert httpbin is not None
    assert kubelet.pod(httpbin, "node")["spec"]["containers"][0]["ports"] == [
        {"containerPort": n, "protocol": "TCP"} for n in (8080, 9000, 9090)]
    objects = render_topology(scenario.topology, Naming(None), {"app": "a", "curl": "c", "capture": "x"})
    deployments = {o["metadata"]["name"]: o["spec"]["template"]["spec"]["containers"] for o in objects
                   if o["kind"] == "Deployment"}
    served = {c["name"]: [p["containerPort"] for p in c.get("ports", [])] for c in deployments["httpbin"]}
    assert served == {"app": [8080, 9090, 9000], "curl": [], "capture": []}  # one echo app serves every port
    assert [c["name"] for c in deployments["dashboard"]] == ["app", "curl", "capture"]  # no Service, but an app
    # The app's code where apps run, the TLS prober's where a pod without a sidecar may speak TLS itself.
    assert {o["metadata"]["namespace"] for o in objects if o["kind"] == "ConfigMap"} == {"foo", "legacy"}
    legacy = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["namespace"] == "legacy")
    assert [c["name"] for c in legacy["spec"]["template"]["spec"]["containers"]] == ["curl", "tls-client"]
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Service"] == ["httpbin"]


def test_every_backend_on_real_istiod_runs_pod_probes(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect:\n  - {from: curl.legacy, to: pod/dashboard.foo, result: plaintext}\n")
    assert unsupported(scenario, "local", "istiod") is None
    refusal = unsupported(scenario, "local", "emulated")
    assert refusal is not None and refusal.startswith("row curl.legacy->pod/dashboard.foo:3000 probes a pod address, "
                                                      "which needs istiod's own logic")
    assert unsupported(scenario, "kind") is None and unsupported(scenario, "existing") is None


def test_explain_takes_a_pod_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_istio_mtls.commands.cli import main

    load(tmp_path, TOPOLOGY + STRICT_HTTPBIN + "expect: derived\n")
    assert main(["explain", str(tmp_path / "s.yaml"), "curl.legacy", "pod/httpbin.foo:9090"]) == 0
    assert capsys.readouterr().out == (
        "curl.legacy -> pod/httpbin.foo:9090 (container port 9090, http)\n"
        "  result: plaintext\n"
        "  reason: pod/httpbin.foo:9090 is DISABLE by PeerAuthentication foo/httpbin portLevelMtls[9090]; curl.legacy "
        "has no sidecar and sends plaintext → plaintext (DISABLE accepts plaintext)\n"
        "  decision chain:\n"
        "    1. [P1] PeerAuthentication foo/httpbin (workload) sets STRICT\n"
        "    2. [P5] PeerAuthentication foo/httpbin portLevelMtls[9090] sets DISABLE for container port 9090\n"
        "    3. [P6] the client dials the pod of httpbin.foo at container port 9090, bypassing the Service: the pod's "
        "inbound capture still hands it to the sidecar\n"
        "    4. [P5] no Service declares container port 9090: Istio's passthrough filter chains serve it with the "
        "workload's mode, or a portLevelMtls entry for that port (a per-port passthrough chain)\n"
        "    5. [O5] curl.legacy has no sidecar: it sends exactly what the app sends (plaintext)\n"
        "    6. [X1] DISABLE accepts plaintext: the request succeeds unencrypted\n")
