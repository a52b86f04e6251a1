"""``pytest-istio-mtls diff OLD NEW``: the verdicts that changed between two ``report.json`` files.

A row is the same row in both reports when its scenario, client, server, port and request are the same
(the pytest item id without the file). It changed when it exists in one report only, when its result
differs (the observed verdict; ``error`` or ``not run`` when there is none; the prediction in a
``predict`` report), or when only its status differs (an edited expectation, a pinned HTTP status).
The nightly workflow compares Istio versions with this code (.github/scripts/compare_reports.py).

Exit codes: 0 nothing changed, 1 something changed, 2 a report cannot be read or wrong usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..model import row_id
from ..model.diagnostics import plural
from ..report.model import SCHEMA_VERSION

ChangeKind = Literal["added", "removed", "result", "status"]
KINDS: tuple[ChangeKind, ...] = ("result", "status", "added", "removed")
FORMATS = ("text", "markdown", "json")
EXIT_SAME, EXIT_CHANGED, EXIT_TROUBLE = 0, 1, 2


class ReportError(Exception):
    """A report that cannot be compared: the message names the file, what is wrong and the fix."""


@dataclass(frozen=True)
class Verdict:
    """What one report says about one row."""

    result: str  # the observed result, else "error" / "not run", or the prediction of a predict report
    status: str  # correct, wrong, error, not run, predicted ("" in reports that lack it)
    expected: str  # the scenario's expectation, "" when none


@dataclass(frozen=True)
class Change:
    scenario: str
    row: str  # from->to:port[:METHOD:/path], as in the pytest item id
    kind: ChangeKind
    old: Verdict | None  # None: the row is only in the new report
    new: Verdict | None  # None: the row is only in the old report

    def describe(self) -> str:
        """One line for people: what the row was and what it is."""
        if self.old is None:
            assert self.new is not None
            return f"added: {self.new.result}" + (f" ({self.new.status})" if self.new.status else "")
        if self.new is None:
            return f"removed (was {self.old.result}" + (f", {self.old.status})" if self.old.status else ")")
        text = f"{self.old.result} → {self.new.result}" if self.kind == "result" else f"{self.new.result}"
        if self.old.status != self.new.status:
            text += f", {self.old.status} → {self.new.status}"
            if self.old.expected != self.new.expected:
                text += f" (expected {self.old.expected or 'nothing'} → {self.new.expected or 'nothing'})"
        return text

    def to_json(self) -> dict[str, Any]:
        def side(verdict: Verdict | None) -> dict[str, str] | None:
            if verdict is None:
                return None
            return {"result": verdict.result, "status": verdict.status, "expected": verdict.expected}

        return {"scenario": self.scenario, "row": self.row, "change": self.kind, "old": side(self.old),
                "new": side(self.new)}


@dataclass(frozen=True)
class LoadedReport:
    path: str
    backend: str
    versions: dict[str, str]
    started: str
    rows: dict[tuple[str, str], Verdict]  # (scenario, row) → verdict, in report order

    def label(self) -> str:
        """``path (backend, istio 1.30.3, started)``: enough to tell two runs apart."""
        parts = [self.backend] if self.backend else []
        istio = self.versions.get("istio") or self.versions.get("istiod")  # kind and existing; local
        if istio:
            parts.append(f"istio {istio}")
        if self.started:
            parts.append(self.started)
        return self.path + (f" ({', '.join(parts)})" if parts else "")


@dataclass(frozen=True)
class Diff:
    old: LoadedReport
    new: LoadedReport
    changes: tuple[Change, ...]
    unchanged: int

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {kind: sum(1 for c in self.changes if c.kind == kind) for kind in KINDS}
        return {**counts, "unchanged": self.unchanged}


def verdict(row: dict[str, Any]) -> Verdict:
    status = str(row.get("status") or "")
    if status == "predicted":
        result = str(row.get("predicted") or "unknown")
    else:
        result = str(row.get("observed") or status or "-")
    return Verdict(result, status, str(row.get("expected") or ""))


def load(path: str | Path) -> LoadedReport:
    """A report.json (or the directory holding it), checked enough that every row can be compared."""
    file = Path(path)
    if file.is_dir():
        file = file / "report.json"
    fix = "name a report.json written by `pytest --istio-report=DIR` or `pytest-istio-mtls predict --report DIR`"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportError(f"error: {file}: no such file\n    fix: {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"error: {file}: cannot read it: {exc}\n    fix: {fix}") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"error: {file}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}\n    fix: {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list):
        raise ReportError(f"error: {file}: not a pytest-istio-mtls report (no 'scenarios' list)\n    fix: {fix}")
    version = data.get("schemaVersion")
    if version != SCHEMA_VERSION:
        raise ReportError(f"error: {file}: schemaVersion {version!r} is not one this version reads "
                          f"({SCHEMA_VERSION})\n    fix: compare it with the pytest-istio-mtls release that wrote it")
    scenarios = [s for s in data["scenarios"] if isinstance(s, dict)]
    names = [str(s.get("name", "")) for s in scenarios]
    rows: dict[tuple[str, str], Verdict] = {}
    for index, scenario in enumerate(scenarios):
        name = names[index]
        if names.count(name) > 1:  # two files with one scenario name: the file tells them apart
            name = f"{name} ({scenario.get('file', '')})"
        for number, row in enumerate(scenario.get("rows") or []):
            try:
                method, _, target = str(row.get("request") or "").partition(" ")
                pair = row_id(str(row["from"]), str(row["to"]), int(row["port"]), method, target)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise ReportError(f"error: {file}: row {number + 1} of scenario '{name}' lacks from, to or port\n"
                                  f"    fix: {fix}") from None
            step = str(row.get("step") or "")
            rows[(name, f"{step}::{pair}" if step else pair)] = verdict(row)
    versions = data.get("versions")
    return LoadedReport(str(path), str(data.get("backend") or ""),
                        {str(k): str(v) for k, v in versions.items()} if isinstance(versions, dict) else {},
                        str(data.get("started") or ""), rows)


def compare(old: LoadedReport, new: LoadedReport) -> Diff:
    """Every row that changed, in the new report's order, then the rows only the old report has."""
    changes: list[Change] = []
    unchanged = 0
    for key, after in new.rows.items():
        before = old.rows.get(key)
        if before is None:
            changes.append(Change(*key, "added", None, after))
        elif before.result != after.result:
            changes.append(Change(*key, "result", before, after))
        elif before.status != after.status:
            changes.append(Change(*key, "status", before, after))
        else:
            unchanged += 1
    changes += [Change(*key, "removed", before, None) for key, before in old.rows.items() if key not in new.rows]
    return Diff(old, new, tuple(changes), unchanged)


