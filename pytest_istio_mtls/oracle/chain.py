"""The links of a decision chain, shared by every rule module of the oracle, so that ``explain`` prints one
chain whichever rules (P, O, X, A) took part."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..model import Policy


@dataclass(frozen=True)
class Step:
    """One link of a decision chain: the rule applied and what it concluded."""

    rule: str
    text: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.text}"


def by_age(policies: Iterable[Policy]) -> list[Policy]:
    """Oldest first: Istio breaks ties between equally specific resources by creation time."""
    return sorted(policies, key=lambda p: p.order)
