"""Stress harness: run tests/local and the built-in scenario library N times in a row, optionally with
the other core kept busy, and print runs, items, errors and wrong results.

A conformance tool whose errors come and go teaches its users to ignore errors; this is how the
project finds races instead of hearing about them. Every run is a fresh pytest process, as in CI.

    sudo .venv/bin/python benchmarks/stress.py --runs 20                 # both suites, 20 runs each
    sudo .venv/bin/python benchmarks/stress.py --runs 20 --busy          # with a spinning process per core - 1
    sudo .venv/bin/python benchmarks/stress.py --suite library --runs 5 -- --istio-control-plane=emulated

Exit 1 when any run had a failure or an error. The junit XML and output of failing runs are kept
under --out (default /tmp/istio-mtls-stress) for diagnosis.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = {
    "tests": ["tests/local"],
    "library": ["--istio-scenarios", "builtin", "--istio-backend=local"],
}


@dataclass
class Outcome:
    items: int = 0
    failed: list[str] = field(default_factory=list)  # wrong results: an item whose verdict or assertion failed
    errors: list[str] = field(default_factory=list)  # an item that could not be judged (or a setup error)
    seconds: float = 0.0
    exit_code: int = 0


def parse_junit(path: Path) -> Outcome:
    outcome = Outcome()
    if not path.exists():
        return outcome
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("skipped") is not None:
            continue
        outcome.items += 1
        if case.find("failure") is not None:
            outcome.failed.append(name)
        elif case.find("error") is not None:
            outcome.errors.append(name)
    return outcome


def spin() -> None:  # pragma: no cover - a busy loop in a child process
    while True:
        pass


def run_once(suite: str, index: int, out: Path, extra: list[str]) -> Outcome:
    junit = out / f"{suite}-{index}.xml"
    log = out / f"{suite}-{index}.log"
    command = [sys.executable, "-m", "pytest", *SUITES[suite], "-q", "-p", "no:cacheprovider",
               f"--junitxml={junit}", *extra]
    started = time.monotonic()
    with log.open("w") as handle:
        # Run as `sudo .venv/bin/python`, PATH lacks the venv: the tests call the package's own CLI.
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, check=False, env=env)
    outcome = parse_junit(junit)
    outcome.seconds = time.monotonic() - started
    outcome.exit_code = done.returncode
    if done.returncode not in (0, 1) and not outcome.errors:
        outcome.errors.append(f"pytest exited {done.returncode} (see {log})")
    if not outcome.failed and not outcome.errors:
        log.unlink()
        junit.unlink(missing_ok=True)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per suite (default 5)")
    parser.add_argument("--suite", choices=("tests", "library", "both"), default="both")
    parser.add_argument("--busy", action="store_true", help="keep all cores but one busy with spinning processes")
    parser.add_argument("--out", type=Path, default=Path("/tmp/istio-mtls-stress"),
                        help="where logs of failing runs are kept")
    parser.add_argument("extra", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    suites = ["tests", "library"] if args.suite == "both" else [args.suite]
    spinners = []
    if args.busy:
        for _ in range(max((os.cpu_count() or 2) - 1, 1)):
            process = multiprocessing.Process(target=spin, daemon=True)
            process.start()
            spinners.append(process)
    bad = 0
    try:
        for suite in suites:
            totals = Outcome()
            for index in range(1, args.runs + 1):
                outcome = run_once(suite, index, args.out, args.extra)
                totals.items += outcome.items
                totals.failed += outcome.failed
                totals.errors += outcome.errors
                totals.seconds += outcome.seconds
                status = "ok" if not (outcome.failed or outcome.errors) else "FAILED"
                print(f"{suite} run {index}/{args.runs}: {outcome.items} items, {len(outcome.failed)} wrong, "
                      f"{len(outcome.errors)} errors, {outcome.seconds:.0f}s {status}", flush=True)
                for name in outcome.failed + outcome.errors:
                    print(f"    {name}  (log: {args.out}/{suite}-{index}.log)", flush=True)
            bad += len(totals.failed) + len(totals.errors)
            print(f"== {suite}: {args.runs} runs, {totals.items} items, {len(totals.failed)} wrong results, "
                  f"{len(totals.errors)} errors, {totals.seconds / max(args.runs, 1):.0f}s per run"
                  + (" (other cores busy)" if args.busy else ""), flush=True)
    finally:
        for process in spinners:
            process.terminate()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
