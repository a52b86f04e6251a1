"""One test session against one backend: probe scenarios in batches, judge, remember outcomes.

pytest items ask for their outcome; the first item of a scenario triggers the whole scenario's
batch (deploy → apply → probe every selected row), so a scenario costs one policy switch
however many rows it has. A scenario with steps is one batch per step on one deployment: each step
switches the policies live (the backend confirms them on every proxy), then probes that step's rows.
The report holds what pytest reported: every collected row appears, and a row pytest never ran
(interrupted, ``-x``, a kept earlier scenario) is ``not run``, so the truth table's counts agree with
pytest's. Probes made through the ``istio_probe`` fixture appear as rows of a pseudo-scenario named
after their test.

Each batch is timed phase by phase (``report.model.PHASES``) and its rows share its time equally: they are
deployed, switched to and probed together, so no row has a time of its own. The backend's start is timed
apart, as it serves every batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from . import backends
from .backends import Backend, BackendError, BackendUnavailable, Progress, support
from .judge.observation import Observation, Probe
from .judge.verdict import Verdict, decide
from .model import Expectation, Result, Scenario
from .model.diagnostics import plural
from .options import Settings
from .oracle import mtls
from .oracle.mtls import Prediction
from .report.model import Report, Row, RowStatus, ScenarioReport, step_report
from .scenario.loader import display_path

if TYPE_CHECKING:
    from .mesh import ProbeResult

Status = Literal["correct", "wrong", "error", "not run"]
RowKey = tuple[str, str]  # (scenario key, pair id)
clock: Callable[[], float] = time.monotonic  # what the run and its phases are timed with (tests move a fake one)


def scenario_key(scenario: Scenario) -> str:
    """What one batch runs: a scenario file, or one step of it (``file::step``)."""
    return str(scenario.path) + (f"::{scenario.step}" if scenario.step else "")


def title(scenario: Scenario) -> str:
    """``scenario NAME`` or ``scenario NAME, step STEP``, as progress lines and messages name a batch."""
    return f"scenario {scenario.scenario_name}" + (f", step {scenario.step}" if scenario.step else "")


def quoted(scenario: Scenario) -> str:
    """``scenario 'NAME'`` or ``scenario 'NAME' at step 'STEP'``, in messages about a whole batch."""
    return f"scenario '{scenario.scenario_name}'" + (f" at step '{scenario.step}'" if scenario.step else "")


@dataclass
class Batch:
    """How long one batch (a scenario, or one step of it) took, phase by phase. Its rows share the time equally:
    they are deployed, switched to and probed together."""

    rows: int
    phases: dict[str, float] = field(default_factory=dict)  # phase (of PHASES) → seconds, for those that ran

    @property
    def seconds(self) -> float:
        return sum(self.phases.values())

    @property
    def share(self) -> float:
        """One row's share of the batch's time."""
        return self.seconds / self.rows if self.rows else 0.0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time one phase; a phase that fails or is interrupted still counts the time it took."""
        begun = clock()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + clock() - begun


