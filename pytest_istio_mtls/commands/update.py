"""``--istio-update-expectations``: write what a run observed into its scenario files' expectations.

The first run pins what the mesh does today, and later runs fail when it drifts. Only wrong rows change:
an explicit row takes the observed result (a pinned HTTP status follows it, or goes where the new result
has none); a derived row (``expect: derived``) is pinned in ``expect: {derived: true, rows: [...]}``, so
the pins list exactly where the mesh and the oracle differ. Rows that are correct are left alone, ``allowed``
and ``blocked`` included.

The files are edited as text at the positions ruamel.yaml's parser reports, so comments, key order, quoting
and layout stay as they were: the diff of a file is its changed results. Nothing is written when a row
errored (it has no result to pin) or the run was interrupted; each written file must load again, or it is
restored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..model import Expectation, Result, Scenario
from ..model.diagnostics import ScenarioError, plural
from ..report.model import Report, Row
from ..report.terminal import item_text, pair_text
from ..scenario.loader import SCENARIO_SUFFIXES, load_scenario

Edit = tuple[int, int, str]  # replace text[start:end] with the string


@dataclass(frozen=True)
class Change:
    """One expectation written: where, which row, and its result before and after."""

    file: str
    line: int
    row: str  # scenario::[step::]pair, the end of the pytest id
    old: str
    new: str
    pinned: bool = False  # a derived row, now an explicit pin

    def __str__(self) -> str:
        old = f"{self.old} (derived)" if self.pinned else self.old
        return f"{self.file}:{self.line}: {self.row}: {old} → {self.new}"


@dataclass
class Update:
    """What ``update_expectations`` did: the changes written, or why nothing was written."""

    changes: list[Change] = field(default_factory=list)
    refused: str = ""  # why no file was written ("" when the files were updated)
    rows: list[str] = field(default_factory=list)  # the rows behind ``refused``
    problems: list[str] = field(default_factory=list)  # files that could not be updated, with the fix

    def lines(self) -> list[str]:
        """The terminal section, for people."""
        if self.refused:
            return [f"not written: {self.refused}", *(f"  {row}" for row in self.rows)]
        files = len({c.file for c in self.changes})
        if self.changes:
            head = [f"updated {plural(len(self.changes), 'expectation')} in {plural(files, 'file')}:"]
        else:
            head = [] if self.problems else ["no expectation changed: no row was wrong"]
        return [*head, *(f"  {change}" for change in self.changes), *self.problems]


def update_expectations(report: Report) -> Update:
    """Write the observed results of the report's wrong rows into their scenario files."""
    scenarios = [s for s in report.scenarios if s.file.endswith(SCENARIO_SUFFIXES)]  # not a Python test's probes
    if report.interrupted:
        return Update(refused="the run was interrupted, so the observations are incomplete; run it to the end")
    errored = [f"{s.file}::{s.name}::{item_text(row)}" for s in scenarios for row in s.rows if row.status == "error"]
    if errored:
        return Update(refused=f"{plural(len(errored), 'row')} errored, and a row without a result cannot be pinned; "
                              "fix what the errors say and run again", rows=errored)
    update = Update()
    for scenario in scenarios:
        wrong = [row for row in scenario.rows if row.status == "wrong"]
        if wrong:
            _update_file(Path(scenario.file), scenario.file, scenario.name, wrong, update)
    return update


