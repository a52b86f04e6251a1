"""The scenario JSON Schema (for editors) stays in step with the loader, which is the authority.

The key lists are found generically (every ``*_KEYS`` tuple of the scenario package's readers), so a key added to the loader
without the schema, or to the schema without the loader, fails here by name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pytest_istio_mtls.model import EXPECTABLE_RESULTS
from pytest_istio_mtls.model.diagnostics import ScenarioError
from pytest_istio_mtls.scenario import loader, rows, topology

from ...paths import REPO, UNIT

DATA = UNIT / "data"
SCHEMA: dict[str, Any] = json.loads((files("pytest_istio_mtls") / "scenario.schema.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
VALID = sorted((REPO / "pytest_istio_mtls/scenarios").glob("*.yaml")) + sorted((DATA / "render").glob("*.yaml"))
INVALID = sorted((DATA / "invalid").glob("*.yaml"))


def key_lists() -> dict[str, frozenset[str]]:
    """The loader's key lists: every ``*_KEYS`` tuple of strings in the scenario package's readers."""
    return {name: frozenset(value) for module in (loader, topology, rows) for name, value in vars(module).items()
            if name.endswith("_KEYS") and isinstance(value, tuple) and all(isinstance(v, str) for v in value)}


def closed_objects(node: Any, pointer: str = "#") -> Iterator[tuple[str, frozenset[str]]]:
    """Every object the schema closes (additionalProperties: false), as (JSON pointer, property names)."""
    if isinstance(node, dict):
        if node.get("additionalProperties") is False:
            yield pointer, frozenset(node.get("properties", {}))
        for key, value in node.items():
            yield from closed_objects(value, f"{pointer}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from closed_objects(value, f"{pointer}/{index}")


def closest(keys: frozenset[str], candidates: dict[str, frozenset[str]]) -> str:
    name, other = max(candidates.items(), key=lambda item: len(keys & item[1]) / len(keys | item[1]))
    return f"closest: {name} (missing {sorted(keys - other)}, extra {sorted(other - keys)})"


def readme_example() -> tuple[str, Any]:
    """The YAML example under README 'Scenario format': its first line and its data."""
    text = (REPO / "README.md").read_text(encoding="utf-8").split("## Scenario format", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert block is not None
    return block[1].splitlines()[0], yaml.safe_load(block[1])


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def unmatched_key_lists() -> list[str]:
    objects = dict(closed_objects(SCHEMA))
    return [f"scenario.{name} {sorted(keys)}: no schema object has exactly these properties; "
            f"{closest(keys, objects)}" for name, keys in key_lists().items() if keys not in objects.values()]


def test_every_loader_key_list_is_a_closed_schema_object() -> None:
    missing = unmatched_key_lists()
    assert not missing, "\n".join(missing)


def test_a_key_added_to_the_loader_alone_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the test above prints when the loader learns a key (or a whole key list) the schema lacks."""
    monkeypatch.setattr(loader, "TOP_KEYS", (*loader.TOP_KEYS, "timeout"))
    monkeypatch.setattr(loader, "HOOK_KEYS", ("name", "command", "expect"), raising=False)
    assert unmatched_key_lists() == [
        "scenario.TOP_KEYS ['description', 'expect', 'expectWarnings', 'mesh', 'name', 'policies', 'policyFiles', "
        "'steps', 'timeout', 'topology']: no schema object has exactly these properties; closest: # (missing ['timeout'], extra [])",
        "scenario.HOOK_KEYS ['command', 'expect', 'name']: no schema object has exactly these properties; "
        "closest: #/$defs/step (missing ['command'], extra ['description', 'policies', 'remove'])",
    ]


def test_every_closed_schema_object_is_a_loader_key_list() -> None:
    """Nothing the schema offers an editor's completion is refused by the loader as an unknown key."""
    lists = key_lists()
    extra = [f"{pointer} {sorted(keys)}: the loader has no such key list; {closest(keys, lists)}"
             for pointer, keys in closed_objects(SCHEMA) if keys not in lists.values()]
    assert not extra, "\n".join(extra)


def test_enums_are_the_loaders_choices() -> None:
    defs = SCHEMA["$defs"]
    assert defs["row"]["properties"]["result"]["enum"] == [r.value for r in EXPECTABLE_RESULTS]
    assert tuple(defs["port"]["properties"]["protocol"]["enum"]) == topology.PROTOCOLS


@pytest.mark.parametrize("path", VALID, ids=[p.name for p in VALID])
def test_every_valid_scenario_validates(path: Path) -> None:
    loader.load_scenario(path)  # the loader accepts it...
    errors = [e.message for e in VALIDATOR.iter_errors(yaml.safe_load(path.read_text(encoding="utf-8")))]
    assert not errors  # ...and so does the schema


def test_the_readme_example_validates_and_names_the_schema() -> None:
    first, data = readme_example()
    assert first == f"# yaml-language-server: $schema={SCHEMA['$id']}"
    assert [e.message for e in VALIDATOR.iter_errors(data)] == []


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_the_schema_never_refuses_what_the_loader_accepts(path: Path) -> None:
    try:
        refused = not VALIDATOR.is_valid(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError:
        refused = True  # an editor underlines broken YAML too
    if not refused:
        return
    with pytest.raises(ScenarioError):
        loader.load_scenario(path)


def test_the_schema_catches_what_an_editor_can_see() -> None:
    """Unknown keys, values outside a choice, quoted numbers: underlined while typing."""
    caught = {}
    for path in INVALID:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            continue
        errors = sorted(e.message for e in VALIDATOR.iter_errors(data))
        if errors:
            caught[path.stem] = errors[0]
    assert caught == {
        "bad-result": "'encrypted' is not one of ['mtls', 'plaintext', 'refused', 'unavailable', 'denied', "
                      "'allowed', 'blocked']",
        "empty": "None is not of type 'object'",
        "namespace-typo": "Additional properties are not allowed ('sidecar' was unexpected)",
        "port-quoted": "'8000' is not of type 'integer'",
        "status-quoted": "'200' is not of type 'integer'",
        "unknown-top-key": "'expect' is a required property",
        "warn-selector-matches-nothing": "Additional properties are not allowed ('expct' was unexpected)",
    }
