"""The console script: validate, predict, explain, check — offline, exact output, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from pytest_istio_mtls.commands.cli import main

from ...paths import REPO

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


UNMODELLED = """
name: envoyfilter
topology:
  namespaces:
    foo: {sidecars: true}
  workloads:
    - {name: httpbin, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: curl, namespace: foo}
policies: |
  apiVersion: networking.istio.io/v1alpha3
  kind: EnvoyFilter
  metadata: {name: tweak, namespace: foo}
  spec:
    workloadSelector: {labels: {app: httpbin}}
    configPatches: []
expect:
  - {from: curl.foo, to: "httpbin.foo:8000", result: mtls}
"""
MANIFEST = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: foo}
spec: {mtls: {mode: STRICT}}
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from tmp_path, so paths print relative to it as a user sees them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_validate_ok_and_broken(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """validate exits 0 for a good file and 1 with file:line:column for a broken one; counts read as English."""
    (here / "good.yaml").write_text(DOCS_STYLE)
    (here / "bad.yaml").write_text(DOCS_STYLE.replace("STRICT", "STRICTER"))
    assert run(capsys, "validate", "good.yaml") == (0, "good.yaml: ok (foo-strict: 2 expectations, 1 policy)\n", "")
    code, out, err = run(capsys, "validate", "good.yaml", "bad.yaml")
    assert (code, out) == (1, "good.yaml: ok (foo-strict: 2 expectations, 1 policy)\n")
    assert err.splitlines() == [
        "bad.yaml:15:23: error: invalid mtls.mode 'STRICTER' in PeerAuthentication foo/default; "
        "did you mean 'STRICT'?",
        "    fix: use one of UNSET, DISABLE, PERMISSIVE, STRICT",
    ]


def test_validate_reads_directories_like_pytest(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate .` reads every scenario file under the directory (nested, *.yml too), not policy manifests
    or hidden directories, and takes several paths; a directory without scenarios is an error."""
    (here / "mesh/deep").mkdir(parents=True)
    (here / "mesh/.cache").mkdir()
    (here / "mesh/b.yaml").write_text(DOCS_STYLE.replace("foo-strict", "b"))
    (here / "mesh/deep/a.yml").write_text(DOCS_STYLE.replace("foo-strict", "a").replace("  - {from: curl.legacy, "
                                                                                         "to: httpbin.foo, "
                                                                                         "result: refused}\n", ""))
    (here / "mesh/peer-auth.yaml").write_text(MANIFEST)
    (here / "mesh/.cache/x.yaml").write_text("expect: [")
    (here / "empty").mkdir()
    assert run(capsys, "validate", ".") == (0, (
        "mesh/b.yaml: ok (b: 2 expectations, 1 policy)\n"
        "mesh/deep/a.yml: ok (a: 1 expectation, 1 policy)\n"), "")
    assert run(capsys, "validate", "empty", "mesh/deep") == (1, "mesh/deep/a.yml: ok (a: 1 expectation, 1 policy)\n", (
        "empty: error: no scenario files (*.yaml, *.yml) in this directory\n"
        "    fix: name scenario files, or a directory that holds them\n"))


def test_the_builtin_library_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    """`builtin` names the shipped library, as `pytest --istio-scenarios builtin` does."""
    code, out, _ = run(capsys, "validate", "builtin")
    assert code == 0
    assert [line.rsplit("/", 1)[1].split(":")[0] for line in out.splitlines()] == sorted(
        p.name for p in (REPO / "pytest_istio_mtls/scenarios").glob("*.yaml"))


