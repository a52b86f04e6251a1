"""Benchmark of the crosscheck; prints figures, asserts nothing.

Runs `pytest-istio-mtls crosscheck --count N --seed S --json` once (needs root and an Istio build, like the
local backend with real istiod) and reports:

1. scenarios per minute and rows per minute while checking (the control plane's start excluded);
2. wall time of the whole command, control plane start included;
3. the machine's load average before and after (the figures depend on it: 2 shared cores here);
4. the rows' mix (agree, unknown, errors) and the observed results' mix (what the generator covers).

Target (issue 12): 1,000 scenarios (several thousand rows) per Istio version in under 30 minutes on 2 cores.

Usage: sudo python benchmarks/crosscheck.py [--count N] [--seed S] [--istio-version V] [--out DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--istio-version", default="latest")
    parser.add_argument("--out", metavar="DIR", help="passed to the crosscheck: where disagreements are written")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    load_before = os.getloadavg()
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest_istio_mtls", "crosscheck", "--count", str(args.count),
               "--seed", str(args.seed), "--istio-version", args.istio_version, "--json"]
    done = subprocess.run(command + (["--out", args.out] if args.out else []), capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - started
    load_after = os.getloadavg()
    if done.returncode not in (0, 1, 3) or not done.stdout.strip():
        print(done.stderr[-2000:], file=sys.stderr)
        return done.returncode or 1
    summary = json.loads(done.stdout)
    figures = {
        "count": args.count, "seed": args.seed, "istiod": summary["versions"].get("istiod"),
        "exit": done.returncode, "scenarios": summary["scenarios"], "rows": summary["rows"],
        "agree": summary["agree"], "disagree": summary["disagree"], "unknown": summary["unknown"],
        "errors": summary["errors"], "backend_runs": summary["backend_runs"],
        "checking_s": summary["elapsed_s"], "wall_s": round(wall, 1),
        "scenarios_per_min": summary["scenarios_per_min"], "rows_per_min": summary["rows_per_min"],
        "observed": summary["observed"], "cpus": os.cpu_count(),
        "disagreements": [f"{d['signature']}: {d['file'] or ', '.join(r['row'] for r in d['rows'])}"
                          for d in summary["disagreements"]],
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in load_after],
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"crosscheck --count {args.count} --seed {args.seed} against istiod {figures['istiod']} "
          f"(exit {done.returncode})")
    print(f"  scenarios/min    {figures['scenarios_per_min']:>8}")
    print(f"  rows/min         {figures['rows_per_min']:>8}")
    print(f"  scenarios        {figures['scenarios']:>8}   ({figures['backend_runs']} backend runs)")
    print(f"  rows             {figures['rows']:>8}   agree {figures['agree']}, disagree {figures['disagree']}, "
          f"unknown {figures['unknown']}, errors {figures['errors']}")
    print(f"  checking         {figures['checking_s']:>8} s   (wall {figures['wall_s']} s, control plane start "
          "included)")
    print(f"  load average     {' '.join(map(str, figures['load_before']))} before, "
          f"{' '.join(map(str, figures['load_after']))} after, on {figures['cpus']} CPUs")
    print("  observed         " + ", ".join(f"{k} {v}" for k, v in figures["observed"].items()))
    for line in figures["disagreements"]:
        print(f"  disagreement     {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
