"""pytest hooks, collection and fixtures. Thin on purpose: the work lives in the modules it calls.

``pytest --istio-scenarios`` collects one item per expectation row, ``file.yaml::NAME::FROM->TO:PORT``
(``...:PORT:METHOD:/path`` for a non-default request; ``file.yaml::NAME::STEP::FROM->TO:PORT`` in a scenario
with steps). Nothing here starts a mesh until the first item runs, so ``--help``, ``--fixtures`` and
``--collect-only`` never need one.
"""

from __future__ import annotations

import contextlib
import signal
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from . import options
from .backends.base import BackendUnavailable
from .model import Expectation, Result, Scenario, Topology, default_topology
from .model.diagnostics import ScenarioError

if TYPE_CHECKING:
    from .run import Outcome, Run

RUN_KEY = pytest.StashKey["Run"]()  # the session's run.Run, created lazily
WORKER_REPORTS_KEY = pytest.StashKey[list[dict[str, Any]]]()  # xdist controller: what each worker sent
WORKER_OUTPUT = "istio_mtls"  # the key of our data in an xdist worker's workeroutput
REPORT_KEY = pytest.StashKey[Any]()  # the session's report, built once at session finish
SETTINGS_KEY = pytest.StashKey[options.Settings]()
KEEP_MESSAGE_KEY = pytest.StashKey[str]()
PLANNED_KEY = pytest.StashKey[Sequence[tuple[Scenario, Expectation]]]()  # the collected rows, in run order
STOPPED_KEY = pytest.StashKey[str]()  # why the session stopped early (the backend cannot run here)
UPDATE_KEY = pytest.StashKey[list[str]]()  # what --istio-update-expectations wrote, for the terminal summary
ROOTS_KEY = pytest.StashKey[list[Path]]()  # where scenario files are collected from
COARSE = (Result.ALLOWED, Result.BLOCKED)  # the expectation keywords a concrete result also carries


class IstioScenarioWarning(UserWarning):
    """A scenario that Istio accepts but that probably does not do what its author meant."""


# --------------------------------------------------------------------------- options and configuration


