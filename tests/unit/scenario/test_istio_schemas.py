"""Istio resources checked against Istio's own schemas at every depth: a typo inside a rule is an error at its line,
with a did-you-mean and the fix, in `validate`, at collection and in policyFiles, before anything starts; and the
shipped schemas are the ones of the Istio build in use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_istio_mtls.build import schemas as build_schemas
from pytest_istio_mtls.build.istio import find_build
from pytest_istio_mtls.commands.cli import main
from pytest_istio_mtls.model.diagnostics import ScenarioError
from pytest_istio_mtls.scenario import schemas
from pytest_istio_mtls.scenario.loader import load_scenario

FRONTEND_ONLY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-only, namespace: app}
spec:
  selector: {matchLabels: {app: backend}}
  action: ALLOW
  rules:
  - form:
    - source: {principals: [cluster.local/ns/app/sa/frontend]}
    to:
    - operation: {method: [GET], paths: [/api/*]}
"""
SCENARIO = "expect:\n  - {from: frontend, to: backend, request: {path: /api/x}, result: allowed}\n"


def test_validate_names_a_typo_inside_a_rule_with_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The new user's case: `form:` for `from:` used to validate and make the rule match everyone."""
    path = tmp_path / "s.yaml"
    path.write_text("policies: |\n  " + FRONTEND_ONLY.replace("\n", "\n  ") + "\n" + SCENARIO, encoding="utf-8")
    assert main(["validate", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:9:7: error: unknown key 'form' in AuthorizationPolicy app/frontend-only rules[0]; did you mean " \
           "'from'?" in err
    assert "fix: Istio's schema allows: from, to, when" in err
    assert f"{path}:12:21: error: unknown key 'method' in AuthorizationPolicy app/frontend-only " \
           "rules[0].to[0].operation; did you mean 'methods'?" in err


def test_a_typo_in_a_policy_file_is_located_in_that_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "authz.yaml").write_text(FRONTEND_ONLY, encoding="utf-8")
    (tmp_path / "s.yaml").write_text("policyFiles: [deploy/authz.yaml]\n" + SCENARIO, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(tmp_path / "s.yaml")
    found = [str(d) for d in caught.value.diagnostics if d.severity == "error"]
    assert any(d.startswith("deploy/authz.yaml:8:5: error: unknown key 'form'") for d in found), found
    assert any(d.startswith("deploy/authz.yaml:11:19: error: unknown key 'method'") for d in found), found


@pytest.mark.parametrize(("spec", "message"), [
    ("{mtls: {mode: STRCT}}", "invalid mtls.mode 'STRCT' in PeerAuthentication app/default; did you mean 'STRICT'?"),
    ("{mtls: STRICT}", "PeerAuthentication app/default mtls must be a mapping"),
    ("{selector: {matchLabel: {app: backend}}}", "unknown key 'matchLabel' in PeerAuthentication app/default "
                                                 "selector; did you mean 'matchLabels'?"),
])
def test_the_schema_catches_what_the_api_server_rejects(tmp_path: Path, spec: str, message: str) -> None:
    policy = f"apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: app}}" \
             f"\nspec: {spec}"
    path = tmp_path / "s.yaml"
    path.write_text("policies: |\n  " + policy.replace("\n", "\n  ") + "\n" + SCENARIO, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert any(message in d.message for d in caught.value.diagnostics if d.severity == "error"), \
        [str(d) for d in caught.value.diagnostics]


def test_the_served_kinds_and_versions_come_from_the_crds() -> None:
    served = schemas.served()
    assert served["security.istio.io"]["AuthorizationPolicy"] == ("v1", "v1beta1")
    assert served["networking.istio.io"]["EnvoyFilter"] == ("v1alpha3",)
    assert served["networking.istio.io"]["DestinationRule"][0] == "v1"
    assert "istio.io/istio" in schemas.source()


def test_the_shipped_schemas_are_the_build_s(tmp_path: Path) -> None:
    """`python -m pytest_istio_mtls.build.schemas CRDS` regenerates the shipped file from the CRDs build-istio took
    from the Istio module; CI builds Istio first, so there this must hold (elsewhere, without a build, it skips)."""
    build = find_build()
    if build is None:  # no build here: nothing to compare with
        if os.environ.get("CI"):
            pytest.fail("CI must compare the shipped schemas with its Istio build, and found none")
        pytest.skip("no Istio build to compare with; `pytest-istio-mtls build-istio` makes one")
    regenerated = build_schemas.render(build_schemas.from_crds(build.crds))
    assert regenerated == build_schemas.SHIPPED.read_text(encoding="utf-8"), (
        f"the shipped schemas differ from {build.crds}; run: python -m pytest_istio_mtls.build.schemas {build.crds}")


SERVICE_PORT_TRAP = """\
topology:
  namespaces: {foo: {sidecars: true}, legacy: {sidecars: false}}
  workloads:
    - {name: httpbin, namespace: foo, ports: [{name: http, port: 8000, targetPort: 8080}]}
    - {name: curl, namespace: legacy}
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: httpbin, namespace: foo}
  spec:
    selector: {matchLabels: {app: httpbin}}
    mtls: {mode: STRICT}
    portLevelMtls: {8000: {mode: DISABLE}}
expect:
  - {from: curl.legacy, to: httpbin.foo, result: refused}
"""


def test_a_trap_shown_on_purpose_is_expected_not_warned(tmp_path: Path) -> None:
    """expectWarnings: the library's deliberate traps are not reported as warnings; a stale entry is an error."""
    path = tmp_path / "s.yaml"
    path.write_text(SERVICE_PORT_TRAP, encoding="utf-8")
    plain = load_scenario(path)
    assert [w.message.split(";")[0] for w in plain.warnings] == [
        "portLevelMtls[8000] of PeerAuthentication foo/httpbin names the Service port of httpbin.foo"]
    path.write_text("expectWarnings: [names the Service port of httpbin.foo]\n" + SERVICE_PORT_TRAP, encoding="utf-8")
    deliberate = load_scenario(path)
    assert deliberate.warnings == ()
    assert [w.message for w in deliberate.expected_warnings] == [w.message for w in plain.warnings]
    path.write_text("expectWarnings: [names the Service port of web.foo]\n" + SERVICE_PORT_TRAP, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert [str(d).splitlines()[0] for d in caught.value.diagnostics if d.severity == "error"] == [
        f"{path}:1:18: error: expectWarnings entry 'names the Service port of web.foo' matches no warning of this "
        "scenario"]
