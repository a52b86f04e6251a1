"""The crosscheck against real istiod: the command end to end, a planted oracle mistake found and shrunk on the
real data path, and the regression scenarios of earlier disagreements observed again."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from pytest_istio_mtls.backends.local import LocalBackend
from pytest_istio_mtls.commands.crosscheck import runner
from pytest_istio_mtls.model import Result
from pytest_istio_mtls.options import Settings
from pytest_istio_mtls.scenario.loader import load_scenario

from ..unit.commands.test_crosscheck import strict_is_permissive
from .conftest import CONTROL_PLANE

pytestmark = pytest.mark.skipif(CONTROL_PLANE != "istiod", reason="the crosscheck measures the oracle against "
                                                                  "real istiod")
REGRESSIONS = Path(__file__).parents[1] / "unit" / "data" / "crosscheck"


def test_the_command_checks_generated_scenarios_and_prints_its_figures(pytester: pytest.Pytester) -> None:
    result = pytester.run(sys.executable, "-m", "pytest_istio_mtls", "crosscheck", "--count", "3", "--seed",
                          "11", "--out", "found", "--json", timeout=600)
    assert result.ret == 0, result.stderr.str()
    result.stderr.fnmatch_lines([
        "control plane up in *",
        "topology 1/1: * namespaces, * workloads, * server ports; 3 scenarios",
        "[[]1/3] * rows: * | total * rows, 0 disagreements, 0 errors, * scenarios/min, * rows/min",
        "[[]3/3] * rows: * | total * rows, 0 disagreements, 0 errors, * scenarios/min, * rows/min",
    ])
    summary = json.loads(result.stdout.str())
    assert summary["generated"] == 3 and summary["disagree"] == 0 and summary["errors"] == 0
    assert summary["rows"] == summary["agree"] + summary["unknown"] > 0
    assert sum(summary["observed"].values()) == summary["agree"]
    assert summary["versions"]["control_plane"] == "istiod"
    assert not (pytester.path / "found").exists()  # nothing to write


def test_a_planted_oracle_mistake_is_found_and_shrunk_on_real_istiod(local_backend: LocalBackend,
                                                                     tmp_path: Path) -> None:
    """A wrong oracle (namespace-wide STRICT read as PERMISSIVE) against what real istiod does."""
    lines: list[str] = []
    check = runner.Crosscheck(Settings(), 25, 1, tmp_path, lines.append, predict=strict_is_permissive,
                              observer=runner.LocalObserver(local_backend, owned=False))
    check.run()
    summary = check.summary()
    assert summary["disagree"] > 0 and summary["errors"] == 0, summary
    assert any(len(f.checked.doc["policies"]) == 1 for f in check.found)
    for found in check.found:
        assert found.file is not None and found.reduced
        written = yaml.safe_load(found.file.read_text(encoding="utf-8"))
        assert "istiod gave" in written["description"]
        scenario = load_scenario(found.file)
        # The expectations are istiod's observations: the real oracle agrees with them.
        for row in found.wrong:
            assert row.observed is not None and row.observed.value in {e.result.value for e in scenario.expectations}


@pytest.mark.skipif(not list(REGRESSIONS.glob("*.yaml")), reason="no disagreement was ever found")
def test_regression_scenarios_still_hold_on_real_istiod(pytester: pytest.Pytester) -> None:
    """Each minimal disagreement found so far, run as a scenario: istiod still does what was observed.

    01 and 02 are TCP denials of TLS the server sidecar proxies as TCP: the client sidecar logs no upstream address
    after the failed handshake, so the denial is joined through the connection that appeared in the client pod.
    """
    files = sorted(REGRESSIONS.glob("*.yaml"))
    rows = [e for f in files for e in load_scenario(f).expectations]
    assert any(e.result is Result.DENIED and e.port.protocol == "tcp" for e in rows)
    result = pytester.runpytest_subprocess("--istio-scenarios", *map(str, files), "--istio-backend=local",
                                           "-p", "no:cacheprovider", timeout=900)
    result.assert_outcomes(passed=len(rows))
