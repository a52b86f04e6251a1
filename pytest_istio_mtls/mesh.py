"""The Python API behind the fixtures, for teams that write probes as ordinary pytest tests.

Example::

    def test_strict_foo(istio_policies, istio_probe):
        with istio_policies(STRICT_FOO_YAML):
            assert istio_probe("curl.legacy", "httpbin.foo:8000").result == "refused"
            post = istio_probe("curl.foo", "httpbin.foo:8000", method="POST", path="/post", body="hi")
            assert post.result == "mtls"

Each comparison of a probe's ``.result`` is remembered by the probe, so its row in the truth table says what
the test's assertion about that probe concluded, not whether the test as a whole passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import dis
import os
import sys
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict

import _pytest
import pytest
import yaml

from .backends import Backend
from .judge.observation import Observation, Probe
from .judge.verdict import Verdict, decide
from .model import (
    CONCRETE_RESULTS,
    EXPECTABLE_RESULTS,
    ClientTls,
    Expectation,
    MeshSettings,
    Port,
    Request,
    Result,
    Scenario,
    Topology,
    Workload,
)
from .model.diagnostics import Diagnostic, did_you_mean
from .oracle import mtls
from .scenario.checks import Checker, type_name
from .scenario.loader import display_path, load_policies
from .scenario.resolve import Unresolved, resolve_client_tls, resolve_port, resolve_workload
from .scenario.rows import REQUEST_KEYS
from .scenario.rows import _request as read_request  # a scenario row's `request:` reader: both forms agree
from .scenario.yamlpos import Located

if TYPE_CHECKING:
    if sys.version_info >= (3, 11):
        from typing import Unpack
    else:
        from typing_extensions import Unpack

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
RESULT_NAMES = [r.value for r in EXPECTABLE_RESULTS]
CONCRETE_NAMES = [r.value for r in CONCRETE_RESULTS]
REQUEST_FIELDS = (*REQUEST_KEYS, "tls")  # a scenario row's `request:` keys, and its `tls:`
REQUEST_FORMS = ("request={'method': 'POST', 'path': '/post'}, request=Request(method='POST', path='/post'), "
                 "or the keywords method=, path=, headers=, body=, tls=")
_COMPARE_OP, _CONTAINS_OP = dis.opmap.get("COMPARE_OP"), dis.opmap.get("CONTAINS_OP")
_NOT_ASSERTING = (os.path.dirname(_pytest.__file__) + os.sep, PACKAGE_DIR + os.sep)  # code that compares to explain


class RequestFields(TypedDict, total=False):
    """The keywords ``istio_probe`` takes for its request: a scenario row's ``request:`` keys and ``tls:``."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: str
    tls: ClientTls | None

# The probe whose ``.result`` each test read last. pytest's comparison hook sees only the compared
# values, and a Result (or None) does not say which probe it came from: the one read just before the
# failed comparison is the one compared. Weak, so a finished test's probes are not kept alive.
_last_read: weakref.WeakValueDictionary[str, ProbeResult] = weakref.WeakValueDictionary()


def _current_test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "")


@dataclass(frozen=True)
class Assertion:
    """What the last comparison of a probe's ``.result`` concluded: the probe's row in the truth table."""

    held: bool
    comparison: str  # as the test wrote it, after ``.result``: "== 'plaintext'", "in ('mtls', 'plaintext')"
    expected: Result | None = None  # the concrete result it asked for (``==``), else None


class ObservedResult(str):
    """A probe's proven result: the string ``"mtls"``, ``"refused"``... (equal to its name, like ``Result``), that
    tells its probe what each comparison of it concluded, so the probe's row in the truth table says what the
    test asserted about this probe rather than how the whole test ended.

    Only comparisons count (``==``, ``!=``, ``in``, ``not in``): looking it up in a dict, or printing it, asserts
    nothing.
    """

    member: Result  # the result as the rest of the package names it
    _probe: ProbeResult

    def __new__(cls, probe: ProbeResult, member: Result) -> ObservedResult:
        text = super().__new__(cls, member.value)
        text.member, text._probe = member, probe
        return text

    @property
    def value(self) -> str:
        """The plain name, as ``Result.value``."""
        return self.member.value

    @property
    def name(self) -> str:
        return self.member.name

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, str):
            return NotImplemented
        return self._compare("==", other)

    def __ne__(self, other: object) -> bool:
        if not isinstance(other, str):
            return NotImplemented
        return self._compare("!=", other)

    __hash__ = str.__hash__

    def _compare(self, op: str, other: str) -> bool:
        equal = str.__eq__(self, other)
        how = _comparison(sys._getframe(2)) if not isinstance(other, ObservedResult) else ""
        if how == "not in":
            self._probe._record(Assertion(not equal, "not in (...)"))
        elif how == "in":
            self._probe._record(Assertion(equal, "in (...)"))
        elif how == "compare":
            held = equal if op == "==" else not equal
            named = Result(str(other)) if op == "==" and str(other) in CONCRETE_NAMES else None
            self._probe._record(Assertion(held, f"{op} {str(other)!r}", named))
        return equal if op == "==" else not equal

    def __repr__(self) -> str:
        return repr(self.member.value)

    def __str__(self) -> str:
        return self.member.value

    def __reduce__(self) -> tuple[type[Result], tuple[str]]:
        return Result, (self.member.value,)  # a copy or a pickle is the plain result: it asserts nothing