def test_predict_json_is_exactly_the_public_shape(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """predict --json prints one line {scenario, rows[{from,to,port,request,expected,result,reason}]} per scenario,
    for every row the scenario would run."""
    (here / "a.yaml").write_text(DOCS_STYLE)
    code, out, _ = run(capsys, "predict", "a.yaml", "--json")
    assert code == 0
    data = json.loads(out)
    assert set(data) == {"scenario", "rows"}
    assert data["scenario"] == "foo-strict"
    assert all(set(row) == {"from", "to", "port", "request", "expected", "result", "reason"} for row in data["rows"])
    cells = {(r["from"], r["to"], r["port"], r["request"]): (r["expected"], r["result"]) for r in data["rows"]}
    assert cells == {
        ("curl.foo", "httpbin.foo", 8000, None): ("mtls", "mtls"),
        ("curl.legacy", "httpbin.foo", 8000, None): ("refused", "refused"),
    }
    refused = next(r for r in data["rows"] if r["from"] == "curl.legacy")
    assert refused["reason"].startswith("httpbin.foo:8000 (container port 8080) is STRICT by PeerAuthentication "
                                        "foo/default (namespace-wide); curl.legacy has no sidecar and sends "
                                        "plaintext → refused")


def test_predict_takes_several_files_and_directories(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Like pytest, predict takes many paths: one table per scenario, one JSON line per scenario."""
    (here / "mesh").mkdir()
    (here / "mesh/a.yaml").write_text(DOCS_STYLE)
    (here / "ef.yaml").write_text(UNMODELLED)
    assert run(capsys, "predict", "mesh", "ef.yaml") == (0, (
        "oracle prediction (no mesh)\n"
        "\n"
        "foo-strict  (mesh/a.yaml)\n"
        "             httpbin.foo:8000\n"
        "curl.foo     mtls\n"
        "curl.legacy  refused\n"
        "2 rows: 1 mtls, 1 refused\n"
        "\n"
        "envoyfilter  (ef.yaml)\n"
        "          httpbin.foo:8000\n"
        "curl.foo  unknown\n"
        "1 row: 1 unknown\n"), "")
    code, out, _ = run(capsys, "predict", "mesh", "ef.yaml", "--json")
    assert code == 0
    assert [json.loads(line)["scenario"] for line in out.splitlines()] == ["foo-strict", "envoyfilter"]


def test_predict_report_files_follow_the_schema(write_scenario: Callable[..., Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """predict --report writes report.json (valid against the shipped schema), report.md and report.html."""
    code, _, _ = run(capsys, "predict", str(write_scenario(DOCS_STYLE)), "--report", str(tmp_path / "out"))
    assert code == 0
    schema = json.loads((REPO / "pytest_istio_mtls/report/report.schema.json").read_text())
    report = json.loads((tmp_path / "out/report.json").read_text())
    jsonschema.validate(report, schema)
    assert report["backend"] == "predict"
    assert (tmp_path / "out/report.md").read_text().startswith("# Istio mTLS report")
    assert "<html" in (tmp_path / "out/report.html").read_text()


def test_predict_report_replaces_an_earlier_report(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """predict --report into a run's report directory removes that run's captures (they are not this report's)
    and leaves files that are not ours."""
    (here / "a.yaml").write_text(DOCS_STYLE)
    (here / "out/captures/old").mkdir(parents=True)
    (here / "out/captures/old/x.pcap").write_bytes(b"")
    (here / "out/notes.txt").write_text("mine")
    assert run(capsys, "predict", "a.yaml", "--report", "out")[::2] == (0, "reports written to out/report.{json,md,html}\n")
    assert sorted(p.name for p in (here / "out").iterdir()) == ["notes.txt", "report.html", "report.json", "report.md"]


def test_explain_prints_the_decision_chain(write_scenario: Callable[..., Path],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """explain names the rules and resources that decide one pair."""
    code, out, _ = run(capsys, "explain", str(write_scenario(DOCS_STYLE)), "curl.legacy", "httpbin.foo:8000")
    assert code == 0
    assert out.splitlines()[:2] == ["curl.legacy -> httpbin.foo:8000 (container port 8080, http)",
                                    "  result: refused"]
    assert "[P1] PeerAuthentication foo/default (namespace-wide) sets STRICT" in out
    assert "[O5] curl.legacy has no sidecar" in out


def test_explain_an_unknown_says_unknown_once(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The reason of a pair the oracle cannot predict is the why, not "unknown: " again."""
    (here / "ef.yaml").write_text(UNMODELLED)
    code, out, _ = run(capsys, "explain", "ef.yaml", "curl.foo", "httpbin.foo")
    assert code == 0
    assert out.splitlines()[1:3] == [
        "  result: unknown",
        "  reason: EnvoyFilter foo/tweak applies to httpbin.foo and is not modelled",
    ]


def test_derived_rows_leave_out_self_calls(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`expect: derived` is every client × every other workload's server port: httpbin.foo calling itself is no row."""
    (here / "derived.yaml").write_text(DOCS_STYLE.split("expect:", maxsplit=1)[0] + "expect: derived\n")
    assert run(capsys, "validate", "derived.yaml") == (0, "derived.yaml: ok (foo-strict: 2 expectations, 1 policy)\n",
                                                        "")


@pytest.mark.parametrize(("source", "target", "error"), [
    ("sleep.legacy", "httpbin.foo", "error: FROM 'sleep.legacy': unknown workload 'sleep.legacy'; "
                                    "did you mean 'curl.legacy'?\n"
                                    "    fix: workloads: httpbin.foo, curl.foo, curl.legacy\n"),
    ("curl", "httpbin.foo", "error: FROM 'curl': workload name 'curl' is ambiguous: it exists in foo, legacy\n"
                            "    fix: write one of curl.foo, curl.legacy\n"),
    ("curl.foo", "httpbn.foo:8000", "error: TO 'httpbn.foo:8000': unknown workload 'httpbn.foo'; "
                                    "did you mean 'httpbin.foo'?\n"
                                    "    fix: workloads: httpbin.foo, curl.foo, curl.legacy\n"),
    ("curl.foo", "httpbin.foo:8080", "error: TO 'httpbin.foo:8080': 8080 is the container port of httpbin.foo; "
                                     "expectations name the Service port\n"
                                     "    fix: write httpbin.foo:8000\n"),
    ("curl.foo", "httpbin.foo:htp", "error: TO 'httpbin.foo:htp': httpbin.foo has no port 'htp'; "
                                    "did you mean 'http'?\n"
                                    "    fix: its ports: 8000 (http)\n"),
    ("curl.foo", "curl.legacy", "error: TO 'curl.legacy': curl.legacy has no ports: it is a client only and "
                                "cannot be probed\n"
                                "    fix: probe a workload that declares ports, or add ports to this one\n"),
])
def test_explain_names_what_is_wrong_like_validate(here: Path, capsys: pytest.CaptureFixture[str], source: str,
                                                   target: str, error: str) -> None:
    """explain resolves FROM and TO with validation's rules: did-you-mean, ambiguity, the container-port hint."""
    (here / "a.yaml").write_text(DOCS_STYLE)
    assert run(capsys, "explain", "a.yaml", source, target) == (2, "", error)


def test_explain_reads_one_file(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "explain", ".", "curl.foo", "httpbin.foo") == (2, "", (
        "error: . is a directory; explain reads one scenario file\n"
        "    fix: name one file, e.g. one that `pytest-istio-mtls validate .` lists\n"))


def test_check_reports_disagreements_with_their_line(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check exits 1 and points at the row whose expectation the oracle contradicts; it takes several paths."""
    (here / "bad.yaml").write_text(DOCS_STYLE.replace("result: refused", "result: plaintext"))
    (here / "ok").mkdir()
    (here / "ok/good.yaml").write_text(DOCS_STYLE)
    assert run(capsys, "check", "bad.yaml", "ok") == (1, (
        "bad.yaml:18:5: disagreement: curl.legacy->httpbin.foo:8000 expects plaintext, the oracle predicts "
        "refused: httpbin.foo:8000 (container port 8080) is STRICT by PeerAuthentication foo/default "
        "(namespace-wide); curl.legacy has no sidecar and sends plaintext → refused (the server sidecar resets "
        "the plaintext connection)\n"
        "bad.yaml: 1 agrees, 1 disagrees, 0 not predictable\n"
        "ok/good.yaml: 2 agree, 0 disagree, 0 not predictable\n"), "")
    assert run(capsys, "check", "ok") == (0, "ok/good.yaml: 2 agree, 0 disagree, 0 not predictable\n", "")


def test_check_notes_rows_it_cannot_predict_without_asking_for_what_they_are(
        here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A row the oracle cannot check is already an explicit expectation: the note says why, not "write one"."""
    (here / "ef.yaml").write_text(UNMODELLED)
    assert run(capsys, "check", "ef.yaml") == (0, (
        "ef.yaml:17:5: note: curl.foo->httpbin.foo:8000: the oracle cannot check this row: EnvoyFilter foo/tweak "
        "applies to httpbin.foo and is not modelled\n"
        "ef.yaml: 0 agree, 0 disagree, 1 not predictable\n"), "")


@pytest.mark.parametrize("path", sorted((REPO / "pytest_istio_mtls/scenarios").glob("*.yaml")), ids=lambda p: p.stem)
def test_builtin_scenarios_agree_with_the_oracle(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every built-in scenario's explicit expectations are confirmed by `check`."""
    code, out, _ = run(capsys, "check", str(path))
    assert code == 0, out
    assert " 0 disagree, 0 not predictable" in out


def test_console_script_never_shows_a_traceback(write_scenario: Callable[..., Path]) -> None:
    """The installed entry point reports bad input in one place and exits 1."""
    bad = write_scenario("expect:\n  - {from: a, to: b, result: mtls}\n  - [")
    done = subprocess.run([sys.executable, "-m", "pytest_istio_mtls", "validate", str(bad)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "invalid YAML" in done.stderr
    assert "Traceback" not in done.stderr


def test_validate_backend_says_offline_what_that_backend_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    """validate --backend local --control-plane emulated names each authz and directed scenario and the fix;
    istiod runs all."""
    code, out, err = run(capsys, "validate", "builtin", "--backend", "local", "--control-plane", "emulated")
    refused = [line for line in err.splitlines() if "valid, but cannot run" in line]
    assert code == 1
    assert len(refused) == 11 and all("-authz-" in line for line in refused[:8])
    assert refused[8] == (
        "pytest_istio_mtls/scenarios/22-one-service-two-workloads.yaml: valid, but cannot run with "
        "--istio-backend=local --istio-control-plane=emulated: Service httpbin.foo has several workloads behind it "
        "(httpbin-v2.foo joins it), which needs istiod's own logic (endpoints, routes, passthrough and TLS filter "
        "chains) that the emulated control plane does not reproduce; fix: run it with real istiod "
        "(--istio-control-plane=istiod)")
    assert refused[0] == (
        "pytest_istio_mtls/scenarios/14-authz-allow-only-frontend.yaml: valid, but cannot run with "
        "--istio-backend=local --istio-control-plane=emulated: AuthorizationPolicy app/backend-allow-frontend is "
        "not emulated by the local backend's emulated control plane; fix: run it with real istiod "
        "(--istio-control-plane=istiod)")
    assert out.count(": ok (") == 14
    assert run(capsys, "validate", "builtin", "--backend", "local")[0] == 0


def test_explain_a_request_like_a_scenario_row(capsys: pytest.CaptureFixture[str]) -> None:
    """--method, --path and --header give explain a row's request:, so authz rows explain with their policy;
    a request on a tcp port, or a header that is not NAME=VALUE, is wrong usage."""
    library = str(REPO / "pytest_istio_mtls/scenarios/15-authz-deny-get-without-token.yaml")
    rule = "ns[foo]-policy[deny-get-without-token]-rule[0]"
    denied = (f"AuthorizationPolicy foo/deny-get-without-token (DENY) {rule} matches (to methods [GET], when "
              f"request.headers[x-token] notValues [letmein]): the server sidecar answers HTTP 403 'RBAC: access "
              f"denied' (rbac_access_denied_matched_policy[{rule}])")
    assert run(capsys, "explain", library, "curl.legacy", "httpbin.foo", "--path", "/anything/b",
               "--header", "x-token=guess", "--header", "X-Other=1") == (0, (
        "curl.legacy -> httpbin.foo:8000 (container port 8080, http)\n"
        "  request: GET /anything/b (x-token: guess; X-Other: 1)\n"
        "  result: denied\n"
        "  reason: httpbin.foo:8000 (container port 8080) is PERMISSIVE (no PeerAuthentication applies); curl.legacy "
        f"has no sidecar and sends plaintext → denied (PERMISSIVE accepts plaintext, then denied by {denied})\n"
        "  decision chain:\n"
        "    1. [P3] no PeerAuthentication applies to httpbin.foo: PERMISSIVE by default\n"
        "    2. [O5] curl.legacy has no sidecar: it sends exactly what the app sends (plaintext)\n"
        "    3. [X1] PERMISSIVE accepts plaintext: the request succeeds unencrypted\n"
        "    4. [A1] AuthorizationPolicy foo/deny-get-without-token (DENY) applies to httpbin.foo (by selector)\n"
        "    5. [A5] the request reaches httpbin.foo's sidecar on HTTP port 8080 with no principal (plaintext): "
        "principals and namespaces cannot match it, their not-forms always do\n"
        f"    6. [A2] DENY is evaluated before ALLOW: {denied}\n"), "")
    code, out, _ = run(capsys, "explain", library, "curl.legacy", "httpbin.foo:8000", "--method", "get",
                       "--path", "/anything/a", "--header", "x-token=letmein")
    assert (code, out.splitlines()[1:3]) == (0, ["  request: GET /anything/a (x-token: letmein)", "  result: plaintext"])
    assert run(capsys, "explain", library, "curl.foo", "httpbin.foo", "--header", "x-token") == (2, "", (
        "error: --header 'x-token' is not NAME=VALUE\n    fix: write e.g. --header x-token=letmein\n"))
    tcp = str(REPO / "pytest_istio_mtls/scenarios/21-authz-plaintext-vs-not-principals.yaml")
    assert run(capsys, "explain", tcp, "curl.foo", "httpbin.foo:9000", "--method", "POST") == (2, "", (
        "error: a request applies to http ports only; port 9000 is tcp\n"
        "    fix: drop --method, --path and --header, or name an http port\n"))