def pytest_addoption(parser: pytest.Parser) -> None:
    options.register(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    settings = options.resolve(config)
    config.stash[SETTINGS_KEY] = settings
    config.addinivalue_line("markers", "istio_scenario: an item collected from an Istio mTLS scenario file")
    from .report.hooks import ReportHooks

    config.pluginmanager.register(ReportHooks(config, settings.report), "istio-mtls-report")
    if settings.scenarios is None:
        return
    explicit = config.args_source == pytest.Config.ArgsSource.ARGS
    if settings.node_ids:  # `--istio-scenarios DIR FILE::ROW`: argparse gave the option what selects items
        config.args[:] = [*config.args, *settings.node_ids] if explicit else list(settings.node_ids)
        explicit = True
    given = [options.argument_path(config, a) for a in config.args] if explicit else []
    # Scenario files are collected below the scenario paths, below files named as arguments, and below
    # directory arguments when `--istio-scenarios` came without PATH (`pytest tests/mesh --istio-scenarios`).
    config.stash[ROOTS_KEY] = [p.resolve() for p in settings.scenarios] + [
        g for g in given if g.is_file() or settings.scenarios_defaulted]
    if not explicit and settings.scenarios_only:  # `pytest --istio-scenarios` runs scenarios, not other tests
        config.args[:] = [str(p) for p in settings.scenarios]
    elif not explicit or (settings.scenarios_only and not settings.scenarios_defaulted):
        # The ini's scenarios join the project's tests; --istio-scenarios PATH joins explicit arguments.
        # A path that contains or lies inside an argument is not added: the argument selects from it.
        given = given or [options.argument_path(config, a) for a in config.args]
        config.args.extend(str(p) for p in settings.scenarios if not any(_related(p.resolve(), g) for g in given))
    _install_sigterm_handler(config)


def _related(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def _install_sigterm_handler(config: pytest.Config) -> None:
    """Turn SIGTERM (CI cancellation, `kill`) into KeyboardInterrupt so teardown still runs."""
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:  # not the main thread
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return
    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    config.add_cleanup(restore)


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash.get(SETTINGS_KEY, None)
    if settings is None or settings.scenarios is None:
        return []
    paths = ", ".join(str(p) for p in settings.scenarios) or "the command line's"
    return [f"istio-mtls: backend={settings.backend} keep={settings.keep} scenarios={paths}"]


# --------------------------------------------------------------------------- collection


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> ScenarioFile | None:
    config = parent.config
    if config.stash[SETTINGS_KEY].scenarios is None:
        return None
    from .scenario.loader import looks_like_scenario

    resolved = file_path.resolve()
    if not any(resolved == root or root in resolved.parents for root in config.stash[ROOTS_KEY]):
        return None
    if not looks_like_scenario(file_path):
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Remember every selected row, so the report shows rows pytest never ran as ``not run``."""
    if not hasattr(session.config, "workerinput"):  # an xdist worker collects all and runs a share
        session.config.stash[PLANNED_KEY] = [(i.scenario, i.expectation) for i in session.items
                                             if isinstance(i, ProbeItem)]


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[ScenarioNode]:
        from .scenario.loader import load_scenario

        try:
            scenario = load_scenario(self.path)
        except ScenarioError as exc:
            raise self.CollectError(exc.render()) from None
        for warning in scenario.warnings:
            warnings.warn_explicit(IstioScenarioWarning(f"{warning.message}" + (
                f" (fix: {warning.fix})" if warning.fix else "")), IstioScenarioWarning,
                filename=str(self.path), lineno=warning.mark.line)
        node = ScenarioNode.from_parent(self, name=scenario.name)
        node.scenario = scenario
        yield node


class ScenarioNode(pytest.Collector):
    scenario: Scenario

    def collect(self) -> Iterator[ProbeItem | StepNode]:
        if self.scenario.steps:
            for step in self.scenario.steps:
                node = StepNode.from_parent(self, name=step.name)
                node.scenario = self.scenario.at(step)  # one object per step: its items are probed as one batch
                yield node
            return
        yield from probe_items(self, self.scenario)


class StepNode(pytest.Collector):
    """One step of a scenario with steps: its rows, probed once the step's policies are in force."""

    scenario: Scenario

    def collect(self) -> Iterator[ProbeItem]:
        yield from probe_items(self, self.scenario)


def probe_items(parent: pytest.Collector, scenario: Scenario) -> Iterator[ProbeItem]:
    from .backends.support import unsupported

    settings = parent.config.stash[SETTINGS_KEY]
    cannot_run = unsupported(scenario, settings.backend, settings.control_plane) is not None
    for expectation in scenario.expectations:
        item = ProbeItem.from_parent(parent, name=expectation.pair)
        item.scenario = scenario
        item.expectation = expectation
        item.add_marker("istio_scenario")
        # `-k refused`, `-k blocked`, `-k DestinationRule`: the expected result (and allowed/blocked, which
        # a concrete one falls under) and the kinds of the policies in force select rows by meaning.
        result = expectation.result
        item.extra_keyword_matches.update({result.value, *(r.value for r in COARSE if r.covers(result)),
                                           *(p.kind for p in scenario.policies)})
        if cannot_run:  # `-k "not unsupported"`: leave out, visibly, what the chosen backend refuses
            item.extra_keyword_matches.add("unsupported")
        yield item


class ProbeItem(pytest.Item):
    scenario: Scenario
    expectation: Expectation
    _outcome: Outcome | None = None
    _prepare_error: Exception | None = None
    _timed_by_pytest = False  # probed inside setup, which pytest timed itself: no share to add

    def prepare(self) -> None:
        """Probe this row's scenario (once per scenario) before pytest prints the item's line, so the
        progress lines do not split it. An unexpected error is kept for setup, which reports it on the item."""
        selected = [item.expectation for item in self.session.items
                    if isinstance(item, ProbeItem) and item.scenario is self.scenario]
        try:
            self._outcome = session_run(self.config).outcome(self.scenario, self.expectation, selected)
        except BackendUnavailable:
            raise
        except Exception as exc:
            self._prepare_error = exc

    def setup(self) -> None:
        if self._prepare_error is not None:
            raise self._prepare_error
        if self._outcome is None:  # another plugin's pytest_runtest_protocol ran instead of ours
            self._timed_by_pytest = True
            try:
                self.prepare()
            except BackendUnavailable as exc:
                pytest.skip(_stop_session(self.session, exc))
            return self.setup()
        outcome = self._outcome
        session_run(self.config).reported(self.scenario, self.expectation)
        if outcome.status == "not run":
            pytest.skip(outcome.not_run)
        from .report.junit import properties

        self.user_properties += properties(outcome, self.config.stash[SETTINGS_KEY].report,
                                           self.config.getoption("xmlpath", None))
        # Shown with the phase the row fails in: a wrong row fails in call ("Captured istio ... call"), an error in
        # setup; a section labelled "setup" under a wrong verdict read as if the setup had gone wrong.
        when = "setup" if outcome.status == "error" else "call"
        for title, text in outcome.diagnostics.items():
            self.add_report_section(when, f"istio {title}", text)
        if outcome.status == "error":
            # Raised during setup, so pytest reports an ERROR: the probe could not be judged.
            pytest.fail(outcome.message(diagnostics=False), pytrace=False)
        return None

    def runtest(self) -> None:
        assert self._outcome is not None
        if self._outcome.status != "correct":  # judged, and it disagrees: a FAILED item
            pytest.fail(self._outcome.message(diagnostics=False), pytrace=False)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # Not a suffix of the node id, so `pytest -v` prints the node id as is (a suffix would get its dots
        # turned into `::`); it heads the item's failure section.
        line = self.expectation.mark.line - 1 if self.expectation.mark else None
        return self.path, line, f"{self.scenario.name}: {self.name}"  # a step's scenario name names the step


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Probe a scenario before its first item's line is printed; stop the session once when the backend
    cannot run here (no Docker, no root, no kubeconfig...) instead of failing every row the same way."""
    if not isinstance(item, ProbeItem) or getattr(item.config.option, "setupplan", False):
        return None
    try:
        item.prepare()
    except BackendUnavailable as exc:
        _stop_session(item.session, exc)
        return True  # the item is not run, and the loop stops after it
    if item._outcome is not None and item._outcome.not_run:  # a skip located at the row, like a marker's
        item.add_marker(pytest.mark.skip(reason=item._outcome.not_run))
    return None


def _stop_session(session: pytest.Session, exc: BackendUnavailable) -> str:
    """Stop after the current item with one message (pytest prints it once, without a traceback)."""
    message = f"istio-mtls: the {session.config.stash[SETTINGS_KEY].backend} backend cannot run here: {exc}"
    session.shouldfail = message
    session.config.stash[STOPPED_KEY] = message
    return message


def session_run(config: pytest.Config) -> Run:
    """The session's Run, created on first use (so collection and --help never start a backend)."""
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        from .run import Run

        run = Run(config.stash[SETTINGS_KEY], _progress(config))
        if PLANNED_KEY in config.stash:
            run.plan(config.stash[PLANNED_KEY])
        config.stash[RUN_KEY] = run
    return run


def _progress(config: pytest.Config) -> Callable[[str], None]:
    """Progress lines on the terminal as they happen, also from inside a test's captured setup."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def progress(message: str) -> None:
        if reporter is not None and config.get_verbosity() >= 0:
            with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
                reporter.write_line(f"[istio-mtls] {message}")

    return progress


# --------------------------------------------------------------------------- end of session


def _worker_output(config: pytest.Config) -> dict[str, Any] | None:
    """An xdist worker's channel to the controller (None when this process is not a worker)."""
    output = getattr(config, "workeroutput", None)
    return output if isinstance(output, dict) else None


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """xdist controller: keep each worker's report and keep-instructions for the merged summary."""
    sent = (getattr(node, "workeroutput", None) or {}).get(WORKER_OUTPUT)
    if sent:
        node.config.stash.setdefault(WORKER_REPORTS_KEY, []).append(sent)


def _session_report(config: pytest.Config, interrupted: bool) -> Any:
    """This process's report: its own run's, or on an xdist controller the workers' merged; None if nothing ran."""
    run = config.stash.get(RUN_KEY, None)
    if run is None and interrupted and config.stash.get(PLANNED_KEY, None) and not config.option.collectonly:
        run = session_run(config)  # interrupted before the first item: every planned row is "not run"
    if run is not None and run.has_rows(interrupted=interrupted):
        return run.report(interrupted=interrupted)
    sent = config.stash.get(WORKER_REPORTS_KEY, [])
    if sent:
        from .report.model import merge, report_from_json

        return merge([report_from_json(s["report"]) for s in sent])
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    settings = config.stash[SETTINGS_KEY]
    run = config.stash.get(RUN_KEY, None)
    worker = _worker_output(config)
    # Ctrl-C or SIGTERM; a stop that pytest or a plugin asked for (--sw) sets shouldstop instead.
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED and not session.shouldstop
    if STOPPED_KEY in config.stash:
        session.exitstatus = pytest.ExitCode.USAGE_ERROR  # as before any test ran: the setup is wrong
    message = ""
    try:
        if run is not None:
            message = run.finish(interrupted=interrupted)
    finally:
        if worker is not None:  # the controller merges and writes; each worker has its own mesh
            if run is not None and run.has_rows(interrupted=interrupted):
                worker[WORKER_OUTPUT] = {"report": run.report(interrupted=interrupted).to_json(), "keep": message}
        else:
            report = config.stash[REPORT_KEY] = _session_report(config, interrupted)
            if settings.report is not None and report is not None:
                from .report import write_all

                write_all(report, settings.report)
            if settings.update_expectations and report is not None:
                from .commands.update import update_expectations

                config.stash[UPDATE_KEY] = update_expectations(report).lines()
    if worker is None:
        messages = [message] + [s.get("keep", "") for s in config.stash.get(WORKER_REPORTS_KEY, [])]
        config.stash[KEEP_MESSAGE_KEY] = "\n".join(m for m in messages if m)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    report = config.stash.get(REPORT_KEY, None)
    if report is not None:
        from .report.terminal import render

        terminalreporter.section("Istio mTLS truth table")
        for line in render(report).splitlines():
            terminalreporter.write_line(line)
        settings = config.stash[SETTINGS_KEY]
        if settings.report is not None:
            terminalreporter.write_line(f"reports: {settings.report}/report.{{json,md,html}}")
    updated = config.stash.get(UPDATE_KEY, [])
    if updated:
        terminalreporter.section("Istio mTLS: expectations updated")
        for line in updated:
            terminalreporter.write_line(line)
    message = config.stash.get(KEEP_MESSAGE_KEY, "")
    if message:
        terminalreporter.section("Istio mTLS: state kept for inspection")
        for line in message.splitlines():
            terminalreporter.write_line(line)


# --------------------------------------------------------------------------- fixtures


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """A failed comparison of an ``istio_probe`` result prints the evidence a failing scenario item prints."""
    from .mesh import assertrepr_compare

    return assertrepr_compare(op, left, right)


@pytest.fixture(scope="session")
def istio_topology() -> Topology:
    """The topology ``istio_mesh`` deploys. Override in conftest.py, e.g. with
    ``load_scenario("scenarios/x.yaml").topology``."""
    return default_topology()


@pytest.fixture(scope="session")
def istio_mesh(request: pytest.FixtureRequest, istio_topology: Topology) -> Any:
    """Session-scoped mesh on the selected backend (``--istio-backend``) with ``istio_topology`` deployed."""
    from .mesh import Mesh

    run = session_run(request.config)
    try:
        backend = run.backend
    except BackendUnavailable as exc:
        pytest.skip(_stop_session(request.session, exc))
    return Mesh(backend, istio_topology)


@pytest.fixture
def istio_policies(istio_mesh: Any) -> Callable[..., Any]:
    """Context manager: ``with istio_policies(yaml_text_or_path):`` applies Istio resources, waits until
    the proxies enforce them, and removes them on exit."""
    return istio_mesh.policies  # type: ignore[no-any-return]


@pytest.fixture
def istio_probe(request: pytest.FixtureRequest, istio_mesh: Any) -> Callable[..., Any]:
    """``istio_probe("curl.foo", "httpbin.foo:8000")`` → a ProbeResult with ``.result`` (mtls, plaintext,
    refused, unavailable, denied, or None when unproven), ``.verdict``, ``.observation``, ``.prediction``.
    A request as a scenario row writes it, as keywords or ``request=`` (a mapping or a ``Request``):
    ``istio_probe("curl.foo", "httpbin.foo:8000", method="POST", path="/post", headers={"x-team": "shop"})``;
    ``tls="no-cert"`` for a client without a sidecar that speaks TLS itself.
    Each probe is a row of the truth table (a scenario named after the test): ✓ or ✗ as the last comparison of
    its ``.result`` concluded, ``not asserted`` when the test never compared it."""
    from .scenario.loader import display_path

    run = session_run(request.config)
    node = request.node

    def probe(*args: Any, **kwargs: Any) -> Any:
        result = istio_mesh.probe(*args, **kwargs)
        run.record_fixture_probe(node.nodeid, node.nodeid.split("::", 1)[-1], display_path(node.path), result,
                                 [p.ref for p in istio_mesh.scenario.policies])
        return result

    return probe


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                               ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A scenario item's setup takes its share of its batch's time; a Python test's outcome is noted for its
    probes (``--istio-keep=on-failure``, and a not-asserted row's message), whose rows its assertions judge."""
    report = yield
    if isinstance(item, ProbeItem) and report.when == "setup" and not item._timed_by_pytest:
        # The batch ran before any of its items' phases (prepare()), so pytest timed none of it: give each row
        # its share, where --junitxml's time and --durations read it.
        share = item._outcome.seconds if item._outcome is not None else None
        report.duration += share or 0.0
    run = item.config.stash.get(RUN_KEY, None)
    if run is not None and (report.when == "call" or report.failed):
        crash = getattr(report.longrepr, "reprcrash", None)
        failure = (getattr(crash, "message", "") or report.longreprtext or "failed").strip().splitlines()[0]
        run.fixture_test_finished(item.nodeid, failure if report.failed else "")
    return report
