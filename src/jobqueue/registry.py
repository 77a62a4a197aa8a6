"""The old home of `Registry` and `JobKind`, kept so that ``jobqueue.registry`` imports keep
working: both live in `jobqueue.worker.registry` now."""

from .worker.registry import JobKind, Registry

__all__ = ["JobKind", "Registry"]
