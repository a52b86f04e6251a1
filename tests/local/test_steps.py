"""Scenarios with steps on real Envoy sidecars: one deployment, one live policy switch per step confirmed on every
proxy, each step's rows judged in its own state; the built-in rollout scenario on real istiod through pytest;
``--lf`` with step ids and ``--istio-update-expectations`` end to end (emulated control plane: these two are about
pytest, not about istiod)."""

from __future__ import annotations

import difflib
import json
import shutil
import subprocess
from fnmatch import fnmatchcase
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest

from pytest_istio_mtls.backends.local import LocalBackend
from pytest_istio_mtls.scenario.loader import load_scenario

from .conftest import CONTROL_PLANE
from .lab import Lab

BUILTIN = Path(__file__).parents[2] / "pytest_istio_mtls" / "scenarios" / "25-rollout-to-mesh-strict.yaml"
EMULATED = ("--istio-backend=local", "--istio-control-plane=emulated", "-p", "no:randomly")
istiod_only = pytest.mark.skipif(CONTROL_PLANE != "istiod", reason="about real istiod")


def test_each_step_switches_the_policies_live_on_one_deployment(local_backend: LocalBackend, lab: Lab) -> None:
    """The rollout, step by step: every proxy confirms each step's policies (no pod restarts between steps), and
    each step's rows are observed as that step expects."""
    scenario = load_scenario(BUILTIN)
    lab.backend.deploy(scenario.topology, scenario.mesh)
    processes = {ref: (pod.envoy.pid if pod.envoy else 0, pod.app.pid if pod.app else 0)
                 for ref, pod in local_backend.pods.items()}
    messages: list[str] = []
    progress, local_backend.progress = local_backend.progress, messages.append
    try:
        observed = {}
        for state in scenario.states():
            messages.clear()
            results = {pair: probed.result for pair, probed in lab.run(state).items()}
            observed[state.step] = results
            confirmed = [m for m in messages if " in force on " in m]
            assert len(confirmed) == 1 or (CONTROL_PLANE == "emulated" and not confirmed), messages
            if CONTROL_PLANE == "istiod":
                assert confirmed[0].startswith(f"istiod's configuration for {len(state.policies)} polic")
                assert " in force on 4 sidecars after " in confirmed[0]
    finally:
        local_backend.progress = progress
    assert observed == {state.step: {e.pair: e.result.value for e in state.expectations} for state in scenario.states()}
    assert {ref: (pod.envoy.pid if pod.envoy else 0, pod.app.pid if pod.app else 0)
            for ref, pod in local_backend.pods.items()} == processes


