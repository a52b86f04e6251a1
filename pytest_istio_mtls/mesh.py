"""The Python API behind the fixtures, for teams that write probes as ordinary pytest tests.

Example::

    def test_strict_foo(istio_policies, istio_probe):
        with istio_policies(STRICT_FOO_YAML):
            assert istio_probe("curl.legacy", "httpbin.foo:8000").result == "refused"
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from .backends import Backend
from .judge.observation import Observation, Probe
from .judge.verdict import Verdict, decide
from .model import (
    CONCRETE_RESULTS,
    EXPECTABLE_RESULTS,
    Expectation,
    MeshSettings,
    Request,
    Result,
    Scenario,
    Topology,
    Workload,
)
from .model.diagnostics import did_you_mean
from .oracle import mtls
from .scenario.loader import display_path, load_policies
from .scenario.resolve import Unresolved, resolve_port, resolve_workload

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
RESULT_NAMES = [r.value for r in EXPECTABLE_RESULTS]

# The probe whose ``.result`` each test read last. pytest's comparison hook sees only the compared
# values, and a Result (or None) does not say which probe it came from: the one read just before the
# failed comparison is the one compared. Weak, so a finished test's probes are not kept alive.
_last_read: weakref.WeakValueDictionary[str, ProbeResult] = weakref.WeakValueDictionary()


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "")


@dataclass(eq=False)
class ProbeResult:
    """One probe: what the client saw, the judged result (None when unproven) and the prediction.

    ``str()`` is one line; ``explain()`` is the block a failing scenario item prints.
    """

    observation: Observation
    verdict: Verdict
    prediction: mtls.Prediction
    scenario: Scenario  # what was in force: the policies the oracle predicted from

    @property
    def result(self) -> Result | None:
        _last_read[_current_test()] = self
        return self.verdict.result

    @property
    def status(self) -> int | None:
        return self.observation.status

    @property
    def pair(self) -> str:
        return self.observation.probe.pair

    def explain(self, expected: Result | str | None = None) -> str:
        """Expected (when given) vs observed, the oracle's reason, what the client saw and the evidence:
        the text ``run.Outcome.message`` writes for a failing scenario item."""
        from .run import Outcome

        probe = self.observation.probe
        wanted = Result(expected) if expected is not None else self.prediction.result
        expectation = Expectation(probe.source, probe.target, probe.port, wanted, probe.request)
        text = Outcome(self.scenario, expectation, self.prediction, self.observation, self.verdict).message(
            diagnostics=False)
        if expected is None:  # nothing was expected: drop the line that would say so
            text = "\n".join(line for line in text.splitlines() if not line.startswith("  expected:"))
        return text

    def _observed(self) -> str:
        if self.verdict.result is None:
            return f"ERROR: {self.verdict.error}"
        http = f" (HTTP {self.observation.status})" if self.observation.status is not None else ""
        return f"{self.verdict.result.value}{http}"

    def __str__(self) -> str:
        return f"{self.pair}: {self._observed()} (oracle: {self.prediction.result.value})"

    def __repr__(self) -> str:
        return f"<ProbeResult {self.pair}: {self._observed()}>"


def assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """What pytest prints for a failed comparison involving a probe (its ``.result`` or the probe itself):
    the comparison, then the block a failing scenario item prints; None for any other comparison."""
    for side, other in ((left, right), (right, left)):
        probe = _compared_probe(side, other)
        if probe is not None:
            break
    else:
        return None
    expected = Result(other) if op == "==" and isinstance(other, str) and other in RESULT_NAMES else None
    lines = [f"{_short(left)} {op} {_short(right)}", *probe.explain(expected).splitlines()]
    if isinstance(side, ProbeResult) and isinstance(other, str):
        lines.append("note: a probe never equals a result name: compare its .result")
    elif isinstance(other, str) and other not in RESULT_NAMES:
        lines.append(f"note: '{other}' is not a result{did_you_mean(other, RESULT_NAMES)}; results: "
                     f"{', '.join(RESULT_NAMES)}")
    elif expected is not None and expected not in CONCRETE_RESULTS:
        covered = ", ".join(repr(r.value) for r in CONCRETE_RESULTS if expected.covers(r))
        lines.append(f"note: .result is always a concrete result; '{expected.value}' covers "
                     f"{covered}: write .result in ({covered})")
    return lines


def _compared_probe(value: object, other: object) -> ProbeResult | None:
    if isinstance(value, ProbeResult):
        return value
    if value is not None and not isinstance(value, Result):
        return None
    if not isinstance(other, str | tuple | list | set | frozenset | ProbeResult):
        return None  # the other side names no result: not a comparison of a probe's result
    recent = _last_read.get(_current_test())
    return recent if recent is not None and recent.verdict.result is value else None


def _short(value: object) -> str:
    if isinstance(value, Result):
        return repr(value.value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Mesh:
    """A deployed topology plus the policies in force; what the ``istio_mesh`` fixture returns."""

    def __init__(self, backend: Backend, topology: Topology, mesh: MeshSettings | None = None) -> None:
        self.backend = backend
        self.topology = topology
        self.settings = mesh or MeshSettings()
        self.scenario = Scenario(name="fixture", path=Path("<fixture>"), mesh=self.settings, topology=topology)
        backend.deploy(topology, self.settings)

    def workload(self, ref: str) -> Workload:
        """``name.namespace``, or ``name`` when unique; a wrong name fails the calling test in one line."""
        workload = resolve_workload(self.topology, ref)
        if isinstance(workload, Unresolved):
            _fail(workload)
        return workload

    @contextlib.contextmanager
    def policies(self, manifests: str | Path | Sequence[Mapping[str, Any]]) -> Iterator[Scenario]:
        """Apply Istio resources (YAML text, a file, or objects), yield, then remove exactly those."""
        file = "<policies>"
        if isinstance(manifests, Path):
            file, manifests = str(manifests), manifests.read_text(encoding="utf-8")
        elif not isinstance(manifests, str):
            manifests = yaml.safe_dump_all([dict(m) for m in manifests], sort_keys=False)
        policies, warnings = load_policies(manifests, self.topology, self.settings, file)
        scenario = dataclasses.replace(self.scenario, policies=policies, warnings=warnings)
        self.backend.apply(scenario)
        previous, self.scenario = self.scenario, scenario
        try:
            yield scenario
        finally:
            self.scenario = previous
            self.backend.clear()

    def probe(self, source: str, target: str, *, request: Request | None = None) -> ProbeResult:
        """Probe ``source`` → ``target`` (``name.namespace[:port]``) under the policies in force."""
        target_ref, _, port_key = target.partition(":")
        client, server = self.workload(source), self.workload(target_ref)
        port = resolve_port(server, port_key or None)
        if isinstance(port, Unresolved):
            _fail(port)
        probe = Probe(client, server, port, request or Request())
        observation = self.backend.probe([probe])[0]
        prediction = mtls.predict(self.scenario, client, server, port, probe.request)
        return ProbeResult(observation, decide(observation), prediction, self.scenario)


def _fail(problem: Unresolved) -> NoReturn:
    """Fail the calling test with one line, at the test's own line: a typo is not worth a traceback."""
    frame = sys._getframe(1)
    while frame.f_back is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == PACKAGE_DIR:
        frame = frame.f_back
    where = f"{display_path(Path(frame.f_code.co_filename))}:{frame.f_lineno}"
    pytest.fail(f"{where}: {problem.message} (fix: {problem.fix})", pytrace=False)