@dataclass
class Outcome:
    scenario: Scenario
    expectation: Expectation
    prediction: Prediction
    observation: Observation | None = None
    verdict: Verdict | None = None
    error: str = ""  # the batch itself failed (backend error)
    diagnostics: dict[str, str] = field(default_factory=dict)
    not_run: str = ""  # why the row was never probed or never reported by pytest
    batch: Batch | None = None  # the batch that probed it (None: nothing was deployed for it)

    @property
    def seconds(self) -> float | None:
        """This row's share of its batch's time; None when it was not probed in a batch."""
        return self.batch.share if self.batch is not None and not self.not_run else None

    @property
    def observed(self) -> Result | None:
        return self.verdict.result if self.verdict is not None else None

    @property
    def status(self) -> Status:
        if self.not_run:
            return "not run"
        if self.error or self.verdict is None or self.verdict.result is None:
            return "error"
        observed = self.verdict.result
        pinned = self.expectation.status
        http = self.observation.status if self.observation is not None else None
        if self.expectation.result.covers(observed) and (pinned is None or pinned == http):
            return "correct"
        return "wrong"

    def message(self, *, diagnostics: bool = True) -> str:
        """The failure text: expected vs observed, why it was expected, the evidence (and diagnostics,
        which pytest items show as report sections instead)."""
        exp = self.expectation
        lines = [f"{exp.pair} in {title(self.scenario)}"]
        expected = exp.result.value + (f" (HTTP {exp.status})" if exp.status is not None else "")
        lines.append(f"  expected: {expected}")
        if self.not_run:
            lines.append(f"  not run: {self.not_run}")
        elif self.error:
            lines.append(f"  observed: ERROR: {self.error}")
        elif self.verdict is not None and self.verdict.result is None:
            lines.append(f"  observed: ERROR: {self.verdict.error}")
        elif self.verdict is not None and self.observation is not None:
            http = f" (HTTP {self.observation.status})" if self.observation.status is not None else ""
            lines.append(f"  observed: {self.verdict.result}{http}")
        lines.append(f"  oracle:   {self.prediction.result.value}: {self.prediction.reason}")
        if self.observation is not None:
            lines.append(f"  client saw: {self.observation.client_saw()}")
        because = [b for b in (self.verdict.because if self.verdict else []) if not b.startswith("client saw")]
        if because:
            lines.append("  because:")
            lines.extend(f"    - {item}" for item in because)
        if self.observation is not None:
            lines.append("  evidence:")
            lines.extend(f"    {line}" for line in self.observation.evidence.summary() or ["(none recorded)"])
        for heading, text in self.diagnostics.items() if diagnostics else ():
            lines.append(f"  --- {heading} ---")
            lines.extend("    " + line for line in text.rstrip().splitlines())
        return "\n".join(lines)

    def row(self) -> Row:
        exp, obs = self.expectation, self.observation
        status = self.status
        return Row(
            source=exp.client, target=exp.destination, port=exp.port.port,
            request="" if exp.request.is_default else exp.request.label,
            expected=exp.result.value, expected_http_status=exp.status,
            observed=self.observed.value if self.observed is not None else None,
            http_status=obs.status if obs is not None else None,
            predicted=self.prediction.result.value, reason=self.prediction.reason, status=status,
            message="" if status == "correct" else self.not_run or self.message(),
            because=list(self.verdict.because) if self.verdict is not None else [],
            evidence=obs.to_json() if obs is not None else None, step=self.scenario.step, duration_s=self.seconds,
        )


@dataclass
class FixtureProbe:
    """One ``istio_probe(...)`` call of a Python test, with the policies in force at the time. The result
    remembers what the test's comparisons of it concluded, which is what its row says."""

    result: ProbeResult
    policies: tuple[str, ...]


@dataclass
class FixtureTest:
    """A Python test's probes. Each probe's row is what the test's assertion about that probe concluded (or
    ``not asserted``), never the test's outcome: one wrong assertion, or a crash, says nothing of other probes."""

    name: str
    file: str
    probes: list[FixtureProbe] = field(default_factory=list)
    failure: str | None = None  # None: not finished; "": passed; else the failure's first line

    def rows(self) -> list[Row]:
        return [self._row(p) for p in self.probes]

    def _row(self, fixture: FixtureProbe) -> Row:
        result = fixture.result
        probe, observed, assertion = result.observation.probe, result.verdict.result, result.assertion
        expected = assertion.expected if assertion is not None else None
        head = f"{probe.pair} in test {self.name}"
        status: RowStatus
        if observed is None:
            status = "error"
        elif assertion is None:
            status = "not asserted"
        else:
            status = "correct" if assertion.held else "wrong"
        message = ""
        if status == "not asserted":
            fate = f"; the test failed: {self.failure}" if self.failure else ""
            message = f"{head}: not asserted (the test compared no result of this probe{fate})"
        elif status != "correct":
            block = result.explain(expected).splitlines()
            asserted = [f"  asserted: .result {assertion.comparison}"] if assertion and expected is None else []
            message = "\n".join([head, *asserted, *block[1:]])
        return Row(source=probe.source.ref, target=probe.target.ref, port=probe.port.port,
                   request="" if probe.request.is_default else probe.request.label,
                   observed=observed.value if observed is not None else None, http_status=result.observation.status,
                   predicted=result.prediction.result.value, reason=result.prediction.reason, status=status,
                   expected=expected.value if expected is not None else None, message=message,
                   because=list(result.verdict.because), evidence=result.observation.to_json())

    def report(self) -> ScenarioReport:
        policies = list(dict.fromkeys(p for probe in self.probes for p in probe.policies))
        return ScenarioReport(name=self.name, file=self.file, rows=self.rows(), policies=policies,
                              description="probes of a Python test (istio_probe); its assertions are the "
                                          "expectations")


