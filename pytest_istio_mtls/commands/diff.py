"""``pytest-istio-mtls diff OLD NEW``: the verdicts that changed between two ``report.json`` files.

A scenario only one report has is one difference, not one per row. In the scenarios both have, a row is the
same row when its client, server, port and request are the same (the pytest item id without the file). It
changed when it exists in one report only (``added``, ``removed``), when its result differs (``result``: the
observed verdict; ``error`` or ``not run`` when there is none; the prediction in a ``predict`` report), or when
only its outcome differs (``outcome``: correct, wrong, error; an edited expectation or a pinned HTTP status).
The kind is never called ``status``: a row's ``status:`` pins an HTTP code. The nightly workflow compares Istio
versions with this code (.github/scripts/compare_reports.py).

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

ChangeKind = Literal["added", "removed", "result", "outcome"]
KINDS: tuple[ChangeKind, ...] = ("result", "outcome", "added", "removed")
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
        outcome, expected = self._moves()
        return text + (f", {outcome}" if outcome else "") + (f" ({expected})" if expected else "")

    def label(self) -> str:
        """The change column of the Markdown table: the kind and everything ``describe`` says beyond the two
        results (the table shows those in their own columns)."""
        if self.old is None:
            return "added" + (f" ({self.new.status})" if self.new and self.new.status else "")
        if self.new is None:
            return "removed" + (f" (was {self.old.status})" if self.old.status else "")
        outcome, expected = self._moves()
        return self.kind + (f": {outcome}" if outcome else "") + (f" ({expected})" if expected else "")

    def _moves(self) -> tuple[str, str]:
        """``correct → wrong`` and ``expected mtls → unavailable``, each '' when it did not move."""
        assert self.old is not None and self.new is not None
        outcome = f"{self.old.status} → {self.new.status}" if self.old.status != self.new.status else ""
        expected = (f"expected {self.old.expected or 'nothing'} → {self.new.expected or 'nothing'}"
                    if self.old.expected != self.new.expected else "")
        return outcome, expected

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
    scenarios: dict[str, int]  # scenario → how many rows it has, in report order

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
    changes: tuple[Change, ...]  # rows of the scenarios both reports have
    unchanged: int
    only_old: tuple[tuple[str, int], ...] = ()  # (scenario, its rows) only the old report has
    only_new: tuple[tuple[str, int], ...] = ()

    @property
    def differs(self) -> bool:
        return bool(self.changes or self.only_old or self.only_new)

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
    counts: dict[str, int] = {}
    for index, scenario in enumerate(scenarios):
        name = names[index]
        if names.count(name) > 1:  # two files with one scenario name: the file tells them apart
            name = f"{name} ({scenario.get('file', '')})"
        counts[name] = len(scenario.get("rows") or [])
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
                        str(data.get("started") or ""), rows, counts)


def compare(old: LoadedReport, new: LoadedReport) -> Diff:
    """The scenarios only one report has, then every row of the others that changed, in the new report's order,
    then their rows only the old report has."""
    only_old = tuple((name, count) for name, count in old.scenarios.items() if name not in new.scenarios)
    only_new = tuple((name, count) for name, count in new.scenarios.items() if name not in old.scenarios)
    changes: list[Change] = []
    unchanged = 0
    for key, after in new.rows.items():
        if key[0] not in old.scenarios:
            continue
        before = old.rows.get(key)
        if before is None:
            changes.append(Change(*key, "added", None, after))
        elif before.result != after.result:
            changes.append(Change(*key, "result", before, after))
        elif before.status != after.status:
            changes.append(Change(*key, "outcome", before, after))
        else:
            unchanged += 1
    changes += [Change(*key, "removed", before, None) for key, before in old.rows.items()
                if key not in new.rows and key[0] in new.scenarios]
    return Diff(old, new, tuple(changes), unchanged, only_old, only_new)


def summary(diff: Diff) -> str:
    """``N rows changed (...), N unchanged; N scenarios only in the old report (N rows)``."""
    if not diff.differs:
        return f"no verdict changed ({plural(diff.unchanged, 'row')} compared)"
    counts = diff.counts()
    if diff.changes:
        parts = ", ".join(f"{counts[kind]} {kind}" if kind in ("added", "removed") else plural(counts[kind], kind)
                          for kind in KINDS if counts[kind])
        text = f"{plural(len(diff.changes), 'row')} changed ({parts}), {diff.unchanged} unchanged"
    else:
        text = f"no row changed in the scenarios both reports have ({plural(diff.unchanged, 'row')} compared)"
    for side, only in (("old", diff.only_old), ("new", diff.only_new)):
        if only:
            text += (f"; {plural(len(only), 'scenario')} only in the {side} report "
                     f"({plural(sum(count for _, count in only), 'row')})")
    return text


def render_text(diff: Diff) -> str:
    lines = [f"--- {diff.old.label()}", f"+++ {diff.new.label()}"]
    groups: dict[str, list[str]] = {}
    for side, only in (("old", diff.only_old), ("new", diff.only_new)):
        for name, count in only:
            groups[name] = [f"{name}: only in the {side} report ({plural(count, 'row')})"]
    width = max((len(c.row) for c in diff.changes), default=0)
    for change in diff.changes:  # report order within a scenario
        groups.setdefault(change.scenario, [f"{change.scenario}:"]).append(
            f"  {change.row.ljust(width)}  {change.describe()}")
    for name in sorted(groups):
        lines += groups[name]
    lines.append(summary(diff))
    return "\n".join(lines)


def render_markdown(diff: Diff, old_label: str = "old", new_label: str = "new") -> str:
    """A table for $GITHUB_STEP_SUMMARY and PR comments, saying what the text says; ``no differences`` when
    nothing changed."""
    if not diff.differs:
        return "no differences"
    groups: dict[str, list[str]] = {}
    for name, count in diff.only_old:
        groups[name] = [f"| {name} | every row | {plural(count, 'row')} | absent | scenario only in {old_label} |"]
    for name, count in diff.only_new:
        groups[name] = [f"| {name} | every row | absent | {plural(count, 'row')} | scenario only in {new_label} |"]
    for change in diff.changes:
        old = change.old.result if change.old else "absent"
        new = change.new.result if change.new else "absent"
        groups.setdefault(change.scenario, []).append(
            f"| {change.scenario} | {change.row} | {old} | {new} | {change.label()} |")
    lines = [f"| scenario | row | {old_label} | {new_label} | change |", "|---|---|---|---|---|"]
    for name in sorted(groups):
        lines += groups[name]
    lines += ["", summary(diff)]
    return "\n".join(lines)


def render_json(diff: Diff) -> str:
    """``{old, new, counts, onlyInOld, onlyInNew, changes}``; the keys are documented in README.md (Diff)."""
    def side(report: LoadedReport) -> dict[str, Any]:
        return {"file": report.path, "backend": report.backend, "versions": report.versions,
                "started": report.started}

    def scenarios(only: tuple[tuple[str, int], ...]) -> list[dict[str, Any]]:
        return [{"scenario": name, "rows": count} for name, count in only]

    return json.dumps({"old": side(diff.old), "new": side(diff.new), "counts": diff.counts(),
                       "onlyInOld": scenarios(diff.only_old), "onlyInNew": scenarios(diff.only_new),
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
    return EXIT_CHANGED if diff.differs else EXIT_SAME
