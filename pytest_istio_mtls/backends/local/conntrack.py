"""The address a connection's receiver really sees, read from the pod's connection-tracking table.

Inside a pod, iptables rewrites destinations: REDIRECT to the sidecar (15001 outbound, 15006 inbound) and DNAT for
Service addresses. The kernel picks a client's ephemeral port so that the *original* 4-tuple is unique, so one port
is often reused towards another destination. When both connections are redirected to the same sidecar port, their
*reply* tuples would be equal, and netfilter then rewrites the new connection's source port as well. The sidecar
logs a port the client socket never had, so a join of socket and access-log entry by address fails; this table
says where each connection went (measured: about one probe in 1,000 to 2,000 on a busy pod, docs/determinism.md).
"""

from __future__ import annotations

import shutil
import subprocess

from .system import in_netns

Address = tuple[str, int]
# (original source, original destination) → the source as the receiver of the connection sees it
Table = dict[tuple[Address, Address], Address]


def parse(text: str) -> Table:
    """Lines of /proc/net/nf_conntrack (or `conntrack -L`, the same fields) to a table of TCP connections.

    Each line names the original tuple first, then the reply tuple; the reply's destination is the source as the
    receiving end sees it (after every rewrite).
    """
    table: Table = {}
    for line in text.splitlines():
        fields = line.split()
        if "tcp" not in fields:
            continue
        values: dict[str, list[str]] = {}
        for field in fields:
            key, sep, value = field.partition("=")
            if sep and key in ("src", "dst", "sport", "dport"):
                values.setdefault(key, []).append(value)
        if any(len(values.get(key, ())) != 2 for key in ("src", "dst", "sport", "dport")):
            continue
        original = ((values["src"][0], int(values["sport"][0])), (values["dst"][0], int(values["dport"][0])))
        table[original] = (values["dst"][1], int(values["dport"][1]))
    return table


def read(netns: str) -> Table:
    """The TCP connections ``netns`` tracks; empty when the kernel offers neither the proc file nor the tool."""
    def proc() -> str:
        with open("/proc/thread-self/net/nf_conntrack", encoding="ascii", errors="replace") as handle:
            return handle.read()
    try:
        return parse(in_netns(netns, proc))
    except FileNotFoundError:  # a kernel built without CONFIG_NF_CONNTRACK_PROCFS
        pass
    except OSError:
        return {}
    tool = shutil.which("conntrack")
    if tool is None:
        return {}
    done = subprocess.run(["ip", "netns", "exec", netns, tool, "-L", "-p", "tcp"], capture_output=True, text=True,
                          check=False)
    return parse(done.stdout) if done.returncode == 0 else {}


def seen_as(table: Table, source: Address, destination: Address) -> Address:
    """``source`` as the receiver of the connection from ``source`` to ``destination`` sees it (unchanged when not
    tracked: no rewrite is the kernel's default)."""
    return table.get((source, destination), source)
