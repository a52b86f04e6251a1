"""The local backend's run records: a concurrent run's sweep must never take another live run's state."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pytest_istio_mtls.backends.local import state


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(state, "STATE_ROOT", tmp_path / "runs")
    monkeypatch.setattr(state, "NETNS_DIR", str(tmp_path / "no-netns"))
    return tmp_path / "runs"


def test_a_run_being_created_is_never_swept(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two xdist workers start together: one's sweep runs while the other writes its state."""
    write_text = Path.write_text

    def slow_write(self: Path, *args: object, **kwargs: object) -> int:
        time.sleep(0.002)  # widen the window between creating the directory and writing its record
        return write_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", slow_write)
    stop = threading.Event()
    seen_without_state: list[str] = []

    def sweeper() -> None:
        while not stop.is_set():
            for directory in list(root.iterdir()) if root.is_dir() else []:
                if not directory.name.startswith(".") and not (directory / "state.json").exists():
                    seen_without_state.append(directory.name)
            state.sweep()

    thread = threading.Thread(target=sweeper)
    thread.start()
    try:
        created = [state.new_run() for _ in range(100)]
    finally:
        stop.set()
        thread.join()
    assert seen_without_state == []
    assert all(s.directory.is_dir() and (s.directory / "state.json").is_file() for s in created)  # owner alive


def test_a_staging_directory_is_left_alone_until_it_is_old(root: Path) -> None:
    root.mkdir()
    fresh, old = root / ".new-aaaaaa", root / ".new-bbbbbb"
    fresh.mkdir()
    old.mkdir()
    long_ago = time.time() - state.STAGING_STALE_S - 60
    os.utime(old, (long_ago, long_ago))
    state.sweep()
    assert fresh.is_dir() and not old.exists()


def test_a_dead_owners_run_is_swept(root: Path) -> None:
    run = state.new_run()
    run.owner_pid = 2**22 + 7  # no such process
    run.save()
    removed = state.sweep()
    assert removed == [f"run {run.run_id}: removed 0 network namespaces, 0 processes"]
    assert not run.directory.exists()


def test_a_run_that_starts_during_a_sweep_keeps_its_namespaces(root: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep lists the run records, then the namespaces; a run created in between is not an orphan."""
    root.mkdir()
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    monkeypatch.setattr(state, "NETNS_DIR", str(netns_dir))
    deleted: list[str] = []
    monkeypatch.setattr(state.subprocess, "run", lambda args, **kwargs: deleted.append(args[-1]))
    iterdir = Path.iterdir

    def a_run_starts_right_after_listing(self: Path) -> object:
        listed = list(iterdir(self))
        if self == root:  # the other run: its record first, then its namespace (as LocalBackend.start does)
            started = state.new_run()
            (netns_dir / f"{state.PREFIX}-{started.run_id}-hub").touch()
        return iter(listed)

    monkeypatch.setattr(Path, "iterdir", a_run_starts_right_after_listing)
    orphan = netns_dir / f"{state.PREFIX}-0a0a0a-hub"  # no record at all: really left behind
    orphan.touch()
    assert state.sweep() == [f"orphan network namespace {orphan.name}"]
    assert deleted == [orphan.name]


@pytest.mark.parametrize(("mode", "owner"), [(0o777, 0), (0o733, 0), (0o711, 65534)])
def test_a_state_root_others_may_write_or_own_is_refused_with_the_fix(root: Path, mode: int, owner: int) -> None:
    """A planted state.json would drive root's rmtree and kill: the root must be root's own and private."""
    root.mkdir()
    root.chmod(mode)
    os.chown(root, owner, owner)
    with pytest.raises(state.BackendUnavailable) as caught:
        state.sweep()
    assert f"the local backend's state directory {root} is not safe: {root} is owned by uid {owner} with mode " \
           f"{mode:o}" in str(caught.value)
    assert "fix: use a root-owned directory no one else may write" in str(caught.value)
    with pytest.raises(state.BackendUnavailable):
        state.new_run()


def test_a_private_root_owned_state_root_is_used(root: Path) -> None:
    root.mkdir(mode=0o711)
    created = state.new_run()
    assert created.directory.parent == root and state.RunState.load(created.directory) == created


def test_teardown_stops_a_recorded_process_whose_command_line_names_no_run(root: Path) -> None:
    """pilot-agent's command line has no run id: teardown must stop it (and what it started) from the record."""
    import subprocess

    root.mkdir(mode=0o711)
    run = state.new_run()
    agent = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])  # an 'agent' with a child, like pilot-agent's Envoy
    deadline = time.monotonic() + 5
    while not state.descendants(agent.pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    child = state.descendants(agent.pid)[0]
    run.add_pid(agent.pid)
    state.teardown(run)
    assert agent.poll() is not None and not state._running(child)


def test_a_reused_pid_is_never_signalled(root: Path) -> None:
    import subprocess

    root.mkdir(mode=0o711)
    run = state.new_run()
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        run.add_pid(stranger.pid)
        run.starts[str(stranger.pid)] -= 1  # the recorded process started earlier: this pid is someone else's now
        state.teardown(run)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_record_from_another_version_is_read_not_swept(root: Path) -> None:
    """A newer plugin's extra keys must not make an older-format reader call a live run's record unreadable."""
    import json

    root.mkdir(mode=0o711)
    run = state.new_run()
    data = json.loads((run.directory / "state.json").read_text())
    (run.directory / "state.json").write_text(json.dumps({**data, "from_a_later_version": [1, 2]}))
    assert state.RunState.load(run.directory) == run
    state.sweep()  # the owner (this process) is alive: nothing to sweep
    assert run.directory.is_dir()
