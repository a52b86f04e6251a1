"""One Service with several workloads behind it: the format (``service:``, ``endpoint:``, ``subset:``), its
validation, the oracle (auto mTLS per endpoint, subset TLS), and what the backends render and route.

The data path on real istiod is in tests/local/test_scenario_forms.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pytest_istio_mtls.backends.kube.manifests import (
    FRESH_CONNECTIONS,
    SERVICE_LABEL,
    WORKLOAD_LABEL,
    render_topology,
    subset_route,
)
from pytest_istio_mtls.backends.kube.naming import Naming
from pytest_istio_mtls.backends.local import kubelet, routing
from pytest_istio_mtls.backends.support import unsupported
from pytest_istio_mtls.judge.observation import Evidence, Observation, Probe
from pytest_istio_mtls.judge.verdict import decide
from pytest_istio_mtls.model import Result, Scenario, Workload
from pytest_istio_mtls.model.diagnostics import ScenarioError
from pytest_istio_mtls.oracle import mtls
from pytest_istio_mtls.scenario.loader import load_scenario

from ...paths import REPO

TOPOLOGY = """\
topology:
  namespaces:
    foo: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - name: httpbin
      namespace: foo
      labels: {app: httpbin, version: v1}
      ports: [{name: http, port: 8000, targetPort: 8080}, {name: tcp, port: 9000, protocol: tcp}]
    - name: httpbin-v2
      namespace: foo
      service: httpbin
      labels: {app: httpbin, version: v2}
      sidecar: false
    - {name: curl, namespace: foo}
    - {name: curl, namespace: legacy}
"""


def load(tmp_path: Path, text: str, name: str = "s.yaml") -> Scenario:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_scenario(path)


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ScenarioError) as raised:
        load(tmp_path, text)
    return [f"{d.mark.line}:{d.mark.col}: {d.message} | {d.fix}" for d in raised.value.diagnostics
            if d.severity == "error"]


def dr(subsets: str, top: str = "") -> str:
    return ("policies: |\n  apiVersion: networking.istio.io/v1\n  kind: DestinationRule\n"
            "  metadata: {name: httpbin, namespace: foo}\n  spec:\n    host: httpbin.foo.svc.cluster.local\n"
            + (f"    trafficPolicy: {top}\n" if top else "") + "    subsets:\n" + subsets)


SUBSETS = ("      - {name: v1, labels: {version: v1}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}\n"
           "      - {name: v2, labels: {version: v2}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}\n"
           "      - {name: all, labels: {app: httpbin}}\n")


# --------------------------------------------------------------------------- the format


def test_a_joining_workload_serves_the_owners_service(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect:\n  - {from: curl.foo, to: 'httpbin.foo:8000', endpoint: httpbin-v2, "
                                         "result: plaintext}\n")
    owner, joined = scenario.topology.workload("httpbin.foo"), scenario.topology.workload("httpbin-v2.foo")
    assert owner is not None and joined is not None
    assert joined.ports == owner.ports and joined.host == owner.host == "httpbin.foo.svc.cluster.local"
    assert (owner.service, joined.service, owner.shared, joined.shared) == ("httpbin", "httpbin", True, True)
    assert joined.joins and not owner.joins
    assert scenario.topology.endpoints(joined) == (owner, joined)
    row = scenario.expectations[0]
    assert row.target is joined and row.pair == "curl.foo->httpbin.foo@httpbin-v2:8000"
    assert (row.client, row.destination) == ("curl.foo", "httpbin.foo@httpbin-v2")


def test_a_subset_row_names_the_subset_and_the_endpoint_it_selects(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + dr(SUBSETS) + "expect:\n"
                    "  - {from: curl.foo, to: 'httpbin.foo:8000', subset: v2, result: unavailable}\n"
                    "  - {from: curl.foo, to: 'httpbin.foo:8000', subset: all, endpoint: httpbin, result: mtls}\n"
                    "  - {from: curl.foo, to: 'httpbin.foo:8000', endpoint: httpbin, result: mtls}\n"
                    "  - {from: curl.foo, to: 'httpbin.foo:9000', subset: v1, result: mtls}\n")
    pairs = [row.pair for row in scenario.expectations]
    assert pairs == ["curl.foo->httpbin.foo/v2@httpbin-v2:8000", "curl.foo->httpbin.foo/all@httpbin:8000",
                     "curl.foo->httpbin.foo@httpbin:8000", "curl.foo->httpbin.foo/v1@httpbin:9000"]
    assert scenario.expectations[0].port.subset == "v2" and scenario.expectations[0].target.name == "httpbin-v2"
    # A row routes to v1 and v2: their TLS is not the "subset TLS nobody routes to" trap.
    assert not scenario.warnings


def test_subset_tls_nobody_routes_to_is_still_a_warning(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + dr(SUBSETS) + "expect:\n"
                    "  - {from: curl.foo, to: 'httpbin.foo:8000', subset: v1, result: mtls}\n")
    assert [(w.mark.line, w.message, w.fix) for w in scenario.warnings] == [
        (25, "subset TLS in DestinationRule foo/httpbin applies only to traffic a VirtualService routes to the "
             "subset; probes to the Service use the top-level settings",
         "probe the subset with an expect row's subset: v2")]


def test_earlier_scenarios_keep_their_ids(tmp_path: Path) -> None:
    """A Service with one workload: no ``@endpoint`` in the id, exactly as before."""
    scenario = load(tmp_path, TOPOLOGY.replace("      service: httpbin\n", "      ports: [7000]\n")
                    + "expect:\n  - {from: curl.foo, to: httpbin.foo:8000, result: mtls}\n")
    assert scenario.expectations[0].pair == "curl.foo->httpbin.foo:8000"
    assert not any(w.shared for w in scenario.topology.workloads)


# --------------------------------------------------------------------------- validation


def test_workload_errors_name_the_line_and_the_fix(tmp_path: Path) -> None:
    text = TOPOLOGY + """\
    - {name: typo, namespace: foo, service: httbin}
    - {name: other, namespace: legacy, service: httpbin}
    - {name: chain, namespace: foo, service: httpbin-v2}
    - {name: ported, namespace: foo, service: httpbin, ports: [9999]}
    - {name: self, namespace: foo, service: self, ports: [1234]}
    - {name: client, namespace: foo, service: curl}
    - {name: repeat, namespace: foo, service: httpbin, containerPorts: [8080]}