def _comparison(frame: FrameType | None) -> str:
    """Which comparison the code that called ``==`` is running: ``compare`` (``==``, ``!=``, also of a list of
    results), ``in`` or ``not in`` (element by element: the last call concludes); "" for anything else that
    compares strings (a dict lookup, ``Result(...)``, sorting), which asserts nothing. Read from the instruction
    the calling frame is executing: Python tells ``==`` no more."""
    if frame is None or frame.f_code.co_filename.startswith(_NOT_ASSERTING):
        return ""  # pytest explaining a failed assertion, or this package: not the test's own comparison
    code, offset = frame.f_code.co_code, frame.f_lasti
    if not 0 <= offset < len(code) - 1:
        return ""
    if code[offset] == _COMPARE_OP:
        return "compare"
    if code[offset] == _CONTAINS_OP:
        return "not in" if code[offset + 1] & 1 else "in"
    return ""


@dataclass(eq=False)
class ProbeResult:
    """One probe: what the client saw, the judged result (None when unproven) and the prediction.

    ``str()`` is one line; ``explain()`` is the block a failing scenario item prints. ``assertion`` is what the
    last comparison of ``.result`` concluded (None: never compared), which the probe's report row shows.
    """

    observation: Observation
    verdict: Verdict
    prediction: mtls.Prediction
    scenario: Scenario  # what was in force: the policies the oracle predicted from
    assertion: Assertion | None = None

    @property
    def result(self) -> ObservedResult | None:
        """The judged result, compared like a string (``== "mtls"``); None when nothing could be proven."""
        _last_read[_current_test()] = self
        found = self.verdict.result
        return ObservedResult(self, found) if found is not None else None

    def _record(self, assertion: Assertion) -> None:
        self.assertion = assertion

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
    name = _plain(other)
    expected = Result(name) if op == "==" and isinstance(name, str) and name in RESULT_NAMES else None
    if isinstance(side, ObservedResult) and _failed(op, _plain(left), _plain(right)):
        # A failed assertion's comparison, as pytest reports it: it concludes for the probe, with what it asked.
        concrete = expected if expected in CONCRETE_RESULTS else None
        probe._record(Assertion(False, f"{op} {_short(other)}", concrete))
    lines = [f"{_short(left)} {op} {_short(right)}", *probe.explain(expected).splitlines()]
    if isinstance(side, ProbeResult) and isinstance(other, str):
        lines.append("note: a probe never equals a result name: compare its .result")
    elif isinstance(name, str) and name not in RESULT_NAMES:
        lines.append(f"note: '{name}' is not a result{did_you_mean(name, RESULT_NAMES)}; results: "
                     f"{', '.join(RESULT_NAMES)}")
    elif expected is not None and expected not in CONCRETE_RESULTS:
        covered = ", ".join(repr(r.value) for r in CONCRETE_RESULTS if expected.covers(r))
        lines.append(f"note: .result is always a concrete result; '{expected.value}' covers "
                     f"{covered}: write .result in ({covered})")
    return lines


def _plain(value: object) -> object:
    """A compared value with probes' results as plain strings, so that evaluating it records nothing."""
    if isinstance(value, ObservedResult):
        return value.member.value
    if isinstance(value, tuple | list | set | frozenset):
        return [_plain(item) for item in value]
    return value


def _failed(op: str, left: object, right: object) -> bool:
    """Is this comparison (of plain values) false? pytest also asks its hook about comparisons that held,
    when they are part of a failed ``and``/``or``."""
    try:
        if op in ("==", "!="):
            return (left == right) == (op == "!=")
        if op in ("in", "not in") and isinstance(right, list):
            return (left in right) == (op == "not in")
    except TypeError:
        pass
    return False


