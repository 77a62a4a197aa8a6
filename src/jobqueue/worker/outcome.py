"""What running one job came to: the value the executor returns and the completer writes.

An `Outcome` is a `Completion` (the handler returned: its result and URL), a `Failed`
attempt (with the error to store and whether the job may be retried), `HeldBack` (the
handler raised `RetryLater`: the job waits, its attempt given back), or `Stopped` (the
worker stopped the handler: whoever stopped it deals with the job, nothing is written for
it here).
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeAlias

from ..errors import ERROR_TEXT_LIMIT, PayloadError, RetryLater, describe_error, redact
from ..generators.base import GenerationResult
from ..models import MAX_DELAY, Job
from ..operations import Completion
from ..validation import check_cost, check_cost_unit
from .context import HandlerResult

log = logging.getLogger("jobqueue.worker")


class StopReason(enum.Enum):
    """Why the worker stopped a running handler."""

    #: The job was cancelled (its heartbeat found it so).
    CANCELLED = "cancelled"
    #: The job is no longer this attempt's: reaped, released, or claimed again.
    LEASE_LOST = "lease lost"
    #: The worker is shutting down; the job is released.
    STOPPING = "stopping"
    #: The worker could not reach the database for a whole lease, so the lease must have
    #: run out and another worker may hold the job (`maintenance.LeaseWatch`).
    CUT_OFF = "cut off"


@dataclass(frozen=True, slots=True)
class Failed:
    """A failed attempt: ``reason`` is stored on the job (one redacted line); ``retry``
    False fails the job at once, None leaves it to the job's retry policy. ``quiet`` logs
    the failure at debug level (its cause was logged once already)."""

    reason: str
    retry: bool | None = None
    quiet: bool = False
    #: What the attempt cost even so (a provider that charged for a task that failed).
    cost: Any = None
    cost_unit: str | None = None

    @classmethod
    def of(
        cls, error: BaseException | str, retry: bool | None = None, *, quiet: bool = False
    ) -> Failed:
        """The failure for ``error``: `PayloadError` and errors with ``retryable = False``
        are never retried, since no later attempt can do better. An error that carries a
        ``cost`` (a `GenerationError` the provider charged for) passes it on."""
        if isinstance(error, BaseException):
            if isinstance(error, PayloadError) or getattr(error, "retryable", True) is False:
                retry = False
            cost, unit = getattr(error, "cost", None), getattr(error, "cost_unit", None)
            return cls(describe_error(error), retry, quiet, *_checked_cost(cost, unit))
        return cls(redact(error), retry, quiet)


def _checked_cost(
    cost: Any, unit: Any, what: str = "a failed attempt's reported cost"
) -> tuple[Decimal | None, str | None]:
    try:
        amount = check_cost(cost)
        return amount, None if amount is None else check_cost_unit(unit)
    except PayloadError as exc:
        log.warning("%s is not stored: %s", what, exc)
        return None, None


@dataclass(frozen=True, slots=True)
class HeldBack:
    """The handler said "not now" (`RetryLater`): the job goes back to ``pending`` without
    spending an attempt, for ``after`` seconds, and its limit key is paused for as long;
    ``reason`` is stored in the job's error history (one redacted line)."""

    after: float
    reason: str


@dataclass(frozen=True, slots=True)
class Stopped:
    """The worker stopped the handler (``reason``); nothing is written for it."""

    reason: StopReason


Outcome: TypeAlias = Completion | Failed | HeldBack | Stopped


def held_back_of(error: RetryLater) -> HeldBack | Failed:
    """What a `RetryLater` comes to: `HeldBack` for at most `MAX_DELAY` (a longer wait is
    cut to it), or a `Failed` attempt (retried by the job's policy) when ``after`` is not a
    finite number of seconds, zero or more: a handler's bug, which must neither hold the
    job back forever nor pass for a provider's answer."""
    after: object = error.after
    if (
        isinstance(after, bool)
        or not isinstance(after, int | float)
        or math.isnan(after)
        or after < 0
    ):
        return Failed.of(
            f"RetryLater: after must be a number of seconds, zero or more, not {after!r} "
            f"({error.reason})"
        )
    # Its message without the hint: the reason is also the key's pause reason, shown to
    # operators, where the hint (aimed at whoever reads the exception) is noise.
    lines = error.message.strip().splitlines()
    text = redact(f"{type(error).__name__}: {lines[0].strip() if lines else error.reason}")
    if len(text) > ERROR_TEXT_LIMIT:
        text = text[: ERROR_TEXT_LIMIT - 1] + "\u2026"
    return HeldBack(min(float(after), MAX_DELAY.total_seconds()), text)


def reported_cost(job: Job, cost: Any, unit: Any) -> tuple[Decimal | None, str | None]:
    """A handler's or generator's reported cost, checked; one the job cannot store (not an
    amount, negative, too precise, a unit too long) is logged and left out, so a result is
    never lost over its price."""
    return _checked_cost(cost, unit, f"Job {job.id}: its reported cost")


def completion_of(job: Job, value: Any) -> Completion:
    """A handler's return value as the job's completion: a `GenerationResult` or a
    `HandlerResult` set ``result``, ``result_url`` and the attempt's cost; any other value
    is the result."""
    if isinstance(value, GenerationResult):
        cost, unit = reported_cost(job, value.cost, value.cost_unit)
        return Completion(job, value.to_result(), value.url, cost, unit)
    if isinstance(value, HandlerResult):
        cost, unit = reported_cost(job, value.cost, value.cost_unit)
        return Completion(job, value.result, value.result_url, cost, unit)
    return Completion(job, value)


__all__ = [
    "Failed",
    "HeldBack",
    "Outcome",
    "StopReason",
    "Stopped",
    "completion_of",
    "held_back_of",
]
