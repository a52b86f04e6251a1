"""``pytest-istio-mtls render FILE``: every manifest the kind/existing backend would apply, as YAML.

Nothing touches a cluster. For kind the stream starts with the IstioOperator overlay given to
``istioctl install``; for existing, namespaces carry a placeholder run id (a real run uses a random
one) and every namespaced reference inside the policies is rewritten the way a run rewrites it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from ..backends.base import BackendError
from ..backends.kube.manifests import images, install_overlay, render_topology
from ..backends.kube.naming import Naming, mesh_wide
from ..model import Scenario
from ..model.diagnostics import ScenarioError
from ..scenario.loader import load_scenario

PLACEHOLDER_RUN_ID = "000000"


def add_render_command(sub: Any) -> None:
    p = sub.add_parser("render", help="print every Kubernetes manifest the kind/existing backend would apply")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--backend", choices=("kind", "existing"), default="kind")
    p.add_argument("--revision", metavar="REVISION", help="Istio revision (namespaces get istio.io/rev)")
    p.set_defaults(func=cmd_render)


def render(scenario: Scenario, backend: str = "kind", revision: str | None = None,
           image_overrides: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The objects in the order a run applies them: install overlay (kind), workloads, policies."""
    run_id = PLACEHOLDER_RUN_ID if backend == "existing" else None
    naming = Naming(run_id, scenario.mesh.root_namespace)
    objects: list[dict[str, Any]] = []
    if backend == "kind":
        objects.append(install_overlay(scenario.mesh, revision))
    objects += render_topology(scenario.topology, naming, images(image_overrides), revision)
    known = [n.name for n in scenario.topology.namespaces]
    objects += [naming.rewrite(p.manifest, known) for p in sorted(scenario.policies, key=lambda p: p.order)]
    return objects


def cmd_render(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.file)
    except ScenarioError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    try:
        objects = render(scenario, args.backend, args.revision)
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    refused = mesh_wide(scenario.policies, scenario.mesh.root_namespace) if args.backend == "existing" else []
    if refused:
        print(f"note: the existing backend refuses {', '.join(refused)} unless --istio-allow-mesh-wide is given",
              file=sys.stderr)
    print(f"# {scenario.name}: manifests for --istio-backend={args.backend}")
    print(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True), end="")
    return 0
