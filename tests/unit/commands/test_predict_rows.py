"""`predict FILE` shows exactly the rows the scenario would run: its own rows with their requests, or for
`expect: derived` the loader's derived rows (no self-calls), never a default GET /headers per pair nobody expects."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from pytest_istio_mtls.commands.cli import main
from pytest_istio_mtls.scenario.loader import load_scenario

from ...paths import REPO

AUTHZ = """
name: authz-post-only
topology:
  namespaces: {foo: {sidecars: true}}
  workloads:
    - {name: httpbin, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: curl, namespace: foo}
policies: |
  apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: post-only, namespace: foo}
  spec:
    selector: {matchLabels: {app: httpbin}}
    action: ALLOW
    rules:
    - to: [{operation: {methods: ["POST"], paths: ["/post"]}}]
expect:
  - {from: curl.foo, to: httpbin.foo, request: {method: POST, path: /post}, result: allowed, status: 200}
  - {from: curl.foo, to: httpbin.foo, request: {method: DELETE, path: /delete}, result: denied}
"""
DERIVED = """
name: derived-self
topology:
  namespaces: {foo: {sidecars: true}, legacy: {sidecars: false}}
  workloads:
    - {name: httpbin, namespace: foo, ports: [{name: http, port: 8000}]}
    - {name: curl, namespace: foo}
    - {name: curl, namespace: legacy}
expect: derived
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_predict_shows_the_rows_requests_not_a_default_get(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An ALLOW-only-POST policy: the table shows the two requests the file expects, not an alarming `denied`
    for a GET /headers nobody wrote, nor httpbin calling itself."""
    (here / "a.yaml").write_text(AUTHZ)
    assert run(capsys, "predict", "a.yaml") == (0, (
        "oracle prediction (no mesh)\n"
        "\n"
        "authz-post-only  (a.yaml)\n"
        "          httpbin.foo:8000\n"
        "curl.foo  POST /post: mtls\n"
        "          DELETE /delete: denied\n"
        "2 rows: 1 mtls, 1 denied\n"), "")
    code, out, _ = run(capsys, "predict", "a.yaml", "--json")
    assert code == 0
    rows = json.loads(out)["rows"]
    assert [{k: v for k, v in row.items() if k != "reason"} for row in rows] == [
        {"from": "curl.foo", "to": "httpbin.foo", "port": 8000, "request": "POST /post", "expected": "allowed",
         "result": "mtls"},
        {"from": "curl.foo", "to": "httpbin.foo", "port": 8000, "request": "DELETE /delete", "expected": "denied",
         "result": "denied"}]
    assert "ns[foo]-policy[post-only]-rule[0] needs methods [POST]" in rows[1]["reason"]


def test_predict_report_rows_carry_the_request_and_pinned_status(here: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (here / "a.yaml").write_text(AUTHZ)
    assert run(capsys, "predict", "a.yaml", "--report", "out")[0] == 0
    document = json.loads((here / "out/report.json").read_text())
    jsonschema.validate(document, json.loads((REPO / "pytest_istio_mtls/report/report.schema.json").read_text()))
    rows = document["scenarios"][0]["rows"]
    assert [(r["from"], r["request"], r["expected"], r["expectedStatus"], r["predicted"]) for r in rows] == [
        ("curl.foo", "POST /post", "allowed", 200, "mtls"), ("curl.foo", "DELETE /delete", "denied", None, "denied")]


def test_predict_of_a_derived_scenario_is_exactly_the_derived_rows(here: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`expect: derived` leaves self-calls out; predict shows the same rows, taken from the loader that derives
    them (so the two cannot drift)."""
    (here / "d.yaml").write_text(DERIVED)
    derived = [(e.client, e.destination, e.port.port, e.result.value) for e in load_scenario(here / "d.yaml").expectations]
    assert derived == [("curl.foo", "httpbin.foo", 8000, "mtls"), ("curl.legacy", "httpbin.foo", 8000, "plaintext")]
    code, out, _ = run(capsys, "predict", "d.yaml", "--json")
    assert code == 0
    assert [(r["from"], r["to"], r["port"], r["result"]) for r in json.loads(out)["rows"]] == derived
    assert run(capsys, "predict", "d.yaml")[1].splitlines()[2:] == [
        "derived-self  (d.yaml)",
        "             httpbin.foo:8000",
        "curl.foo     mtls",
        "curl.legacy  plaintext",
        "2 rows: 1 mtls, 1 plaintext"]
