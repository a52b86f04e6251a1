"""policyFiles: the manifests teams really deploy, as a file, a directory or a command's output.

Non-Istio resources in them are skipped and named; Istio resources are validated as in `policies`,
with positions in the file (or the command's output) they came from.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_istio_mtls.model.diagnostics import Diagnostic, ScenarioError
from pytest_istio_mtls.scenario import loader
from pytest_istio_mtls.scenario.loader import load_scenario

STRICT_APP = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: app}
spec: {mtls: {mode: STRICT}}
"""
NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n"
DEPLOYMENT = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: %s, namespace: app}\n"
DR_BACKEND = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: app}
spec: {host: backend.app.svc.cluster.local, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
"""
EXPECT = "expect:\n  - {from: frontend, to: backend, result: mtls}\n"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory that is also the working directory, so messages show short relative paths."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deploy").mkdir()
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path) -> list[Diagnostic]:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    return [d for d in caught.value.diagnostics if d.severity == "error"]


def test_a_deploy_manifest_keeps_its_istio_policies_and_names_what_it_skipped(project: Path) -> None:
    """A Namespace and Deployments beside a PeerAuthentication: the policy applies, the rest is named."""
    write(project / "deploy" / "app.yaml", "---\n".join(
        [NAMESPACE, DEPLOYMENT % "frontend", STRICT_APP, DEPLOYMENT % "backend", ""]))
    scenario = load_scenario(write(project / "s.yaml", "policyFiles: [deploy/app.yaml]\n" + EXPECT))
    assert [p.ref for p in scenario.policies] == ["PeerAuthentication app/default"]
    assert [str(w) for w in scenario.warnings] == [
        "s.yaml:1:15: warning: deploy/app.yaml: skipped 1 Namespace and 2 Deployments (not Istio security or "
        "networking policies)"]


def test_an_istio_kind_under_a_foreign_api_version_is_still_a_typo(project: Path) -> None:
    """Skipping is for other APIs' kinds: a PeerAuthentication with a wrong group stays an error with the fix."""
    write(project / "deploy" / "app.yaml", NAMESPACE + "---\n" + STRICT_APP.replace("security.istio.io", "security.k8s.io"))
    (error,) = errors_of(write(project / "s.yaml", "policyFiles: [deploy/app.yaml]\n" + EXPECT))
    assert str(error) == (
        "deploy/app.yaml:5:13: error: apiVersion 'security.k8s.io/v1' is not an Istio security or networking API; "
        "did you mean 'security.istio.io'?\n"
        "    fix: scenarios apply security.istio.io and networking.istio.io resources only")


def test_a_directory_is_read_like_kubectl_apply_dash_f(project: Path) -> None:
    """Its *.yaml, *.yml and *.json files in name order; not its subdirectories, nor scenario files in it."""
    deploy = project / "deploy"
    write(deploy / "b-dr.yml", DR_BACKEND)
    write(deploy / "a-pa.yaml", STRICT_APP)
    write(deploy / "kustomization.yaml", "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                                         "resources: [a-pa.yaml, b-dr.yml]\n")
    write(deploy / "c-authz.json", '{"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy", '
                                   '"metadata": {"name": "allow", "namespace": "app"}, "spec": {}}')
    write(deploy / "README.md", "not a manifest")
    write(deploy / "overlays" / "prod" / "extra.yaml", STRICT_APP.replace("default", "prod"))
    path = write(deploy / "scenario.yaml", "policyFiles: [.]\n" + EXPECT)
    scenario = load_scenario(path)
    assert [p.ref for p in scenario.policies] == [
        "PeerAuthentication app/default", "DestinationRule app/backend", "AuthorizationPolicy app/allow"]
    assert [w.message for w in scenario.warnings] == [
        "deploy/kustomization.yaml: skipped 1 Kustomization (not Istio security or networking policies)"]


def test_a_directory_without_manifests_is_an_error_with_the_fix(project: Path) -> None:
    write(project / "deploy" / "nested" / "pa.yaml", STRICT_APP)
    (error,) = errors_of(write(project / "s.yaml", "policyFiles: [deploy]\n" + EXPECT))
    assert str(error) == ("s.yaml:1:15: error: policy directory 'deploy' holds no manifests (*.yaml, *.yml, *.json)\n"
                          "    fix: subdirectories are not read (as with kubectl apply -f DIR): name them too")


def test_a_command_output_is_read_from_the_scenario_directory(project: Path) -> None:
    """`{command: ...}` runs without a shell in the scenario file's directory (not the working directory)."""
    write(project / "deploy" / "all.yaml", NAMESPACE + "---\n" + STRICT_APP + "---\n" + DR_BACKEND)
    path = write(project / "tests" / "s.yaml", "policyFiles:\n  - {command: cat ../deploy/all.yaml}\n" + EXPECT)
    scenario = load_scenario(path)
    assert [p.ref for p in scenario.policies] == ["PeerAuthentication app/default", "DestinationRule app/backend"]
    assert [str(w) for w in scenario.warnings] == [
        "tests/s.yaml:2:5: warning: output of `cat ../deploy/all.yaml`: skipped 1 Namespace (not Istio security or "
        "networking policies)"]


def test_a_bad_policy_in_a_command_output_is_positioned_in_that_output(project: Path) -> None:
    write(project / "deploy" / "all.yaml", NAMESPACE + "---\n" + STRICT_APP.replace("STRICT", "STICT"))
    (error,) = errors_of(write(project / "s.yaml", "policyFiles: [{command: cat deploy/all.yaml}]\n" + EXPECT))
    assert str(error) == (
        "output of `cat deploy/all.yaml`:8:21: error: invalid mtls.mode 'STICT' in PeerAuthentication app/default; "
        "did you mean 'STRICT'?\n    fix: use one of UNSET, DISABLE, PERMISSIVE, STRICT")


def test_a_failing_command_is_an_error_at_its_entry_with_its_stderr_tail(project: Path) -> None:
    script = write(project / "fail.py", "import sys\nfor n in range(15):\n    print(f'line {n}', file=sys.stderr)\n"
                                        "sys.exit(3)\n")
    command = f"{sys.executable} {script.name}"
    (error,) = errors_of(write(project / "s.yaml", f"policyFiles:\n  - command: {command}\n" + EXPECT))
    tail = "".join(f"\n      line {n}" for n in range(5, 15))
    assert str(error) == (f"s.yaml:2:14: error: policy command `{command}` failed (exit 3):{tail}\n"
                          "    fix: run it in . to see the whole output")


def test_a_missing_program_is_named_with_the_fix(project: Path) -> None:
    (error,) = errors_of(write(project / "s.yaml", "policyFiles: [{command: kustomise build deploy}]\n" + EXPECT))
    assert str(error) == ("s.yaml:1:25: error: cannot run policy command `kustomise build deploy`: kustomise not "
                          "found\n    fix: install kustomise or put it on PATH")


def test_a_command_that_hangs_is_stopped_at_the_timeout(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "POLICY_COMMAND_TIMEOUT_S", 0.5)
    (error,) = errors_of(write(project / "s.yaml", "policyFiles: [{command: sleep 30}]\n" + EXPECT))
    assert str(error) == ("s.yaml:1:25: error: policy command `sleep 30` did not finish within 0.5 s\n"
                          "    fix: run it in . to see the whole output")


def test_a_misspelled_command_key_gets_a_did_you_mean(project: Path) -> None:
    errors = errors_of(write(project / "s.yaml", "policyFiles: [{comand: cat x.yaml}]\n" + EXPECT))
    assert [str(e) for e in errors] == [
        "s.yaml:1:15: error: a policyFiles mapping has no 'command'\n"
        "    fix: write {command: kustomize build deploy/overlays/prod}, or a path",
        "s.yaml:1:16: error: unknown key 'comand' in a policyFiles entry; did you mean 'command'?\n"
        "    fix: allowed keys: command"]


def test_pytest_shows_the_skip_note_as_a_scenario_warning(pytester: pytest.Pytester) -> None:
    """Collection names the skipped kinds with the scenario's file and line, like every scenario warning."""
    pytester.mkdir("deploy")
    (pytester.path / "deploy" / "app.yaml").write_text(NAMESPACE + "---\n" + STRICT_APP)
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "s.yaml").write_text("policyFiles: [../deploy/app.yaml]\n" + EXPECT)
    result = pytester.runpytest("--istio-scenarios", "scenarios", "--collect-only", "-q", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines([
        "  */scenarios/s.yaml:1: IstioScenarioWarning: deploy/app.yaml: skipped 1 Namespace (not Istio security or "
        "networking policies)",
        "1 test collected*"])
