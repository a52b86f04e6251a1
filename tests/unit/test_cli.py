"""The console script: validate, predict, explain, check — offline, exact output, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from pytest_istio_mtls.cli import main

DOCS_STYLE = """
name: foo-strict
topology:
  namespaces:
    foo: {sidecars: true}
    legacy: {sidecars: false}
  workloads:
    - {name: httpbin, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: curl, namespace: foo}
    - {name: curl, namespace: legacy}
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: foo}
  spec: {mtls: {mode: STRICT}}
expect:
  - {from: curl.foo, to: "httpbin.foo:8000", result: mtls}
  - {from: curl.legacy, to: httpbin.foo, result: refused}
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_validate_ok_and_broken(write_scenario: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    """validate exits 0 for a good file and 1 with file:line:column for a broken one."""
    good = write_scenario(DOCS_STYLE, "good.yaml")
    bad = write_scenario(DOCS_STYLE.replace("STRICT", "STRICTER"), "bad.yaml")
    code, out, _ = run(capsys, "validate", str(good))
    assert code == 0
    assert "ok (foo-strict: 2 expectations, 1 policies)" in out
    code, out, err = run(capsys, "validate", str(good), str(bad))
    assert code == 1
    assert "bad.yaml:15:23: error: invalid mtls.mode 'STRICTER' in PeerAuthentication foo/default" in err
    assert "Traceback" not in err + out


def test_predict_json_is_exactly_the_public_shape(write_scenario: Callable[..., Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """predict --json prints {scenario, rows[{from,to,port,result,reason}]} for every workload × server port."""
    code, out, _ = run(capsys, "predict", str(write_scenario(DOCS_STYLE)), "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"scenario", "rows"}
    assert data["scenario"] == "foo-strict"
    assert all(set(row) == {"from", "to", "port", "result", "reason"} for row in data["rows"])
    cells = {(r["from"], r["to"], r["port"]): r["result"] for r in data["rows"]}
    assert cells == {
        ("httpbin.foo", "httpbin.foo", 8000): "mtls",
        ("curl.foo", "httpbin.foo", 8000): "mtls",
        ("curl.legacy", "httpbin.foo", 8000): "refused",
    }
    refused = next(r for r in data["rows"] if r["from"] == "curl.legacy")
    assert refused["reason"].startswith("httpbin.foo:8000 (container port 8080) is STRICT by PeerAuthentication "
                                        "foo/default (namespace-wide); curl.legacy has no sidecar and sends "
                                        "plaintext → refused")


def test_predict_table(write_scenario: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The truth table has clients as rows and server:port as columns."""
    code, out, _ = run(capsys, "predict", str(write_scenario(DOCS_STYLE)))
    assert code == 0
    assert "curl.legacy  refused" in out
    assert "httpbin.foo:8000" in out


def test_predict_report_files_follow_the_schema(write_scenario: Callable[..., Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """predict --report writes report.json (valid against the shipped schema), report.md and report.html."""
    code, _, _ = run(capsys, "predict", str(write_scenario(DOCS_STYLE)), "--report", str(tmp_path / "out"))
    assert code == 0
    schema = json.loads((Path(__file__).parents[2] / "pytest_istio_mtls/report/report.schema.json").read_text())
    report = json.loads((tmp_path / "out/report.json").read_text())
    jsonschema.validate(report, schema)
    assert report["backend"] == "predict"
    assert (tmp_path / "out/report.md").read_text().startswith("# Istio mTLS report")
    assert "<html" in (tmp_path / "out/report.html").read_text()


def test_explain_prints_the_decision_chain(write_scenario: Callable[..., Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """explain names the rules and resources that decide one pair."""
    code, out, _ = run(capsys, "explain", str(write_scenario(DOCS_STYLE)), "curl.legacy", "httpbin.foo:8000")
    assert code == 0
    assert out.splitlines()[:2] == ["curl.legacy -> httpbin.foo:8000 (container port 8080, http)",
                                    "  result: refused"]
    assert "[P1] PeerAuthentication foo/default (namespace-wide) sets STRICT" in out
    assert "[O5] curl.legacy has no sidecar" in out


def test_explain_unknown_workload_is_a_usage_error(write_scenario: Callable[..., Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A workload that is not in the scenario exits 2 with the list of workloads."""
    code, _, err = run(capsys, "explain", str(write_scenario(DOCS_STYLE)), "sleep.legacy", "httpbin.foo")
    assert code == 2
    assert "FROM 'sleep.legacy' is not a workload of the scenario; workloads: httpbin.foo, curl.foo, curl.legacy" in err


def test_check_reports_disagreements_with_their_line(write_scenario: Callable[..., Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """check exits 1 and points at the row whose expectation the oracle contradicts."""
    path = write_scenario(DOCS_STYLE.replace("result: refused", "result: plaintext"))
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1
    assert ":18:5: disagreement: curl.legacy->httpbin.foo:8000 expects plaintext, the oracle predicts refused" in out
    code, out, _ = run(capsys, "check", str(write_scenario(DOCS_STYLE, "ok.yaml")))
    assert code == 0
    assert out.strip().endswith("2 agree, 0 disagree, 0 not predictable")


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "pytest_istio_mtls/scenarios").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_builtin_scenarios_agree_with_the_oracle(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every built-in scenario's explicit expectations are confirmed by `check`."""
    code, out, _ = run(capsys, "check", str(path))
    assert code == 0, out
    assert " 0 disagree, 0 not predictable" in out


def test_console_script_never_shows_a_traceback(write_scenario: Callable[..., Path]) -> None:
    """The installed entry point reports bad input in one place and exits 1."""
    bad = write_scenario("expect:\n  - {from: a, to: b, result: mtls}\n  - [")
    done = subprocess.run([sys.executable, "-m", "pytest_istio_mtls.cli", "validate", str(bad)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "invalid YAML" in done.stderr
    assert "Traceback" not in done.stderr
