"""pytest hooks, collection and fixtures. Thin on purpose: the work lives in the modules it calls.

``pytest --istio-scenarios`` collects one item per expectation row, ``file.yaml::NAME::FROM->TO:PORT``.
Nothing here starts a mesh until the first item runs, so ``--help``, ``--fixtures`` and
``--collect-only`` never need one.
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from . import options
from .diagnostics import ScenarioError
from .model import Expectation, Scenario, Topology, default_topology

if TYPE_CHECKING:
    from .run import Run

RUN_KEY = pytest.StashKey["Run"]()  # the session's run.Run, created lazily
WORKER_REPORTS_KEY = pytest.StashKey[list[dict[str, Any]]]()  # xdist controller: what each worker sent
WORKER_OUTPUT = "istio_mtls"  # the key of our data in an xdist worker's workeroutput
REPORT_KEY = pytest.StashKey[Any]()  # the session's report, built once at session finish
SETTINGS_KEY = pytest.StashKey[options.Settings]()
KEEP_MESSAGE_KEY = pytest.StashKey[str]()


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
    scenario_args = [str(p) for p in settings.scenarios]
    if explicit:
        if not settings.scenarios_defaulted:  # explicit positional args say what to collect otherwise
            config.args.extend(a for a in scenario_args if a not in config.args)
    else:  # `pytest --istio-scenarios` runs scenarios, not the project's other tests
        config.args[:] = scenario_args
    _install_sigterm_handler(config)


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
    paths = ", ".join(str(p) for p in settings.scenarios)
    return [f"istio-mtls: backend={settings.backend} keep={settings.keep} scenarios={paths}"]


# --------------------------------------------------------------------------- collection


def _scenario_roots(config: pytest.Config) -> list[Path]:
    """Where scenario files are collected from: the --istio-scenarios paths and the positional args."""
    settings = config.stash[SETTINGS_KEY]
    roots = [p.resolve() for p in settings.scenarios or ()]
    roots += [Path(config.invocation_params.dir, a.split("::")[0]).resolve() for a in config.args]
    return roots


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> ScenarioFile | None:
    config = parent.config
    if config.stash[SETTINGS_KEY].scenarios is None:
        return None
    from .scenario import looks_like_scenario

    resolved = file_path.resolve()
    if not any(resolved == root or root in resolved.parents for root in _scenario_roots(config)):
        return None
    if not looks_like_scenario(file_path):
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[ScenarioNode]:
        from .scenario import load_scenario

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

    def collect(self) -> Iterator[ProbeItem]:
        for expectation in self.scenario.expectations:
            item = ProbeItem.from_parent(self, name=expectation.pair)
            item.scenario = self.scenario
            item.expectation = expectation
            item.add_marker("istio_scenario")
            yield item


class ProbeItem(pytest.Item):
    scenario: Scenario
    expectation: Expectation

    def setup(self) -> None:
        selected = [item.expectation for item in self.session.items
                    if isinstance(item, ProbeItem) and item.scenario is self.scenario]
        from .backends import BackendUnavailable

        try:
            outcome = session_run(self.config).outcome(self.scenario, self.expectation, selected)
        except BackendUnavailable as exc:
            pytest.exit(f"istio-mtls: the {self.config.stash[SETTINGS_KEY].backend} backend cannot run here: {exc}",
                        returncode=pytest.ExitCode.USAGE_ERROR)
        self._outcome = outcome
        from .report.junit import properties

        self.user_properties += properties(outcome, self.config.stash[SETTINGS_KEY].report,
                                           self.config.getoption("xmlpath", None))
        for title, text in outcome.diagnostics.items():
            self.add_report_section("setup", f"istio {title}", text)
        if outcome.status == "error":
            # Raised during setup, so pytest reports an ERROR: the probe could not be judged.
            pytest.fail(outcome.message(diagnostics=False), pytrace=False)

    def runtest(self) -> None:
        if self._outcome.status != "correct":  # judged, and it disagrees: a FAILED item
            pytest.fail(self._outcome.message(diagnostics=False), pytrace=False)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        line = self.expectation.mark.line - 1 if self.expectation.mark else None
        return self.path, line, f"{self.scenario.name}::{self.name}"


def session_run(config: pytest.Config) -> Run:
    """The session's Run, created on first use (so collection and --help never start a backend)."""
    run = config.stash.get(RUN_KEY, None)
    if run is None:
        from .run import Run

        run = Run(config.stash[SETTINGS_KEY], _progress(config))
        config.stash[RUN_KEY] = run
    return run


def _progress(config: pytest.Config) -> Callable[[str], None]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")

    def progress(message: str) -> None:
        if reporter is not None and config.get_verbosity() >= 0:
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


def _session_report(config: pytest.Config) -> Any:
    """This process's report: its own run's, or on an xdist controller the workers' merged; None if nothing ran."""
    run = config.stash.get(RUN_KEY, None)
    if run is not None and run.outcomes:
        return run.report()
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
    message = ""
    try:
        if run is not None:
            message = run.finish(interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)
    finally:
        if worker is not None:  # the controller merges and writes; each worker has its own mesh
            if run is not None and run.outcomes:
                worker[WORKER_OUTPUT] = {"report": run.report().to_json(), "keep": message}
        else:
            report = config.stash[REPORT_KEY] = _session_report(config)
            if settings.report is not None and report is not None:
                from .report import write_all

                write_all(report, settings.report)
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
    message = config.stash.get(KEEP_MESSAGE_KEY, "")
    if message:
        terminalreporter.section("Istio mTLS: state kept for inspection")
        for line in message.splitlines():
            terminalreporter.write_line(line)


# --------------------------------------------------------------------------- fixtures


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
    return Mesh(run.backend, istio_topology)


@pytest.fixture
def istio_policies(istio_mesh: Any) -> Callable[..., Any]:
    """Context manager: ``with istio_policies(yaml_text_or_path):`` applies Istio resources, waits until
    the proxies enforce them, and removes them on exit."""
    return istio_mesh.policies  # type: ignore[no-any-return]


@pytest.fixture
def istio_probe(istio_mesh: Any) -> Callable[..., Any]:
    """``istio_probe("curl.foo", "httpbin.foo:8000")`` → a ProbeResult with ``.result`` (mtls, plaintext,
    refused, unavailable, denied, or None when unproven), ``.verdict``, ``.observation``, ``.prediction``."""
    return istio_mesh.probe  # type: ignore[no-any-return]
