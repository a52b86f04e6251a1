"""The crosscheck loop: generate scenarios, predict every row, observe it on real istiod, compare, shrink.

One local backend (one control plane) serves the whole run. Topologies are drawn first; for each one
Hypothesis draws policy sets, and every scenario of a topology reuses its pods, so a scenario costs one
policy switch and its probes. A scenario's rows are compared one by one:

- ``agree``: the oracle predicted exactly what the evidence proved;
- ``disagree``: it predicted another concrete result;
- ``unknown``: the oracle says it cannot predict the row: counted, not probed, not compared;
- ``error``: the observation proved nothing (infrastructure): never an agreement, never a disagreement.

Each kind of disagreement (predicted → observed, protocol, who has a sidecar) is shrunk once: Hypothesis
replays the topology's run with the same seed (results are remembered, so the replayed prefix costs
nothing) and shrinks the first scenario that shows it; then the topology is reduced to the row's two
workloads and the namespaces the policies live in, kept only if the disagreement survives a fresh run.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings

from ...backends.base import BackendError, BackendUnavailable
from ...backends.local import LocalBackend
from ...judge.observation import Probe
from ...judge.verdict import decide
from ...model import CONCRETE_RESULTS, Expectation, Port, Request, Result, Scenario, Workload
from ...model.diagnostics import ScenarioError, plural
from ...options import Settings
from ...oracle import mtls
from ...oracle.mtls import Prediction
from ...scenario.loader import load_scenario
from . import generate

RowStatus = Literal["agree", "disagree", "unknown", "error"]
SCENARIOS_PER_TOPOLOGY = 25  # a redeploy costs several scenarios' worth of time; more per topology is faster


@dataclass(frozen=True)
class RowCheck:
    key: str  # from->to:port
    protocol: str
    client_sidecar: bool
    server_sidecar: bool
    predicted: Result
    reason: str
    observed: Result | None = None
    error: str = ""

    @property
    def status(self) -> RowStatus:
        if self.predicted is Result.UNKNOWN:
            return "unknown"
        if self.observed is None:
            return "error"
        return "agree" if self.observed is self.predicted else "disagree"

    @property
    def signature(self) -> str:
        """What kind of disagreement this is: shrinking keeps it, and each kind is shrunk once."""
        client = "sidecar" if self.client_sidecar else "no sidecar"
        server = "sidecar" if self.server_sidecar else "no sidecar"
        return (f"predicted {self.predicted.value}, observed {self.observed.value if self.observed else '?'} "
                f"({self.protocol}, client {client}, server {server})")


@dataclass(frozen=True)
class Checked:
    """One scenario's rows, predicted and observed (``error``: the scenario could not run at all)."""

    doc: Mapping[str, Any]
    rows: tuple[RowCheck, ...]
    error: str = ""

    def count(self, status: RowStatus) -> int:
        return sum(1 for r in self.rows if r.status == status)

    @property
    def signatures(self) -> list[str]:
        return list(dict.fromkeys(r.signature for r in self.rows if r.status == "disagree"))


@dataclass
class Found:
    """A minimal disagreement: the scenario written to DIR and the rows the oracle got wrong."""

    signature: str
    checked: Checked
    file: Path | None
    shrunk: bool  # Hypothesis shrank it (False: the scenario as first generated)
    reduced: bool  # its topology was reduced to the row's workloads

    @property
    def wrong(self) -> list[RowCheck]:
        return [r for r in self.checked.rows if r.status == "disagree"]

    def as_json(self) -> dict[str, Any]:
        return {"signature": self.signature, "file": str(self.file) if self.file else None, "shrunk": self.shrunk,
                "topology_reduced": self.reduced,
                "rows": [{"row": r.key, "predicted": r.predicted.value, "observed": r.observed.value if r.observed
                          else None, "reason": r.reason} for r in self.wrong]}


class Disagreement(Exception):
    """Raised inside a shrinking run: this scenario shows the disagreement being shrunk."""

    def __init__(self, checked: Checked) -> None:
        super().__init__("disagreement")
        self.checked = checked


@dataclass
class Totals:
    generated: int = 0  # scenarios Hypothesis generated while exploring (a few are duplicates)
    scenarios: int = 0  # distinct generated scenarios checked: the rows counted are theirs
    runs: int = 0  # every scenario run on the backend, shrinking and reduction included
    rows: Counter[str] = field(default_factory=Counter)
    results: Counter[str] = field(default_factory=Counter)  # observed results of compared rows: the coverage
    errors: list[str] = field(default_factory=list)  # every error message, for the summary


