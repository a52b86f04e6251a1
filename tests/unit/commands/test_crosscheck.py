"""The crosscheck generator and its loop without a mesh: valid scenarios only, determinism, shrinking.

Every generated scenario goes through the real scenario loader. The loop's shrinking is exercised
with the oracle standing in for istiod and a deliberately wrong oracle as the one under test: a planted
mistake must be found, shrunk to the one policy that shows it, and written as a loadable scenario.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_istio_mtls.commands.crosscheck import generate, runner
from pytest_istio_mtls.model import Expectation, Port, Request, Result, Scenario, Workload
from pytest_istio_mtls.options import Settings
from pytest_istio_mtls.oracle.mtls import Prediction, predict
from pytest_istio_mtls.scenario.loader import load_scenario

from ...paths import UNIT

PROPERTY = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


@st.composite
def documents(draw: st.DrawFn) -> generate.Doc:
    return draw(generate.scenarios(draw(generate.topologies())))


def load(doc: generate.Doc, tmp_path: Path, results: dict[str, str] | None = None) -> Scenario:
    path = tmp_path / "generated.yaml"
    path.write_text(runner.dump(generate.with_results(doc, results or {})), encoding="utf-8")
    return load_scenario(path)


@PROPERTY
@given(documents())
def test_every_generated_scenario_loads_without_errors(tmp_path_factory: pytest.TempPathFactory,
                                                       doc: generate.Doc) -> None:
    scenario = load(doc, tmp_path_factory.mktemp("gen"))
    topology = scenario.topology
    assert 2 <= len(topology.namespaces) <= 3
    assert sum(len(w.ports) for w in topology.workloads) <= generate.MAX_PORTS
    assert {w.namespace for w in topology.workloads if not w.ports} == {n.name for n in topology.namespaces}
    assert 1 <= len(scenario.policies) <= 5
    assert {p.kind for p in scenario.policies} <= {"PeerAuthentication", "DestinationRule", "AuthorizationPolicy"}
    assert len({(p.kind, p.namespace, p.name) for p in scenario.policies}) == len(scenario.policies)
    # The file order is the creation order (oldest wins): the loader keeps it.
    assert [p.name for p in scenario.policies] == [f"{generate.PREFIX[p.kind]}-{i}" for i, p in
                                                    enumerate(scenario.policies)]


@PROPERTY
@given(documents())
def test_rows_are_every_connection_between_two_workloads(tmp_path_factory: pytest.TempPathFactory,
                                                         doc: generate.Doc) -> None:
    scenario = load(doc, tmp_path_factory.mktemp("gen"))
    wanted = {(s.ref, t.ref, p.port) for s in scenario.topology.workloads for t in scenario.topology.servers
              for p in t.ports if s.ref != t.ref}
    assert {(e.source.ref, e.target.ref, e.port.port) for e in scenario.expectations} == wanted
    requests = {e.request for e in scenario.expectations if e.port.protocol == "http"}
    assert len(requests) <= 1  # one request per scenario, so a row is named by its pair alone
    assert all(e.request.is_default for e in scenario.expectations if e.port.protocol == "tcp")


@PROPERTY
@given(documents())
def test_no_mutual_tls_with_user_certificates(doc: generate.Doc) -> None:
    """MUTUAL needs certificates the local backend does not have (docs/crosscheck.md "Not generated")."""
    assert "MUTUAL'" not in repr(doc).replace("ISTIO_MUTUAL'", "")


def test_the_same_seed_draws_the_same_topologies() -> None:
    assert runner.topologies(60, 7) == runner.topologies(60, 7)
    assert runner.topologies(60, 7) != runner.topologies(60, 8)
    assert len(runner.topologies(60, 7)) == 3  # one per 25 scenarios, rounded up
    assert len(runner.topologies(1, 7)) == 1


def test_results_fill_rows_and_rows_without_a_result_can_be_dropped() -> None:
    topology = {"namespaces": {"foo": {"sidecars": True}},
                "workloads": [{"name": "httpbin", "namespace": "foo", "ports": [
                    {"name": "http-8000", "port": 8000, "protocol": "http"},
                    {"name": "tcp-9000", "port": 9000, "protocol": "tcp"}]},
                              {"name": "curl", "namespace": "foo"}]}
    doc = {"name": "x", "topology": topology, "expect": generate.rows(topology, ("POST", "/anything"))}
    assert doc["expect"] == [
        {"from": "curl.foo", "to": "httpbin.foo:8000", "request": {"method": "POST", "path": "/anything"}},
        {"from": "curl.foo", "to": "httpbin.foo:9000"}]
    filled = generate.with_results(doc, {"curl.foo->httpbin.foo:9000": "refused"})
    assert [r["result"] for r in filled["expect"]] == ["allowed", "refused"]
    only = generate.with_results(doc, {"curl.foo->httpbin.foo:9000": "refused"}, default="")
    assert only["expect"] == [{"from": "curl.foo", "to": "httpbin.foo:9000", "result": "refused"}]
    assert doc["expect"][1] == {"from": "curl.foo", "to": "httpbin.foo:9000"}  # the original is untouched


def test_reduced_keeps_the_row_and_the_policies_namespaces(tmp_path: Path) -> None:
    topology = {"namespaces": {"foo": {"sidecars": True}, "bar": {"sidecars": False}, "baz": {"sidecars": True}},
                "workloads": [
                    {"name": "httpbin", "namespace": "foo", "ports": [
                        {"name": "http-8000", "port": 8000, "protocol": "http"},
                        {"name": "tcp-9000", "port": 9000, "protocol": "tcp", "targetPort": 9080}]},
                    {"name": "echo", "namespace": "baz", "ports": [{"name": "http-8080", "port": 8080}]},
                    {"name": "curl", "namespace": "foo"}, {"name": "curl", "namespace": "bar"},
                    {"name": "curl", "namespace": "baz"}]}
    policy = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
              "metadata": {"name": "pa-0", "namespace": "istio-system"}, "spec": {"mtls": {"mode": "STRICT"}}}
    doc = {"name": "x", "topology": topology, "policies": [policy],
           "expect": generate.rows(topology, ("GET", "/headers"))}
    small = runner.reduced(doc, "curl.bar->httpbin.foo:9000")
    assert small is not None
    assert small["topology"] == {"namespaces": {"foo": {"sidecars": True}, "bar": {"sidecars": False}},
                                 "workloads": [{"name": "httpbin", "namespace": "foo", "ports": [
                                     {"name": "tcp-9000", "port": 9000, "protocol": "tcp", "targetPort": 9080}]},
                                     {"name": "curl", "namespace": "bar"}]}
    assert small["expect"] == [{"from": "curl.bar", "to": "httpbin.foo:9000"}]
    load(small, tmp_path)  # still a valid scenario
    assert runner.reduced(small, "curl.bar->httpbin.foo:9000") is None


class OracleAsIstio:
    """Stands in for istiod: 'observes' what the real oracle predicts (so only a planted mistake disagrees)."""

    def __init__(self) -> None:
        self.runs = 0

    def start(self) -> dict[str, str]:
        return {"istiod": "oracle"}

    def observe(self, scenario: Scenario, rows: Sequence[Expectation]) -> list[tuple[Result | None, str]]:
        self.runs += 1
        return [(predict(scenario, e.source, e.target, e.port, e.request).result, "") for e in rows]

    def stop(self) -> str:
        return ""


def strict_is_permissive(scenario: Scenario, source: Workload, target: Workload, port: Port,
                         request: Request) -> Prediction:
    """A planted oracle bug: a namespace-wide STRICT PeerAuthentication is read as PERMISSIVE."""
    policies = []
    for policy in scenario.policies:
        mtls = policy.spec.get("mtls") or {}
        if policy.kind == "PeerAuthentication" and not policy.selector and mtls.get("mode") == "STRICT" \
                and policy.namespace != scenario.mesh.root_namespace:
            manifest: dict[str, Any] = json.loads(json.dumps(policy.manifest))
            manifest["spec"]["mtls"]["mode"] = "PERMISSIVE"
            policy = dataclasses.replace(policy, manifest=manifest)
        policies.append(policy)
    return predict(dataclasses.replace(scenario, policies=tuple(policies)), source, target, port, request)


def test_a_planted_oracle_bug_is_found_shrunk_and_written(tmp_path: Path) -> None:
    lines: list[str] = []
    istio = OracleAsIstio()
    check = runner.Crosscheck(Settings(), 25, 1, tmp_path / "out", lines.append, observer=istio,
                              predict=strict_is_permissive)
    check.run()
    summary = check.summary()
    assert summary["generated"] == 25 and 0 < summary["scenarios"] <= 25 and summary["disagree"] > 0
    assert summary["agree"] + summary["disagree"] + summary["unknown"] == summary["rows"]
    assert istio.runs == summary["backend_runs"]  # replays are remembered, not observed again
    planted = {"mode": "STRICT"}
    for found in check.found:
        policies = found.checked.doc["policies"]
        # Every minimal scenario keeps the planted trigger, on the row's two workloads (and not much more).
        assert any(p["kind"] == "PeerAuthentication" and p["spec"].get("mtls") == planted
                   and "selector" not in p["spec"] for p in policies)
        assert len(policies) <= 2
        assert found.shrunk and found.reduced and len(found.checked.doc["topology"]["workloads"]) == 2
        assert found.file is not None
        written = yaml.safe_load(found.file.read_text(encoding="utf-8"))
        assert written["name"].startswith("crosscheck-1-")
        assert "the oracle predicted" in written["description"]
        load_scenario(found.file)  # a valid scenario, runnable with pytest --istio-scenarios
    # Shrinking reaches the single policy that shows the mistake.
    assert any(len(f.checked.doc["policies"]) == 1 for f in check.found)
    assert [f.signature for f in check.found] == list(dict.fromkeys(f.signature for f in check.found))
    assert any(line.startswith("shrinking: predicted ") for line in lines)
    table = "\n".join(runner.render(summary))
    assert f"disagreement 1: {check.found[0].signature} -> {check.found[0].file}" in table


REGRESSIONS = sorted((UNIT / "data" / "crosscheck").glob("*.yaml"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_the_oracle_agrees_with_each_disagreement_istiod_showed(path: Path) -> None:
    """The minimal scenarios of past disagreements (observed on real istiod) as regression tests of the oracle."""
    scenario = load_scenario(path)
    for row in scenario.expectations:
        prediction = predict(scenario, row.source, row.target, row.port, row.request)
        assert prediction.result is row.result, f"{row.pair}: {prediction.reason}"


@pytest.mark.parametrize(("args", "message"), [
    (["--count", "0"], "error: --count must be at least 1"),
    (["--timeout", "0"], "error: --timeout must be a positive number of seconds"),
    (["--max-error-rate", "2"], "error: --max-error-rate must be a fraction between 0 and 1"),
])
def test_the_command_refuses_bad_numbers_before_starting_anything(args: list[str], message: str,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_istio_mtls.commands.cli import main

    assert main(["crosscheck", *args]) == 2
    assert capsys.readouterr().err == message + "\n"


def test_the_command_is_listed_with_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_istio_mtls.commands.cli import main

    with pytest.raises(SystemExit):
        main(["crosscheck", "--help"])
    out = capsys.readouterr().out
    for option in ("--count N", "--seed S", "--istio-version V", "--out DIR", "--json", "--timeout SECONDS",
                   "--max-error-rate FRACTION"):
        assert option in out
    assert "Exit codes: 0 no disagreement, 1 a disagreement" in " ".join(out.split())


def test_the_summary_lists_every_error_not_the_first_five(tmp_path: Path) -> None:
    """An error is a row nobody observed: CI allows none, and the summary names each one."""
    check = runner.Crosscheck(Settings(), 1, 1, None, lambda line: None)
    for number in range(7):
        check._note_error(f"row {number}: no access log")
    summary = check.summary()
    assert summary["error_examples"] == [f"row {number}: no access log" for number in range(7)]
    assert [line for line in runner.render(summary) if line.startswith("  error:")] == [
        f"  error: row {number}: no access log" for number in range(7)]