def _compared_probe(value: object, other: object) -> ProbeResult | None:
    if isinstance(value, ProbeResult):
        return value
    if isinstance(value, ObservedResult):
        return value._probe if isinstance(other, str | tuple | list | set | frozenset) else None
    if value is not None and not isinstance(value, Result):
        return None
    if not isinstance(other, str | tuple | list | set | frozenset | ProbeResult):
        return None  # the other side names no result: not a comparison of a probe's result
    recent = _last_read.get(_current_test())
    return recent if recent is not None and recent.verdict.result is value else None


def _short(value: object) -> str:
    if isinstance(value, Result | ObservedResult):
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

    def probe(self, source: str, target: str, *, request: Request | Mapping[str, Any] | None = None,
              **fields: Unpack[RequestFields]) -> ProbeResult:
        """Probe ``source`` → ``target`` (``name.namespace[:port]``) under the policies in force.

        The request is ``GET /headers`` unless given like a scenario row's ``request:`` (and ``tls:``): as keywords,
        ``probe("curl.foo", "httpbin.foo:8000", method="POST", path="/post", headers={"x-team": "shop"},
        body="hi")``; as a mapping, ``request={"method": "POST", "path": "/post"}``; or as a ``Request``.
        ``tls="no-cert"`` (``foreign-cert``, ``mesh-cert``) makes a client without a sidecar speak TLS itself.
        A wrong value fails the calling test in one line, with the scenario reader's message.
        """
        target_ref, _, port_key = target.partition(":")
        client, server = self.workload(source), self.workload(target_ref)
        port = resolve_port(server, port_key or None)
        if isinstance(port, Unresolved):
            _fail(port)
        probe = Probe(client, server, port, _request(client, port, request, dict(fields)))
        observation = self.backend.probe([probe])[0]
        prediction = mtls.predict(self.scenario, client, server, port, probe.request)
        return ProbeResult(observation, decide(observation), prediction, self.scenario)


def _request(client: Workload, port: Port, request: object, fields: dict[str, Any]) -> Request:
    """The probe's request from whichever form the test gave, read by the reader of a scenario row's
    ``request:`` (and ``tls:``), so a request means and is checked the same in both, with the same messages."""
    unknown = [key for key in fields if key not in REQUEST_FIELDS]
    if unknown:
        _fail_with([(f"unknown argument {unknown[0]}={did_you_mean(unknown[0], REQUEST_FIELDS)}", REQUEST_FORMS)])
    if fields and request is not None:
        given = ", ".join(f"{key}=" for key in fields)
        _fail_with([(f"the request is given twice: as request= and as {given}", f"give one of {REQUEST_FORMS}")])
    raw: dict[Any, Any]
    if request is None:
        raw = fields
    elif isinstance(request, Request):
        raw = {} if request.is_default else {"method": request.method, "path": request.path,
                                             "headers": dict(request.headers), "body": request.body}
        raw.update({"tls": request.tls} if request.tls else {})
    elif isinstance(request, Mapping):
        raw = dict(request)
    else:
        _fail_with([(f"request must be a Request, a mapping (a scenario row's request:) or None, not "
                     f"{type_name(request)} {_short(request)}", f"write {REQUEST_FORMS}")])
    diagnostics: list[Diagnostic] = []
    check = Checker(Located(raw, "<istio_probe>"), diagnostics)
    check.keys(("request",), raw, REQUEST_FIELDS, "request")
    http = {key: value for key, value in raw.items() if key in REQUEST_KEYS}
    parsed = read_request(check, ("request",), http or None, port)
    problems = [(d.message, d.fix) for d in diagnostics]
    tls = resolve_client_tls(client, raw["tls"]) if raw.get("tls") not in (None, "") else ""  # "": no TLS
    if isinstance(tls, Unresolved):
        problems.append((tls.message, tls.fix))
    if problems or parsed is None or isinstance(tls, Unresolved):
        _fail_with(problems)
    return dataclasses.replace(parsed, tls=tls)


def _fail(problem: Unresolved) -> NoReturn:
    _fail_with([(problem.message, problem.fix)])


def _fail_with(problems: Sequence[tuple[str, str]]) -> NoReturn:
    """Fail the calling test with one line, at the test's own line: a typo is not worth a traceback."""
    frame = sys._getframe(1)
    while frame.f_back is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == PACKAGE_DIR:
        frame = frame.f_back
    where = f"{display_path(Path(frame.f_code.co_filename))}:{frame.f_lineno}"
    text = "; ".join(message + (f" (fix: {fix})" if fix else "") for message, fix in problems)
    pytest.fail(f"{where}: {text}", pytrace=False)
