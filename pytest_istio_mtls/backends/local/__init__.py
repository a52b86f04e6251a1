"""The local backend: real Envoy sidecars in Linux network namespaces (needs root)."""

from .backend import LocalBackend

__all__ = ["LocalBackend"]