expect:
  - {from: curl.foo, to: self.foo, result: mtls}
"""
    assert errors(tmp_path, text) == [
        "17:45: workload typo.foo joins Service 'httbin', but no workload 'httbin' in foo owns a Service; did you "
        "mean 'httpbin'? | name a workload with ports in foo: httpbin, ported, self",
        "18:49: workload other.legacy joins Service 'httpbin', but a Service selects pods of its own namespace: "
        "httpbin.foo is not in legacy | put other in namespace foo",
        "19:46: httpbin-v2.foo itself joins Service 'httpbin' | write service: httpbin",
        "20:56: workload 'ported' joins Service 'httpbin' and serves that Service's ports, so it declares none of its "
        "own | drop ports here (extra ports the app listens on go under containerPorts)",
        "21:36: workload 'self' names its own Service | a workload with ports has a Service named after it; drop "
        "service",
        "22:47: curl.foo has no ports, so it has no Service to join | give curl ports, or drop service",
        "23:47: repeat.foo serves the target ports of Service httpbin.foo already; containerPorts repeats 8080 | "
        "drop those from containerPorts",
    ]


def test_row_errors_name_the_line_and_the_fix(tmp_path: Path) -> None:
    text = TOPOLOGY + dr(SUBSETS) + """\
expect:
  - {from: curl.foo, to: 'httpbin.foo:8000', result: mtls}
  - {from: curl.foo, to: 'httpbin-v2.foo:8000', result: mtls}
  - {from: curl.foo, to: 'httpbin.foo:8000', endpoint: httpbin-v9, result: mtls}
  - {from: curl.foo, to: 'httpbin.foo:8000', subset: v3, result: mtls}
  - {from: curl.legacy, to: 'httpbin.foo:8000', subset: v2, result: plaintext}
  - {from: curl.foo, to: 'httpbin.foo:8000', subset: v1, endpoint: httpbin-v2, result: mtls}
  - {from: curl.foo, to: 'httpbin.foo:8000', subset: all, result: mtls}
  - {from: curl.foo, to: 'httpbin.foo:8000', endpoint: httpbin, result: mtls}
  - {from: curl.foo, to: 'httpbin.foo:8000', endpoint: httpbin, result: mtls}
