"""What a scenario item leaves in ``--junitxml``: a few short properties, and a classname CI tools can group.

The evidence itself is in report.json/html (``--istio-report``); a testcase names where, instead of
carrying kilobytes of JSON per row. Its ``time`` is its share of its batch's time (the plugin adds it to the
item's setup), and three properties say what that batch took, phase by phase. pytest turns a node id's path
into a dotted classname (``scenarios/03-ns.yaml::ns-strict::…`` → ``scenarios.03-ns.yaml.ns-strict``), and
Jenkins and GitLab split classnames at every dot into packages, so dots inside names are replaced.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..scenario.loader import display_path
from .model import capture_path, row_anchor

if TYPE_CHECKING:
    from ..run import Outcome

SCENARIO_SUFFIX = re.compile(r"\.ya?ml$")


def classname(nodeid: str) -> str:
    """``dir/03-ns.strict.yaml::ns.strict::a->b:80`` → ``dir.03-ns_strict.ns_strict``: directories become
    packages as for Python files, the file (without .yaml) and the scenario the class, and no other dot."""
    path, *names = nodeid.split("::")
    *directories, file = path.split("/")
    parts = [*directories, SCENARIO_SUFFIX.sub("", file), *names[:-1]]
    return ".".join(part.replace(".", "_") for part in parts if part)


def batch_properties(outcome: Outcome) -> list[tuple[str, str]]:
    """The batch the row was probed in (its scenario, or its step): seconds, rows sharing them, and seconds per
    phase as ``deploy=2.000 apply=1.000 ...``; none when nothing was deployed for the row."""
    batch = outcome.batch
    if batch is None:
        return []
    phases = " ".join(f"{name}={seconds:.3f}" for name, seconds in batch.phases.items())
    return [("istio_batch_seconds", f"{batch.seconds:.3f}"), ("istio_batch_rows", str(batch.rows)),
            ("istio_batch_phases", phases)]


def properties(outcome: Outcome, report_dir: Path | None, junit_file: str | None) -> list[tuple[str, str]]:
    """expected, predicted (the oracle) and observed, the batch's time, plus where the row's evidence is when
    --istio-report is on (report.html#row and the capture), as paths relative to the JUnit file's directory."""
    found = [("istio_expected", outcome.expectation.result.value),
             ("istio_predicted", outcome.prediction.result.value)]
    if outcome.observed is not None:
        found.append(("istio_observed", outcome.observed.value))
    found += batch_properties(outcome)
    if report_dir is None:
        return found
    base = Path(junit_file).resolve().parent if junit_file else Path.cwd()
    row = outcome.row()
    anchor = row_anchor(display_path(outcome.scenario.path), row)
    found.append(("istio_evidence", f"{Path(os.path.relpath(report_dir / 'report.html', base)).as_posix()}#{anchor}"))
    pcap = capture_path(row)
    if pcap:
        found.append(("istio_capture", Path(os.path.relpath(pcap, base)).as_posix()))
    return found
