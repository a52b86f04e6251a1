"""Where the results say things: a scenario with steps names each step's policies with that step (its top-level
`policies` in report.json used to list every step's, as if all were in force at once), and a wrong row's evidence
is captured with its call phase, not its setup."""

from __future__ import annotations

import json

import pytest

from .fake_backend import install
from .test_plugin_timing import LEGACY, ROLLOUT


def test_each_step_names_its_own_policies_and_the_scenario_none(pytester: pytest.Pytester,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch)
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "legacy.yaml").write_text(LEGACY + "policies: |\n  apiVersion: security.istio.io/v1"
                                                             "\n  kind: PeerAuthentication\n  metadata: {name: default, "
                                                             "namespace: app}\n  spec: {mtls: {mode: PERMISSIVE}}\n")
    (pytester.path / "scenarios" / "rollout.yaml").write_text(ROLLOUT)
    pytester.runpytest("--istio-scenarios", "--istio-backend=local", "--istio-report=out", "-p", "no:cacheprovider")
    scenarios = {s["name"]: s for s in json.loads((pytester.path / "out" / "report.json").read_text())["scenarios"]}
    assert scenarios["legacy"]["policies"] == ["PeerAuthentication app/default"]
    assert scenarios["rollout"]["policies"] == []
    assert [step["policies"] for step in scenarios["rollout"]["steps"]] == [[], ["PeerAuthentication app/default"]]


def test_a_wrong_rows_sections_are_captured_with_its_call_not_its_setup(pytester: pytest.Pytester,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The row is judged wrong in its call phase: its evidence sections say "call", as pytest's own do."""
    backend = install(monkeypatch)
    monkeypatch.setattr(backend, "diagnostics", lambda probes: {"sidecar logs": "the server sidecar said no"})
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "one.yaml").write_text("expect:\n  - {from: plaintext, to: legacy, result: mtls}\n")
    result = pytester.runpytest("--istio-scenarios", "--istio-backend=local", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*- Captured istio sidecar logs call -*", "the server sidecar said no"])
    result.stdout.no_fnmatch_line("*Captured istio sidecar logs setup*")