@istiod_only
def test_the_rollout_scenario_passes_on_istiod_with_one_deployment(pytester: pytest.Pytester) -> None:
    """`pytest --istio-scenarios <25-rollout...> --istio-backend=local`: deployed once, each step applied live and
    confirmed by istiod on every sidecar, each step's table with the result that changed."""
    result = pytester.runpytest_subprocess("--istio-scenarios", str(BUILTIN), "--istio-backend=local",
                                           "-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=32)
    progress = [line.removeprefix("[istio-mtls] ") for line in result.outlines
                if line.startswith(("[istio-mtls] scenario rollout", "[istio-mtls] istiod's configuration"))]
    steps = [("permissive", "1 policy (added PeerAuthentication istio-system/default)", "1 policy"),
             ("workload-strict", "2 policies (added PeerAuthentication foo/httpbin-strict)", "2 policies"),
             ("namespace-strict", "2 policies (added PeerAuthentication foo/default; removed PeerAuthentication "
                                  "foo/httpbin-strict)", "2 policies"),
             ("mesh-strict", "2 policies (changed PeerAuthentication istio-system/default)", "2 policies")]
    expected = ["scenario rollout-to-mesh-strict, step permissive: deploying 6 workloads"]
    for step, applying, policies in steps:
        expected += [f"scenario rollout-to-mesh-strict, step {step}: applying {applying}",
                     f"istiod's configuration for {policies} in force on 4 sidecars after * ms",
                     f"scenario rollout-to-mesh-strict, step {step}: probing 8 connections"]
    assert len(progress) == len(expected), progress
    assert all(fnmatchcase(line, pattern) for line, pattern in zip(progress, expected, strict=True)), progress
    result.stdout.fnmatch_lines([
        "step 4 mesh-strict: changed PeerAuthentication istio-system/default",
        "             httpbin.foo:8000  web.foo:8000  httpbin.bar:8000  httpbin.legacy:8000",
        "curl.foo     ✓ mtls            ✓ mtls        ✓ mtls            ✓ plaintext",
        "curl.legacy  ✓ refused         ✓ refused     ✓ refused         ✓ plaintext",
        "8 correct, 0 wrong, 0 errors",
        "changed from namespace-strict:",
        "  curl.legacy->httpbin.bar:8000  plaintext → refused",
        "",
        "4 steps: 32 correct, 0 wrong, 0 errors"], consecutive=True)


PA = """      apiVersion: security.istio.io/v1
      kind: PeerAuthentication
      metadata: {name: default, namespace: app}
      spec: {mtls: {mode: STRICT}}
"""
ROLLOUT = f"""# app goes STRICT; the second step's expectations are guesses
name: rollout
steps:
  - name: permissive
    expect:
      - {{from: frontend, to: backend, result: mtls}}
      - {{from: plaintext, to: backend, result: plaintext}}
  - name: strict   # the namespace
    policies: |
{PA}    expect:
      - {{from: frontend, to: backend, result: mtls}}
      - {{from: plaintext, to: backend, result: plaintext}}   # a guess
      - from: plaintext
        to: legacy
        result: refused   # another
"""
STRICT = "scenarios/rollout.yaml::rollout::strict::"


def write(pytester: pytest.Pytester, text: str) -> Path:
    (pytester.path / "scenarios").mkdir(exist_ok=True)
    path = pytester.path / "scenarios" / "rollout.yaml"
    path.write_text(text)
    return path


def test_last_failed_reruns_a_steps_row_alone(pytester: pytest.Pytester) -> None:
    """The failing rows of step `strict` are found again by --lf: only that step runs, its policies switched in
    directly (a step's state does not depend on the steps that ran before it)."""
    write(pytester, ROLLOUT)
    first = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "-q")
    first.assert_outcomes(passed=3, failed=2)
    # In order, not consecutive: on CI (the CI variable set) pytest's summary prints each message whole.
    first.stdout.fnmatch_lines([f"FAILED {STRICT}plaintext.legacy->backend.app:8080*",
                                f"FAILED {STRICT}plaintext.legacy->legacy.legacy:8080*"])
    again = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "--lf", "-v")
    again.stdout.fnmatch_lines(["run-last-failure: rerun previous 2 failures"])
    again.stdout.fnmatch_lines([
        "[[]istio-mtls[]] scenario rollout, step strict: deploying 4 workloads",
        "[[]istio-mtls[]] starting 4 pods (2 with an Envoy sidecar)",
        "[[]istio-mtls[]] scenario rollout, step strict: applying 1 policy (added PeerAuthentication app/default)",
        "*",
        "[[]istio-mtls[]] scenario rollout, step strict: probing 2 connections", "",
        f"{STRICT}plaintext.legacy->backend.app:8080 FAILED *",
        f"{STRICT}plaintext.legacy->legacy.legacy:8080 FAILED *"], consecutive=True)
    again.assert_outcomes(failed=2, deselected=3)
    assert "step permissive" not in again.stdout.str()


