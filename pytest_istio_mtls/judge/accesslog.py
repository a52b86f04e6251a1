"""The JSON access-log format both backends configure on their sidecars, and its reader.

The same keys are set on the local Envoy sidecars and, through meshConfig.accessLogFormat, on a
real Istio mesh, so the joins below (probe ↔ connection ↔ peer identity) work on both.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from typing import Any

# Envoy's connection termination (TCP) / response code (HTTP) detail of an RBAC denial, then the
# matched policy name, or "none" when no ALLOW policy matched; seen in real istio-proxy access logs.
DENIED_DETAIL = "rbac_access_denied_matched_policy["

# key → Envoy command operator
FORMAT: dict[str, str] = {
    "marker": "%REQ(X-ISTIO-MTLS-PROBE)%",
    "start_time": "%START_TIME%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    # Why Envoy answered as it did; an HTTP RBAC denial names the matched policy here
    # (rbac_access_denied_matched_policy[...]), as connection_termination_details does for TCP.
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_peer_uri_san": "%DOWNSTREAM_PEER_URI_SAN%",
    "downstream_tls_version": "%DOWNSTREAM_TLS_VERSION%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER_RAW%",  # the cluster name; %UPSTREAM_CLUSTER% logs alt_stat_name
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
}


# The keys the evidence joins and judges on (probe ↔ entry, client ↔ server entry, identity, failure reasons).
# Other keys are read when present: a mesh configured with an older FORMAT (existing clusters, reused kind
# clusters) still yields verdicts, only with less detail.
EVIDENCE_KEYS = ("marker", "response_flags", "downstream_remote_address", "downstream_peer_uri_san",
                 "upstream_local_address", "upstream_transport_failure_reason")


def parse(lines: Iterable[str]) -> list[dict[str, Any]]:
    """JSON lines to dicts; lines that are not JSON objects (other log output) are skipped."""
    entries: list[dict[str, Any]] = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def started_within(entry: dict[str, Any], start: float, end: float) -> bool:
    """Did the entry's connection or request start within [start, end] (epoch seconds, ms resolution)?

    Ephemeral ports get reused: an address alone can also match an earlier probe's entry, so entries
    without a marker (TCP) are tied to their probe by time as well. No start time: assume it does.
    """
    text = str(entry.get("start_time") or "")
    if not text or text == "-":
        return True
    try:
        started = datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return True
    return start - 0.005 <= started <= end + 0.005


def matching(entries: Iterable[dict[str, Any]], **fields: str) -> list[dict[str, Any]]:
    """Entries whose fields equal every given value (e.g. ``downstream_remote_address="10.0.0.3:4242"``)."""
    return [e for e in entries if all(str(e.get(k, "")) == v for k, v in fields.items())]
