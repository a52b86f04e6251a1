"""What a local run created, recorded *before* creating it, so teardown and later sweeps miss nothing.

Each run owns ``/run/pytest-istio-mtls/<run-id>/`` (tmpfs, root-only): a ``state.json`` listing its
network namespaces, /etc/netns directories and processes, plus certificates, keys, Envoy configs
and logs. Teardown walks the record in reverse; a run whose owner process is gone (killed -9,
crashed) is swept by the next run. Kept runs (``--istio-keep``) are left alone until
``pytest-istio-mtls cleanup``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...model.diagnostics import plural
from .system import NETNS_DIR, cmdline, pid_alive

STATE_ROOT = Path(os.environ.get("ISTIO_MTLS_LOCAL_STATE", "/run/pytest-istio-mtls"))
PREFIX = "imtls"
STAGING_STALE_S = 600.0


@dataclass
class RunState:
    run_id: str
    owner_pid: int
    kept: bool = False
    netns: list[str] = field(default_factory=list)
    etc_dirs: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    @property
    def directory(self) -> Path:
        return STATE_ROOT / self.run_id

    def save(self) -> None:
        path = self.directory / "state.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        os.replace(temporary, path)

    def add_netns(self, name: str) -> None:
        self.netns.append(name)
        self.etc_dirs.append(f"/etc/netns/{name}")
        self.save()

    def add_pid(self, pid: int) -> None:
        self.pids.append(pid)
        self.save()

    @classmethod
    def load(cls, directory: Path) -> RunState | None:
        try:
            data = json.loads((directory / "state.json").read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, ValueError, TypeError):
            return None


def new_run() -> RunState:
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    STATE_ROOT.chmod(0o711)  # the proxies (uid 1337) traverse it to their config; nobody may list it
    state = RunState(run_id=secrets.token_hex(3), owner_pid=os.getpid())
    # Appears complete or not at all: a concurrent run's sweep must never see the directory without its
    # state.json (it would remove it as unreadable), so it is written under a staging name first.
    staging = STATE_ROOT / f".new-{state.run_id}"
    staging.mkdir(mode=0o711)  # the proxy (uid 1337) must traverse it to read its config
    (staging / "state.json").write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
    staging.rename(state.directory)
    return state


def _ours(pid: int, run_id: str) -> bool:
    """Only signal a pid whose command line carries our run id (pids get reused)."""
    return pid_alive(pid) and run_id in cmdline(pid)


def stop_processes(pids: list[int], run_id: str, grace: float = 2.0) -> None:
    alive = [p for p in pids if _ours(p, run_id)]
    for pid in alive:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            with contextlib.suppress(ChildProcessError):  # reap our own children only
                os.waitpid(pid, os.WNOHANG)
            if not pid_alive(pid) or run_id not in cmdline(pid):
                alive.remove(pid)
        time.sleep(0.01)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def tagged_processes(run_id: str) -> list[int]:
    """Processes whose command line carries the run's tag, recorded or not (a Ctrl-C can land between
    starting a process and writing its pid down)."""
    # The tag, or a path inside the run's directory (Envoys that pilot-agent starts carry only their config path).
    return processes_mentioning(f"{PREFIX}-{run_id}", f"{STATE_ROOT / run_id}/")


def processes_mentioning(*texts: str) -> list[int]:
    """Processes whose command line contains any of ``texts`` (one pass over /proc), e.g. an Envoy whose
    pilot-agent was killed: it names its pod's config directory, and nothing else records it."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            command = cmdline(int(entry))
            if any(text in command for text in texts):
                found.append(int(entry))
    return found


def teardown(state: RunState) -> list[str]:
    """Remove everything the run recorded, in reverse order of creation; return what could not go."""
    problems: list[str] = []
    stop_processes(sorted(set(state.pids) | set(tagged_processes(state.run_id))), state.run_id)
    for name in reversed(state.netns):
        if os.path.exists(os.path.join(NETNS_DIR, name)):
            done = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                problems.append(f"netns {name}: {done.stderr.strip()}")
    for directory in reversed(state.etc_dirs):
        shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(state.directory, ignore_errors=True)
    return problems


def _owner_alive(state: RunState) -> bool:
    """Is the pytest process that created the run still running? (pid reuse is checked too)"""
    if state.owner_pid == os.getpid():
        return True
    return pid_alive(state.owner_pid) and "python" in cmdline(state.owner_pid)


def _recorded_now(run_id: str) -> bool:
    """Does a run record exist *now*? A run that started while this sweep ran has its record (staged first) before
    its first namespace, so checking again here never takes a live run's namespace for an orphan."""
    return (STATE_ROOT / run_id).exists() or (STATE_ROOT / f".new-{run_id}").exists()


def sweep(*, include_kept: bool = False, only: str | None = None) -> list[str]:
    """Tear down runs whose owner is gone (and kept runs when asked); return one line per run removed."""
    removed: list[str] = []
    known: set[str] = set()
    if STATE_ROOT.is_dir():
        for directory in sorted(STATE_ROOT.iterdir()):
            if directory.name.startswith(".new-"):  # another run being created right now (or long dead)
                with contextlib.suppress(OSError):
                    if time.time() - directory.stat().st_mtime > STAGING_STALE_S:
                        shutil.rmtree(directory, ignore_errors=True)
                continue
            state = RunState.load(directory)
            if state is None:
                shutil.rmtree(directory, ignore_errors=True)
                continue
            known.add(state.run_id)
            if only is not None and state.run_id != only:
                continue
            if state.kept and not include_kept:
                continue
            if not state.kept and _owner_alive(state):
                continue
            problems = teardown(state)
            removed.append(f"run {state.run_id}: removed {plural(len(state.netns), 'network namespace')}, "
                           f"{plural(len(state.pids), 'process')}"
                           + (f" (problems: {'; '.join(problems)})" if problems else ""))
    # Namespaces of runs whose state directory vanished (e.g. /run wiped but netns bind mounts left).
    if os.path.isdir(NETNS_DIR):
        for name in sorted(os.listdir(NETNS_DIR)):
            parts = name.split("-")
            if len(parts) >= 3 and parts[0] == PREFIX and parts[1] not in known and (only in (None, parts[1])) \
                    and not _recorded_now(parts[1]):
                subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
                shutil.rmtree(f"/etc/netns/{name}", ignore_errors=True)
                removed.append(f"orphan network namespace {name}")
    return removed


def kept_runs() -> list[RunState]:
    if not STATE_ROOT.is_dir():
        return []
    states = (RunState.load(d) for d in sorted(STATE_ROOT.iterdir()))
    return [s for s in states if s is not None and s.kept]
