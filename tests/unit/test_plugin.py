"""The pytest plugin without a mesh: collection, ids, options, usage errors and bad input."""

from __future__ import annotations

import pytest

SCENARIO = """
name: ns-strict
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: app}
  spec: {mtls: {mode: STRICT}}
expect:
  - {from: frontend, to: backend, result: mtls}
  - {from: plaintext, to: backend, result: refused}
  - {from: frontend, to: backend, request: {method: POST, path: /post}, result: allowed, status: 200}
"""


@pytest.fixture
def scenarios(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "strict.yaml").write_text(SCENARIO)
    return pytester


def test_collect_only_lists_one_item_per_row(scenarios: pytest.Pytester) -> None:
    """Item ids are file.yaml::NAME::FROM->TO:PORT, plus the request for non-default requests."""
    result = scenarios.runpytest("--istio-scenarios", "--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "scenarios/strict.yaml::ns-strict::frontend.app->backend.app:8080",
        "scenarios/strict.yaml::ns-strict::plaintext.legacy->backend.app:8080",
        "scenarios/strict.yaml::ns-strict::frontend.app->backend.app:8080:POST:/post",
    ], consecutive=True)
    result.stdout.fnmatch_lines(["3 tests collected*"])
    assert result.ret == 0


def test_without_the_option_yaml_is_not_collected(scenarios: pytest.Pytester) -> None:
    """Scenario collection is opt-in: plain `pytest` ignores scenario files."""
    result = scenarios.runpytest("--collect-only", "-q", "scenarios")
    result.stdout.fnmatch_lines(["no tests collected*"])


def test_keyword_selection(scenarios: pytest.Pytester) -> None:
    """-k selects rows by client, server or scenario name."""
    result = scenarios.runpytest("--istio-scenarios", "--collect-only", "-q", "-k", "plaintext")
    result.stdout.fnmatch_lines(["*plaintext.legacy->backend.app:8080", "1/3 tests collected*"])


def test_builtin_library_is_reachable(pytester: pytest.Pytester) -> None:
    """`--istio-scenarios builtin` collects the library shipped inside the package."""
    from pytest_istio_mtls.options import builtin_scenarios
    from pytest_istio_mtls.scenario.loader import load_scenario

    rows = sum(len(s.expectations) for path in builtin_scenarios().glob("*.yaml") for s in load_scenario(path).states())
    result = pytester.runpytest("--istio-scenarios", "builtin", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["*01-no-policy.yaml::no-policy::frontend.app->backend.app:8080",
                                 f"{rows} tests collected*"])


