"""The report's data: what every renderer (terminal, JSON, Markdown, HTML) reads.

``report.json`` is this structure serialised; its schema is versioned (``schemaVersion``) and
documented in docs/report-schema.md and pytest_istio_mtls/report/report.schema.json.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .._version import __version__
from ..model import Step

SCHEMA_VERSION = 1
RowStatus = Literal["correct", "wrong", "error", "predicted", "not run", "not asserted"]
# A batch's phases (run.py times them), in order: deploy the topology (or reuse it), apply the policies and confirm
# every proxy enforces them, probe (evidence gathered with each probe), then judge the evidence (and collect
# diagnostics for the rows that failed).
PHASES = ("deploy", "apply", "probe", "evidence")


def seconds(value: float | None) -> float | None:
    """A duration as report.json writes it: to the millisecond."""
    return round(value, 3) if value is not None else None


def phases_json(phases: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 3) for name, value in phases.items()}


def phases_total(phases: dict[str, float]) -> float | None:
    """The time of a batch (or of several), its phases together; None when nothing was timed."""
    return sum(phases.values()) if phases else None


@dataclass
class Row:
    source: str  # "curl.foo"
    target: str  # "httpbin.foo"
    port: int  # Service port
    predicted: str  # the oracle's result ("unknown" possible)
    reason: str  # the oracle's reason
    status: RowStatus
    expected: str | None = None  # the scenario's expectation (None: a prediction-only row)
    observed: str | None = None  # the verdict (None: no result, see message)
    request: str = ""  # "POST /post" when not the default request
    http_status: int | None = None
    expected_http_status: int | None = None
    message: str = ""  # why it is wrong or an error, for people
    because: list[str] = field(default_factory=list)  # evidence behind the observed result
    evidence: dict[str, Any] | None = None  # the raw observation (see the schema)
    step: str = ""  # the step of a scenario with steps: part of the row's identity
    duration_s: float | None = None  # its share of its batch's time (None: not probed in a batch)

    @property
    def column(self) -> str:
        return f"{self.target}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.target,
            "port": self.port,
            "request": self.request or None,
            "expected": self.expected,
            "expectedStatus": self.expected_http_status,
            "observed": self.observed,
            "httpStatus": self.http_status,
            "predicted": self.predicted,
            "reason": self.reason,
            "status": self.status,
            "message": self.message,
            "because": self.because,
            "evidence": self.evidence,
            "step": self.step or None,
            "durationSeconds": seconds(self.duration_s),
        }


@dataclass
class StepReport:
    """One step of a scenario with steps: the policies in force and how they differ from the step before."""

    name: str
    number: int  # 1-based, in the scenario file's order
    description: str = ""
    policies: list[str] = field(default_factory=list)  # in force at this step
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    error: str = ""  # this step could not run (its rows are then errors)
    phases: dict[str, float] = field(default_factory=dict)  # deploy, apply, probe, evidence → seconds

    @property
    def changes(self) -> str:
        """``added X; removed Y`` for people ("" when the step changes nothing)."""
        parts = [f"{what} {', '.join(refs)}" for what, refs in
                 (("added", self.added), ("changed", self.changed), ("removed", self.removed)) if refs]
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "number": self.number, "description": self.description,
                "policies": self.policies, "added": self.added, "changed": self.changed, "removed": self.removed,
                "error": self.error or None, "durationSeconds": seconds(phases_total(self.phases)),
                "phases": phases_json(self.phases)}


@dataclass
class ScenarioReport:
    name: str
    file: str
    description: str = ""
    rows: list[Row] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)  # "PeerAuthentication foo/default"
    warnings: list[str] = field(default_factory=list)
    error: str = ""  # the scenario could not run at all (e.g. its policies never took effect)
    steps: list[StepReport] = field(default_factory=list)  # a scenario with steps: those with rows, in file order
    phases: dict[str, float] = field(default_factory=dict)  # deploy, apply, probe, evidence → seconds (steps summed)

    def add_phases(self, phases: dict[str, float]) -> None:
        """Count one more batch (a step, or a worker's share of the steps) in the scenario's time."""
        for name, value in phases.items():
            self.phases[name] = self.phases.get(name, 0.0) + value

    def counts(self, step: str | None = None) -> dict[str, int]:
        """Rows per status (of one step when ``step`` is given)."""
        counts = {"correct": 0, "wrong": 0, "error": 0, "predicted": 0, "not run": 0}
        for row in self.rows:
            if step is None or row.step == step:
                counts[row.status] = counts.get(row.status, 0) + 1  # "not asserted" only when some row is
        return counts

    def rows_of(self, step: StepReport) -> list[Row]:
        return [row for row in self.rows if row.step == step.name]

    def previous(self, step: StepReport) -> StepReport | None:
        """The step before ``step`` in the file, when this report has its rows."""
        return next((s for s in self.steps if s.number == step.number - 1), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "file": self.file,
            "description": self.description,
            "policies": self.policies,
            "warnings": self.warnings,
            "error": self.error or None,
            "counts": self.counts(),
            "rows": [row.to_json() for row in self.rows],
            "steps": [step.to_json() for step in self.steps],
            "durationSeconds": seconds(phases_total(self.phases)),
            "phases": phases_json(self.phases),
        }


@dataclass
class Report:
    backend: str  # "local", "kind", "existing", or "predict" for oracle-only reports
    scenarios: list[ScenarioReport] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)  # istio, kubernetes, envoy, kind, nodeImage...
    started: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    duration_s: float = 0.0
    interrupted: bool = False  # Ctrl-C or SIGTERM: rows that had not run yet are "not run"
    start_s: float | None = None  # how long the backend took to start (None: it did not start in this run)

    def counts(self) -> dict[str, int]:
        total = {"correct": 0, "wrong": 0, "error": 0, "predicted": 0, "not run": 0}
        for scenario in self.scenarios:
            for key, value in scenario.counts().items():
                total[key] = total.get(key, 0) + value
        return total

    def to_json(self) -> dict[str, Any]:
        return {
            "schemaVersion": SCHEMA_VERSION,
            "tool": {"name": "pytest-istio-mtls", "version": __version__},
            "backend": self.backend,
            "versions": self.versions,
            "started": self.started,
            "durationSeconds": round(self.duration_s, 3),
            "startSeconds": seconds(self.start_s),
            "interrupted": self.interrupted,
            "counts": self.counts(),
            "scenarios": [scenario.to_json() for scenario in self.scenarios],
        }


def capture_of(row: Row) -> dict[str, Any] | None:
    """The capture part of a row's observation (``evidence.evidence.capture`` in report.json)."""
    capture = ((row.evidence or {}).get("evidence") or {}).get("capture")
    return capture if isinstance(capture, dict) else None


def capture_path(row: Row) -> str:
    """The row's kept capture file ("" when none), as its evidence records it."""
    capture = capture_of(row)
    return str(capture.get("pcap") or "") if capture is not None else ""


def step_report(step: Step) -> StepReport:
    """A step of a scenario (the model's ``Step``) as its report records it."""
    return StepReport(name=step.name, number=step.number, description=step.description,
                      policies=[p.ref for p in step.policies], added=list(step.added), changed=list(step.changed),
                      removed=list(step.removed))


def row_anchor(file: str, row: Row) -> str:
    """A stable id for one row of a report (``report.html#<id>``, report.md's failures index, JUnit's
    ``istio_evidence``): the scenario file and the pair, in characters every URL and HTML id accepts."""
    request = f"-{row.request}" if row.request else ""
    step = f"{row.step}--" if row.step else ""
    return "row-" + re.sub(r"[^A-Za-z0-9._-]+", "-", f"{file}--{step}{row.source}--{row.target}-{row.port}{request}")


def row_from_json(data: dict[str, Any]) -> Row:
    return Row(source=data["from"], target=data["to"], port=int(data["port"]), predicted=data["predicted"],
               reason=data["reason"], status=data["status"], expected=data.get("expected"),
               observed=data.get("observed"), request=data.get("request") or "",
               http_status=data.get("httpStatus"), expected_http_status=data.get("expectedStatus"),
               message=data.get("message") or "", because=list(data.get("because") or []),
               evidence=data.get("evidence"), step=data.get("step") or "", duration_s=data.get("durationSeconds"))


def step_from_json(data: dict[str, Any]) -> StepReport:
    return StepReport(name=data["name"], number=int(data["number"]), description=data.get("description") or "",
                      policies=list(data.get("policies") or []), added=list(data.get("added") or []),
                      changed=list(data.get("changed") or []), removed=list(data.get("removed") or []),
                      error=data.get("error") or "", phases=dict(data.get("phases") or {}))


def report_from_json(data: dict[str, Any]) -> Report:
    """The inverse of ``Report.to_json`` (how pytest-xdist workers hand their reports to the controller)."""
    report = Report(backend=data["backend"], versions=dict(data.get("versions") or {}),
                    started=data.get("started") or "", duration_s=float(data.get("durationSeconds") or 0.0),
                    interrupted=bool(data.get("interrupted")), start_s=data.get("startSeconds"))
    for scenario in data.get("scenarios") or []:
        report.scenarios.append(ScenarioReport(
            name=scenario["name"], file=scenario["file"], description=scenario.get("description") or "",
            rows=[row_from_json(r) for r in scenario.get("rows") or []], policies=list(scenario.get("policies") or []),
            warnings=list(scenario.get("warnings") or []), error=scenario.get("error") or "",
            steps=[step_from_json(s) for s in scenario.get("steps") or []], phases=dict(scenario.get("phases") or {})))
    return report


def merge(reports: list[Report]) -> Report:
    """One report from several (one per pytest-xdist worker, each with its own mesh).

    Rows of a scenario that several workers ran are joined in the scenario's order of first appearance (the
    steps of a scenario with steps in file order, each worker having run its share of the steps on its own
    deployment), their times added up; the earliest start and the longest duration (and backend start) stand for
    the run (the workers ran side by side).
    """
    merged = Report(backend=reports[0].backend if reports else "")
    if not reports:
        return merged
    merged.started = min(r.started for r in reports)
    merged.duration_s = max(r.duration_s for r in reports)
    merged.interrupted = any(r.interrupted for r in reports)
    merged.start_s = max((r.start_s for r in reports if r.start_s is not None), default=None)
    by_key: dict[tuple[str, str], ScenarioReport] = {}
    for report in reports:
        for key, value in report.versions.items():
            merged.versions.setdefault(key, value)
        for scenario in report.scenarios:
            existing = by_key.get((scenario.file, scenario.name))
            if existing is None:
                copy = ScenarioReport(scenario.name, scenario.file, scenario.description, list(scenario.rows),
                                      list(scenario.policies), list(scenario.warnings), scenario.error,
                                      list(scenario.steps), dict(scenario.phases))
                by_key[(scenario.file, scenario.name)] = copy
                merged.scenarios.append(copy)
            else:
                existing.rows.extend(scenario.rows)
                existing.error = existing.error or scenario.error
                existing.policies = list(dict.fromkeys([*existing.policies, *scenario.policies]))
                existing.steps += [s for s in scenario.steps if s.name not in {e.name for e in existing.steps}]
                existing.add_phases(scenario.phases)
    for scenario in merged.scenarios:
        if scenario.steps:
            scenario.steps.sort(key=lambda s: s.number)
            order = {s.name: s.number for s in scenario.steps}
            scenario.rows.sort(key=lambda row: order.get(row.step, 0))  # stable: each step's rows keep their order
    merged.scenarios.sort(key=lambda s: (s.file, s.name))
    return merged
