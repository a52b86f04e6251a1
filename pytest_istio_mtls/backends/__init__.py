"""Backend registry. Imports are deferred so that choosing one backend never loads the others."""

from __future__ import annotations

from ..options import Settings
from .base import Backend, BackendError, BackendUnavailable, Progress

__all__ = ["Backend", "BackendError", "BackendUnavailable", "Progress", "create"]


def create(settings: Settings, progress: Progress) -> Backend:
    if settings.backend == "local":
        from .local import LocalBackend

        return LocalBackend(settings, progress)
    if settings.backend == "kind":
        from .kind import KindBackend

        return KindBackend(settings, progress)
    if settings.backend == "existing":
        from .existing import ExistingBackend

        return ExistingBackend(settings, progress)
    raise BackendUnavailable(f"unknown backend {settings.backend!r}")