def _update_file(path: Path, file: str, name: str, rows: Sequence[Row], update: Update) -> None:
    try:
        scenario = load_scenario(path)
        text = path.read_text(encoding="utf-8")
        root = YAML(typ="rt").compose(text)
    except (ScenarioError, OSError, YAMLError) as exc:
        update.problems.append(f"{file}: error: cannot update it, it no longer loads: {str(exc).splitlines()[0]}\n"
                               "    fix: run the scenario again once the file is valid")
        return
    edits: list[Edit] = []
    pins: dict[tuple[str | int, ...], list[Expectation]] = {}
    written: list[tuple[str, str, str, str, bool]] = []  # (step, pair, old, new, pinned)
    states = {state.step: state for state in scenario.states()}
    for row in rows:
        state = states.get(row.step)
        expectation = next((e for e in state.expectations if e.pair == pair_text(row)), None) if state else None
        if state is None or expectation is None or row.observed is None:
            continue  # the file changed since the run: that row is no longer there
        observed = Result(row.observed)
        if expectation.yaml_path:
            old, new = _explicit(text, root, expectation, observed, row.http_status, edits)
            written.append((row.step, expectation.pair, old, new, False))
        else:
            pin = Expectation(expectation.source, expectation.target, expectation.port, observed)
            pins.setdefault(_expect_path(scenario, state), []).append(pin)
            written.append((row.step, expectation.pair, expectation.result.value, observed.value, True))
    for where, rows_to_pin in pins.items():
        edits += _pin(text, root, where, rows_to_pin)
    if not written:
        return
    updated = text
    for start, end, replacement in sorted(edits, reverse=True):
        updated = updated[:start] + replacement + updated[end:]
    path.write_text(updated, encoding="utf-8")
    try:
        reloaded = {state.step: state for state in load_scenario(path).states()}
    except ScenarioError as exc:  # never expected: the edits keep the file's structure
        path.write_text(text, encoding="utf-8")
        update.problems.append(f"{file}: error: the updated file did not load, so it was restored: "
                               f"{str(exc).splitlines()[0]}\n    fix: report this, with the file")
        return
    root = YAML(typ="rt").compose(updated)
    for step, pair, old, new, pinned in written:
        written_row = next(e for e in reloaded[step].expectations if e.pair == pair)
        key = "status" if old.split()[0] == new.split()[0] and "HTTP" in new else "result"  # the line that changed
        line = _node(root, (*written_row.yaml_path, key)).start_mark.line + 1
        update.changes.append(Change(file, line, "::".join(part for part in (name, step, pair) if part), old, new,
                                     pinned))


def _explicit(text: str, root: Node, expectation: Expectation, observed: Result, http: int | None,
              edits: list[Edit]) -> tuple[str, str]:
    """Edits for an explicit row: its result (when it no longer covers what was observed) and its pinned status.
    Returns the row's old and new text (``denied HTTP 403``)."""
    row = _node(root, expectation.yaml_path)
    assert isinstance(row, MappingNode)
    result = expectation.result if expectation.result.covers(observed) else observed
    if result is not expectation.result:
        edits.append(_replace(text, _value(row, "result"), result.value))
    status = expectation.status
    if status is not None:
        if http is None or observed is Result.REFUSED or expectation.port.protocol == "tcp":
            edits.append(_remove(row, "status"))
            status = None
        elif http != status:
            edits.append(_replace(text, _value(row, "status"), str(http)))
            status = http
    old = expectation.result.value + (f" HTTP {expectation.status}" if expectation.status is not None else "")
    return old, result.value + (f" HTTP {status}" if status is not None else "")


def _expect_path(scenario: Scenario, state: Scenario) -> tuple[str | int, ...]:
    step = state.current
    return ("expect",) if step is None else ("steps", scenario.steps.index(step), "expect")


def _pin(text: str, root: Node, where: tuple[str | int, ...], rows: Sequence[Expectation]) -> list[Edit]:
    """Edits that add ``rows`` as pins to the expect at ``where``: ``derived`` becomes ``{derived: true, rows:
    [...]}`` (as a block mapping), or the rows join that mapping's ``rows``."""
    parent = _node(root, where[:-1])
    assert isinstance(parent, MappingNode)
    key, expect = next((k, v) for k, v in parent.value if k.value == where[-1])
    flows = [_flow(row) for row in rows]
    if isinstance(expect, ScalarNode):  # expect: derived
        indent = " " * (key.start_mark.column + 2)
        block = f"{indent}derived: true\n{indent}rows:\n" + "".join(f"{indent}  - {flow}\n" for flow in flows)
        return [_drop_scalar(text, expect), _after_line(text, expect.end_mark.index, block)]
    assert isinstance(expect, MappingNode)
    if expect.flow_style:  # expect: {derived: true, rows: [...]}
        found = next((v for k, v in expect.value if k.value == "rows"), None)
        if isinstance(found, SequenceNode) and found.flow_style:
            return [_before_closing(text, found, ", ".join(flows))]
        return [_before_closing(text, expect, f"rows: [{', '.join(flows)}]")]
    found_key, found = next(((k, v) for k, v in expect.value if k.value == "rows"), (None, None))
    if isinstance(found, SequenceNode) and found.flow_style:
        return [_before_closing(text, found, ", ".join(flows))]
    if isinstance(found, SequenceNode) and found.value:
        first = found.value[0].start_mark
        dash = text.rfind("-", 0, first.index) - text.rfind("\n", 0, first.index) - 1
        return [_after_line(text, _content_end(text, found.value[-1]), "".join(f"{' ' * dash}- {flow}\n"
                                                                                for flow in flows))]
    if found_key is not None and isinstance(found, ScalarNode):  # rows: (empty)
        indent = " " * (found_key.start_mark.column + 2)
        return [_drop_scalar(text, found), _after_line(text, found.end_mark.index,
                                                      "".join(f"{indent}- {flow}\n" for flow in flows))]
    indent = " " * expect.value[0][0].start_mark.column
    block = f"{indent}rows:\n" + "".join(f"{indent}  - {flow}\n" for flow in flows)
    return [_after_line(text, _content_end(text, expect.value[-1][1]), block)]


