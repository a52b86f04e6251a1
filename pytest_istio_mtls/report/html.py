"""report.html: one self-contained page (inline CSS, no scripts, no external resources).

It is uploaded as a CI artifact and opened offline, so nothing may be fetched; every string that
comes from a scenario, a backend or a probe is escaped, since bodies and messages are arbitrary.
"""

from __future__ import annotations

import json
from dataclasses import replace
from html import escape
from urllib.parse import quote

from .model import Report, Row, ScenarioReport, StepReport, capture_path, row_anchor
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
    run_counts,
    step_changes,
)

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #1f2328; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
.meta, .file { color: #59636e; }
.description { white-space: pre-line; }
table.matrix { border-collapse: separate; border-spacing: 4px; margin: .8em 0; }
table.matrix th { text-align: left; font-weight: 600; padding: 2px 6px; white-space: nowrap; }
table.matrix td { padding: 0; vertical-align: top; }
td.none { color: #8c959f; text-align: center; }
.c { display: block; padding: 4px 8px; margin: 1px 0; border: 3px solid transparent; border-radius: 4px;
     color: inherit; text-decoration: none; white-space: nowrap; }
.r-mtls { background: #b7e4c0; }
.r-plaintext { background: #ffd98a; }
.r-refused { background: #c3d3e6; }
.r-unavailable { background: #dccdf2; }
.r-denied { background: #f4c7b8; }
.r-unknown, .r-error { background: #eaeef2; }
.s-wrong { border: 3px solid #cf222e; }
.s-error { border: 3px dashed #cf222e; }
.s-disagree { border: 3px dotted #cf222e; }
.legend { display: flex; flex-wrap: wrap; gap: 6px; margin: 1em 0; }
.legend .c { display: inline-block; }
.error-box { border-left: 4px solid #cf222e; padding: .4em .8em; background: #fff1f0; }
.warnings { border-left: 4px solid #bf8700; padding: .4em .8em; background: #fff8c5; }
.failures { border-left: 4px solid #cf222e; padding: .2em .8em; }
.failures h2 { margin-top: .4em; border: none; }
details { margin: .3em 0; }
summary { cursor: pointer; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; margin: .5em 0 .5em 1.5em; }
dt { font-weight: 600; }
dd { margin: 0; min-width: 0; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; margin: 0; white-space: pre-wrap; }
"""


def _result(row: Row) -> str:
    """The result that colours a cell: what was observed (errors have none), or what is predicted."""
    if row.status == "predicted":
        return row.predicted
    return row.observed or "error"


def _classes(row: Row) -> str:
    """CSS classes: ``r-<result>`` picks the background, ``s-<status>`` the border (escaped attribute text)."""
    classes = ["c", f"r-{_result(row)}"]
    if row.status in ("wrong", "error"):
        classes.append(f"s-{row.status}")
    elif disagrees(row):
        classes.append("s-disagree")
    return escape(" ".join(classes))


def _anchors(report: Report) -> dict[int, str]:
    """Each row's id on the page (by ``id(row)``): row_anchor, with a suffix in the rare case two rows share it."""
    anchors: dict[int, str] = {}
    seen: set[str] = set()
    for scenario in report.scenarios:
        for row in scenario.rows:
            anchor = base = row_anchor(scenario.file, row)
            number = 1
            while anchor in seen:
                number += 1
                anchor = f"{base}-{number}"
            seen.add(anchor)
            anchors[id(row)] = anchor
    return anchors


def _failing(row: Row) -> bool:
    return row.status in ("wrong", "error") or (row.status == "predicted" and disagrees(row))


def _matrix(rows: list[Row], anchors: dict[int, str]) -> list[str]:
    grid = matrix(rows)
    out = ['<table class="matrix">', "<thead><tr><th>from \\ to</th>"]
    out += [f'<th scope="col">{escape(column)}</th>' for column in grid.columns]
    out.append("</tr></thead><tbody>")
    for client in grid.clients:
        out.append(f'<tr><th scope="row">{escape(client)}</th>')
        for column in grid.columns:
            rows = grid.cells.get((client, column), [])
            if not rows:
                out.append('<td class="none">·</td>')
                continue
            links = "".join(f'<a class="{_classes(row)}" href="#{anchors[id(row)]}" title="{escape(row.reason)}">'
                            f"{escape(cell_text(row))}</a>" for row in rows)
            out.append(f"<td>{links}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return out


def _details(row: Row, anchor: str) -> list[str]:
    """Everything known about one row in a <details>, so the page stays scannable with thousands of rows."""
    summary = f"{item_text(row)}: {cell_text(replace(row, request=''))}"  # the pair names the request
    fields: list[tuple[str, str]] = []
    if row.expected is not None:
        fields.append(("expected", escape(expected_text(row))))
    if row.status != "predicted":
        fields.append(("observed", escape(observed_text(row))))
    fields += [("predicted", escape(row.predicted)), ("reason", escape(row.reason))]
    if row.message:
        fields.append(("message", f"<pre>{escape(row.message)}</pre>"))
    if row.because:
        fields.append(("because", "<ul>" + "".join(f"<li>{escape(item)}</li>" for item in row.because) + "</ul>"))
    pcap = capture_path(row)
    if pcap:
        fields.append(("capture", f'<a href="{escape(quote(pcap))}">{escape(pcap)}</a>'))
    if row.evidence is not None:
        evidence = json.dumps(row.evidence, indent=2, ensure_ascii=False, default=str)
        fields.append(("evidence", f"<pre>{escape(evidence)}</pre>"))
    body = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in fields)
    opened = " open" if row.status in ("wrong", "error") else ""  # failures unfolded: what people come for
    return [f'<details id="{anchor}"{opened}><summary>{escape(summary)}</summary><dl>{body}</dl></details>']


def _scenario(scenario: ScenarioReport, index: int, predict: bool, anchors: dict[int, str]) -> list[str]:
    counts = predicted_counts(scenario.rows) if predict else run_counts(scenario.counts())
    out = [f'<section id="s{index}">', f"<h2>{escape(scenario.name)}</h2>",
           f'<p class="file">{escape(scenario.file)}</p>']
    if scenario.description:
        out.append(f'<p class="description">{escape(scenario.description)}</p>')
    if scenario.policies:
        out.append("<p>Policies: " + ", ".join(escape(policy) for policy in scenario.policies) + "</p>")
    if scenario.error:
        out.append(f'<p class="error-box"><strong>scenario error:</strong> {escape(error_summary(scenario.error))}</p>')
    if scenario.warnings:
        out.append('<ul class="warnings">' + "".join(f"<li>{escape(w)}</li>" for w in scenario.warnings) + "</ul>")
    if scenario.steps:
        for step in scenario.steps:
            out += _step(scenario, step, predict, anchors)
    elif scenario.rows:
        out += _matrix(scenario.rows, anchors)
    out.append(f"<p>{escape(counts)}</p>")
    if not scenario.steps:
        for row in scenario.rows:
            out += _details(row, anchors[id(row)])
    out.append("</section>")
    return out


def _step(scenario: ScenarioReport, step: StepReport, predict: bool, anchors: dict[int, str]) -> list[str]:
    """One step: its policies and their changes, its table and rows, the results that changed from the step
    before."""
    rows = scenario.rows_of(step)
    counts = predicted_counts(rows) if predict else run_counts(scenario.counts(step.name))
    out = [f"<h3>Step {step.number}: {escape(step.name)}</h3>"]
    if step.description:
        out.append(f'<p class="description">{escape(step.description)}</p>')
    out.append("<p>Policies: " + (", ".join(escape(policy) for policy in step.policies) or "none") + "</p>")
    if step.changes:
        out.append(f"<p>Changes: {escape(step.changes)}</p>")
    if step.error:
        out.append(f'<p class="error-box"><strong>step error:</strong> {escape(error_summary(step.error))}</p>')
    if rows:
        out += _matrix(rows, anchors)
    out.append(f"<p>{escape(counts)}</p>")
    compared = step_changes(scenario, step)
    if compared is not None:
        previous, changed = compared
        if changed:
            out.append(f"<p>Changed from {escape(previous.name)}:</p><ul>")
            out += [f'<li><a href="#{anchors[id(row)]}">{escape(pair_text(row))}</a>: {escape(old)} → '
                    f"{escape(new)}</li>" for row, old, new in changed]
            out.append("</ul>")
        else:
            out.append(f"<p>No result changed from {escape(previous.name)}.</p>")
    for row in rows:
        out += _details(row, anchors[id(row)])
    return out


def _legend(predict: bool) -> str:
    swatches = [("c r-mtls", "mtls"), ("c r-plaintext", "plaintext"), ("c r-refused", "refused"),
                ("c r-unavailable", "unavailable"), ("c r-denied", "denied"), ("c r-unknown", "unknown")]
    if predict:
        swatches.append(("c s-disagree", "the scenario file expects otherwise"))
    else:
        swatches += [("c s-wrong", "wrong"), ("c s-error", "error")]
    spans = "".join(f'<span class="{css}">{text}</span>' for css, text in swatches)
    return f'<div class="legend">{spans}</div>'


def _index(report: Report, anchors: dict[int, str], predict: bool) -> list[str]:
    """The failures (or disagreements) at the top of the page, each a link to its row's details."""
    items = []
    for index, scenario in enumerate(report.scenarios):
        if scenario.error:
            items.append(f'<li><a href="#s{index}">{escape(scenario.name)}</a>: scenario error: '
                         f"{escape(error_summary(scenario.error))}</li>")
        for row in filter(_failing, scenario.rows):
            if row.status == "predicted":
                what = f"the file expects {row.expected}, the oracle predicts {row.predicted}"
            elif row.status == "wrong":
                what = f"expected {expected_text(row)}, observed {observed_text(row)}"
            else:
                what = f"expected {expected_text(row)}: error: {error_summary(row.message)}"
            items.append(f'<li><a href="#{anchors[id(row)]}">{escape(scenario.name)}: {escape(item_text(row))}</a> '
                         f"{escape(what)}</li>")
    if not items:
        return []
    title = "Disagreements" if predict else "Failures"
    return [f'<nav class="failures"><h2>{title}</h2><ul>', *items, "</ul></nav>"]


def render_html(report: Report) -> str:
    """The whole page as one string: write_all saves it as report.html."""
    predict = is_prediction(report)
    versions = "".join(f" · {escape(key)} {escape(value)}" for key, value in report.versions.items())
    if predict:
        meta = f"oracle prediction (no mesh){versions} · started {escape(report.started)}"
        rows = [row for scenario in report.scenarios for row in scenario.rows]
        summary = predicted_counts(rows)
    else:
        meta = (f"backend {escape(report.backend)}{versions} · started {escape(report.started)} · "
                f"took {duration_text(report.duration_s)}")
        summary = run_counts(report.counts())
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Istio mTLS report</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<h1>Istio mTLS report</h1>",
        f'<p class="meta">{meta}</p>',
        f"<p><strong>{escape(summary)}</strong></p>",
        _legend(predict),
    ]
    anchors = _anchors(report)
    out += _index(report, anchors, predict)
    for index, scenario in enumerate(report.scenarios):
        out += _scenario(scenario, index, predict, anchors)
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
