"""Benchmark: the built-in library as a user runs it; prints figures, asserts nothing.

Runs ``pytest --istio-scenarios builtin --istio-backend=local`` (real istiod by default) RUNS times, each in a
fresh process as a user would, and prints each run's wall time, the backend's start (the control plane, from
the run's report.json ``startSeconds``) and the rows it passed, then the median. The README's "the whole library
runs on real istiod in about N s" is this script's median on this project's machine (2 cores), with its date.

Usage: sudo python benchmarks/library.py [--runs N] [--control-plane istiod|emulated] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PASSED = re.compile(r"(\d+) passed")


def one_run(control_plane: str) -> dict[str, float | int | None]:
    with tempfile.TemporaryDirectory() as report:
        command = [sys.executable, "-m", "pytest", "--istio-scenarios", "builtin", "--istio-backend=local",
                   f"--istio-control-plane={control_plane}", f"--istio-report={report}", "-p", "no:cacheprovider",
                   "-q"]
        began = time.monotonic()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.monotonic() - began
        try:
            start = json.loads((Path(report) / "report.json").read_text(encoding="utf-8")).get("startSeconds")
        except (OSError, ValueError):
            start = None
    text = done.stdout + done.stderr
    passed = PASSED.findall(text)
    if done.returncode != 0:
        print(text[-3000:], file=sys.stderr)
    return {"wall_s": round(wall, 1), "backend_start_s": round(start, 1) if start is not None else None,
            "passed": int(passed[-1]) if passed else 0, "exit": done.returncode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs to make (default 3)")
    parser.add_argument("--control-plane", choices=("istiod", "emulated"), default="istiod")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    options = parser.parse_args()
    runs = []
    for index in range(options.runs):
        result = one_run(options.control_plane)
        runs.append(result)
        print(f"run {index + 1}/{options.runs}: {result['wall_s']} s wall, backend start (control plane) "
              f"{result['backend_start_s']} s, {result['passed']} passed (exit {result['exit']})", flush=True)
    figures = {"runs": runs, "median_wall_s": statistics.median(float(r["wall_s"] or 0) for r in runs),
               "cores": os.cpu_count(), "control_plane": options.control_plane,
               "date": time.strftime("%Y-%m-%d"), "load_1min_after": os.getloadavg()[0]}
    print(json.dumps(figures) if options.json else
          f"median {figures['median_wall_s']} s over {options.runs} runs on {figures['cores']} cores "
          f"({options.control_plane}, {figures['date']})")
    return 0 if all(r["exit"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
