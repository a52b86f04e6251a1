"""Report writers: report.json, report.md and report.html from one ``Report``."""

from __future__ import annotations

import json
from pathlib import Path

from .model import Report


def write_all(report: Report, directory: Path) -> list[Path]:
    from .html import render_html
    from .markdown import render_markdown

    directory.mkdir(parents=True, exist_ok=True)
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
