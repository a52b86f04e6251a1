#!/usr/bin/env python3
"""Verdict differences between Istio versions, from the nightly's report.json files.

Usage: compare_reports.py MATRIX_JSON REPORTS_DIR, where REPORTS_DIR holds one directory per cell
named ``report-<istio version>`` with a report.json inside. Each version is compared with the
``previous`` version its matrix entry names (the next older minor). Prints Markdown.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def observed(report: dict[str, Any]) -> dict[tuple[str, str, str, int, str], str]:
    """(scenario, from, to, port, request) → observed result (or "error")."""
    rows = {}
    for scenario in report.get("scenarios", []):
        for row in scenario.get("rows", []):
            result = row.get("observed") or ("error" if row.get("status") == "error" else "-")
            rows[(scenario.get("name", ""), row.get("from", ""), row.get("to", ""), int(row.get("port", 0)),
                  row.get("request") or "")] = str(result)
    return rows


def compare(newer: dict[str, Any], older: dict[str, Any]) -> list[str]:
    new, old = observed(newer), observed(older)
    lines = []
    for key in sorted(set(new) | set(old)):
        if new.get(key) != old.get(key):
            scenario, source, target, port, request = key
            pair = f"{source}->{target}:{port}" + (f" [{request}]" if request else "")
            lines.append(f"| {scenario} | {pair} | {old.get(key, 'absent')} | {new.get(key, 'absent')} |")
    return lines


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
        new_path = reports / f"report-{version}" / "report.json"
        old_path = reports / f"report-{previous}" / "report.json"
        if not new_path.is_file() or not old_path.is_file():
            out += [f"### {version} vs {previous}", "", "a report is missing (the run failed before writing it)", ""]
            continue
        lines = compare(json.loads(new_path.read_text()), json.loads(old_path.read_text()))
        out += [f"### {version} vs {previous}", ""]
        out += (["| scenario | pair | " + previous + " | " + version + " |", "|---|---|---|---|", *lines]
                if lines else ["no differences"])
        out.append("")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
