"""YAML loading that remembers where every key and value came from.

PyYAML's ``safe_load`` throws positions away, yet every validation message must name
``file:line:column``. We compose the node graph, convert it to plain Python objects, and keep a
side table from the *path* of each value (``("topology", "workloads", 0, "ports")``) to its
position. Values stay ordinary dicts/lists, so the validators read like normal Python.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..model.diagnostics import Diagnostic, Mark, ScenarioError

PathKey = tuple[str | int, ...]


@dataclass
class Located:
    """One YAML document: its data and the position of every value (and of every mapping key)."""

    data: Any
    file: str
    values: dict[PathKey, Mark] = field(default_factory=dict)
    keys: dict[PathKey, Mark] = field(default_factory=dict)

    def at(self, *path: str | int) -> Mark:
        """Position of the value at ``path``, or of its nearest parent that exists."""
        probe: PathKey = tuple(path)
        while probe:
            if probe in self.values:
                return self.values[probe]
            probe = probe[:-1]
        return self.values.get((), Mark(self.file, 1, 1))

    def key_at(self, *path: str | int) -> Mark:
        """Position of the *key* of the mapping entry at ``path`` (falls back to the value)."""
        return self.keys.get(tuple(path)) or self.at(*path)

    def sub(self, *path: str | int) -> Located:
        """A view rooted at ``path``: paths in the result are relative to it."""
        prefix = tuple(path)
        n = len(prefix)
        data: Any = self.data
        for part in prefix:
            data = data[part]
        return Located(
            data=data,
            file=self.file,
            values={k[n:]: v for k, v in self.values.items() if k[:n] == prefix},
            keys={k[n:]: v for k, v in self.keys.items() if k[:n] == prefix and len(k) > n},
        )


class _Offset:
    """Maps positions of a YAML text embedded in a block scalar back to the outer file."""

    def __init__(self, line: int = 0, col: int = 0) -> None:
        self.line = line
        self.col = col

    def mark(self, file: str, node_mark: yaml.Mark) -> Mark:
        return Mark(file, node_mark.line + 1 + self.line, node_mark.column + 1 + self.col)


class _Builder:
    def __init__(self, file: str, offset: _Offset) -> None:
        self.file = file
        self.offset = offset
        self.constructor = SafeConstructor()
        self.errors: list[Diagnostic] = []

    def build(self, node: Node, path: PathKey, located: Located) -> Any:
        located.values[path] = self.offset.mark(self.file, node.start_mark)
        if isinstance(node, MappingNode):
            self.constructor.flatten_mapping(node)  # honour YAML merge keys (<<)
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    self.errors.append(
                        Diagnostic(
                            "error",
                            self.offset.mark(self.file, key_node.start_mark),
                            "a mapping key must be a plain value, not a list or mapping",
                        )
                    )
                    continue
                key = self.constructor.construct_object(key_node)
                if key in result:
                    self.errors.append(
                        Diagnostic(
                            "error",
                            self.offset.mark(self.file, key_node.start_mark),
                            f"duplicate key '{key}'",
                            "YAML keeps only the last one silently; remove or rename one of them",
                        )
                    )
                key_path: PathKey = (*path, key)
                located.keys[key_path] = self.offset.mark(self.file, key_node.start_mark)
                result[key] = self.build(value_node, key_path, located)
            return result
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, i), located) for i, item in enumerate(node.value)]
        return self.constructor.construct_object(node)


def _yaml_error(file: str, exc: yaml.YAMLError, offset: _Offset) -> Diagnostic:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = offset.mark(file, mark) if mark is not None else Mark(file, 1, 1)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    text = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    return Diagnostic("error", where, text, "check indentation, quoting and ':' separators on this line")


def load_all(text: str, file: str, *, line_offset: int = 0, col_offset: int = 0) -> list[Located]:
    """Parse every document of ``text``; raise ScenarioError with positions on any problem."""
    offset = _Offset(line_offset, col_offset)
    builder = _Builder(file, offset)
    documents: list[Located] = []
    try:
        nodes: Iterator[Node] = yaml.compose_all(text, Loader=yaml.SafeLoader)
        for node in nodes:
            located = Located(data=None, file=file)
            located.data = builder.build(node, (), located)
            documents.append(located)
    except yaml.YAMLError as exc:
        raise ScenarioError([_yaml_error(file, exc, offset)]) from None
    if builder.errors:
        raise ScenarioError(builder.errors)
    return documents


def load_one(text: str, file: str) -> Located:
    documents = load_all(text, file)
    if len(documents) > 1:
        second = documents[1].at()
        raise ScenarioError(
            [Diagnostic("error", second, "a scenario file holds exactly one YAML document",
                        "move the second document into its own file, or drop the '---' line")]
        )
    if not documents:
        return Located(data=None, file=file)
    return documents[0]


def block_scalar_offset(source: str, value_mark: Mark) -> tuple[int, int] | None:
    """Where the text of a literal block scalar (``key: |``) starts, as 0-based (line, col) offsets.

    Returns None for other scalar styles: their inner positions cannot be mapped back exactly, so
    callers fall back to the position of the scalar itself.
    """
    lines = source.splitlines()
    head = lines[value_mark.line - 1][value_mark.col - 1:] if value_mark.line - 1 < len(lines) else ""
    if not head.startswith("|"):
        return None
    for index in range(value_mark.line, len(lines)):
        stripped = lines[index].lstrip(" ")
        if stripped:
            # Inner line 0 is the line right after the indicator (value_mark.line is 1-based).
            return value_mark.line, len(lines[index]) - len(stripped)
    return None
