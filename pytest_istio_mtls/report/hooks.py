"""pytest hooks for the report files, registered by the plugin (pytest_istio_mtls.plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import clear
from .junit import classname

SCENARIO_MARKER = "istio_scenario"


class ReportHooks:
    """Clears what an earlier run wrote into ``--istio-report`` before this one probes, and names scenario
    testcases in ``--junitxml`` so CI tools group them by file and scenario."""

    def __init__(self, config: pytest.Config, report_dir: Path | None) -> None:
        self.config = config
        self.report_dir = report_dir

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Before the first item runs (captures are written while probing), in the process that writes the
        report: not on an xdist worker (the controller clears before any worker probes), not for --co."""
        if self.report_dir is not None and not self.config.option.collectonly and not hasattr(
                self.config, "workerinput"):
            clear(self.report_dir)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Before junitxml records the report: pytest has no public API for a testcase's classname, but keeps
        attributes added through its node reporter (as ``record_xml_attribute`` does) over its own."""
        from _pytest.junitxml import xml_key

        xml = self.config.stash.get(xml_key, None)
        if xml is None or SCENARIO_MARKER not in report.keywords:
            return
        name = classname(report.nodeid)
        xml.node_reporter(report).add_attribute("classname", f"{xml.prefix}.{name}" if xml.prefix else name)
