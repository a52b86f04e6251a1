"""What a local run created, recorded *before* creating it, so teardown and later sweeps miss nothing.

Each run owns ``/run/pytest-istio-mtls/<run-id>/`` (tmpfs): a ``state.json`` listing its network namespaces,
/etc/netns directories and processes, plus certificates, keys, Envoy configs and logs. The state root and each
run directory are root's and 0711 (the proxies' uid traverses to its own pod directory, which is 0700 and theirs;
everything else below is root's and private). A state root that others own or may write is refused: its
``state.json`` files drive root's teardown. Teardown walks the record in reverse; a run whose owner process is
gone (killed -9, crashed) is swept by the next run. Kept runs (``--istio-keep``) are left alone until
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
from ..base import BackendUnavailable
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
    starts: dict[str, int] = field(default_factory=dict)  # pid → its start time (clock ticks): pids get reused

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
        started = start_time(pid)
        if started is not None:
            self.starts[str(pid)] = started
        self.save()

    @classmethod
    def load(cls, directory: Path) -> RunState | None:
        try:
            data = json.loads((directory / "state.json").read_text(encoding="utf-8"))
            # Keys of another version of the plugin are left out, never a reason to call the record unreadable
            # (an unreadable run directory is removed by the sweep).
            return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError, AttributeError):
            return None


def trusted_root() -> None:
    """Refuse a state root (``$ISTIO_MTLS_LOCAL_STATE``) that is not root's own and private: a planted
    ``state.json`` there would name what root tears down (``rmtree``, ``kill``)."""
    for directory in (STATE_ROOT, *STATE_ROOT.parents):
        try:
            info = directory.stat()
        except FileNotFoundError:
            continue
        own = directory == STATE_ROOT
        writable = info.st_mode & 0o022 and not (info.st_mode & 0o1000 and not own)  # a sticky /tmp may hold it
        if info.st_uid != 0 or writable:
            raise BackendUnavailable(
                f"the local backend's state directory {STATE_ROOT} is not safe: {directory} is owned by uid "
                f"{info.st_uid} with mode {info.st_mode & 0o7777:o}, so another user could plant the state that root "
                f"tears down; fix: use a root-owned directory no one else may write (chmod go-w), or unset "
                f"ISTIO_MTLS_LOCAL_STATE for the default /run/pytest-istio-mtls")


def new_run() -> RunState:
    trusted_root()
    STATE_ROOT.mkdir(parents=True, exist_ok=True)
    STATE_ROOT.chmod(0o711)  # the proxies (uid 1337) traverse it to their config; nobody may list it
    state = RunState(run_id=secrets.token_hex(3), owner_pid=os.getpid())
    # Appears complete or not at all: a concurrent run's sweep must never see the directory without its
    # state.json (it would remove it as unreadable), so it is written under a staging name first.
    staging = STATE_ROOT / f".new-{state.run_id}"
    staging.mkdir(mode=0o711)  # the proxy (uid 1337) must traverse it to its pod's directory (0700, its own)
    (staging / "state.json").write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
    staging.rename(state.directory)
    return state


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot, /proc/PID/stat field 22); None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _running(pid: int) -> bool:
    """Alive and not a zombie (a dead grandchild waits for init to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _ours(pid: int, run_id: str, starts: dict[str, int]) -> bool:
    """A recorded process is ours while it is the one that started then (pilot-agent's command line names no run);
    any other only when its command line carries our run id (pids get reused)."""
    if str(pid) in starts:
        return pid_alive(pid) and start_time(pid) == starts[str(pid)]
    return pid_alive(pid) and run_id in cmdline(pid)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (an Envoy that pilot-agent started, its helpers)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    found += [int(child), *descendants(int(child))]
    return found


def stop_processes(pids: list[int], run_id: str, grace: float = 2.0, starts: dict[str, int] | None = None) -> None:
    """SIGTERM the run's processes and everything they started, then SIGKILL what is left after ``grace``."""
    mine = [p for p in pids if _ours(p, run_id, starts or {})]
    alive = list(dict.fromkeys([*mine, *(child for p in mine for child in descendants(p))]))
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            with contextlib.suppress(ChildProcessError):  # reap our own children only
                os.waitpid(pid, os.WNOHANG)
            if not _running(pid):
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
    stop_processes(sorted(set(state.pids) | set(tagged_processes(state.run_id))), state.run_id, starts=state.starts)
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
    trusted_root()
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
