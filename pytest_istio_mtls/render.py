"""``pytest-istio-mtls render``: print every manifest a backend would apply (filled in by the kind backend)."""

from __future__ import annotations

import argparse
from typing import Any


def add_render_command(sub: Any) -> None:
    p = sub.add_parser("render", help="print every Kubernetes manifest the kind/existing backend would apply")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--backend", choices=("kind", "existing"), default="kind")
    p.set_defaults(func=cmd_render)


def cmd_render(args: argparse.Namespace) -> int:
    print("render: not available yet")
    return 2
