"""The package's layout stays the map docs/architecture.md draws: imports point one way between the folders,
no module imports itself back through others, no module outgrows a read, and the map names every folder."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from ..paths import REPO

PACKAGE = REPO / "pytest_istio_mtls"
# Lowest first: a folder may import the folders before it, never one after it. `options` (Settings) and
# `_version` are leaves any folder may read; the pytest face and `commands` sit on top.
ORDER = ("model", "build", "judge", "oracle", "scenario", "backends", "report", "commands", "(face)")
LEAVES = {"pytest_istio_mtls.options", "pytest_istio_mtls._version"}
LIMIT = 700


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else "(face)"


def imports(module: str, *, runtime_only: bool) -> set[str]:
    """The package modules ``module`` imports: anywhere (``runtime_only=False``, except type-checking blocks), or
    only when it is itself imported (module level)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for n in ast.walk(node)}
    nodes = tree.body if runtime_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if id(node) in checking:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] != "pytest_istio_mtls":
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pytest_istio_mtls")
    return found


def test_folders_import_only_the_folders_below_them() -> None:
    wrong = []
    for module in MODULES:
        for target in imports(module, runtime_only=False):
            if target in LEAVES or target == "pytest_istio_mtls":
                continue
            here, there = folder(module), folder(target)
            if ORDER.index(there) > ORDER.index(here):
                wrong.append(f"{module} imports {target}: {here}/ is below {there}/ (docs/architecture.md)")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    graph = {m: imports(m, runtime_only=True) & MODULES.keys() for m in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return []
        for target in sorted(graph[module]):
            cycle = visit(target, [*path, module])
            if cycle:
                return cycle
        done.add(module)
        return []

    cycles = [" -> ".join(c) for m in MODULES if (c := visit(m, []))]
    assert not cycles, "\n".join(cycles)


def test_no_module_outgrows_a_read() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > LIMIT}
    assert not long, f"split these by job (over {LIMIT} lines): {long}"


def test_the_architecture_map_names_every_folder() -> None:
    page = REPO / "docs" / "architecture.md"
    if not page.is_file():
        pytest.skip("docs/ is not part of this installation")
    named = set(re.findall(r"^\| `([a-z_]+)/` \|", page.read_text(encoding="utf-8"), flags=re.MULTILINE))
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert named == folders, f"docs/architecture.md lacks {sorted(folders - named)}, names gone {sorted(named - folders)}"
