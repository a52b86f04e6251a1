"""Peer identity as the server side saw it: X-Forwarded-Client-Cert echoed by the app."""

from __future__ import annotations

import json
from typing import Any


def xfcc_peer(value: str) -> str:
    """The SPIFFE URI of the immediate peer in an XFCC header value ('' if none).

    XFCC is a comma-separated list of elements (one per proxy hop, the last is the closest);
    each element is ``;``-separated ``key=value`` pairs, values optionally quoted.
    """
    elements = _split(value, ",")
    if not elements:
        return ""
    for pair in _split(elements[-1], ";"):
        key, _, raw = pair.partition("=")
        if key.strip().lower() == "uri":
            return raw.strip().strip('"')
    return ""


def _split(text: str, separator: str) -> list[str]:
    parts, current, quoted = [], "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return [p for p in (part.strip() for part in parts) if p]


def echoed_headers(body: str) -> dict[str, str]:
    """Headers from an httpbin-style JSON echo (``{"headers": {...}}``), lower-cased names.

    go-httpbin returns each value as a list, kennethreitz/httpbin as a string: both are accepted.
    """
    try:
        data: Any = json.loads(body)
    except ValueError:
        return {}
    headers = data.get("headers") if isinstance(data, dict) else None
    if not isinstance(headers, dict):
        return {}
    result: dict[str, str] = {}
    for name, value in headers.items():
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        result[str(name).lower()] = str(value)
    return result


def peer_from_echo(body: str) -> str:
    return xfcc_peer(echoed_headers(body).get("x-forwarded-client-cert", ""))
