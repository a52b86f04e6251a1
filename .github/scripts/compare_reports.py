#!/usr/bin/env python3
"""Verdict differences between Istio versions, from the nightly's report.json files.

Usage: compare_reports.py MATRIX_JSON REPORTS_DIR, where REPORTS_DIR holds one directory per cell
named ``report-<istio version>`` with a report.json inside. Each version is compared with the
``previous`` version its matrix entry names (the next older minor), by the code of
``pytest-istio-mtls diff`` (pytest_istio_mtls/commands/diff.py, so the package must be installed). Prints Markdown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pytest_istio_mtls.commands.diff import ReportError, compare, load, render_markdown


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    matrix = json.loads(Path(argv[0]).read_text())
    reports = Path(argv[1])
    out = ["## Verdict differences between Istio versions", ""]
    for cell in matrix.get("include", []):
        version, previous = cell.get("istio"), cell.get("previous")
        if not previous:
            continue
        out += [f"### {version} vs {previous}", ""]
        new_path = reports / f"report-{version}" / "report.json"
        old_path = reports / f"report-{previous}" / "report.json"
        if not new_path.is_file() or not old_path.is_file():
            out += ["a report is missing (the run failed before writing it)", ""]
            continue
        try:
            diff = compare(load(old_path), load(new_path))
        except ReportError as exc:
            out += ["```", str(exc), "```", ""]
            continue
        out += [render_markdown(diff, previous, version), ""]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
