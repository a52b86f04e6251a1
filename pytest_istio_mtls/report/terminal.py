"""The terminal truth table: one compact matrix per scenario (per step of a scenario with steps, with what
changed from the step before), printed by pytest and ``predict``.

The output is deterministic (no timestamps, first-seen order) so it can be diffed between runs
and pinned in tests. The layout helpers here (``matrix``, ``expected_text``...) are shared by the
Markdown and HTML renderers so all three formats show a scenario the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from ..model import Result, row_id
from ..model.diagnostics import plural
from .model import Report, Row, ScenarioReport, StepReport

# The order results are counted in for prediction reports (the oracle never predicts allowed/blocked).
PREDICTED_ORDER = ("mtls", "plaintext", "refused", "unavailable", "denied", "unknown")
MAX_LINE = 160
ERROR_PREFIX = "observed: ERROR: "
MARKS = {"correct": "✓", "wrong": "✗", "error": "!"}
NO_ROW = "·"


@dataclass(frozen=True)
class Matrix:
    """A scenario laid out as clients × ``target:port``; a cell holds one row per request."""

    clients: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], list[Row]]


def matrix(rows: list[Row]) -> Matrix:
    """Rows and columns in first-seen order, so the table follows the scenario file's order."""
    cells: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        cells.setdefault((row.source, row.column), []).append(row)
    return Matrix(
        clients=list(dict.fromkeys(row.source for row in rows)),
        columns=list(dict.fromkeys(row.column for row in rows)),
        cells=cells,
    )


def outcome_text(row: Row) -> str | None:
    """What a row says happened: the observation, or the prediction of a predict row (None: neither)."""
    return row.predicted if row.status == "predicted" else row.observed


def step_heading(step: StepReport) -> str:
    """``step 2 workload-strict: added PeerAuthentication foo/x``: the step and how its policies differ."""
    changes = step.changes or (f"{plural(len(step.policies), 'policy')} in force" if step.number == 1
                               else "no policy changed")
    return f"step {step.number} {step.name}: {changes}"


def step_changes(scenario: ScenarioReport, step: StepReport) -> tuple[StepReport, list[tuple[Row, str, str]]] | None:
    """The step before and the rows whose result differs from the same pair's there: ``(row, before, after)``.
    None when the report lacks that step or no pair has a result in both (errors, rows not run)."""
    previous = scenario.previous(step)
    if previous is None:
        return None
    before = {pair_text(row): outcome_text(row) for row in scenario.rows_of(previous)}
    pairs = [(row, before.get(pair_text(row)), outcome_text(row)) for row in scenario.rows_of(step)]
    compared = [(row, old, new) for row, old, new in pairs if old is not None and new is not None]
    return (previous, [(row, old, new) for row, old, new in compared if old != new]) if compared else None


def item_text(row: Row) -> str:
    """The row's part of the pytest id: ``step::from->to:port`` in a scenario with steps, else the pair."""
    return (f"{row.step}::" if row.step else "") + pair_text(row)


def is_prediction(report: Report) -> bool:
    return report.backend == "predict"


def disagrees(row: Row) -> bool:
    """A prediction the scenario's explicit expectation does not accept (``unknown`` never disagrees:
    the oracle abstained, as ``pytest-istio-mtls check`` reports it)."""
    if row.expected is None or row.predicted == Result.UNKNOWN.value:
        return False
    return not Result(row.expected).covers(Result(row.predicted))


def expected_text(row: Row) -> str:
    """The expectation, with its HTTP status when the scenario pins one (else a status-only mismatch
    would read ``mtls (exp mtls)``). A Python test's probe has one when its test compared it with ``==``."""
    if row.expected is None:
        return "what the test asserts"
    status = f" HTTP {row.expected_http_status}" if row.expected_http_status is not None else ""
    return f"{row.expected}{status}"


def observed_text(row: Row) -> str:
    status = f" HTTP {row.http_status}" if row.expected_http_status is not None else ""
    return f"{row.observed or 'error'}{status}"


def pair_text(row: Row) -> str:
    """``from->to:port`` (``...:port:METHOD:/path`` for a non-default request): the pytest item's name."""
    method, _, path = row.request.partition(" ")
    return row_id(row.source, row.target, row.port, method, path)


def error_summary(message: str) -> str:
    """The backend's error from a failure message (its ``observed: ERROR:`` line), else the first line."""
    lines = message.splitlines()
    for line in lines:
        _, found, rest = line.partition(ERROR_PREFIX)
        if found:
            return rest.strip()
    return lines[0].strip() if lines else ""


