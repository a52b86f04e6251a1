"""The Python fixtures on real Envoy sidecars (emulated control plane: these tests need *a* mesh, not istiod):
a failed assertion on a probe prints the evidence block of a scenario item, a typo fails in one line, and
the README's example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"
MESH = ("--istio-backend=local", "--istio-control-plane=emulated", "-p", "no:cacheprovider")
STRICT_APP = '''
STRICT_APP = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: app}
spec: {mtls: {mode: STRICT}}
"""
'''
TWIN_SCENARIO = """
name: twin
policies: |
  apiVersion: security.istio.io/v1
  kind: PeerAuthentication
  metadata: {name: default, namespace: app}
  spec: {mtls: {mode: STRICT}}
expect:
  - {from: plaintext.legacy, to: backend.app, result: plaintext}
"""
BLOCK_HEAD = [
    "  expected: plaintext",
    "  observed: refused",
    "  oracle:   refused: backend.app:8080 is STRICT by PeerAuthentication app/default (namespace-wide); "
    "plaintext.legacy has no sidecar and sends plaintext → refused (the server sidecar resets the plaintext "
    "connection)",
    "  client saw: reset (connection reset by peer)",
    "  because:",
    "    - server sidecar listener.0.0.0.0_15006.no_filter_chain_match +1",
]


@pytest.fixture(autouse=True)
def _outside_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest never shortens assertion explanations on CI; the runs below must read the same everywhere."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)


def block(lines: list[str], first: str, prefix: str) -> list[str]:
    """The lines after ``first`` that start with ``prefix`` (removed), with what differs between two probes
    of the same pair masked: the client's port, and the server's access-log entry for a rejected connection
    (the local backend does not wait for it, so it may come after the evidence is read)."""
    start = lines.index(first)
    found = []
    for line in lines[start + 1:]:
        if not line.startswith(prefix):
            break
        line = re.sub(r"(\d+\.\d+\.\d+\.\d+):\d+ >", r"\1:PORT >", line[len(prefix):])
        if "sidecar access log: " not in line:
            found.append(line.split("; access log flags ")[0])
    return found


def test_a_failed_result_comparison_prints_the_block_of_a_scenario_item(pytester: pytest.Pytester) -> None:
    """The same pair, policy and wrong expectation, once as a fixture test and once as a scenario row: the
    assertion prints the scenario item's block, evidence included."""
    pytester.makepyfile(test_wrong=STRICT_APP + '''
def test_wrong_expectation(istio_policies, istio_probe):
    with istio_policies(STRICT_APP):
        assert istio_probe("plaintext.legacy", "backend.app").result == "plaintext"
''')
    pytester.makefile(".yaml", twin=TWIN_SCENARIO)
    result = pytester.runpytest_subprocess(*MESH, "-vv", "test_wrong.py", "--istio-scenarios", "twin.yaml")
    result.assert_outcomes(failed=2)
    lines = result.outlines
    from_assert = block(lines, "E           AssertionError: assert 'refused' == 'plaintext'", "E             ")
    from_item = block(lines, "plaintext.legacy->backend.app:8080 in scenario twin", "")
    assert from_assert[0] == "plaintext.legacy->backend.app:8080 in scenario fixture"
    assert from_assert[1:] == from_item[:len(from_assert) - 1]
    assert from_assert[1:len(BLOCK_HEAD) + 1] == BLOCK_HEAD
    evidence = from_assert[from_assert.index("  evidence:") + 1:]
    assert evidence[0].startswith("    server sidecar backend.app: listener.0.0.0.0_15006.no_filter_chain_match +1")
    assert evidence[-1].startswith("    capture on ") and evidence[-1].endswith("marker IN CLEAR")


def test_without_dash_vv_pytest_shortens_the_block_and_says_how_to_see_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_wrong=STRICT_APP + '''
def test_wrong_expectation(istio_policies, istio_probe):
    with istio_policies(STRICT_APP):
        assert istio_probe("plaintext.legacy", "backend.app").result == "plaintext"
''')
    result = pytester.runpytest_subprocess(*MESH)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        ">           assert istio_probe(\"plaintext.legacy\", \"backend.app\").result == \"plaintext\"",
        "E           AssertionError: assert 'refused' == 'plaintext'",
        "E             plaintext.legacy->backend.app:8080 in scenario fixture",
        *(f"E             {line}" for line in BLOCK_HEAD[:-1]),
        f"E             {BLOCK_HEAD[-1]}...",
        "E             ",
        "E             ...Full output truncated*, use '-vv' to show",
    ], consecutive=True)


def test_a_misspelled_workload_fails_in_one_line_with_a_did_you_mean(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_typo='''
def test_typo(istio_probe):
    istio_probe("fronted.app", "backend.app")

def test_port(istio_probe):
    istio_probe("frontend.app", "backend.app:80")
''')
    result = pytester.runpytest_subprocess(*MESH)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*_ test_typo _*",
        "test_typo.py:2: unknown workload 'fronted.app'; did you mean 'frontend.app'? (fix: workloads: "
        "frontend.app, backend.app, plaintext.legacy, legacy.legacy)",
        "*_ test_port _*",
        "test_typo.py:5: backend.app has no port '80'; did you mean '8080'? (fix: its ports: 8080 (http))",
        "*short test summary info*",
    ], consecutive=True)


def test_the_readme_example_runs_as_written(pytester: pytest.Pytester) -> None:
    """The README's fixture example passes, and its comment shows what str() of a probe prints."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Fixtures"):]
    example = section[section.index("```python\n") + len("```python\n"):section.index("```\n", 10)]
    pytester.makepyfile(test_readme=example)
    result = pytester.runpytest_subprocess(*MESH, "-rP")
    result.assert_outcomes(passed=1)
    printed = re.search(r"print\(legacy\)\s+# (.+)", example)
    assert printed is not None
    result.stdout.fnmatch_lines(["*Captured stdout call*", printed[1]], consecutive=True)
