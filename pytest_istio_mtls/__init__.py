"""pytest-istio-mtls: prove which connections of an Istio mesh succeed, fail, or are mutually-TLS encrypted.

The public API is small on purpose: load a scenario, ask the oracle, judge an observation.
Everything else is reached through ``pytest --istio-scenarios`` and the fixtures
(``istio_mesh``, ``istio_policies``, ``istio_probe``), whose signature names ``Request`` (what a probe sends)
and ``ProbeResult`` (what it returns).
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .judge.observation import Observation, Probe
from .judge.verdict import Verdict, decide
from .model import Expectation, MeshSettings, Request, Result, Scenario, Topology, Workload, default_topology
from .model.diagnostics import Diagnostic, ScenarioError
from .oracle.mtls import Prediction, predict, predict_all
from .scenario.loader import load_scenario

if TYPE_CHECKING:
    from .mesh import ProbeResult


def __getattr__(name: str) -> Any:
    """``ProbeResult`` on first use: its module imports pytest, which ``import pytest_istio_mtls`` need not."""
    if name == "ProbeResult":
        from .mesh import ProbeResult

        return ProbeResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Diagnostic",
    "Expectation",
    "MeshSettings",
    "Observation",
    "Prediction",
    "Probe",
    "ProbeResult",
    "Request",
    "Result",
    "Scenario",
    "ScenarioError",
    "Topology",
    "Verdict",
    "Workload",
    "__version__",
    "decide",
    "default_topology",
    "load_scenario",
    "predict",
    "predict_all",
]
