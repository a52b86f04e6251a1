"""The ``crosscheck`` command: arguments, progress on stderr, the summary (or JSON) on stdout, exit codes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...backends.base import BackendError
from ...options import Settings

EXIT_AGREE, EXIT_DISAGREE, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=100, metavar="N",
                        help="generated scenarios to check (default 100)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the generator: the same seed generates the same scenarios (default 0)")
    parser.add_argument("--istio-version", default="latest", metavar="V",
                        help="the Istio build to run (`pytest-istio-mtls build-istio --list`; default: the newest "
                             "built)")
    parser.add_argument("--out", metavar="DIR",
                        help="write each minimal disagreement into DIR as a scenario file (observed results as "
                             "expectations, the oracle's prediction in its description)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="seconds to wait for one backend step (default 60)")
    parser.add_argument("--max-error-rate", type=float, default=0.01, metavar="FRACTION",
                        help="exit 3 when more than this fraction of the compared rows could not be observed "
                             "(infrastructure errors; default 0.01); errors are always listed")


def run(args: argparse.Namespace) -> int:
    """0: no disagreement; 1: a disagreement; 2: wrong usage or no local backend here; 3: more rows than
    --max-error-rate allows could not be observed (infrastructure errors), so the run proves less than it says."""
    if args.count < 1:
        print("error: --count must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.timeout <= 0:
        print("error: --timeout must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    if not 0 <= args.max_error_rate <= 1:
        print("error: --max-error-rate must be a fraction between 0 and 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        from . import runner
    except ImportError as exc:
        print(f"error: crosscheck needs {exc.name}: pip install 'pytest-istio-mtls[local]'", file=sys.stderr)
        return EXIT_USAGE

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    settings = Settings(backend="local", control_plane="istiod", istio_version=args.istio_version,
                        timeout=args.timeout)
    check = runner.Crosscheck(settings, args.count, args.seed, Path(args.out) if args.out else None, progress)
    try:
        check.run()
    except BackendError as exc:
        print(f"error: the local backend with real istiod cannot run the crosscheck: {exc}", file=sys.stderr)
        return EXIT_USAGE if not check.versions else EXIT_INCOMPLETE
    summary = check.summary()
    if args.json:
        print(runner.as_json(summary))
    else:
        for line in runner.render(summary):
            print(line)
    if summary["disagree"]:
        return EXIT_DISAGREE
    compared = summary["agree"] + summary["disagree"] + summary["errors"]
    if summary["errors"] > args.max_error_rate * compared:
        kept = f"their scenarios are in {args.out}/errors" if args.out else "--out DIR keeps their scenarios"
        print(f"error: {summary['errors']} of {compared} rows could not be observed, more than --max-error-rate "
              f"{args.max_error_rate:g} allows ({kept})", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_AGREE