"""
    assert errors(tmp_path, text) == [
        "28:5: Service httpbin.foo has 2 workloads behind it (httpbin, httpbin-v2): say which one answers | add "
        "endpoint: httpbin-v2",
        "29:26: httpbin-v2.foo has no Service of its own: it is an endpoint of httpbin.foo | write to: httpbin.foo, "
        "endpoint: httpbin-v2",
        "30:56: 'httpbin-v9' is not behind Service httpbin.foo; did you mean 'httpbin-v2'? | its workloads: httpbin, "
        "httpbin-v2",
        "31:54: no DestinationRule that applies to curl.foo → httpbin.foo.svc.cluster.local defines subset 'v3' "
        "(foo/httpbin defines v1, v2, all) | define it under spec.subsets of a DestinationRule for that host",
        "32:49: curl.legacy has no sidecar: a subset route configures the client's sidecar, and without one the "
        "Service's ClusterIP picks any endpoint | drop subset, or probe from a workload with a sidecar",
        "33:54: subset 'v1' (labels version=v1) does not select httpbin-v2.foo | route to a subset that selects "
        "that workload, or name another endpoint",
        "34:54: subset 'all' (labels app=httpbin) selects httpbin, httpbin-v2 behind Service httpbin.foo: say which "
        "one answers | add endpoint: httpbin or httpbin-v2",
        f"36:5: duplicate row curl.foo->httpbin.foo@httpbin:8000 (first at {tmp_path / 's.yaml'}:35:5) | each (from, "
        "to, port, request) may be expected once; delete one of the rows",
    ]


def test_endpoint_on_a_service_with_one_workload_is_an_error(tmp_path: Path) -> None:
    text = TOPOLOGY.replace("      service: httpbin\n", "      ports: [7000]\n") + (
        "expect:\n  - {from: curl.foo, to: httpbin.foo:8000, endpoint: httpbin, result: mtls}\n")
    assert errors(tmp_path, text) == [
        "18:44: httpbin.foo is the only workload behind its Service | drop endpoint: it names one of several "
        "workloads behind a Service"]


# --------------------------------------------------------------------------- the oracle


def predict(scenario: Scenario) -> list[tuple[str, Result, list[str]]]:
    out = []
    for row in scenario.expectations:
        prediction = mtls.predict(scenario, row.source, row.target, row.port, row.request)
        out.append((row.pair, prediction.result, [str(step) for step in prediction.steps]))
    return out


def test_auto_mtls_decides_per_endpoint(tmp_path: Path) -> None:
    """O2: mTLS to the workload with a sidecar, plaintext to the one without, behind the same Service."""
    scenario = load(tmp_path, TOPOLOGY + "expect:\n"
                    "  - {from: curl.foo, to: 'httpbin.foo:8000', endpoint: httpbin, result: mtls}\n"
                    "  - {from: curl.foo, to: 'httpbin.foo:8000', endpoint: httpbin-v2, result: plaintext}\n"
                    "  - {from: curl.foo, to: 'httpbin.foo:9000', endpoint: httpbin-v2, result: plaintext}\n")
    results = [(pair, result) for pair, result, _ in predict(scenario)]
    assert results == [("curl.foo->httpbin.foo@httpbin:8000", Result.MTLS),
                       ("curl.foo->httpbin.foo@httpbin-v2:8000", Result.PLAINTEXT),
                       ("curl.foo->httpbin.foo@httpbin-v2:9000", Result.PLAINTEXT)]
    steps = predict(scenario)[1][2]
    assert "[O2] endpoint httpbin-v2.foo has no sidecar (no tlsMode=istio label): plaintext" in steps


def test_subset_tls_applies_to_probes_routed_there(tmp_path: Path) -> None:
    """O3: a subset's tls beats the top-level tls, only on the subset's route; without its own it inherits."""
    scenario = load(tmp_path, TOPOLOGY + dr(
        "      - {name: v1, labels: {version: v1}}\n"
        "      - {name: v2, labels: {version: v2}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}\n",
        top="{tls: {mode: DISABLE}}") + "expect:\n"
        "  - {from: curl.foo, to: 'httpbin.foo:8000', endpoint: httpbin-v2, result: plaintext}\n"
        "  - {from: curl.foo, to: 'httpbin.foo:8000', subset: v2, result: unavailable}\n"
        "  - {from: curl.foo, to: 'httpbin.foo:8000', subset: v1, result: plaintext}\n")
    predicted = predict(scenario)
    assert [(pair, result) for pair, result, _ in predicted] == [
        ("curl.foo->httpbin.foo@httpbin-v2:8000", Result.PLAINTEXT),
        ("curl.foo->httpbin.foo/v2@httpbin-v2:8000", Result.UNAVAILABLE),
        ("curl.foo->httpbin.foo/v1@httpbin:8000", Result.PLAINTEXT)]
    assert ("[O3] curl.foo is routed to subset v2 of httpbin.foo.svc.cluster.local (cluster "
            "outbound|8000|v2|httpbin.foo.svc.cluster.local): the subset's traffic policy applies, else the "
            "DestinationRule's") in predicted[1][2]
    assert ("[O3] DestinationRule foo/httpbin subsets[v2].trafficPolicy.tls mode ISTIO_MUTUAL: an explicit "
            "DestinationRule TLS setting overrides auto mTLS") in predicted[1][2]
    assert ("[O3] DestinationRule foo/httpbin trafficPolicy.tls mode DISABLE: an explicit DestinationRule TLS "
            "setting overrides auto mTLS") in predicted[2][2]


def test_a_subset_port_entry_without_tls_under_a_mode_is_not_predicted(tmp_path: Path) -> None:
    """Istio's cluster drops TLS for a subset port entry without tls, while its endpoint labels keep the mode."""
    scenario = load(tmp_path, TOPOLOGY + dr(
        "      - name: v1\n        labels: {version: v1}\n        trafficPolicy:\n"
        "          tls: {mode: ISTIO_MUTUAL}\n"
        "          portLevelSettings: [{port: {number: 8000}, connectionPool: {tcp: {maxConnections: 10}}}]\n")
        + "expect:\n  - {from: curl.foo, to: 'httpbin.foo:8000', subset: v1, result: mtls}\n")
    [(_, result, steps)] = predict(scenario)
    assert result is Result.UNKNOWN
    assert steps[-1].startswith("[X3] DestinationRule foo/httpbin has a portLevelSettings entry for port 8000")


