"""Istio's own OpenAPI schemas of the resources a scenario applies, taken from its CRDs.

The scenario loader validates every Istio resource against these (``scenario/schemas.py``), at every depth, so a
typo such as ``form:`` for ``from:`` is an error at its line before anything starts, as the API server would
reject it, instead of a policy the oracle reads as matching everyone. They ship with the package
(``scenario/istio-schemas.json``) because ``validate`` and collection run with no build and no cluster; they are
regenerated from the CRDs ``build-istio`` takes from the Istio module (``crd-all.gen.yaml``)::

    python -m pytest_istio_mtls.build.schemas ~/.cache/pytest-istio-mtls/istio/<build>/crd-all.gen.yaml

and ``tests/unit/build/test_schemas.py`` checks the shipped file against the build in use. Only what validation
reads is kept (types, properties, enums, required keys, items, maps); descriptions and CEL rules are dropped.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

SHIPPED = Path(__file__).resolve().parents[1] / "scenario" / "istio-schemas.json"
GROUPS = ("security.istio.io", "networking.istio.io")
KEPT = ("type", "properties", "additionalProperties", "items", "enum", "required", "format", "maxLength",
        "minimum", "maximum", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")


def _prune(schema: Any) -> Any:
    """The parts of an OpenAPI schema validation reads, recursively."""
    if not isinstance(schema, Mapping):
        return schema
    kept: dict[str, Any] = {}
    for key in KEPT:
        if key not in schema:
            continue
        value = schema[key]
        if key == "properties":
            kept[key] = {name: _prune(sub) for name, sub in sorted(value.items())}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            kept[key] = _prune(value)
        else:
            kept[key] = value
    return kept


def extract(documents: Iterable[Any], source: str) -> dict[str, Any]:
    """``{"source", "schemas": {sha: spec schema}, "kinds": {"group/version": {kind: sha}}}`` from CRD documents:
    each served version's ``spec`` schema, identical schemas stored once."""
    schemas: dict[str, Any] = {}
    kinds: dict[str, dict[str, str]] = {}
    for crd in documents:
        if not isinstance(crd, Mapping) or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd.get("spec") or {}
        group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
        if group not in GROUPS:
            continue
        for version in spec.get("versions") or []:
            if not version.get("served"):
                continue
            root = ((version.get("schema") or {}).get("openAPIV3Schema") or {})
            pruned = _prune((root.get("properties") or {}).get("spec") or {"type": "object"})
            text = json.dumps(pruned, sort_keys=True)
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            schemas[digest] = pruned
            kinds.setdefault(f"{group}/{version['name']}", {})[str(kind)] = digest
    return {"source": source, "schemas": dict(sorted(schemas.items())),
            "kinds": {k: dict(sorted(v.items())) for k, v in sorted(kinds.items())}}


def render(data: Mapping[str, Any]) -> str:
    """One schema per line: a regenerated file's diff shows which kinds changed."""
    lines = ["{", f'"source": {json.dumps(data["source"])},', f'"kinds": {json.dumps(data["kinds"], sort_keys=True)},',
             '"schemas": {']
    items = list(data["schemas"].items())
    for index, (digest, schema) in enumerate(items):
        comma = "," if index < len(items) - 1 else ""
        lines.append(f"{json.dumps(digest)}: {json.dumps(schema, sort_keys=True)}{comma}")
    return "\n".join([*lines, "}", "}"]) + "\n"


def from_crds(path: Path) -> dict[str, Any]:
    """The schemas of a ``crd-all.gen.yaml``; its build's manifest (beside it) names the Istio version."""
    manifest = path.parent / "manifest.json"
    version = ""
    if manifest.is_file():
        istio = json.loads(manifest.read_text(encoding="utf-8")).get("istio") or {}
        version = f"{istio.get('pseudo_version', '')} ({istio.get('ref', '')})"
    source = f"istio.io/istio {version or '(unknown version)'} manifests/charts/base/files/crd-all.gen.yaml " \
             "(Apache-2.0)"
    return extract(yaml.safe_load_all(path.read_text(encoding="utf-8")), source)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not Path(argv[1]).is_file():
        print("usage: python -m pytest_istio_mtls.build.schemas PATH/TO/crd-all.gen.yaml", file=sys.stderr)
        return 2
    SHIPPED.write_text(render(from_crds(Path(argv[1]))), encoding="utf-8")
    print(f"wrote {SHIPPED}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