def test_env_twin_and_ini_turn_collection_on(scenarios: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """ISTIO_MTLS_SCENARIOS and the ini key istio_scenarios work like the flag."""
    monkeypatch.setenv("ISTIO_MTLS_SCENARIOS", "scenarios")
    scenarios.runpytest("--collect-only", "-q").stdout.fnmatch_lines(["3 tests collected*"])
    monkeypatch.delenv("ISTIO_MTLS_SCENARIOS")
    scenarios.makeini("[pytest]\nistio_scenarios = scenarios/strict.yaml\n")
    scenarios.runpytest("--istio-scenarios", "--collect-only", "-q").stdout.fnmatch_lines(["3 tests collected*"])


def test_invalid_env_value_is_a_usage_error(scenarios: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values from the environment are validated like command-line ones."""
    monkeypatch.setenv("ISTIO_MTLS_BACKEND", "minikube")
    result = scenarios.runpytest("--istio-scenarios", "--collect-only")
    result.stderr.fnmatch_lines(["ERROR: ISTIO_MTLS_BACKEND: invalid value 'minikube'; use one of kind, existing, local"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_contradictory_options_are_refused_up_front(scenarios: pytest.Pytester) -> None:
    """An existing-cluster option with the local backend is a usage error, before anything starts."""
    result = scenarios.runpytest("--istio-scenarios", "--istio-backend=local", "--istio-kubeconfig=/x", "--co")
    result.stderr.fnmatch_lines(["ERROR: --istio-kubeconfig only applies to --istio-backend=existing*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_air_gapped_options_are_checked_up_front(scenarios: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kind-only flag with another backend, a given binary that is not there, and a workload image key from before
    the echo app are usage errors; a kind-only env twin (a harness's) is left alone for other backends."""
    result = scenarios.runpytest("--istio-scenarios", "--istio-backend=local", "--istio-kind-image=x", "--co")
    result.stderr.fnmatch_lines(["ERROR: --istio-kind-image only applies to --istio-backend=kind (the backend is local)"])
    result = scenarios.runpytest("--istio-scenarios", "--istio-istioctl=missing/istioctl", "--co")
    result.stderr.fnmatch_lines(["ERROR: --istio-istioctl: no such file: missing/istioctl"])
    result = scenarios.runpytest("--istio-scenarios", "--istio-images=httpbin=mirror/httpbin", "--co")
    result.stderr.fnmatch_lines(["ERROR: --istio-images: httpbin is gone: every backend's workloads run the plugin's "
                                 "echo app; name an image with python3 as app=IMAGE"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    monkeypatch.setenv("ISTIO_MTLS_KIND_IMAGE", "kindest/node:v1.36.3-offline")
    result = scenarios.runpytest("--istio-scenarios", "--istio-backend=local", "--co")
    assert result.ret == pytest.ExitCode.OK


def test_missing_scenario_path(pytester: pytest.Pytester) -> None:
    """A path that does not exist is named, with a hint about the built-in library."""
    result = pytester.runpytest("--istio-scenarios", "--co")
    result.stderr.fnmatch_lines(["ERROR: --istio-scenarios: no such scenario file or directory: */scenarios (or "
                                 "--istio-scenarios builtin for the library shipped with the plugin)"])


def test_broken_scenario_is_a_collection_error_without_traceback(scenarios: pytest.Pytester) -> None:
    """Bad input stops the run at collection with file:line:column and a fix; no mesh is touched."""
    (scenarios.path / "scenarios" / "broken.yaml").write_text(SCENARIO.replace("result: mtls", "result: mtlss"))
    result = scenarios.runpytest("--istio-scenarios", "--istio-backend=local")
    result.stdout.fnmatch_lines([
        "*ERROR collecting scenarios/broken.yaml*",
        "*broken.yaml:9:43: error: invalid result 'mtlss'; did you mean 'mtls'?",
        "    fix: use one of mtls, plaintext, refused, unavailable, denied, allowed, blocked",
    ])
    assert "Traceback" not in result.stdout.str()
    assert "[istio-mtls]" not in result.stdout.str()  # the backend never started
    assert result.ret == pytest.ExitCode.INTERRUPTED


def test_warnings_point_at_the_policy(scenarios: pytest.Pytester) -> None:
    """A policy Istio accepts but ignores becomes a warning located at its line."""
    (scenarios.path / "scenarios" / "strict.yaml").write_text(SCENARIO.replace(
        "spec: {mtls: {mode: STRICT}}", "spec: {selector: {matchLabels: {app: backnd}}, mtls: {mode: STRICT}}"))
    result = scenarios.runpytest("--istio-scenarios", "--co", "-q")
    result.stdout.fnmatch_lines(["*strict.yaml:7: IstioScenarioWarning: selector app=backnd of PeerAuthentication "
                                 "app/default matches no workload in namespace app*"])


def test_help_lists_every_option_with_its_env_twin(pytester: pytest.Pytester) -> None:
    """--help documents each --istio-* option, its ISTIO_MTLS_* variable and ini key, without a mesh."""
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())
    for flag, env in (("--istio-scenarios", "ISTIO_MTLS_SCENARIOS"), ("--istio-backend", "ISTIO_MTLS_BACKEND"),
                      ("--istio-report", "ISTIO_MTLS_REPORT"), ("--istio-keep", "ISTIO_MTLS_KEEP")):
        assert flag in text
        assert f"Env: {env}" in text
    assert "Istio mTLS scenarios (pytest-istio-mtls)" in text


def test_fixtures_are_documented(pytester: pytest.Pytester) -> None:
    """--fixtures shows the three fixtures and their usage without starting a mesh."""
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(["istio_mesh [[]session scope[]]*", "*Session-scoped mesh*",
                                 "istio_policies*", "istio_probe*"])


def test_report_header_names_the_backend(scenarios: pytest.Pytester) -> None:
    """The session header says which backend and scenarios a run uses."""
    result = scenarios.runpytest("--istio-scenarios", "--istio-backend=local", "--co")
    result.stdout.fnmatch_lines(["istio-mtls: backend=local keep=never scenarios=*scenarios"])


def test_unusable_backend_stops_the_session_with_one_message(scenarios: pytest.Pytester,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend that cannot run here (no Envoy, no root, no Docker) ends the run once, without a traceback
    and without pytest's `_pytest.outcomes.Exit` banner: our message only, then pytest's summary."""
    monkeypatch.setenv("ISTIO_MTLS_ENVOY", "/nonexistent/envoy")
    result = scenarios.runpytest("--istio-scenarios", "--istio-backend=local")
    result.stdout.fnmatch_lines(["collected 3 items", "",
                                 "! istio-mtls: the local backend cannot run here: * !",
                                 "*= no tests ran in *"], consecutive=True)
    text = result.stdout.str()
    assert "Traceback" not in text and "Exit" not in text and "truth table" not in text
    assert text.count("cannot run here") == 1
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_existing_backend_without_kubeconfig_stops_once_with_the_fix(scenarios: pytest.Pytester,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No kubeconfig: one message naming the fix, not one error per row."""
    monkeypatch.setenv("HOME", str(scenarios.path))  # no ~/.kube/config there
    monkeypatch.delenv("KUBECONFIG", raising=False)
    result = scenarios.runpytest("--istio-scenarios", "--istio-backend=existing", "-q")
    result.stdout.fnmatch_lines([
        f"! istio-mtls: the existing backend cannot run here: no kubeconfig at {scenarios.path}/.kube/config "
        "(KUBECONFIG unset); fix: pass --istio-kubeconfig FILE or set KUBECONFIG*--istio-backend=local (no cluster) !",
        "no tests ran in *"], consecutive=True)
    assert result.stdout.str().count("cannot run here") == 1
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_fixture_tests_stop_once_when_the_backend_cannot_run(pytester: pytest.Pytester,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Python tests using the fixtures: the first one is skipped with the message and the session stops,
    instead of one error per test."""
    monkeypatch.setenv("ISTIO_MTLS_ENVOY", "/nonexistent/envoy")
    pytester.makepyfile("""
        def test_one(istio_probe):
            pass

        def test_two(istio_probe):
            pass
    """)
    result = pytester.runpytest("--istio-backend=local", "-rs")
    result.stdout.fnmatch_lines(["*= short test summary info =*",
                                 "SKIPPED [[]1[]] test_fixture_tests_stop_once_when_the_backend_cannot_run.py:1: "
                                 "istio-mtls: the local backend cannot run here: *",
                                 "! istio-mtls: the local backend cannot run here: * !",
                                 "*= 1 skipped in *"], consecutive=True)
    assert result.ret == pytest.ExitCode.USAGE_ERROR


AMBIENT = """
name: ambient-server
topology:
  namespaces:
    mesh: {sidecars: true}
    amb: {sidecars: false, ambient: true}
  workloads:
    - {name: client, namespace: mesh}
    - {name: server, namespace: amb, ports: [{name: http, port: 8080}]}
    - {name: other, namespace: amb, ports: [{name: http, port: 8080}]}
expect:
  - {from: client.mesh, to: server.amb, result: mtls}
  - {from: client.mesh, to: other.amb, result: mtls}
"""


def test_a_scenario_the_backend_cannot_run_stops_once_before_anything_starts(pytester: pytest.Pytester) -> None:
    """Ambient on the local backend: one ERROR with the fix, the other rows skipped, no traceback, no mesh."""
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "ambient.yaml").write_text(AMBIENT)
    result = pytester.runpytest("--istio-scenarios", "--istio-backend=local", "-rs")
    result.assert_outcomes(errors=1, skipped=1)
    result.stdout.fnmatch_lines([
        "  observed: ERROR: the local backend cannot run scenario 'ambient-server': 2 workloads in ambient mode (server.amb, "
        "other.amb): no backend of pytest-istio-mtls runs ambient (ztunnel) yet; fix: give the namespace "
        "`sidecars: true` instead of `ambient: true`, or leave this scenario out of the run",
    ])
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] scenarios/ambient.yaml: scenario 'ambient-server' cannot run on "
                                 "this backend (see its first row)"])
    output = result.stdout.str()
    assert "Traceback" not in output and "UnsupportedPolicy" not in output
    assert "[istio-mtls]" not in output  # nothing was started or deployed
