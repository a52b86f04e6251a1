"""A failing row's diagnostics are about that row: its own pair's sidecar configuration, and only the log
lines of the scenario it ran in (not those an earlier scenario's Envoys of the same workload left behind)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pytest_istio_mtls.judge.observation import Probe
from pytest_istio_mtls.oracle import mtls

from .lab import FOO_BAR_LEGACY, STRICT_FOO, Lab

TOPOLOGY = """
topology:
  namespaces:
    foo: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - {name: httpbin, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: curl, namespace: foo}
    - {name: curl, namespace: legacy}
"""
FIRST = "name: first\n" + TOPOLOGY + """
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: foo}
  spec: {mtls: {mode: PERMISSIVE}}
expect:
  - {from: curl.foo, to: "httpbin.foo:8000", result: mtls}
  - {from: curl.legacy, to: "httpbin.foo:8000", result: plaintext}
"""
# Another workload: a new topology, so every pod (httpbin.foo's Envoy included) is started anew.
SECOND = "name: second\n" + TOPOLOGY + """    - {name: sleep, namespace: foo}
expect:
  - {from: curl.foo, to: "httpbin.foo:8000", result: plaintext}
  - {from: curl.legacy, to: "httpbin.foo:8000", result: mtls}
  - {from: sleep.foo, to: "httpbin.foo:8000", result: mtls}
"""


def test_failing_rows_show_their_own_pair_and_scenario(pytester: pytest.Pytester) -> None:
    """The first scenario's Envoys are stopped when the second deploys; what they wrote then ("caught
    ENVOY_SIGTERM") is in the same envoy.log, but is not the second scenario's. Each of its two failing rows
    lists only its own pair under "sidecar configuration"."""
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios/a-first.yaml").write_text(FIRST)
    (pytester.path / "scenarios/b-second.yaml").write_text(SECOND)
    result = pytester.runpytest_subprocess("--istio-scenarios", "--istio-backend=local",
                                           "--istio-control-plane=emulated", "--istio-report=out",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(["[[]istio-mtls] scenario first: applying 1 policy",
                                 "[[]istio-mtls] starting 4 pods (3 with an Envoy sidecar)"])
    report = json.loads((pytester.path / "out/report.json").read_text())
    failing = {row["from"]: row["message"] for row in report["scenarios"][1]["rows"] if row["status"] == "wrong"}
    title = "sidecar configuration (emulated: written from the oracle's decisions)"
    assert {source: _section(message, title) for source, message in failing.items()} == {
        "curl.foo": ["curl.foo->httpbin.foo:8000: server port 8080 PERMISSIVE; client sends istio-mtls"],
        "curl.legacy": ["curl.legacy->httpbin.foo:8000: server port 8080 PERMISSIVE; client sends plaintext"],
    }
    for message in failing.values():
        assert "ENVOY_SIGTERM" not in message


def _section(message: str, title: str) -> list[str]:
    """The lines of one ``--- title ---`` section of a failure message."""
    lines = message.splitlines()
    start = lines.index(f"  --- {title} ---") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("  --- ")), len(lines))
    return [line.strip() for line in lines[start:end]]


def test_on_istiod_the_configuration_shown_is_envoys_and_the_oracle_is_labelled_a_prediction(
        lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deliberately wrong oracle (it says DISABLE where istiod configured STRICT): the "sidecar configuration"
    section shows what Envoy has (TLS-only inbound chains), and the oracle's word is labelled a prediction."""
    if lab.backend.istiod is None:
        pytest.skip("the emulated control plane's configuration is the oracle's own")
    scenario = lab.load(FOO_BAR_LEGACY + STRICT_FOO + """expect:
  - {from: curl.legacy, to: "httpbin.foo:8000", result: refused}
""")
    lab.run(scenario, fresh=True)
    real = mtls.server_decision
    monkeypatch.setattr(mtls, "server_decision", lambda *args: dataclasses.replace(real(*args), mode="DISABLE"))
    probe = Probe(scenario.expectations[0].source, scenario.expectations[0].target, scenario.expectations[0].port)
    sections = lab.backend.diagnostics([probe])
    envoy = sections["sidecar configuration (Envoy's config_dump)"]
    assert "server httpbin.foo chain" in envoy and "transport=tls" in envoy and "raw_buffer" not in envoy, envoy
    assert sections["oracle prediction (not evidence)"] == (
        "curl.legacy->httpbin.foo:8000: server port 8080 DISABLE; client sends plaintext")
    assert "sidecar configuration" not in " ".join(k for k in sections if "config_dump" not in k)
