"""`-k` selects scenario rows by meaning: the expected result and the kinds of the policies in force. No mesh (--co)."""

from __future__ import annotations

import pytest

DR_DISABLE = """
name: dr-disable
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: app}
  spec: {mtls: {mode: STRICT}}
  ---
  apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: backend, namespace: app}
  spec: {host: backend.app.svc.cluster.local, trafficPolicy: {tls: {mode: DISABLE}}}
expect:
  - {from: frontend, to: backend, result: unavailable}
  - {from: plaintext, to: backend, result: refused}
  - {from: frontend, to: legacy, result: plaintext}
"""
NO_POLICY = """
name: no-policy
expect:
  - {from: frontend, to: backend, result: mtls}
  - {from: plaintext, to: backend, result: allowed}
"""
UNAVAILABLE = "scenarios/dr.yaml::dr-disable::frontend.app->backend.app:8080"
REFUSED = "scenarios/dr.yaml::dr-disable::plaintext.legacy->backend.app:8080"
PLAINTEXT = "scenarios/dr.yaml::dr-disable::frontend.app->legacy.legacy:8080"
MTLS = "scenarios/none.yaml::no-policy::frontend.app->backend.app:8080"
ALLOWED = "scenarios/none.yaml::no-policy::plaintext.legacy->backend.app:8080"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.mkdir("scenarios")
    (pytester.path / "scenarios" / "dr.yaml").write_text(DR_DISABLE)
    (pytester.path / "scenarios" / "none.yaml").write_text(NO_POLICY)
    return pytester


@pytest.mark.parametrize(("expression", "selected"), [
    ("refused", [REFUSED]),
    ("blocked", [UNAVAILABLE, REFUSED]),  # a concrete result also carries allowed or blocked
    ("allowed", [PLAINTEXT, MTLS, ALLOWED]),
    ("mtls", [MTLS]),
    ("DestinationRule", [UNAVAILABLE, REFUSED, PLAINTEXT]),
    ("destinationrule and not unavailable", [REFUSED, PLAINTEXT]),  # -k ignores case
    ("not PeerAuthentication", [MTLS, ALLOWED]),
])
def test_keywords_select_rows_by_meaning(project: pytest.Pytester, expression: str, selected: list[str]) -> None:
    result = project.runpytest("--istio-scenarios", "--co", "-q", "-k", expression)
    deselected = 5 - len(selected)
    result.stdout.fnmatch_lines([*selected, "", f"{len(selected)}/5 tests collected ({deselected} deselected) in *"],
                                consecutive=True)
    assert result.ret == 0


def test_keywords_do_not_change_the_ids(project: pytest.Pytester) -> None:
    """Ids stay `file::scenario::FROM->TO:PORT`, so --lf and pasted ids keep matching."""
    result = project.runpytest("--istio-scenarios", "--co", "-q")
    result.stdout.fnmatch_lines([UNAVAILABLE, REFUSED, PLAINTEXT, MTLS, ALLOWED, "", "5 tests collected in *"],
                                consecutive=True)


AUTHZ = """
name: only-frontend
policies: |
  apiVersion: security.istio.io/v1
  kind: AuthorizationPolicy
  metadata: {name: backend, namespace: app}
  spec: {selector: {matchLabels: {app: backend}}, rules: [{from: [{source: {principals: ["*"]}}]}]}
expect:
  - {from: frontend, to: backend, result: mtls}
"""


def test_unsupported_names_the_rows_the_chosen_backend_would_refuse(project: pytest.Pytester) -> None:
    """`-k "not unsupported"` leaves out, and counts as deselected, what the chosen backend cannot run."""
    (project.path / "scenarios" / "authz.yaml").write_text(AUTHZ)
    emulated = project.runpytest("--istio-scenarios", "--istio-backend=local", "--istio-control-plane=emulated",
                                 "-k", "unsupported", "--co", "-q")
    emulated.stdout.fnmatch_lines(["scenarios/authz.yaml::only-frontend::frontend.app->backend.app:8080", "",
                                   "1/6 tests collected (5 deselected)*"], consecutive=True)
    istiod = project.runpytest("--istio-scenarios", "--istio-backend=local", "-k", "not unsupported", "--co", "-q")
    istiod.stdout.fnmatch_lines(["6 tests collected*"])
