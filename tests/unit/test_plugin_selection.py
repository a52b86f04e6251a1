"""Selecting scenario rows the ways pytest users do: ini, positional paths, node ids, -k. No mesh (--co)."""

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
IDS = ["scenarios/strict.yaml::ns-strict::frontend.app->backend.app:8080",
       "scenarios/strict.yaml::ns-strict::plaintext.legacy->backend.app:8080",
       "scenarios/strict.yaml::ns-strict::frontend.app->backend.app:8080:POST:/post"]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A project with scenarios and one ordinary test."""
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "strict.yaml").write_text(SCENARIO)
    pytester.makepyfile(test_other="def test_other():\n    pass\n")
    return pytester


def test_ini_alone_turns_scenarios_on_beside_the_other_tests(project: pytest.Pytester) -> None:
    """`istio_scenarios = scenarios` in pytest.ini, then plain `pytest`: the scenarios and the project's tests."""
    project.makeini("[pytest]\nistio_scenarios = scenarios\n")
    result = project.runpytest("--co", "-q")
    result.stdout.fnmatch_lines([*IDS, "test_other.py::test_other", "", "4 tests collected in *"], consecutive=True)


def test_ini_does_not_add_scenarios_to_explicit_arguments(project: pytest.Pytester) -> None:
    """`pytest test_other.py` with the ini set runs what it names."""
    project.makeini("[pytest]\nistio_scenarios = scenarios\n")
    result = project.runpytest("--co", "-q", "test_other.py")
    result.stdout.fnmatch_lines(["test_other.py::test_other", "", "1 test collected in *"], consecutive=True)


def test_scenario_file_as_positional_argument(project: pytest.Pytester) -> None:
    """Naming a scenario file runs it, without --istio-scenarios (it used to be 'not found')."""
    result = project.runpytest("--co", "-q", "scenarios/strict.yaml")
    result.stdout.fnmatch_lines([*IDS, "", "3 tests collected in *"], consecutive=True)
    assert result.ret == 0


@pytest.mark.parametrize("spelling", [["--istio-scenarios", "."], ["--istio-scenarios=."]])
def test_node_id_filters_with_a_scenario_directory(project: pytest.Pytester, spelling: list[str]) -> None:
    """`--istio-scenarios . FILE::NAME::ROW`: the node id selects one row (argparse hands it to the option)."""
    result = project.runpytest("--co", "-q", *spelling, IDS[1])
    result.stdout.fnmatch_lines([IDS[1], "", "1 test collected in *"], consecutive=True)


@pytest.mark.parametrize("node_id", IDS)
def test_pasted_node_id_selects_exactly_that_row(project: pytest.Pytester, node_id: str) -> None:
    """Every id, also one with a request, is a node id pytest accepts back (no `[...]` read as parameters)."""
    result = project.runpytest("--co", "-q", node_id)
    result.stdout.fnmatch_lines([node_id, "", "1 test collected in *"], consecutive=True)


@pytest.mark.parametrize(("expression", "selected"), [("POST", IDS[2]), ("8080:POST:/post", IDS[2]),
                                                      ("plaintext", IDS[1])])
def test_keyword_selects_rows(project: pytest.Pytester, expression: str, selected: str) -> None:
    result = project.runpytest("--istio-scenarios", "--co", "-q", "-k", expression)
    result.stdout.fnmatch_lines([selected, "", "1/3 tests collected (2 deselected) in *"], consecutive=True)
