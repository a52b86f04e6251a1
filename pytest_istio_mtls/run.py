"""One test session against one backend: probe scenarios in batches, judge, remember outcomes.

pytest items ask for their outcome; the first item of a scenario triggers the whole scenario's
batch (deploy → apply → probe every selected row), so a scenario costs one policy switch
however many rows it has. Outcomes are kept for the terminal truth table and the report files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from . import backends, semantics
from .backends import Backend, BackendError, BackendUnavailable, Progress
from .model import Expectation, Result, Scenario
from .observation import Observation, Probe
from .options import Settings
from .report.model import Report, Row, ScenarioReport
from .scenario import display_path
from .semantics import Prediction
from .verdict import Verdict, decide

Status = Literal["correct", "wrong", "error"]


@dataclass
class Outcome:
    scenario: Scenario
    expectation: Expectation
    prediction: Prediction
    observation: Observation | None = None
    verdict: Verdict | None = None
    error: str = ""  # the batch itself failed (backend error)
    diagnostics: dict[str, str] = field(default_factory=dict)

    @property
    def observed(self) -> Result | None:
        return self.verdict.result if self.verdict is not None else None

    @property
    def status(self) -> Status:
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
        lines = [f"{exp.pair} in scenario {self.scenario.name}"]
        expected = exp.result.value + (f" (HTTP {exp.status})" if exp.status is not None else "")
        lines.append(f"  expected: {expected}")
        if self.error:
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
        for title, text in self.diagnostics.items() if diagnostics else ():
            lines.append(f"  --- {title} ---")
            lines.extend("    " + line for line in text.rstrip().splitlines())
        return "\n".join(lines)

    def row(self) -> Row:
        exp, obs = self.expectation, self.observation
        status = self.status
        return Row(
            source=exp.source.ref, target=exp.target.ref, port=exp.port.port,
            request="" if exp.request.is_default else exp.request.label,
            expected=exp.result.value, expected_http_status=exp.status,
            observed=self.observed.value if self.observed is not None else None,
            http_status=obs.status if obs is not None else None,
            predicted=self.prediction.result.value, reason=self.prediction.reason, status=status,
            message="" if status == "correct" else self.message(),
            because=list(self.verdict.because) if self.verdict is not None else [],
            evidence=obs.to_json() if obs is not None else None,
        )


class Run:
    """Owns the backend for one session; created lazily so collection never needs a mesh."""

    def __init__(self, settings: Settings, progress: Progress,
                 factory: Callable[[Settings, Progress], Backend] | None = None) -> None:
        self.settings = settings
        self.progress = progress
        self._factory = factory or backends.create
        self._backend: Backend | None = None
        self._starting: Backend | None = None
        self._start_error: BackendError | None = None
        self.outcomes: dict[tuple[str, str], Outcome] = {}
        self.scenario_errors: dict[str, str] = {}
        self._done: set[str] = set()
        self._scenarios: dict[str, Scenario] = {}
        self.started = time.monotonic()
        self.versions: dict[str, str] = {}

    @property
    def backend(self) -> Backend:
        if self._start_error is not None:
            raise self._start_error
        if self._backend is None:
            backend = self._factory(self.settings, self.progress)
            self._starting = backend  # teardown must reach what a failed or interrupted start() created
            try:
                backend.start()
            except BackendError as exc:
                self._start_error = exc
                raise
            self._backend = backend
            self.versions = backend.versions()
        return self._backend

    def outcome(self, scenario: Scenario, expectation: Expectation,
                selected: Sequence[Expectation]) -> Outcome:
        key = str(scenario.path)
        if key not in self._done:
            self._done.add(key)
            self._scenarios[key] = scenario
            self._execute(scenario, selected)
        return self.outcomes[(key, expectation.pair)]

    def _execute(self, scenario: Scenario, expectations: Sequence[Expectation]) -> None:
        key = str(scenario.path)
        if self._backend is None and self._start_error is None:
            try:
                _ = self.backend  # an unusable backend stops the session before any row is recorded
            except BackendUnavailable:
                raise
            except BackendError:
                pass  # recorded below, as every row's error
        outcomes = [Outcome(scenario, e, semantics.predict(scenario, e.source, e.target, e.port, e.request))
                    for e in expectations]
        for outcome in outcomes:
            self.outcomes[(key, outcome.expectation.pair)] = outcome
        probes = [Probe(e.source, e.target, e.port, e.request) for e in expectations]
        try:
            backend = self.backend
            self.progress(f"scenario {scenario.name}: deploying {len(scenario.topology.workloads)} workloads")
            backend.deploy(scenario.topology, scenario.mesh)
            self.progress(f"scenario {scenario.name}: applying {len(scenario.policies)} policies")
            backend.apply(scenario)
            self.progress(f"scenario {scenario.name}: probing {len(probes)} connections")
            observations = backend.probe(probes)
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

    def failed(self) -> bool:
        return any(o.status != "correct" for o in self.outcomes.values()) or bool(self.scenario_errors)

    def report(self) -> Report:
        report = Report(backend=self.settings.backend, versions=dict(self.versions),
                        duration_s=time.monotonic() - self.started)
        for key, scenario in self._scenarios.items():
            rows = [o.row() for (k, _), o in self.outcomes.items() if k == key]
            report.scenarios.append(ScenarioReport(
                name=scenario.name, file=display_path(scenario.path), description=scenario.description, rows=rows,
                policies=[p.ref for p in scenario.policies], warnings=[str(w) for w in scenario.warnings],
                error=self.scenario_errors.get(key, ""),
            ))
        return report

    def finish(self, *, interrupted: bool = False) -> str:
        """Tear the backend down per --istio-keep; returns what to print (inspection instructions)."""
        backend = self._backend or self._starting
        if backend is None:
            return ""
        keep = self._backend is not None and (self.settings.keep == "always" or (
            self.settings.keep == "on-failure" and (self.failed() or interrupted)))
        self._backend = self._starting = None
        return backend.stop(keep=keep)
