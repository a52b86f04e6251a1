"""The nightly matrix and the cross-version comparison, on replays of GitHub's releases API and
istio.io's supportStatus.yml. No network."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .kube_replay import REPLAYS, replay

SCRIPTS = Path(__file__).parents[2] / ".github" / "scripts"


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


matrix_script = script("istio_matrix")
compare_script = script("compare_reports")


def test_supported_minors_replay() -> None:
    assert matrix_script.supported_minors(replay("supportStatus.yml")) == ["1.31", "1.30", "1.29"]


def test_matrix_newest_patches_plus_newer_prerelease_replay() -> None:
    result = matrix_script.matrix(replay("github_istio_releases.json"), replay("supportStatus.yml"))
    assert result["include"] == [
        {"istio": "1.32.0-beta.0", "minor": "1.32", "channel": "prerelease", "previous": "1.31.1"},
        {"istio": "1.31.1", "minor": "1.31", "channel": "stable", "previous": "1.30.3"},  # draft 1.31.2 ignored
        {"istio": "1.30.3", "minor": "1.30", "channel": "stable", "previous": "1.29.9"},
        {"istio": "1.29.9", "minor": "1.29", "channel": "stable", "previous": ""},
    ]


def test_an_older_prerelease_is_not_added_replay() -> None:
    releases = [r for r in replay("github_istio_releases.json") if not r["tag_name"].startswith("1.32.0-")]
    releases.append({"tag_name": "1.31.0-rc.2", "draft": False, "prerelease": True})
    include = matrix_script.matrix(releases, replay("supportStatus.yml"))["include"]
    assert [c["istio"] for c in include] == ["1.31.1", "1.30.3", "1.29.9"]


def test_main_writes_the_github_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    assert matrix_script.main(["--releases", str(REPLAYS / "github_istio_releases.json"),
                               "--support", str(REPLAYS / "supportStatus.yml")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert output.read_text() == f"matrix={json.dumps(printed, separators=(',', ':'))}\n"


def test_no_supported_release_fails(tmp_path: Path) -> None:
    empty = tmp_path / "releases.json"
    empty.write_text("[]")
    assert matrix_script.main(["--releases", str(empty), "--support", str(REPLAYS / "supportStatus.yml")]) == 1


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schemaVersion": 1, "scenarios": [{"name": "mesh-strict", "rows": rows}]}


def test_compare_lists_changed_verdicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    row = {"from": "curl.legacy", "to": "httpbin.foo", "port": 8000, "request": None}
    for version, observed in (("1.31.1", "refused"), ("1.30.3", "plaintext"), ("1.29.9", "plaintext")):
        (tmp_path / f"report-{version}").mkdir()
        (tmp_path / f"report-{version}" / "report.json").write_text(json.dumps(report([{**row, "observed": observed}])))
    matrix = tmp_path / "matrix.json"
    matrix.write_text(json.dumps(matrix_script.matrix(replay("github_istio_releases.json"), replay("supportStatus.yml"))))
    assert compare_script.main([str(matrix), str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "### 1.31.1 vs 1.30.3" in out and "| mesh-strict | curl.legacy->httpbin.foo:8000 | plaintext | refused |" in out
    assert "### 1.30.3 vs 1.29.9\n\nno differences" in out
    assert "### 1.32.0-beta.0 vs 1.31.1\n\na report is missing" in out
