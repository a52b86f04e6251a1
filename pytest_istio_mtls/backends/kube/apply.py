"""Applying a scenario's policies in file order, so Istio's "oldest wins" follows the file.

Istio breaks ties between competing policies (several namespace-wide PeerAuthentications, several
DestinationRules for one host) by creationTimestamp, which has one-second resolution, then by name.
Policies whose relative age matters are therefore created more than a second apart, and the
timestamps the API server assigned are checked afterwards: a violated order is an error, never a
silently different scenario.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from ...model import Policy
from ...oracle.destinationrules import resolve_host
from ..base import BackendError
from .client import KubeApi

AGE_GAP_S = 1.1  # > 1 s: two creations this far apart always get different second-resolution timestamps


@dataclass(frozen=True)
class Applied:
    api_version: str
    kind: str
    namespace: str
    name: str
    resource_version: str = ""  # as the API server answered the apply (what a watcher must catch up to)

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def age_group(policy: Policy) -> tuple[str, ...] | None:
    """Policies in the same group compete on age; None: the policy's age never matters."""
    if policy.kind == "PeerAuthentication":
        return (policy.kind, policy.namespace)
    if policy.kind == "DestinationRule":
        return (policy.kind, policy.namespace, resolve_host(str(policy.spec.get("host", "")), policy.namespace))
    return None


def _created(obj: dict[str, Any]) -> datetime | None:
    stamp = str((obj.get("metadata") or {}).get("creationTimestamp") or "")
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None
    except ValueError:
        return None


class Applier:
    """Applies policies and remembers exactly what it applied, so it can delete exactly that."""

    def __init__(self, kube: KubeApi, progress: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.kube = kube
        self.progress = progress
        self.clock = clock
        self.sleep = sleep
        self.applied: list[Applied] = []

    def apply(self, items: Sequence[tuple[Policy, dict[str, Any]]]) -> None:
        """``items``: each scenario policy with the object to send (names already mapped), in file order."""
        finished: dict[tuple[str, ...], float] = {}
        stamps: dict[tuple[str, ...], list[tuple[datetime | None, str]]] = {}
        for policy, obj in sorted(items, key=lambda item: item[0].order):
            group = age_group(policy)
            if group is not None and group in finished:
                delay = finished[group] + AGE_GAP_S - self.clock()
                if delay > 0:
                    self.progress(f"waiting {delay:.1f}s before {policy.ref}, so it is younger than the one before")
                    self.sleep(delay)
            metadata = obj.get("metadata") or {}
            result = self.kube.apply(obj)
            self.applied.append(Applied(str(obj.get("apiVersion")), str(obj.get("kind")),
                                        str(metadata.get("namespace", "")), str(metadata.get("name", "")),
                                        str((result.get("metadata") or {}).get("resourceVersion") or "")))
            if group is not None:
                finished[group] = self.clock()
                stamps.setdefault(group, []).append((_created(result), policy.ref))
        for members in stamps.values():
            for (older, older_ref), (newer, newer_ref) in itertools.pairwise(members):
                if older is None or newer is None or not older < newer:
                    raise BackendError(f"{newer_ref} was not created after {older_ref} (creationTimestamps {older} and "
                                       f"{newer}), so Istio's oldest-wins rule would not follow the file order")

    def delete_all(self) -> list[Applied]:
        """Delete everything applied, newest first; returns what was deleted (missing objects are fine)."""
        deleted = list(reversed(self.applied))
        for item in deleted:
            self.kube.delete(item.api_version, item.kind, item.namespace, item.name)
        self.applied.clear()
        return deleted

    def wait_gone(self, items: Sequence[Applied], timeout: float = 60.0) -> None:
        """Deleted objects must be gone before same-named ones are created, or they would keep their age."""
        def remaining() -> list[str]:
            return [i.ref for i in items if self.kube.get(i.api_version, i.kind, i.namespace, i.name) is not None]

        last: list[str] = []

        def check() -> list[str]:
            nonlocal last
            last = remaining()
            return last

        try:
            Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.5), retry=retry_if_result(bool),
                     sleep=self.sleep)(check)
        except RetryError:
            raise BackendError(f"still present {timeout:.0f}s after deletion: {', '.join(last)}") from None