class Observer(Protocol):
    """Where rows are observed: the local backend with real istiod (tests may stand in a known-good oracle)."""

    def start(self) -> dict[str, str]:
        """Start; return the versions of what judges (istiod, Envoy, ...)."""

    def observe(self, scenario: Scenario, rows: Sequence[Expectation]) -> list[tuple[Result | None, str]]:
        """Each row's proven result, or None and why nothing was proven."""

    def stop(self) -> str:
        """Tear down; return problems met, if any."""


class LocalObserver:
    """One local backend (one control plane) for the whole run; pods are reused while the topology is."""

    def __init__(self, backend: LocalBackend, *, owned: bool = True) -> None:
        self.backend = backend
        self.owned = owned  # False: a backend started (and stopped) by someone else, e.g. a test session

    def start(self) -> dict[str, str]:
        if self.owned:
            self.backend.start()
        return self.backend.versions()

    def observe(self, scenario: Scenario, rows: Sequence[Expectation]) -> list[tuple[Result | None, str]]:
        self.backend.deploy(scenario.topology, scenario.mesh)
        self.backend.apply(scenario)
        observations = self.backend.probe([Probe(e.source, e.target, e.port, e.request) for e in rows])
        verdicts = [decide(o) for o in observations]
        return [(v.result, v.error) for v in verdicts]

    def stop(self) -> str:
        return self.backend.stop(keep=False) if self.owned else ""