def clip(text: str, limit: int = MAX_LINE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def predicted_counts(rows: list[Row]) -> str:
    """``N rows: N mtls, N plaintext, ...`` with only the results that occur (a pair may have several requests)."""
    counts = Counter(row.predicted for row in rows)
    rank = {result: index for index, result in enumerate(PREDICTED_ORDER)}
    order = sorted(counts, key=lambda result: rank.get(result, len(rank)))
    parts = ", ".join(f"{counts[result]} {result}" for result in order)
    return plural(len(rows), "row") + (f": {parts}" if parts else "")


def duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def run_counts(counts: dict[str, int]) -> str:
    """pytest's passed, failed and errors for scenario rows (and ``, N not run``: skipped or never reached;
    ``, N not asserted``: probes of Python tests whose result the test never compared)."""
    text = f"{counts['correct']} correct, {counts['wrong']} wrong, {plural(counts['error'], 'error')}"
    text += f", {counts['not asserted']} not asserted" if counts.get("not asserted") else ""
    return text + (f", {counts['not run']} not run" if counts.get("not run") else "")


def cell_text(row: Row, marks: Mapping[str, str] = MARKS, *, terse: bool = False) -> str:
    """One row's cell text; a non-default request is named so rows sharing a cell can be told apart.
    A prediction the scenario's expectation disagrees with gets `` *`` when ``terse`` (the terminal,
    which explains the mark below the table), else ``(exp <expected>)``."""
    prefix = f"{row.request}: " if row.request else ""
    if row.status == "predicted":
        if not disagrees(row):
            return prefix + row.predicted
        return prefix + row.predicted + (" *" if terse else f" (exp {row.expected})")
    if row.status == "correct":
        return f"{prefix}{marks['correct']} {observed_text(row)}"
    if row.status == "wrong":  # a Python test's probe asserted otherwise than == names no expectation
        expected = "assert failed" if row.expected is None else f"exp {expected_text(row)}"
        return f"{prefix}{marks['wrong']} {observed_text(row)} ({expected})"
    if row.status == "not run":
        return f"{prefix}not run"
    if row.status == "not asserted":
        return f"{prefix}{observed_text(row)} (not asserted)"
    return f"{prefix}{marks['error']} error (exp {expected_text(row)})"


def _table(rows: list[Row]) -> list[str]:
    """The grid; a cell with several requests puts each on a line of its own, so a table is as wide as its widest
    request, not as all of a cell's requests side by side (an authz scenario's table was ~190 columns)."""
    grid = matrix(rows)
    table: list[list[list[str]]] = [[[""], *([column] for column in grid.columns)]]
    for client in grid.clients:
        cells = [[cell_text(row, terse=True) for row in grid.cells.get((client, column), [])] or [NO_ROW]
                 for column in grid.columns]
        table.append([[client], *cells])
    widths = [max(len(text) for line in table for text in line[i]) for i in range(len(table[0]))]
    lines = []
    for line in table:
        for depth in range(max(len(cell) for cell in line)):
            texts = [cell[depth] if depth < len(cell) else "" for cell in line]
            lines.append("  ".join(text.ljust(width) for text, width in zip(texts, widths, strict=True)).rstrip())
    return lines


def _problems(rows: list[Row]) -> list[str]:
    lines = []
    for row in rows:
        head = f"  {MARKS.get(row.status)} {pair_text(row)} expected {expected_text(row)}"
        if row.status == "wrong":
            lines.append(clip(f"{head}, observed {observed_text(row)}"))
        elif row.status == "error":
            lines.append(clip(f"{head}: {error_summary(row.message)}"))
    return lines


def _rows(rows: list[Row], counts: dict[str, int], predict: bool, error: str) -> list[str]:
    """One truth table, its counts and its wrong or errored rows."""
    lines = _table(rows) if rows else []
    if predict:
        lines.append(predicted_counts(rows))
        if any(disagrees(row) for row in rows):
            lines.append("* the scenario file expects something else")
        return lines
    text = run_counts(counts)
    if error:
        text += f"; scenario error: {error_summary(error)}"
    return [*lines, clip(text), *_problems(rows)]


def _step(scenario: ScenarioReport, step: StepReport, predict: bool) -> list[str]:
    lines = ["", clip(step_heading(step))]
    lines += _rows(scenario.rows_of(step), scenario.counts(step.name), predict, step.error)
    compared = step_changes(scenario, step)
    if compared is not None:
        previous, changed = compared
        lines.append(f"changed from {previous.name}:" if changed else f"no result changed from {previous.name}")
        width = max((len(pair_text(row)) for row, _, _ in changed), default=0)
        lines += [clip(f"  {pair_text(row).ljust(width)}  {old} → {new}") for row, old, new in changed]
    return lines


def _scenario(scenario: ScenarioReport, predict: bool) -> list[str]:
    lines = [f"{scenario.name}  ({scenario.file})"]
    if not scenario.steps:
        return lines + _rows(scenario.rows, scenario.counts(), predict, scenario.error)
    for step in scenario.steps:
        lines += _step(scenario, step, predict)
    if not predict:
        lines += ["", f"{plural(len(scenario.steps), 'step')}: {run_counts(scenario.counts())}"]
    return lines


def render(report: Report) -> str:
    """The whole truth table as text (no trailing newline: callers print or split it)."""
    predict = is_prediction(report)
    blocks: list[list[str]] = []
    if predict:
        blocks.append(["oracle prediction (no mesh)"])
    elif report.versions:
        versions = " ".join(f"{key}={value}" for key, value in report.versions.items())
        blocks.append([f"backend: {report.backend}  {versions}"])
    blocks.extend(_scenario(scenario, predict) for scenario in report.scenarios)
    if not predict and len(report.scenarios) > 1:
        blocks.append([f"total: {run_counts(report.counts())}"])
    if report.interrupted:
        counts = report.counts()
        blocks.append([f"run interrupted: {counts['not run']} of {plural(sum(counts.values()), 'row')} not run"])
    return "\n\n".join("\n".join(block) for block in blocks)