def later_count(skipped: Sequence[Scenario], kept: Scenario) -> str:
    """``2 later scenarios (5 steps)``, ``1 later step``: steps are counted as steps, not as scenarios."""
    own = [s for s in skipped if s.path == kept.path and s.scenario_name == kept.scenario_name]
    others = {(s.path, s.scenario_name): s for s in skipped if s not in own}
    parts = [plural(len(own), "later step")] if own else []
    if others:
        steps = sum(1 for s in skipped if s not in own and s.step)
        parts.append(plural(len(others), "later scenario") + (f" ({plural(steps, 'step')})" if steps else ""))
    return " and ".join(parts)


class Run:
    """Owns the backend for one session; created lazily so collection never needs a mesh."""

    def __init__(self, settings: Settings, progress: Progress,
                 factory: Callable[[Settings, Progress], Backend] | None = None) -> None:
        self.settings = settings
        self.progress = progress
        self._factory = factory or backends.create
        self._backend: Backend | None = None
        self._starting: Backend | None = None
        self._start_error: BackendUnavailable | None = None
        self.outcomes: dict[RowKey, Outcome] = {}
        self.scenario_errors: dict[str, str] = {}
        self._done: set[str] = set()
        self._planned: list[tuple[Scenario, Expectation]] = []
        self._reported: set[RowKey] = set()
        self.fixture_tests: dict[str, FixtureTest] = {}
        self.kept: Scenario | None = None  # --istio-keep=on-failure: the first failing scenario, left deployed
        self._not_deployed: list[Scenario] = []  # scenarios (or steps) skipped so that `kept` stays as it failed
        self._last: Scenario | None = None  # the scenario deployed last
        self.batches: dict[str, Batch] = {}  # scenario key → its batch's timing
        self.start_seconds: float | None = None  # how long the backend's start() took (None: not started)
        self.started = clock()
        self.versions: dict[str, str] = {}

    @property
    def backend(self) -> Backend:
        """The started backend. One that cannot start raises BackendUnavailable (every time): nothing can
        run, so the session stops once with its message instead of failing every row the same way."""
        if self._start_error is not None:
            raise self._start_error
        if self._backend is None:
            backend = self._factory(self.settings, self.progress)
            self._starting = backend  # teardown must reach what a failed or interrupted start() created
            begun = clock()
            try:
                backend.start()
            except BackendError as exc:
                self._start_error = exc if isinstance(exc, BackendUnavailable) else BackendUnavailable(str(exc))
                raise self._start_error from None
            finally:
                self.start_seconds = clock() - begun
            self._backend = backend
            self.versions = backend.versions()
        return self._backend

    def plan(self, rows: Sequence[tuple[Scenario, Expectation]]) -> None:
        """The rows pytest will run, in order: the report shows each one, run or not."""
        self._planned = list(rows)

    def outcome(self, scenario: Scenario, expectation: Expectation,
                selected: Sequence[Expectation]) -> Outcome:
        key = scenario_key(scenario)
        if key not in self._done:
            self._done.add(key)
            self._execute(scenario, selected)
        return self.outcomes[(key, expectation.pair)]

    def reported(self, scenario: Scenario, expectation: Expectation) -> None:
        """pytest runs this row's item: the report shows its outcome (rows never reported are ``not run``)."""
        self._reported.add((scenario_key(scenario), expectation.pair))

    def _execute(self, scenario: Scenario, expectations: Sequence[Expectation]) -> None:
        key = scenario_key(scenario)
        # Decided offline, before starting or deploying anything: one error, the other rows not run.
        cannot = support.unsupported(scenario, self.settings.backend, self.settings.control_plane)
        kept = self.kept
        # A backend that cannot start stops the session here, before any row is recorded.
        backend = self.backend if kept is None and cannot is None else None
        outcomes = [Outcome(scenario, e, mtls.predict(scenario, e.source, e.target, e.port, e.request))
                    for e in expectations]
        for outcome in outcomes:
            self.outcomes[(key, outcome.expectation.pair)] = outcome
        if cannot is not None:
            self.scenario_errors[key] = cannot
            outcomes[0].error = f"the {self.settings.backend} backend cannot run {quoted(scenario)}: {cannot}"
            for outcome in outcomes[1:]:
                outcome.not_run = f"{quoted(scenario)} cannot run on this backend (see its first row)"
            return
        if backend is None:
            assert kept is not None
            self._not_deployed.append(scenario)
            alone = display_path(scenario.path) + (f"::{scenario.scenario_name}::{scenario.step}" if scenario.step
                                                   else "")
            reason = (f"--istio-keep=on-failure keeps the mesh of {quoted(kept)} "
                      f"({display_path(kept.path)}), which failed first, so no later scenario is deployed; "
                      f"run {alone} alone to test (and keep) this one")
            for outcome in outcomes:
                outcome.not_run = reason
            return
        probes = [Probe(e.source, e.target, e.port, e.request) for e in expectations]
        batch = self.batches[key] = Batch(len(outcomes))
        for outcome in outcomes:
            outcome.batch = batch
        try:
            with batch.phase("deploy"):
                deployed = self._last is not None and self._last.path == scenario.path and self._last.step != ""
                self._last = scenario
                if not deployed:  # a later step runs on the deployment of the step before (deploy() reuses it)
                    self.progress(f"{title(scenario)}: deploying "
                                  f"{plural(len(scenario.topology.workloads), 'workload')}")
                backend.deploy(scenario.topology, scenario.mesh)
            with batch.phase("apply"):
                step = scenario.current
                changes = f" ({step.changes})" if step is not None and step.changes else ""
                self.progress(f"{title(scenario)}: applying {plural(len(scenario.policies), 'policy')}{changes}")
                backend.apply(scenario)
            with batch.phase("probe"):
                self.progress(f"{title(scenario)}: probing {plural(len(probes), 'connection')}")
                observations = backend.probe(probes)
            with batch.phase("evidence"):
                for outcome, observation in zip(outcomes, observations, strict=True):
                    outcome.observation = observation
                    outcome.verdict = decide(observation)
                for probe, outcome in zip(probes, outcomes, strict=True):
                    if outcome.status != "correct":  # each failing row shows its own pair, not the others'
                        outcome.diagnostics = backend.diagnostics([probe])
            # No clear() here: the next scenario's apply() replaces these policies, and a kept run
            # (--istio-keep) shows the last scenario's policies still in force.
        except BackendUnavailable:
            raise  # the backend cannot run here at all: the session stops with this one message
        except BackendError as exc:
            self.scenario_errors[key] = str(exc)
            for outcome in outcomes:
                if outcome.verdict is None:
                    outcome.error = str(exc)
        if self.settings.keep == "on-failure" and any(o.status != "correct" for o in outcomes):
            self.kept = scenario

    def record_fixture_probe(self, test: str, name: str, file: str, result: ProbeResult,
                             policies: Sequence[str]) -> None:
        """A probe made by a Python test through ``istio_probe``: a row of the test's pseudo-scenario."""
        entry = self.fixture_tests.setdefault(test, FixtureTest(name, file))
        entry.probes.append(FixtureProbe(result, tuple(policies)))

    def fixture_test_finished(self, test: str, failure: str) -> None:
        """The test's outcome (``""`` passed, else the failure's first line): whether the run failed, for
        ``--istio-keep=on-failure``. It does not judge the test's probes: their own assertions do."""
        entry = self.fixture_tests.get(test)
        if entry is not None and (failure or entry.failure is None):  # a teardown failure overrides a pass
            entry.failure = failure

    def failed(self) -> bool:
        return (any(o.status not in ("correct", "not run") for o in self.outcomes.values())
                or bool(self.scenario_errors) or any(t.failure for t in self.fixture_tests.values()))

    def has_rows(self, *, interrupted: bool = False) -> bool:
        """Did anything run that a report should show? An interrupted run shows its planned rows even when
        none ran (Ctrl-C while the backend started): each one ``not run``, as when interrupted later."""
        return bool(self.outcomes or self.fixture_tests or (interrupted and self._planned))

    def report(self, *, interrupted: bool = False) -> Report:
        """Every planned row (``not run`` when pytest never reported it), then the fixture tests' rows."""
        report = Report(backend=self.settings.backend, versions=dict(self.versions),
                        duration_s=clock() - self.started, interrupted=interrupted, start_s=self.start_seconds)
        never = ("the run was interrupted before this row ran" if interrupted
                 else "pytest stopped before this row ran")
        rows: dict[str, tuple[Scenario, list[Expectation]]] = {}
        for scenario, expectation in self._planned:
            rows.setdefault(scenario_key(scenario), (scenario, []))[1].append(expectation)
        for (key, pair), outcome in self.outcomes.items():  # reported rows outside the plan (an xdist worker's)
            if (key, pair) in self._reported:
                planned = rows.setdefault(key, (outcome.scenario, []))[1]
                if outcome.expectation not in planned:
                    planned.append(outcome.expectation)
        by_file: dict[str, ScenarioReport] = {}
        for key, (scenario, expectations) in rows.items():
            scenario_rows = []
            for exp in expectations:
                found = self.outcomes.get((key, exp.pair))
                if found is None or ((key, exp.pair) not in self._reported and not found.not_run):
                    prediction = found.prediction if found is not None else mtls.predict(
                        scenario, exp.source, exp.target, exp.port, exp.request)
                    found = Outcome(scenario, exp, prediction, not_run=never)
                scenario_rows.append(found.row())
            entry = by_file.get(str(scenario.path))
            if entry is None:  # the steps of a scenario are one scenario of the report, each row naming its step
                entry = by_file[str(scenario.path)] = ScenarioReport(
                    name=scenario.scenario_name, file=display_path(scenario.path), description=scenario.description,
                    warnings=[str(w) for w in scenario.warnings])
                report.scenarios.append(entry)
            entry.rows += scenario_rows
            if scenario.current is None:  # a scenario with steps names each step's policies with that step, not all
                entry.policies = list(dict.fromkeys([*entry.policies, *(p.ref for p in scenario.policies)]))
            error = self.scenario_errors.get(key, "")
            phases = dict(self.batches[key].phases) if key in self.batches else {}
            entry.add_phases(phases)  # a scenario's time is its steps' together
            step = scenario.current
            if step is not None:
                entry.steps.append(replace(step_report(step), error=error, phases=phases))
            if error and not entry.error:
                entry.error = f"step {step.name}: {error}" if step is not None else error
        report.scenarios.extend(test.report() for test in self.fixture_tests.values())
        return report

    def finish(self, *, interrupted: bool = False) -> str:
        """Tear the backend down per --istio-keep; returns what to print (inspection instructions)."""
        backend = self._backend or self._starting
        if backend is None:
            return ""
        keep = self._backend is not None and (self.settings.keep == "always" or (
            self.settings.keep == "on-failure" and (self.failed() or interrupted)))
        self._backend = self._starting = None
        instructions = backend.stop(keep=keep)
        if not keep:
            return instructions
        return "\n".join(line for line in (self._kept_line(interrupted), instructions) if line)

    def _kept_line(self, interrupted: bool) -> str:
        """Which scenario's mesh is kept, and how to keep another."""
        if self.kept is not None:
            line = f"kept: {quoted(self.kept)} ({display_path(self.kept.path)}), the first that failed"
            if self._not_deployed:
                line += (f"; {later_count(self._not_deployed, self.kept)} not deployed so that its mesh "
                         "stays as it failed (to keep another, run its file alone with --istio-keep=on-failure)")
            return line
        if self._last is None:
            return "kept: the mesh of the Python fixtures (istio_mesh)"
        when = "when the run was interrupted" if interrupted else "the last one deployed"
        return f"kept: {quoted(self._last)} ({display_path(self._last.path)}), {when}"