def test_update_expectations_pins_the_observed_results(pytester: pytest.Pytester,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The env twin ISTIO_MTLS_UPDATE_EXPECTATIONS: the wrong rows' results are written (the diff of the file is
    exactly them, comments kept), each change named as file:line; the next run passes."""
    path = write(pytester, ROLLOUT)
    monkeypatch.setenv("ISTIO_MTLS_UPDATE_EXPECTATIONS", "1")
    first = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "-q", "--istio-report=report")
    first.assert_outcomes(passed=3, failed=2)
    first.stdout.fnmatch_lines([
        "*= Istio mTLS: expectations updated =*",
        "updated 2 expectations in 1 file:",
        "  scenarios/rollout.yaml:16: rollout::strict::plaintext.legacy->backend.app:8080: plaintext → refused",
        "  scenarios/rollout.yaml:19: rollout::strict::plaintext.legacy->legacy.legacy:8080: refused → plaintext"],
        consecutive=True)
    changed = [line for line in difflib.unified_diff(ROLLOUT.splitlines(), path.read_text().splitlines(),
                                                      lineterm="", n=0) if line[:1] in "+-" and line[:3] not in "+++---"]
    assert changed == ["-      - {from: plaintext, to: backend, result: plaintext}   # a guess",
                       "+      - {from: plaintext, to: backend, result: refused}   # a guess",
                       "-        result: refused   # another",
                       "+        result: plaintext   # another"]
    report = json.loads((pytester.path / "report" / "report.json").read_text())
    jsonschema.validate(report, json.loads((files("pytest_istio_mtls.report") / "report.schema.json").read_text()))
    assert [(s["name"], s["number"], s["added"]) for s in report["scenarios"][0]["steps"]] == [
        ("permissive", 1, []), ("strict", 2, ["PeerAuthentication app/default"])]
    assert [row["step"] for row in report["scenarios"][0]["rows"]] == ["permissive"] * 2 + ["strict"] * 3
    monkeypatch.delenv("ISTIO_MTLS_UPDATE_EXPECTATIONS")
    again = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "-q", "--istio-update-expectations")
    again.assert_outcomes(passed=5)
    again.stdout.fnmatch_lines(["*= Istio mTLS: expectations updated =*", "no expectation changed: no row was wrong"],
                               consecutive=True)


def test_keep_on_failure_keeps_the_state_of_the_failing_step(pytester: pytest.Pytester) -> None:
    """--istio-keep=on-failure: step `strict` fails, so its state stays in force and the steps after it are not
    applied (skipped, `not run`), each naming how to run it alone."""
    write(pytester, ROLLOUT + "  - name: after\n    expect:\n      - {from: frontend, to: backend, result: mtls}\n")
    result = pytester.runpytest_subprocess("--istio-scenarios", *EMULATED, "--istio-keep=on-failure", "-rs")
    line = next((line for line in result.outlines if line.startswith("local run ") and " kept:" in line), "")
    run_id = line.split()[2] if line else ""
    try:
        result.assert_outcomes(passed=3, failed=2, skipped=1)
        result.stdout.fnmatch_lines([
            "SKIPPED [[]1[]] scenarios/rollout.yaml: --istio-keep=on-failure keeps the mesh of scenario 'rollout' at "
            "step 'strict' (scenarios/rollout.yaml), which failed first, so no later scenario is deployed; run "
            "scenarios/rollout.yaml::rollout::after alone to test (and keep) this one"])
        result.stdout.fnmatch_lines([
            "kept: scenario 'rollout' at step 'strict' (scenarios/rollout.yaml), the first that failed; 1 later step "
            "not deployed so that its mesh stays as it failed (to keep another, run its file alone with "
            "--istio-keep=on-failure)",
            "local run * kept: 4 pods with their proxies and apps still running, policies of scenario 'rollout/strict' "
            "in force."], consecutive=True)
        result.stdout.fnmatch_lines(["step 3 after: no policy changed", "*", "frontend.app  not run",
                                     "0 correct, 0 wrong, 0 errors, 1 not run", "", "3 steps: *"], consecutive=True)
    finally:
        if run_id:
            subprocess.run([shutil.which("pytest-istio-mtls") or "pytest-istio-mtls", "cleanup", "--run", run_id],
                           capture_output=True, check=False)


FLIP = {"mtls": "plaintext", "plaintext": "mtls", "refused": "plaintext"}


@pytest.mark.parametrize("parity", [0, 1], ids=["even-rows", "odd-rows"])
def test_flipping_rows_of_any_step_fails_exactly_those_items(pytester: pytest.Pytester, parity: int) -> None:
    """Flip every other row of every step of the built-in rollout: exactly the flipped items fail (each step is
    judged in its own state, whatever the steps around it expect)."""
    text = BUILTIN.read_text()
    lines = text.splitlines(keepends=True)
    rows = [i for i, line in enumerate(lines) if line.lstrip().startswith("- {from:")]
    flipped = []
    scenario = load_scenario(BUILTIN)
    pairs = [(state.step, e.pair) for state in scenario.states() for e in state.expectations]
    for number, (index, (step, pair)) in enumerate(zip(rows, pairs, strict=True)):
        if number % 2 == parity:
            result = lines[index].rsplit("result: ", 1)[1].split("}")[0]
            lines[index] = lines[index].replace(f"result: {result}}}", f"result: {FLIP[result]}}}")
            flipped.append(f"scenarios/25-rollout-to-mesh-strict.yaml::rollout-to-mesh-strict::{step}::{pair}")
    pytester.mkdir("scenarios").joinpath(BUILTIN.name).write_text("".join(lines))
    result = pytester.runpytest_subprocess("--istio-scenarios", "--istio-backend=local", "-p", "no:cacheprovider",
                                           "-p", "no:randomly", "-rf")
    assert sorted(line.split(" ", 1)[1].split(" - ")[0] for line in result.outlines
                  if line.startswith("FAILED ")) == sorted(flipped)
    result.assert_outcomes(passed=len(pairs) - len(flipped), failed=len(flipped))
