"""Envoy admin ``/stats`` text: parse it and diff two readings around a probe."""

from __future__ import annotations

from urllib.parse import quote

# Only these families matter for verdicts; asking the admin endpoint for them keeps a reading cheap.
# Real istio-proxies expose them only with proxyStatsMatcher (see the kind backend's install overlay).
STATS_FILTER = (
    r"^(listener\.0\.0\.0\.0_15006\.|listener\.0\.0\.0\.0_15001\.|cluster\.outbound\||cluster\.inbound\||"
    r"http\.inbound|http\.outbound|tls_inspector\.|tcp\.inbound|tcp\.outbound|.*rbac\.)"
)

# The network RBAC filter's denial counter on a real sidecar: Istio gives every TCP chain's filter the
# stat prefix "tcp." (authz/model/model.go RBACTCPFilterStatPrefix); seen as tcp.rbac.denied on istio-proxy.
TCP_DENIED_STAT = "tcp.rbac.denied"

# The admin path both backends read: counters only (gauges such as certificate expiry are not deltas).
STATS_PATH = "stats?type=Counters&filter=" + quote(STATS_FILTER, safe="")


def parse_stats(text: str) -> dict[str, int]:
    """``name: value`` lines to a dict; histogram lines (``P0(...)``) and non-integers are skipped."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, value = line.rpartition(": ")
        if not sep:
            continue
        value = value.strip()
        if value.lstrip("-").isdigit():
            values[name.strip()] = int(value)
    return values


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Counters that moved between two readings (new names count from zero)."""
    moved: dict[str, int] = {}
    for name, value in after.items():
        change = value - before.get(name, 0)
        if change:
            moved[name] = change
    return moved
