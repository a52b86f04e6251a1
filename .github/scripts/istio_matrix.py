#!/usr/bin/env python3
"""The nightly Istio matrix: the newest patch of the three newest supported Istio minors, plus the
newest pre-release tag (alpha/beta/rc) when it is newer than the newest stable release.

"Supported" comes from istio.io's supportStatus.yml; versions come from GitHub release *tags*
(never /releases/latest, never the prerelease flag: Istio's release tooling creates every release
as a pre-release). Prints ``{"include": [...]}`` and, under GitHub Actions, writes ``matrix=`` to
$GITHUB_OUTPUT. ``--releases``/``--support`` read local files instead of the network.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

RELEASES_URL = "https://api.github.com/repos/istio/istio/releases?per_page=100&page={page}"
SUPPORT_URL = "https://raw.githubusercontent.com/istio/istio.io/master/data/compatibility/supportStatus.yml"
TAG = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-(alpha|beta|rc)\.(\d+))?$")
PRE_RANK = {"alpha": 0, "beta": 1, "rc": 2, None: 3}  # a stable X.Y.Z sorts after its pre-releases

Key = tuple[int, int, int, int, int]


def key(tag: str) -> Key | None:
    match = TAG.match(tag)
    if not match:
        return None
    return int(match[1]), int(match[2]), int(match[3]), PRE_RANK[match[4]], int(match[5] or 0)


def supported_minors(support_text: str) -> list[str]:
    """Minors whose ``supported`` field starts with "Yes", newest first."""
    entries = yaml.safe_load(support_text) or []
    minors = [str(e.get("version")) for e in entries
              if isinstance(e, dict) and str(e.get("supported", "")).startswith("Yes")
              and re.match(r"^\d+\.\d+$", str(e.get("version")))]
    return sorted(minors, key=lambda m: tuple(int(p) for p in m.split(".")), reverse=True)


def matrix(releases: list[dict[str, Any]], support_text: str, minors: int = 3) -> dict[str, list[dict[str, str]]]:
    tags = [str(r.get("tag_name", "")) for r in releases if not r.get("draft")]
    keyed = [(k, t) for t in tags if (k := key(t)) is not None]
    stable = sorted((k, t) for k, t in keyed if k[3] == PRE_RANK[None])
    include: list[dict[str, str]] = []
    for minor in supported_minors(support_text):
        major, rest = (int(p) for p in minor.split("."))
        patches = [t for k, t in stable if (k[0], k[1]) == (major, rest)]
        if patches:
            include.append({"istio": patches[-1], "minor": minor, "channel": "stable"})
        if len(include) == minors:
            break
    pre = sorted((k, t) for k, t in keyed if k[3] != PRE_RANK[None])
    if pre and stable and pre[-1][0] > stable[-1][0]:
        k, tag = pre[-1]
        include.insert(0, {"istio": tag, "minor": f"{k[0]}.{k[1]}", "channel": "prerelease"})
    for index, cell in enumerate(include):  # what the comparison job diffs this cell against
        cell["previous"] = include[index + 1]["istio"] if index + 1 < len(include) else ""
    return {"include": include}


def fetch(url: str) -> bytes:
    headers = {"Accept": "application/vnd.github+json", "User-Agent": "pytest-istio-mtls-nightly"}
    token = os.environ.get("GITHUB_TOKEN")
    if token and "api.github.com" in url:
        headers["Authorization"] = f"Bearer {token}"
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
        return bytes(response.read())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--releases", type=Path, help="GitHub releases JSON (default: fetch)")
    parser.add_argument("--support", type=Path, help="supportStatus.yml (default: fetch)")
    parser.add_argument("--minors", type=int, default=3)
    args = parser.parse_args(argv)
    if args.releases:
        releases = json.loads(args.releases.read_text())
    else:
        releases = []
        for page in (1, 2):
            releases += json.loads(fetch(RELEASES_URL.format(page=page)))
    support = args.support.read_text() if args.support else fetch(SUPPORT_URL).decode()
    result = matrix(releases, support, args.minors)
    if not result["include"]:
        print("no supported Istio release found", file=sys.stderr)
        return 1
    text = json.dumps(result, separators=(",", ":"))
    print(text)
    output = os.environ.get("GITHUB_OUTPUT")
    if output:
        with open(output, "a", encoding="utf-8") as handle:
            handle.write(f"matrix={text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