class Crosscheck:
    def __init__(self, settings_: Settings, count: int, seed_: int, out: Path | None,
                 progress: Callable[[str], None], *, observer: Observer | None = None,
                 predict: Callable[[Scenario, Workload, Workload, Port, Request], Prediction] = mtls.predict,
                 ) -> None:
        self.settings = settings_
        self.count = count
        self.seed = seed_
        self.out = out
        self.progress = progress
        self.totals = Totals()
        self.found: list[Found] = []
        self.started = 0.0
        self.versions: dict[str, str] = {}
        self._memo: dict[str, Checked] = {}
        self._explored: set[str] = set()  # memo keys of the scenarios counted while exploring
        self._workdir: Path | None = None
        self.observer = observer  # None: the local backend with real istiod
        self.predict = predict
        self._active: Observer | None = None

    # ----------------------------------------------------------------------------------------------- run

    def run(self) -> None:
        observer = self.observer or LocalObserver(LocalBackend(self.settings, self._backend_progress))
        self._workdir = Path(tempfile.mkdtemp(prefix="pytest-istio-mtls-crosscheck-"))
        try:
            self.versions = observer.start()
            self.started = time.monotonic()  # rates are about checking: the control plane's start is not in them
            self._active = observer
            pool = topologies(self.count, self.seed)
            budget = self.count
            for index, topology in enumerate(pool):
                share = budget // (len(pool) - index)
                budget -= share
                self._topology(index, len(pool), topology, share)
        finally:
            self._active = None
            shutil.rmtree(self._workdir, ignore_errors=True)
            problems = observer.stop()
            if problems:
                self.progress(problems)

    def _backend_progress(self, message: str) -> None:
        """The backend's own lines, less the one it prints for every policy switch."""
        if not message.startswith(("istiod's configuration for", "waiting ")):
            self.progress(message)

    def _topology(self, index: int, total: int, topology: generate.Doc, examples: int) -> None:
        workloads = topology["workloads"]
        self.progress(f"topology {index + 1}/{total}: {plural(len(topology['namespaces']), 'namespace')}, "
                      f"{plural(len(workloads), 'workload')}, "
                      f"{plural(sum(len(w.get('ports') or []) for w in workloads), 'server port')}; "
                      f"{plural(examples, 'scenario')}")
        run_seed = self.seed * 1000 + index
        seen: list[str] = []

        def explore(checked: Checked) -> None:
            self.totals.generated += 1
            key = _memo_key(checked.doc)
            if key in self._explored:  # the same scenario again (from other choices): nothing new to count
                return
            self._explored.add(key)
            self.totals.scenarios += 1
            for row in checked.rows:
                self.totals.rows[row.status] += 1
                if row.observed is not None:
                    self.totals.results[row.observed.value] += 1
            if checked.count("error"):
                self._write_error(checked)
            self._report(checked)
            seen.extend(s for s in checked.signatures if s not in seen)

        self._hypothesis(topology, examples, run_seed, explore, shrink=False)
        known = {f.signature for f in self.found}
        for signature in seen:
            if signature in known:
                continue
            self.progress(f"shrinking: {signature}")
            minimal, shrunk = self._shrink(topology, examples, run_seed, signature)
            if minimal is None:
                continue
            found = self._reduce(minimal, signature, shrunk)
            self.found.append(found)
            known.add(signature)
            where = f", written to {found.file}" if found.file else ""
            self.progress(f"minimal disagreement: {plural(len(found.checked.rows), 'row')}, "
                          f"{plural(len(found.checked.doc.get('policies') or []), 'policy')}{where}")

    def _hypothesis(self, topology: generate.Doc, examples: int, run_seed: int,
                    each: Callable[[Checked], None], *, shrink: bool) -> None:
        """Run Hypothesis over the topology's scenarios: generate only, or generate and shrink (same seed, so
        the same sequence of scenarios up to the first one that raises)."""
        phases = (Phase.generate, Phase.shrink) if shrink else (Phase.generate,)
        configured = settings(max_examples=examples, phases=phases, database=None, deadline=None,
                              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
                              report_multiple_bugs=False, print_blob=False)

        @configured
        @seed(run_seed)
        @given(generate.scenarios(topology, name=f"crosscheck-{self.seed}"))
        def scenario(doc: generate.Doc) -> None:
            each(self.check(doc))

        scenario()

    def _shrink(self, topology: generate.Doc, examples: int, run_seed: int,
                signature: str) -> tuple[Checked | None, bool]:
        """The smallest scenario Hypothesis finds with this kind of disagreement."""
        first: list[Checked] = []

        def fail(checked: Checked) -> None:
            if signature in checked.signatures:
                first.append(checked)
                raise Disagreement(checked)

        try:
            self._hypothesis(topology, examples, run_seed, fail, shrink=True)
        except Disagreement as exc:  # re-raised from Hypothesis's final run of the minimal example
            return exc.checked, True
        # The replay did not meet it again (a scenario whose result changed between runs): keep what was seen.
        return (first[0] if first else None), False

    def _reduce(self, checked: Checked, signature: str, shrunk: bool) -> Found:
        """Drop the workloads and namespaces the disagreement does not need, if it survives a fresh run."""
        row = next(r for r in checked.rows if r.signature == signature)
        doc = reduced(checked.doc, row.key)
        final, is_reduced = checked, False
        if doc is not None:
            again = self.check(doc, fresh=True)
            if signature in again.signatures:
                final, is_reduced = again, True
        return Found(signature, final, self._write(final, len(self.found) + 1), shrunk, is_reduced)

    # ----------------------------------------------------------------------------------------------- one scenario

    def check(self, doc: generate.Doc, *, fresh: bool = False) -> Checked:
        """Predict and observe every row of one scenario (remembered: Hypothesis replays scenarios)."""
        key = _memo_key(doc)
        if not fresh and key in self._memo:
            return self._memo[key]
        checked = self._observe(doc)
        self._memo[key] = checked
        return checked

    def _observe(self, doc: generate.Doc) -> Checked:
        scenario = self.load(doc)
        predictions = [self.predict(scenario, e.source, e.target, e.port, e.request) for e in scenario.expectations]
        rows = [RowCheck(_key(e.pair), e.port.protocol, e.source.sidecar, e.target.sidecar, p.result, p.reason)
                for e, p in zip(scenario.expectations, predictions, strict=True)]
        wanted = [i for i, r in enumerate(rows) if r.status != "unknown"]
        self.totals.runs += 1
        if not wanted:
            return Checked(doc, tuple(rows))
        assert self._active is not None
        try:
            observed = self._active.observe(scenario, [scenario.expectations[i] for i in wanted])
        except BackendUnavailable:
            raise
        except BackendError as exc:
            message = str(exc)
            self._note_error(message)
            for i in wanted:
                rows[i] = dataclasses.replace(rows[i], error=message)
            return Checked(doc, tuple(rows), error=message)
        for i, (result, error) in zip(wanted, observed, strict=True):
            rows[i] = dataclasses.replace(rows[i], observed=result, error=error)
            if result is None:
                self._note_error(f"{rows[i].key}: {error}")
        return Checked(doc, tuple(rows))

    def load(self, doc: Mapping[str, Any]) -> Scenario:
        """The generated document through the scenario loader, exactly as a file would be read."""
        assert self._workdir is not None, "load() runs inside run()"
        path = self._workdir / "scenario.yaml"
        path.write_text(dump(generate.with_results(doc, {})), encoding="utf-8")
        try:
            return load_scenario(path)
        except ScenarioError as exc:  # a generator bug: it must only produce valid scenarios
            raise AssertionError(f"generated an invalid scenario:\n{exc.render()}\n{path.read_text()}") from None

    def _note_error(self, message: str) -> None:
        self.totals.errors.append(message)  # every one: an error hides what it did not observe

    def _report(self, checked: Checked) -> None:
        rows = self.totals.rows
        minutes = max(time.monotonic() - self.started, 1e-9) / 60
        self.progress(f"[{self.totals.generated}/{self.count}] {plural(len(checked.rows), 'row')}: "
                      f"{_counts(Counter(r.status for r in checked.rows))} | total "
                      f"{plural(sum(rows.values()), 'row')}, {plural(rows['disagree'], 'disagreement')}, "
                      f"{plural(rows['error'], 'error')}, {self.totals.scenarios / minutes:.1f} scenarios/min, "
                      f"{sum(rows.values()) / minutes:.0f} rows/min")

    # ----------------------------------------------------------------------------------------------- output

    def _write(self, checked: Checked, number: int) -> Path | None:
        if self.out is None:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        wrong = [r for r in checked.rows if r.status == "disagree"]
        slug = re.sub(r"[^a-z0-9]+", "-", f"{wrong[0].predicted.value}-vs-{wrong[0].observed}-{wrong[0].protocol}")
        path = self.out / f"{number:02d}-{slug.strip('-')}.yaml"
        observed = {r.key: r.observed.value for r in checked.rows if r.observed is not None}
        doc = generate.with_results(checked.doc, observed, default="")
        doc["name"] = f"crosscheck-{self.seed}-{number:02d}"
        istio = self.versions.get("istiod", "?")
        lines = [f"Found by `pytest-istio-mtls crosscheck --seed {self.seed}`: real istiod {istio} disagrees with "
                 "the oracle. The expectations are what istiod did (observed on the local backend)."]
        lines += [f"{r.key}: the oracle predicted {r.predicted.value}, istiod gave {r.observed}. The oracle's "
                  f"reason: {r.reason}" for r in wrong]
        doc = {"name": doc["name"], "description": "\n".join(lines), **{k: v for k, v in doc.items()
                                                                         if k not in ("name", "description")}}
        path.write_text(dump(doc), encoding="utf-8")
        return path

    def _write_error(self, checked: Checked) -> None:
        """A scenario with rows that proved nothing, kept for whoever looks into the infrastructure."""
        if self.out is None:
            return
        directory = self.out / "errors"
        directory.mkdir(parents=True, exist_ok=True)
        number = len(list(directory.glob("*.yaml"))) + 1
        errors = [f"{r.key}: {r.error}" for r in checked.rows if r.status == "error"]
        # Observed results where there are some; the oracle's prediction for the rows that proved nothing.
        results = {r.key: (r.observed or r.predicted).value for r in checked.rows if r.status != "unknown"}
        doc = {"name": f"crosscheck-{self.seed}-error-{number:02d}",
               "description": "Rows of this generated scenario could not be observed (errors, not disagreements); "
                              "their expectations are the oracle's predictions:\n" + "\n".join(errors),
               **{k: v for k, v in generate.with_results(checked.doc, results, default="").items()
                  if k not in ("name", "description")}}
        (directory / f"{number:02d}.yaml").write_text(dump(doc), encoding="utf-8")

    def summary(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started if self.started else 0.0
        rows = self.totals.rows
        minutes = max(elapsed, 1e-9) / 60
        return {
            "seed": self.seed, "count": self.count, "versions": self.versions,
            "scenarios": self.totals.scenarios, "generated": self.totals.generated, "backend_runs": self.totals.runs,
            "rows": sum(rows.values()), "agree": rows["agree"], "disagree": rows["disagree"],
            "unknown": rows["unknown"], "errors": rows["error"], "error_examples": self.totals.errors,
            "observed": {r.value: self.totals.results[r.value] for r in CONCRETE_RESULTS},
            "disagreements": [f.as_json() for f in self.found],
            "elapsed_s": round(elapsed, 1), "scenarios_per_min": round(self.totals.scenarios / minutes, 1),
            "rows_per_min": round(sum(rows.values()) / minutes, 1),
        }


def topologies(count: int, seed_: int) -> list[generate.Doc]:
    """The run's topologies, drawn by Hypothesis from the seed (one per SCENARIOS_PER_TOPOLOGY scenarios).

    Hypothesis's first example is the simplest topology, which has the fewest rows: the pool starts after it.
    """
    wanted = max(1, -(-count // SCENARIOS_PER_TOPOLOGY))
    pool: list[generate.Doc] = []

    @settings(max_examples=wanted + 1, phases=(Phase.generate,), database=None, deadline=None,
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    @seed(seed_)
    @given(generate.topologies())
    def draw(topology: generate.Doc) -> None:
        pool.append(topology)

    draw()
    return pool[1:wanted + 1] if len(pool) > wanted else pool[:wanted]


def reduced(doc: Mapping[str, Any], key: str) -> generate.Doc | None:
    """The scenario with only the row's two workloads (the target with only that port) and the namespaces
    its workloads and policies live in; None when nothing would be removed."""
    source, _, target_port = key.partition("->")
    target, _, port = target_port.rpartition(":")
    topology = doc["topology"]
    keep = []
    for workload in topology["workloads"]:
        ref = f"{workload['name']}.{workload['namespace']}"
        if ref == target:
            workload = {**workload, "ports": [p for p in workload["ports"] if str(p["port"]) == port]}
        elif ref != source:
            continue
        keep.append(workload)
    used = {w["namespace"] for w in keep} | {p["metadata"]["namespace"] for p in doc.get("policies") or []}
    namespaces = {n: s for n, s in topology["namespaces"].items() if n in used}
    new_topology = {"namespaces": namespaces, "workloads": keep}
    if new_topology == topology:
        return None
    request = next((r["request"] for r in doc["expect"] if "request" in r), None)
    out = {k: v for k, v in doc.items() if k != "expect"}
    out["topology"] = new_topology
    out["expect"] = generate.rows(new_topology, (request["method"], request["path"]) if request
                                  else generate.REQUESTS[0])
    return out


def dump(doc: Mapping[str, Any]) -> str:
    """YAML that reads like the hand-written library: block structure, small mappings inline."""
    return yaml.safe_dump(dict(doc), sort_keys=False, default_flow_style=None, width=120, allow_unicode=True)


def _memo_key(doc: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(doc), sort_keys=True)


def _key(pair: str) -> str:
    """A pair id without its request part (``:METHOD:/path``): a generated scenario has one request."""
    match = re.match(r"^(.*?->.*?:\d+)", pair)
    return match.group(1) if match else pair


def _counts(counter: Mapping[str, int]) -> str:
    order = ("agree", "disagree", "unknown", "error")
    return ", ".join(f"{counter[s]} {s}" for s in order if counter.get(s)) or "nothing to compare"


def render(summary: Mapping[str, Any]) -> Iterator[str]:
    """The summary table printed at the end of a run."""
    istio = summary["versions"].get("istiod", "?")
    yield f"crosscheck --seed {summary['seed']} --count {summary['count']} against istiod {istio}"
    yield (f"  {'scenarios':<14}{summary['scenarios']:>8}   ({summary['generated']} generated, "
           f"{summary['backend_runs']} backend runs with shrinking)")
    yield f"  {'rows':<14}{summary['rows']:>8}"
    for name in ("agree", "disagree", "unknown", "errors"):
        yield f"  {'  ' + name:<14}{summary[name]:>8}"
    yield (f"  {'rate':<14}{summary['scenarios_per_min']:>8} scenarios/min, {summary['rows_per_min']} rows/min "
           f"({summary['elapsed_s']} s)")
    observed = ", ".join(f"{name} {count}" for name, count in summary["observed"].items())
    yield f"  {'observed':<14}{observed}"
    for message in summary["error_examples"]:
        yield f"  error: {message}"
    for index, found in enumerate(summary["disagreements"], 1):
        yield f"disagreement {index}: {found['signature']}" + (f" -> {found['file']}" if found["file"] else "")
        for row in found["rows"]:
            yield f"  {row['row']}: predicted {row['predicted']}, observed {row['observed']}"


def as_json(summary: Mapping[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=False)