def summary(diff: Diff) -> str:
    counts = diff.counts()
    if not diff.changes:
        return f"no verdict changed ({plural(diff.unchanged, 'row')} compared)"
    parts = ", ".join(f"{counts[kind]} {kind}" for kind in KINDS if counts[kind])
    return (f"{plural(len(diff.changes), 'row')} changed ({parts}), "
            f"{diff.unchanged} unchanged")


def render_text(diff: Diff) -> str:
    lines = [f"--- {diff.old.label()}", f"+++ {diff.new.label()}"]
    scenario = None
    width = max((len(c.row) for c in diff.changes), default=0)
    for change in sorted(diff.changes, key=lambda c: c.scenario):  # stable: report order within a scenario
        if change.scenario != scenario:
            scenario = change.scenario
            lines.append(f"{scenario}:")
        lines.append(f"  {change.row.ljust(width)}  {change.describe()}")
    lines.append(summary(diff))
    return "\n".join(lines)


def render_markdown(diff: Diff, old_label: str = "old", new_label: str = "new") -> str:
    """A table for $GITHUB_STEP_SUMMARY and PR comments; ``no differences`` when nothing changed."""
    if not diff.changes:
        return "no differences"
    lines = [f"| scenario | row | {old_label} | {new_label} | change |", "|---|---|---|---|---|"]
    for change in sorted(diff.changes, key=lambda c: c.scenario):
        old = change.old.result if change.old else "absent"
        new = change.new.result if change.new else "absent"
        what: str = change.kind
        if change.old and change.new and change.old.status != change.new.status:
            what += f": {change.old.status} → {change.new.status}"
        lines.append(f"| {change.scenario} | {change.row} | {old} | {new} | {what} |")
    lines += ["", summary(diff)]
    return "\n".join(lines)


def render_json(diff: Diff) -> str:
    def side(report: LoadedReport) -> dict[str, Any]:
        return {"file": report.path, "backend": report.backend, "versions": report.versions,
                "started": report.started}

    return json.dumps({"old": side(diff.old), "new": side(diff.new), "counts": diff.counts(),
                       "changes": [c.to_json() for c in diff.changes]}, indent=2, ensure_ascii=False)


def add_diff_command(sub: Any) -> None:
    p = sub.add_parser("diff", help="the verdicts that changed between two report.json files; exit 1 if any",
                       description="Compare two runs' report.json (or the directories holding them). Exit codes: "
                                   "0 nothing changed, 1 something changed, 2 a report cannot be read.")
    p.add_argument("old", metavar="OLD", help="the earlier report.json, or its directory")
    p.add_argument("new", metavar="NEW", help="the later report.json, or its directory")
    p.add_argument("--format", choices=FORMATS, default="text",
                   help="text (default), markdown (a table for $GITHUB_STEP_SUMMARY) or json")
    p.set_defaults(func=cmd_diff)


def cmd_diff(args: argparse.Namespace) -> int:
    try:
        old, new = load(args.old), load(args.new)
    except ReportError as exc:
        print(exc, file=sys.stderr)
        return EXIT_TROUBLE
    diff = compare(old, new)
    if args.format == "json":
        print(render_json(diff))
    elif args.format == "markdown":
        print(render_markdown(diff, args.old, args.new))
    else:
        print(render_text(diff))
    return EXIT_CHANGED if diff.changes else EXIT_SAME
