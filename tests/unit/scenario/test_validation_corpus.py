"""Every broken scenario in data/invalid/ must produce exactly the messages its '# expect:' lines name.

Each file documents its own expected diagnostics as ``# expect: LINE:COL: SEVERITY: message prefix``;
the test fails on a missing message, a wrong position, or an error the file does not expect.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_istio_mtls.model.diagnostics import Diagnostic, ScenarioError
from pytest_istio_mtls.scenario.loader import load_scenario

from ...paths import UNIT

CORPUS = sorted((UNIT / "data" / "invalid").glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\d+):(\d+): (error|warning): (.+)$")


def diagnostics_of(path: Path) -> list[Diagnostic]:
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        return list(exc.diagnostics)
    return list(scenario.warnings)


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_broken_file_reports_its_expected_messages(path: Path) -> None:
    """Each expected message appears at its line:column; no unexpected error appears."""
    expected = [EXPECT.match(line) for line in path.read_text(encoding="utf-8").splitlines()]
    wanted = [(int(m[1]), int(m[2]), m[3], m[4]) for m in expected if m]
    assert wanted, f"{path.name} documents no '# expect:' line"
    found = diagnostics_of(path)
    rendered = "\n".join(str(d) for d in found)
    for line, col, severity, text in wanted:
        assert any(d.mark.line == line and d.mark.col == col and d.severity == severity and d.message.startswith(text)
                   for d in found), f"missing {line}:{col}: {severity}: {text}\ngot:\n{rendered}"
    unexpected = [d for d in found if d.severity == "error" and not any(
        d.mark.line == line and d.mark.col == col for line, col, _, _ in wanted)]
    assert not unexpected, "unexpected errors:\n" + "\n".join(map(str, unexpected))


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_every_error_names_its_file_and_a_fix(path: Path) -> None:
    """An error says where (this file or a policy file it includes) and how to fix it."""
    found = diagnostics_of(path)
    assert found, f"{path.name} produced no diagnostic at all"
    for diagnostic in found:
        where = Path(diagnostic.mark.file)
        assert where.resolve() == path.resolve() or where.resolve().parent == path.resolve().parent, \
            f"{diagnostic} is not located in {path.name} or a file beside it"
        if diagnostic.severity == "error":
            assert diagnostic.fix, f"error without a fix: {diagnostic}"


@pytest.mark.parametrize(("name", "fix"), [("status-quoted", "write status: 200 (a number, without quotes)"),
                                           ("port-quoted", "write port: 8000 (a number, without quotes)")])
def test_a_number_written_as_text_gets_the_unquoted_form_as_its_fix(name: str, fix: str) -> None:
    """`status: "200"` is refused like every other quoted number, and the fix is the line to write."""
    (error,) = [d for d in diagnostics_of(UNIT / "data" / "invalid" / f"{name}.yaml")
                if d.severity == "error"]
    assert error.fix == fix
