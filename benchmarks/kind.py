"""Benchmark of the kind backend against the local one on the same scenarios; prints figures, asserts nothing.

For each backend, through the Backend API the plugin itself uses:

1. start: kind: cluster creation, loading local images, Istio's install (split by the backend's own progress
   lines); local: the control plane's start (etcd, kube-apiserver, istiod);
2. deploy: the default topology (two sidecar workloads and a plaintext client), then a second topology
   (scenario 03's: three namespaces), each until every pod is ready with its sidecar;
3. switch: a policy switch (STRICT on, STRICT off) until every proxy enforces it, N times, median and spread;
4. probe: a batch of probes with all their evidence, per probe.

Here the kind backend needs the harness: `.ci/kind-env up`, then
`.ci/kind-env exec -- python benchmarks/kind.py` (the local backend beside it needs root, like tests/local).

Usage: python benchmarks/kind.py [--backends kind,local] [--switches N] [--probes N] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest_istio_mtls.backends import create
from pytest_istio_mtls.judge.observation import Probe
from pytest_istio_mtls.judge.verdict import decide
from pytest_istio_mtls.model import MeshSettings, Scenario, default_topology
from pytest_istio_mtls.options import BY_DEST, Settings
from pytest_istio_mtls.scenario.loader import load_policies, load_scenario

ROOT = Path(__file__).resolve().parents[1]
SECOND = ROOT / "pytest_istio_mtls" / "scenarios" / "03-namespace-strict.yaml"
STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: app}
spec: {mtls: {mode: STRICT}}
"""
CLUSTER = "imtls-benchmark"


def settings_for(backend: str, root: Path) -> Settings:
    """The environment's settings (env twins: the harness names its images there), for one backend."""
    def env(dest: str) -> str | None:
        return os.environ.get(BY_DEST[dest].env) or None

    def path(dest: str) -> Path | None:
        value = env(dest)
        return Path(value) if value else None

    images = dict(item.split("=", 1) for item in (env("istio_images") or "").split(",") if "=" in item)
    return Settings(backend=backend, rootdir=root, timeout=300.0, kind_cluster=CLUSTER,
                    hub=env("istio_hub") or "docker.io/istio", tag=env("istio_tag"), images=images,
                    kind_image=env("istio_kind_image"), kind_config=path("istio_kind_config"),
                    kind_bin=path("istio_kind_bin"), istioctl=path("istio_istioctl"))


def timed(action: Callable[[], Any]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def measure(backend_name: str, switches: int, probes: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"backend": backend_name}
    marks: list[tuple[float, str]] = []

    def progress(message: str) -> None:
        marks.append((time.monotonic(), message))
        print(f"  [{backend_name}] {message}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="imtls-bench-") as tmp:
        backend = create(settings_for(backend_name, Path(tmp)), progress)
        started = time.monotonic()
        try:
            backend.start()
            figures["start_s"] = round(time.monotonic() - started, 1)
            phases = {"creating": "cluster_create_s", "loading": "images_load_s", "installing Istio": "istio_install_s"}
            points = [(t, key) for t, message in marks for word, key in phases.items() if word in message]
            ends = [t for t, _ in points[1:]] + [time.monotonic()] if points else []
            for (t, key), end in zip(points, ends, strict=True):  # each phase lasts until the next one starts
                figures[key] = round(end - t, 1)
            topology = default_topology()
            figures["deploy_default_s"] = round(timed(lambda: backend.deploy(topology, MeshSettings())), 1)
            second = load_scenario(SECOND)
            figures["deploy_second_s"] = round(timed(lambda: backend.deploy(second.topology, second.mesh)), 1)
            backend.deploy(topology, MeshSettings())
            policies, _ = load_policies(STRICT, topology)
            strict = Scenario(name="strict", path=Path("strict.yaml"), topology=topology, policies=policies)
            plain = dataclasses.replace(strict, name="plain", policies=())
            backend.apply(plain)
            times = [timed(lambda s=s: backend.apply(s)) for _ in range(switches) for s in (strict, plain)]
            figures["switch_median_s"] = round(statistics.median(times), 2)
            figures["switch_max_s"] = round(max(times), 2)
            frontend, backend_workload = topology.workload("frontend.app"), topology.workload("backend.app")
            assert frontend is not None and backend_workload is not None
            batch = [Probe(frontend, backend_workload, backend_workload.ports[0]) for _ in range(probes)]
            took = timed(lambda: figures.__setitem__("results", sorted({str(decide(o).result)
                                                                        for o in backend.probe(batch)})))
            figures["probe_ms"] = round(took * 1000 / probes, 1)
        finally:
            backend.stop(keep=False)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="kind,local")
    parser.add_argument("--switches", type=int, default=5)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for name in args.backends.split(","):
        results.append(measure(name, args.switches, args.probes))
        print(f"  [{name}] {json.dumps(results[-1])}", file=sys.stderr, flush=True)  # kept if a later one fails
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    keys = [k for k in ("start_s", "cluster_create_s", "images_load_s", "istio_install_s", "deploy_default_s",
                        "deploy_second_s", "switch_median_s", "switch_max_s", "probe_ms", "results")
            if any(k in r for r in results)]
    print(f"{'':18}" + "".join(f"{r['backend']:>14}" for r in results))
    for key in keys:
        print(f"{key:18}" + "".join(f"{r.get(key, '-')!s:>14}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
