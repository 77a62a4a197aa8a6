"""What running one job came to: the value the executor returns and the completer writes.

An `Outcome` is a `Completion` (the handler returned: its result and URL), a `Failed`
attempt (with the error to store and whether the job may be retried), or `Stopped` (the
worker stopped the handler: whoever stopped it deals with the job, nothing is written for
it here).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeAlias

from ..errors import PayloadError, describe_error, redact
from ..generators.base import GenerationResult
from ..models import Job
from ..operations import Completion
from .context import HandlerResult


class StopReason(enum.Enum):
    """Why the worker stopped a running handler."""

    #: The job was cancelled (its heartbeat found it so).
    CANCELLED = "cancelled"
    #: The job is no longer this attempt's: reaped, released, or claimed again.
    LEASE_LOST = "lease lost"
    #: The worker is shutting down; the job is released.
    STOPPING = "stopping"


@dataclass(frozen=True, slots=True)
class Failed:
    """A failed attempt: ``reason`` is stored on the job (one redacted line); ``retry``
    False fails the job at once, None leaves it to the job's retry policy. ``quiet`` logs
    the failure at debug level (its cause was logged once already)."""

    reason: str
    retry: bool | None = None
    quiet: bool = False

    @classmethod
    def of(
        cls, error: BaseException | str, retry: bool | None = None, *, quiet: bool = False
    ) -> Failed:
        """The failure for ``error``: `PayloadError` and errors with ``retryable = False``
        are never retried, since no later attempt can do better."""
        if isinstance(error, BaseException):
            if isinstance(error, PayloadError) or getattr(error, "retryable", True) is False:
                retry = False
            return cls(describe_error(error), retry, quiet)
        return cls(redact(error), retry, quiet)


@dataclass(frozen=True, slots=True)
class Stopped:
    """The worker stopped the handler (``reason``); nothing is written for it."""

    reason: StopReason


Outcome: TypeAlias = Completion | Failed | Stopped


def completion_of(job: Job, value: Any) -> Completion:
    """A handler's return value as the job's completion: a `GenerationResult` or a
    `HandlerResult` set ``result`` and ``result_url``; any other value is the result."""
    if isinstance(value, GenerationResult):
        return Completion(job, value.to_result(), value.url)
    if isinstance(value, HandlerResult):
        return Completion(job, value.result, value.result_url)
    return Completion(job, value)


__all__ = ["Failed", "Outcome", "StopReason", "Stopped", "completion_of"]