def _flow(row: Expectation) -> str:
    """A pin as a flow mapping, written like the README's rows (the port only when the Service has several)."""
    to = row.target.service_ref + (f":{row.port.port}" if len(row.target.ports) > 1 else "")
    endpoint = f", endpoint: {row.target.name}" if row.target.shared else ""
    return f"{{from: {row.source.ref}, to: {_quoted(to)}{endpoint}, result: {row.result.value}}}"


def _quoted(text: str) -> str:
    return f'"{text}"' if ":" in text else text  # in a flow mapping `a:8000` would not be one plain scalar


def _node(root: Node, path: tuple[str | int, ...]) -> Node:
    node = root
    for key in path:
        if isinstance(key, int):
            assert isinstance(node, SequenceNode)
            node = node.value[key]
        else:
            node = _value(node, key)
    return node


def _value(mapping: Node, key: str) -> Node:
    assert isinstance(mapping, MappingNode)
    found: Node = next(v for k, v in mapping.value if k.value == key)
    return found


def _replace(text: str, node: Node, value: str) -> Edit:
    """A scalar's new value, in the scalar's own quoting."""
    quote = node.style if isinstance(node, ScalarNode) and node.style in ('"', "'") else ""
    return node.start_mark.index, node.end_mark.index, f"{quote}{value}{quote}"


def _remove(mapping: MappingNode, key: str) -> Edit:
    """Remove ``key: value`` from a flow or block mapping: up to the next key, or (the last one) from the end of
    the value before it, so the separators and line breaks around it stay right."""
    index = next(i for i, (k, _) in enumerate(mapping.value) if k.value == key)
    if index + 1 < len(mapping.value):
        return mapping.value[index][0].start_mark.index, mapping.value[index + 1][0].start_mark.index, ""
    return mapping.value[index - 1][1].end_mark.index, mapping.value[index][1].end_mark.index, ""


def _drop_scalar(text: str, node: Node) -> Edit:
    """Remove a scalar value and the spaces before it (``expect: derived`` → ``expect:``), keeping a comment."""
    start = node.start_mark.index
    while start > 0 and text[start - 1] in " \t":
        start -= 1
    return start, node.end_mark.index, ""


def _content_end(text: str, node: Node) -> int:
    """Where a node's own text ends (a block node's end mark lies past the line breaks after it)."""
    start: int = node.start_mark.index
    return start + len(text[start:node.end_mark.index].rstrip())


def _after_line(text: str, index: int, block: str) -> Edit:
    """Insert ``block`` (whole lines) after the line that holds ``index``."""
    end = text.find("\n", index)
    if end < 0:
        return len(text), len(text), "\n" + block.rstrip("\n")
    return end + 1, end + 1, block


def _before_closing(text: str, node: Node, items: str) -> Edit:
    """Add ``items`` to a flow collection, before its closing bracket."""
    close = node.end_mark.index - 1
    empty = isinstance(node, SequenceNode | MappingNode) and not node.value
    return close, close, ("" if empty else ", ") + items
