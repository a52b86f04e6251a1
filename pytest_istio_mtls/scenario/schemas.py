"""Every Istio resource of a scenario checked against Istio's own OpenAPI schema, at every depth.

The schemas are Istio's CRDs' (``istio-schemas.json``, made by ``build/schemas.py`` from the Istio module), so
what the API server would reject (an unknown field such as ``form:`` for ``from:``, a list where a mapping
belongs, a value outside an enum) is an error at its line and column, with a did-you-mean and the fix, before
anything starts: in ``validate``, at collection, and for ``policyFiles``. Without this a typo inside a rule is
read by the oracle as an absent field (a rule that matches everyone) and only a real run notices, once the mesh
is up. CEL rules (``x-kubernetes-validations``) and ``oneOf`` exclusivity are left to the API server.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from importlib.resources import files
from typing import Any

from ..model.diagnostics import did_you_mean
from .checks import Checker, type_name

# Versions in the order a fix suggests them: the newest stable first.
VERSION_ORDER = ("v1", "v1beta1", "v1alpha3", "v1alpha1")
TYPES = {"object": "a mapping (key: value)", "array": "a list", "string": "text", "integer": "a whole number",
         "number": "a number", "boolean": "true or false"}


@functools.cache
def _shipped() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(files(__package__).joinpath("istio-schemas.json").read_text(encoding="utf-8"))
    return data


def source() -> str:
    """Where the shipped schemas come from (the Istio module and version)."""
    return str(_shipped()["source"])


def served() -> dict[str, dict[str, tuple[str, ...]]]:
    """group → kind → the versions Istio serves it as, newest stable first."""
    found: dict[str, dict[str, list[str]]] = {}
    for group_version, kinds in _shipped()["kinds"].items():
        group, _, version = group_version.partition("/")
        for kind in kinds:
            found.setdefault(group, {}).setdefault(kind, []).append(version)
    rank = {v: i for i, v in enumerate(VERSION_ORDER)}
    return {group: {kind: tuple(sorted(versions, key=lambda v: rank.get(v, len(rank))))
                    for kind, versions in sorted(kinds.items())} for group, kinds in sorted(found.items())}


def schema_of(api_version: str, kind: str) -> Mapping[str, Any] | None:
    digest = (_shipped()["kinds"].get(api_version) or {}).get(kind)
    return None if digest is None else _shipped()["schemas"][digest]


def check_spec(checker: Checker, path: tuple[str | int, ...], api_version: str, kind: str, spec: Any,
               ref: str) -> None:
    """Diagnostics for ``spec`` (at ``path`` of the document) against Istio's schema of ``kind``."""
    schema = schema_of(api_version, kind)
    if schema is not None:
        _walk(checker, path, (), spec, schema, ref)


def _dotted(trail: tuple[str | int, ...]) -> str:
    text = ""
    for part in trail:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "spec"


def _matches(value: Any, wanted: str, int_or_string: bool) -> bool:
    if int_or_string:
        return isinstance(value, int | str) and not isinstance(value, bool)
    if wanted == "object":
        return isinstance(value, Mapping)
    if wanted == "array":
        return isinstance(value, list)
    if wanted == "string":
        return isinstance(value, str)
    if wanted == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if wanted == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if wanted == "boolean":
        return isinstance(value, bool)
    return True


def _walk(checker: Checker, path: tuple[str | int, ...], trail: tuple[str | int, ...], value: Any,
          schema: Mapping[str, Any], ref: str) -> None:
    where = f"{ref} {_dotted(trail)}"
    wanted = str(schema.get("type") or "")
    if value is None:
        return  # YAML's empty value: the API server drops a null field
    if wanted and not _matches(value, wanted, bool(schema.get("x-kubernetes-int-or-string"))):
        fix = ""
        if wanted == "string" and isinstance(value, bool | int | float):
            fix = "quote it: YAML reads unquoted numbers and yes/no/true/false as numbers and booleans"
        elif wanted == "array":
            fix = "start each entry with '- ' (a single value is still a list of one)"
        checker.error(path, f"{where} must be {TYPES.get(wanted, wanted)}, not {type_name(value)}", fix)
        return
    if "enum" in schema and value not in schema["enum"]:
        options = [str(o) for o in schema["enum"]]
        checker.error(path, f"{where} is {value!r}, which Istio does not accept{did_you_mean(str(value), options)}",
                      f"use one of {', '.join(options)}")
        return
    if isinstance(value, str) and isinstance(schema.get("maxLength"), int) and len(value) > schema["maxLength"]:
        checker.error(path, f"{where} is {len(value)} characters long, longer than Istio's {schema['maxLength']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            checker.error(path, f"{where} is {value}, outside {low if low is not None else '…'}–"
                                f"{high if high is not None else '…'}")
    if isinstance(value, Mapping):
        _object(checker, path, trail, value, schema, ref)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for index, item in enumerate(value):
            _walk(checker, (*path, index), (*trail, index), item, schema["items"], ref)


def _object(checker: Checker, path: tuple[str | int, ...], trail: tuple[str | int, ...], value: Mapping[Any, Any],
            schema: Mapping[str, Any], ref: str) -> None:
    properties: Mapping[str, Any] = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    open_ended = bool(schema.get("x-kubernetes-preserve-unknown-fields")) or extra is True
    for key, item in value.items():
        if str(key) in properties:
            _walk(checker, (*path, key), (*trail, str(key)), item, properties[str(key)], ref)
        elif isinstance(extra, Mapping):
            _walk(checker, (*path, key), (*trail, str(key)), item, extra, ref)
        elif not open_ended:
            names = sorted(properties)
            inside = f" in {ref} {_dotted(trail)}" if trail else f" in {ref} spec"
            checker.error((*path, key), f"unknown key '{key}'{inside}{did_you_mean(str(key), names)}",
                          f"Istio's schema allows: {', '.join(names)}" if names else "this mapping takes no keys",
                          key=True)
    for required in schema.get("required") or []:
        if required not in value:
            checker.error(path, f"{ref} {_dotted(trail)} has no '{required}', which Istio requires", key=bool(trail))