def test_derived_tables_probe_every_workload_behind_the_service(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect: derived\n")
    pairs = {row.pair: row.result for row in scenario.expectations}
    assert pairs["curl.foo->httpbin.foo@httpbin:8000"] is Result.MTLS
    assert pairs["curl.foo->httpbin.foo@httpbin-v2:8000"] is Result.PLAINTEXT
    assert pairs["curl.legacy->httpbin.foo@httpbin-v2:9000"] is Result.PLAINTEXT


# --------------------------------------------------------------------------- rendering and routing


def test_kind_renders_one_service_selecting_every_workload(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect: derived\n")
    objects = render_topology(scenario.topology, Naming(None), {"app": "a", "curl": "c", "capture": "x"})
    services = [o for o in objects if o["kind"] == "Service"]
    assert [s["metadata"]["name"] for s in services] == ["httpbin"]
    assert services[0]["spec"]["selector"] == {SERVICE_LABEL: "httpbin"}
    pods = {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["labels"] for o in objects
            if o["kind"] == "Deployment"}
    assert pods["httpbin-v2"][SERVICE_LABEL] == pods["httpbin"][SERVICE_LABEL] == "httpbin"
    assert pods["httpbin-v2"]["version"] == "v2" and pods["httpbin-v2"][WORKLOAD_LABEL] == "httpbin-v2"
    assert SERVICE_LABEL not in pods["curl"]
    filters = [o for o in objects if o["metadata"]["name"] == FRESH_CONNECTIONS]
    patched = [p["match"]["cluster"] for f in filters for p in f["spec"]["configPatches"]]
    assert patched == [{"service": "httpbin.foo.svc.cluster.local", "portNumber": 8000}]  # once, not per workload


def test_subset_route_renders_a_virtual_service_for_every_port(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect: derived\n")
    joined = scenario.topology.workload("httpbin-v2.foo")
    assert joined is not None
    assert subset_route(joined, "v2", Naming(None)) == {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "pytest-istio-mtls-subset-httpbin", "namespace": "foo",
                     "labels": {"app.kubernetes.io/managed-by": "pytest-istio-mtls"}},
        "spec": {"hosts": ["httpbin.foo.svc.cluster.local"],
                 "http": [{"route": [{"destination": {"host": "httpbin.foo.svc.cluster.local", "subset": "v2"}}]}],
                 "tcp": [{"route": [{"destination": {"host": "httpbin.foo.svc.cluster.local", "subset": "v2"}}]}]}}


def test_the_local_kubelet_writes_one_endpoint_slice_per_workload(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect: derived\n")
    joined = scenario.topology.workload("httpbin-v2.foo")
    assert joined is not None
    ready = kubelet.endpoint_slice(joined, "10.244.0.11", "node")
    assert ready["metadata"]["name"] == "httpbin-v2-local"
    assert ready["metadata"]["labels"]["kubernetes.io/service-name"] == "httpbin"
    assert [e["addresses"] for e in ready["endpoints"]] == [["10.244.0.11"]]
    assert kubelet.endpoint_slice(joined, None, "node")["endpoints"] == []
    assert kubelet.pod_labels(joined)[SERVICE_LABEL] == "httpbin"


class FakePod:
    def __init__(self, workload: Workload, ip: str, service_ip: str) -> None:
        self.workload, self.ip, self.service_ip, self.netns = workload, ip, service_ip, f"ns-{workload.ref}"


def test_kube_proxy_sends_the_cluster_ip_to_the_chosen_workload(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect: derived\n")
    pods = [FakePod(w, f"10.244.0.{10 + i}", "10.96.0.5") for i, w in enumerate(scenario.topology.workloads)]
    assert routing.service_dnat(pods, {}) == [("10.96.0.5", 8000, "10.244.0.10", 8080),
                                              ("10.96.0.5", 9000, "10.244.0.10", 9000)]
    assert routing.service_dnat(pods, {"httpbin.foo": "httpbin-v2.foo"}) == [
        ("10.96.0.5", 8000, "10.244.0.11", 8080), ("10.96.0.5", 9000, "10.244.0.11", 9000)]
    assert routing.kube_services([("10.96.0.5", 8000, "10.244.0.11", 8080)]) == (
        "*nat\n-F KUBE-SERVICES\n"
        "-A KUBE-SERVICES -d 10.96.0.5/32 -p tcp --dport 8000 -j DNAT --to-destination 10.244.0.11:8080\nCOMMIT\n")


def test_probes_are_grouped_by_the_routing_they_need(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + dr(SUBSETS) + "expect:\n"
                    "  - {from: curl.foo, to: 'httpbin.foo:8000', endpoint: httpbin-v2, result: plaintext}\n"
                    "  - {from: curl.foo, to: 'httpbin.foo:8000', subset: v1, result: mtls}\n"
                    "  - {from: curl.legacy, to: 'httpbin.foo:8000', endpoint: httpbin-v2, result: plaintext}\n"
                    "  - {from: curl.foo, to: 'httpbin.foo:8000', endpoint: httpbin, result: mtls}\n"
                    "  - {from: curl.legacy, to: 'httpbin.foo:8000', endpoint: httpbin, result: plaintext}\n")
    probes = [Probe(e.source, e.target, e.port, e.request) for e in scenario.expectations]
    assert routing.order(probes) == [0, 2, 1, 3, 4]


def test_envoy_cluster_listing_is_read_per_cluster() -> None:
    text = ("outbound|8000||httpbin.foo.svc.cluster.local::observability_name::outbound|8000||httpbin.foo\n"
            "outbound|8000||httpbin.foo.svc.cluster.local::10.244.0.11:8080::cx_active::0\n"
            "outbound|8000||httpbin.foo.svc.cluster.local::10.244.0.11:8080::health_flags::healthy\n"
            "outbound|8000|v1|httpbin.foo.svc.cluster.local::10.244.0.10:8080::health_flags::healthy\n")
    assert routing.cluster_hosts(text, "outbound|8000||httpbin.foo.svc.cluster.local") == {"10.244.0.11:8080"}


# --------------------------------------------------------------------------- where it runs, and the verdict


def test_only_the_emulated_control_plane_refuses_it(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect: derived\n")
    assert unsupported(scenario, "local", "istiod") is None
    assert unsupported(scenario, "local", "emulated") == (
        "Service httpbin.foo has several workloads behind it (httpbin-v2.foo joins it), which needs istiod's own "
        "logic (endpoints, routes, passthrough and TLS filter chains) that the emulated control plane does not "
        "reproduce; fix: run it with real istiod (--istio-control-plane=istiod)")
    assert unsupported(scenario, "kind") is None and unsupported(scenario, "existing") is None


def test_an_answer_from_another_workload_is_an_error(tmp_path: Path) -> None:
    scenario = load(tmp_path, TOPOLOGY + "expect:\n"
                    "  - {from: curl.legacy, to: 'httpbin.foo:8000', endpoint: httpbin-v2, result: plaintext}\n")
    row = scenario.expectations[0]
    observation = Observation(Probe(row.source, row.target, row.port), status=200, echoed=True,
                              body='{"headers": {}, "workload": "httpbin.foo"}', evidence=Evidence())
    verdict = decide(observation)
    assert verdict.result is None
    assert verdict.error == "the app of httpbin.foo answered, not the probed httpbin-v2.foo"


def test_the_readme_example_of_directed_rows_is_valid_and_agrees_with_the_oracle(tmp_path: Path) -> None:
    """README 'Scenario format': the second example (endpoint, subset, pod address, TLS client) as written."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Scenario format", 1)[1].split("\n## ", 1)[0]
    example = section.split("```yaml\n")[2].split("```", 1)[0]
    scenario = load(tmp_path, example)
    assert [row.pair for row in scenario.expectations] == [
        "curl.foo->httpbin.foo@httpbin:8000", "curl.foo->httpbin.foo@httpbin-v2:8000",
        "curl.foo->httpbin.foo/v2@httpbin-v2:8000", "curl.legacy->pod/httpbin.foo:9090",
        "curl.legacy+tls-no-cert->httpbin.foo@httpbin:8000"]
    for row in scenario.expectations:
        assert mtls.predict(scenario, row.source, row.target, row.port, row.request).result is row.result


def test_pytest_on_the_emulated_control_plane_stops_the_scenario_before_anything_starts(
        pytester: pytest.Pytester) -> None:
    """One ERROR naming what needs istiod and the fix, the other rows skipped, nothing started."""
    builtin = REPO / "pytest_istio_mtls" / "scenarios" / "22-one-service-two-workloads.yaml"
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "one.yaml").write_text(builtin.read_text(encoding="utf-8"), encoding="utf-8")
    result = pytester.runpytest("--istio-scenarios", "--istio-backend=local", "--istio-control-plane=emulated", "-rs")
    result.assert_outcomes(errors=1, skipped=5)
    result.stdout.fnmatch_lines([
        "  observed: ERROR: the local backend cannot run scenario 'one-service-two-workloads': Service httpbin.foo has "
        "several workloads behind it (httpbin-v2.foo joins it), which needs istiod's own logic (endpoints, routes, "
        "passthrough and TLS filter chains) that the emulated control plane does not reproduce; fix: run it with "
        "real istiod (--istio-control-plane=istiod)"])
    assert "[istio-mtls]" not in result.stdout.str()  # nothing was started or deployed


def test_explain_takes_a_rows_endpoint_and_subset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_istio_mtls.commands.cli import main

    load(tmp_path, TOPOLOGY + dr(SUBSETS) + "expect: derived\n")
    file = str(tmp_path / "s.yaml")
    assert main(["explain", file, "curl.foo", "httpbin.foo:8000", "--subset", "v2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == ["curl.foo -> httpbin.foo/v2@httpbin-v2:8000 (container port 8080, http)",
                         "  result: unavailable",
                         "  reason: httpbin-v2.foo has no sidecar and accepts plaintext; curl.foo sends Istio mTLS "
                         "(DestinationRule foo/httpbin subsets[v2].trafficPolicy.tls mode ISTIO_MUTUAL) → unavailable "
                         "(httpbin-v2.foo cannot terminate mTLS; the client sidecar's upstream connection fails and it "
                         "answers 503)"]
    assert main(["explain", file, "curl.foo", "httpbin.foo:8000", "--endpoint", "httpbin-v2"]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "curl.foo -> httpbin.foo@httpbin-v2:8000 (container port 8080, http)", "  result: plaintext"]
    assert main(["explain", file, "curl.foo", "httpbin.foo:8000", "--endpoint", "httpbin-v9"]) == 2
    assert capsys.readouterr().err.splitlines()[-2:] == [  # after the warnings about the subsets nobody routes to
        "error: TO 'httpbin.foo:8000': 'httpbin-v9' is not behind Service httpbin.foo; did you mean 'httpbin-v2'?",
        "    fix: its workloads: httpbin, httpbin-v2"]
