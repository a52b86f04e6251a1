"""--istio-keep=on-failure says how many later scenarios and steps it did not deploy, counting steps as steps."""

from __future__ import annotations

from pathlib import Path

from pytest_istio_mtls.model import Scenario, Step
from pytest_istio_mtls.run import later_count


def scenario(name: str, *steps: str) -> Scenario:
    return Scenario(name=name, path=Path(f"scenarios/{name}.yaml"),
                    steps=tuple(Step(s, number, (), ()) for number, s in enumerate(steps, 1)))


def test_steps_are_counted_as_steps_not_as_scenarios() -> None:
    rollout, other, plain = scenario("rollout", "a", "b", "c"), scenario("other", "x", "y"), scenario("plain")
    kept = rollout.at(rollout.steps[0])
    skipped = [rollout.at(rollout.steps[1]), rollout.at(rollout.steps[2]), other.at(other.steps[0]),
               other.at(other.steps[1]), plain]
    assert later_count(skipped, kept) == "2 later steps and 2 later scenarios (2 steps)"
    assert later_count([plain], scenario("first")) == "1 later scenario"
    assert later_count(skipped[:1], kept) == "1 later step"
