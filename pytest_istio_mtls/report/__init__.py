"""Report writers: report.json, report.md and report.html from one ``Report``."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import replace
from pathlib import Path

from .model import Report, Row, capture_of, capture_path

REPORT_FILES = ("report.json", "report.md", "report.html")
CAPTURE_DIRS = ("captures", "pcaps")  # the local backend's captures/<scenario>/, kind's and existing's pcaps/


def clear(directory: Path) -> list[Path]:
    """Remove what an earlier run wrote into ``directory`` (so a re-run shows no stale captures), and
    nothing else: the report files, the ``*.pcap`` files under the capture directories, and those
    directories once empty. Returns what was removed."""
    removed = []
    for path in (directory / name for name in REPORT_FILES):
        if path.is_file():
            path.unlink()
            removed.append(path)
    for folder in (directory / name for name in CAPTURE_DIRS):
        if not folder.is_dir() or folder.is_symlink():
            continue
        for root, _, files in os.walk(folder, topdown=False):  # symbolic links are not followed
            for name in files:
                if name.endswith(".pcap"):
                    (Path(root) / name).unlink()
                    removed.append(Path(root) / name)
            with contextlib.suppress(OSError):  # left in place when something else is in it
                os.rmdir(root)
    return removed


def relative_captures(report: Report, directory: Path) -> Report:
    """A copy whose capture paths (evidence and message) are relative to ``directory``, where the report files
    go, so their links still work once the directory is uploaded as a CI artifact or moved. Paths outside
    it, or already relative, are left as they are."""
    base = directory.resolve()

    def relative(row: Row) -> Row:
        path = capture_path(row)
        if not path or not Path(path).is_absolute() or base not in Path(path).resolve().parents:
            return row
        text = Path(path).resolve().relative_to(base).as_posix()
        assert row.evidence is not None
        recorded = {**row.evidence["evidence"], "capture": {**(capture_of(row) or {}), "pcap": text}}
        evidence = {**row.evidence, "evidence": recorded}
        return replace(row, evidence=evidence, message=row.message.replace(path, text))

    return replace(report, scenarios=[replace(s, rows=[relative(r) for r in s.rows]) for s in report.scenarios])


def write_all(report: Report, directory: Path) -> list[Path]:
    """report.json, report.md and report.html; their capture paths are relative to ``directory``."""
    from .html import render_html
    from .markdown import render_markdown

    directory.mkdir(parents=True, exist_ok=True)
    report = relative_captures(report, directory)
    written = []
    for name, text in (
        ("report.json", json.dumps(report.to_json(), indent=2) + "\n"),
        ("report.md", render_markdown(report)),
        ("report.html", render_html(report)),
    ):
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
