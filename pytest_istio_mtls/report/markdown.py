"""report.md: the truth tables as GitHub-flavoured Markdown, sized for ``$GITHUB_STEP_SUMMARY``.

A scenario with steps shows each step's table, the policies it changed and the results that changed from
the step before. Each scenario (and step) says how long it took, phase by phase, and a table at the end lists
the scenarios slowest first.

GitHub rejects a step summary over 1 MiB, so the output is kept under ``CAP_BYTES``: the tables
always fit, and the list of wrong/errored rows is cut (saying how many were left out) when the
whole would not. Raw evidence is never included: report.json and report.html carry it.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from ..model.diagnostics import plural
from .model import PHASES, Report, Row, ScenarioReport, StepReport, capture_path, phases_total, row_anchor
from .terminal import (
    cell_text,
    disagrees,
    duration_text,
    error_summary,
    expected_text,
    is_prediction,
    item_text,
    matrix,
    observed_text,
    pair_text,
    predicted_counts,
    step_changes,
)

CAP_BYTES = 900 * 1024
# One failure message may carry pages of diagnostics; cap each so many rows fit, not just the first.
MESSAGE_LINES = 60
MESSAGE_CHARS = 6000
INDEX_ENTRIES = 200  # the failures index links this many rows at most
_SPECIAL = re.compile(r"([\\`*_\[\]|])")
_MARKS = {"correct": "✅", "wrong": "❌", "error": "⚠️"}


def _md(text: str) -> str:
    """Literal text in Markdown: no HTML tags or entities, no emphasis, and ``|`` cannot end a table cell."""
    return _SPECIAL.sub(r"\\\1", text.replace("&", "&amp;").replace("<", "&lt;"))


def _size(lines: list[str]) -> int:
    return sum(len(line.encode("utf-8")) + 1 for line in lines)


def _counts(counts: dict[str, int]) -> str:
    return f"✅ {counts['correct']} correct · ❌ {counts['wrong']} wrong · ⚠️ {plural(counts['error'], 'error')}"


def _table(rows: list[Row]) -> list[str]:
    grid = matrix(rows)
    lines = [
        "| from \\ to | " + " | ".join(_md(column) for column in grid.columns) + " |",
        "|---" * (len(grid.columns) + 1) + "|",
    ]
    for client in grid.clients:
        cells = ["<br>".join(_md(cell_text(row, _MARKS)) for row in grid.cells.get((client, column), [])) or "·"
                 for column in grid.columns]
        lines.append(f"| **{_md(client)}** | " + " | ".join(cells) + " |")
    return lines


def _fenced(text: str, indent: str) -> list[str]:
    """A code block whose fence is longer than any backtick run inside, so the message cannot close it."""
    lines = text.splitlines()
    if len(lines) > MESSAGE_LINES or len(text) > MESSAGE_CHARS:
        lines = text[:MESSAGE_CHARS].splitlines()[:MESSAGE_LINES]
        lines.append("… (cut; the full message is in report.json)")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{indent}{fence}text", *(indent + line for line in lines), f"{indent}{fence}"]


def _failing(row: Row) -> bool:
    """Rows the details list and the failures index show: wrong, errored, or a prediction the file contradicts."""
    return row.status in ("wrong", "error") or (row.status == "predicted" and disagrees(row))


def _summary(row: Row) -> str:
    """What went wrong with one row, in one line (after its pair)."""
    if row.status == "predicted":
        return (f"the file expects {_md(row.expected or '')}, the oracle predicts {_md(row.predicted)}: "
                f"{_md(row.reason)}")
    if row.status == "wrong":
        return f"expected {_md(expected_text(row))}, observed {_md(observed_text(row))}"
    return f"expected {_md(expected_text(row))}: {_md(error_summary(row.message))}"


def _item(file: str, row: Row) -> list[str]:
    """One row of the details list, with the anchor the failures index links to."""
    mark = "" if row.status == "predicted" else f"{_MARKS[row.status]} "
    head = f'- <a name="{row_anchor(file, row)}"></a>{mark}**{_md(item_text(row))}** {_summary(row)}'
    if row.status == "predicted":
        return [head]
    pcap = capture_path(row)
    capture = [f"  capture: [{_md(pcap)}]({quote(pcap)})", ""] if pcap else []
    return [head, "", *capture, *(_fenced(row.message, "  ") if row.message else []), ""]


def _details(scenario: ScenarioReport) -> list[tuple[Row, list[str]]]:
    return [(row, _item(scenario.file, row)) for row in scenario.rows if _failing(row)]


def _index(report: Report, shown: set[int], predict: bool) -> list[str]:
    """The failures (or disagreements) index at the top: one link per row to its details, a scenario's own
    error, and a note for rows whose details were cut to fit the cap."""
    lines: list[str] = []
    for scenario in report.scenarios:
        if scenario.error:
            lines.append(f"- ⚠️ {_md(scenario.name)}: scenario error: {_md(error_summary(scenario.error))}")
        for row in filter(_failing, scenario.rows):
            mark = "" if predict else f"{_MARKS[row.status]} "
            pair = f"{_md(scenario.name)}: {_md(item_text(row))}"
            link = f"[{pair}](#{row_anchor(scenario.file, row)})" if id(row) in shown else pair
            lines.append(f"- {mark}{link} {_summary(row)}")
    if not lines:
        return []
    more = len(lines) - INDEX_ENTRIES
    listed = lines[:INDEX_ENTRIES] + ([f"- … {plural(more, 'more row')}"] if more > 0 else [])
    return [f"## {'Disagreements' if predict else 'Failures'}", "", *listed, ""]


def _phases(phases: dict[str, float]) -> str:
    """``deploy 2.0 s · apply 1.0 s · …`` in the order they run (a phase the batch never reached is left out)."""
    order = [*PHASES, *sorted(set(phases) - set(PHASES))]
    return " · ".join(f"{name} {duration_text(phases[name])}" for name in order if name in phases)


def _time(phases: dict[str, float]) -> list[str]:
    """The ``Time:`` line of a scenario or step ([] when nothing was deployed for it)."""
    total = phases_total(phases)
    return [] if total is None else [f"Time: {duration_text(total)} ({_phases(phases)})", ""]


def _slowest(report: Report) -> list[str]:
    """Every timed scenario, slowest first, with its phases as columns: where a CI run's time went."""
    timed = sorted((s for s in report.scenarios if s.phases), key=lambda s: -(phases_total(s.phases) or 0.0))
    if not timed:
        return []
    phases = [p for p in PHASES if any(p in s.phases for s in timed)]
    start = ([f"The backend took {duration_text(report.start_s)} to start, before the first scenario.", ""]
             if report.start_s is not None else [])
    lines = ["## Time per scenario", "", *start, "| scenario | rows | time | " + " | ".join(phases) + " |",
             "|---" * (len(phases) + 3) + "|"]
    for scenario in timed:
        cells = [duration_text(scenario.phases[p]) if p in scenario.phases else "·" for p in phases]
        lines.append(f"| {_md(scenario.name)} | {len(scenario.rows)} | "
                     f"{duration_text(phases_total(scenario.phases) or 0.0)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _head(report: Report) -> list[str]:
    versions = "".join(f" · {_md(key)} {_md(value)}" for key, value in report.versions.items())
    if is_prediction(report):
        rows = [row for scenario in report.scenarios for row in scenario.rows]
        disagreeing = sum(disagrees(row) for row in rows)
        return [
            "# Istio mTLS report", "",
            f"**oracle prediction** (no mesh){versions} · started {_md(report.started)}", "",
            f"{predicted_counts(rows)} · {plural(disagreeing, 'disagrees', 'disagree')} with the scenario files", "",
        ]
    failed = sum(1 for scenario in report.scenarios if scenario.error)
    scenario_errors = f" · ⚠️ {plural(failed, 'scenario error')}" if failed else ""
    return [
        "# Istio mTLS report", "",
        f"**backend** {_md(report.backend)}{versions} · started {_md(report.started)} · "
        f"took {duration_text(report.duration_s)}"
        + (f" (backend start {duration_text(report.start_s)})" if report.start_s is not None else ""), "",
        _counts(report.counts()) + scenario_errors, "",
    ]


def _section(scenario: ScenarioReport, predict: bool) -> list[str]:
    lines = [f"## {_md(scenario.name)}", "", f"file: {_md(scenario.file)}", ""]
    if scenario.description:
        lines += [_md(scenario.description.strip()), ""]
    if scenario.steps:
        lines += _time(scenario.phases)
        return lines + [line for step in scenario.steps for line in _step(scenario, step, predict)]
    if scenario.policies:
        lines += ["Policies: " + ", ".join(_md(policy) for policy in scenario.policies), ""]
    if scenario.error:
        lines += [f"> ⚠️ **scenario error:** {_md(error_summary(scenario.error))}", ""]
    if scenario.rows:
        lines += [*_table(scenario.rows), ""]
    lines += [predicted_counts(scenario.rows) if predict else _counts(scenario.counts()), ""]
    return lines + _time(scenario.phases)


def _step(scenario: ScenarioReport, step: StepReport, predict: bool) -> list[str]:
    """One step: its policies and their changes, its table and the results that changed from the step before."""
    rows = scenario.rows_of(step)
    lines = [f"### Step {step.number}: {_md(step.name)}", ""]
    if step.description:
        lines += [_md(step.description.strip()), ""]
    lines += ["Policies: " + (", ".join(_md(policy) for policy in step.policies) or "none"), ""]
    if step.changes:
        lines += [f"Changes: {_md(step.changes)}", ""]
    if step.error:
        lines += [f"> ⚠️ **step error:** {_md(error_summary(step.error))}", ""]
    if rows:
        lines += [*_table(rows), ""]
    lines += [predicted_counts(rows) if predict else _counts(scenario.counts(step.name)), ""]
    lines += _time(step.phases)
    compared = step_changes(scenario, step)
    if compared is not None:
        previous, changed = compared
        if changed:
            lines += [f"Changed from {_md(previous.name)}:", "",
                      *(f"- {_md(pair_text(row))}: {_md(old)} → {_md(new)}" for row, old, new in changed), ""]
        else:
            lines += [f"No result changed from {_md(previous.name)}.", ""]
    return lines


def _warnings(scenario: ScenarioReport) -> list[str]:
    if not scenario.warnings:
        return []
    return ["**Warnings**", "", *(f"- {_md(warning)}" for warning in scenario.warnings), ""]


def _details_heading(predict: bool) -> list[str]:
    return ["### " + ("Disagreements with the scenario file" if predict else "Wrong and errored rows"), ""]


def render_markdown(report: Report) -> str:
    """The Markdown report; the details list is cut to keep the whole under ``CAP_BYTES``."""
    predict = is_prediction(report)
    head = _head(report)
    slowest = _slowest(report)
    sections = [(_section(s, predict), _details(s), _warnings(s)) for s in report.scenarios]
    index_size = _size(_index(report, {id(row) for _, items, _ in sections for row, _ in items}, predict))
    fixed = _size(head) + _size(slowest) + index_size + sum(
        _size(top) + _size(tail) + _size(_details_heading(predict)) + 200 for top, _, tail in sections)
    budget = CAP_BYTES - fixed
    body: list[str] = []
    shown: set[int] = set()
    full = False
    for top, items, tail in sections:
        body += top
        if items:
            body += _details_heading(predict)
            count = 0
            for row, item in items:
                size = _size(item)
                if full or size > budget:
                    full = True
                    break
                body += item
                budget -= size
                shown.add(id(row))
                count += 1
            if count < len(items):
                body += [f"_… {plural(len(items) - count, 'more row')} not shown: report.md is kept under "
                         f"{CAP_BYTES // 1024} KiB for GitHub's step summary; see report.html or report.json._", ""]
        body += tail
    out = [*head, *_index(report, shown, predict), *body, *slowest]
    return _cap("\n".join(out).rstrip("\n") + "\n")


def _cap(text: str) -> str:
    """Last resort when even the tables exceed the cap: cut the text, since GitHub would reject it all."""
    data = text.encode("utf-8")
    if len(data) <= CAP_BYTES:
        return text
    note = "\n\n_… cut: report.md is kept under GitHub's step-summary limit; see report.html or report.json._\n"
    return data[: CAP_BYTES - len(note.encode("utf-8"))].decode("utf-8", "ignore") + note
