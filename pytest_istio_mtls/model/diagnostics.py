"""Messages about bad input, each pinned to ``file:line:column`` and carrying a fix.

Every problem in a scenario file is reported through these types, so the CLI, the pytest
collector and the fixtures print the same words and none of them ever shows a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Mark:
    """A position in a file, 1-based like editors and compilers print it."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    mark: Mark
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.mark}: {self.severity}: {self.message}"
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


class ScenarioError(Exception):
    """Raised when a scenario cannot be used; holds every error found, not just the first."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics = tuple(diagnostics)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(str(d) for d in self.diagnostics)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for the closest choice, or "" when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not match:
        lowered = {c.lower(): c for c in choices}
        if word.lower() in lowered:
            match = [lowered[word.lower()]]
    return f"; did you mean '{match[0]}'?" if match else ""



def plural(count: int, singular: str, plural_form: str = "") -> str:
    """``1 policy``, ``2 policies``: counts in messages and reports read as English."""
    if count == 1:
        return f"{count} {singular}"
    if not plural_form:
        plural_form = singular[:-1] + "ies" if singular.endswith("y") and singular[-2:-1] not in "aeiou" else (
            singular + ("es" if singular.endswith(("s", "x", "ch", "sh")) else "s"))
    return f"{count} {plural_form}"
