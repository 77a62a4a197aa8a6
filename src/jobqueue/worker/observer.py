"""What a worker tells observers (metrics, traces) about its jobs, and the tracing observer.

An `Observer` hears of each job at the worker's few events, from the one place each
happens: its run starting and ending (`Worker._execute`, in the job's own task, so an
observer may make a context current for the handler), its outcome written (the completer,
the one writer of outcomes), jobs expired before they started (the expiry service) and
leases that ran out (the reaper). Observers only watch: they must not raise or block,
since they run on the worker's event loop between a job's steps.

A worker without observers pays nothing for them: it checks for one once per job and
event. `Tracing` continues, around each run, the trace the job was enqueued in
(`jobqueue.tracing`); the worker adds it when OpenTelemetry is installed.
`jobqueue.observability` has the Prometheus metrics.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Sequence
from typing import Any, Protocol
from uuid import UUID

from .. import tracing
from ..models import Job, Status
from ..operations import Completion
from .outcome import Failed, HeldBack, Outcome, Stopped

log = logging.getLogger("jobqueue.worker")


class Event(enum.Enum):
    """What became of an attempt once its outcome was written (or a job that never ran)."""

    COMPLETED = "completed"
    #: Failed for good: out of attempts, or not retryable.
    FAILED = "failed"
    #: Failed, and back to ``pending`` for another attempt by its retry policy.
    RETRIED = "retried"
    #: The handler said "not now" (`RetryLater`): back to ``pending``, no attempt spent.
    HELD_BACK = "held_back"
    #: Handed back to ``pending`` by a stopping worker.
    RELEASED = "released"
    #: Not started by its deadline (`NewJob.start_by`): moved to ``expired``.
    EXPIRED = "expired"


class Observer(Protocol):
    """Hears of a worker's jobs. Each method is called on the worker's event loop and
    must return quickly without raising (an error is logged and the job goes on)."""

    def started(self, job: Job) -> Any:
        """``job``'s run begins (its handler is about to be called), in the job's own
        task; what it returns is given back to `ran`."""

    def ran(self, job: Job, started: Any, outcome: Outcome | None) -> None:
        """``job``'s run is over with ``outcome`` (None: it was cancelled from outside the
        worker), in the same task as `started`, before the outcome is written."""

    def finished(self, job: Job, event: Event) -> None:
        """``job``'s outcome is written (``event`` says what it came to)."""

    def expired(self, jobs: Sequence[Job]) -> None:
        """``jobs`` were moved to ``expired``, unstarted (by this worker's expiry sweep)."""

    def reaped(self, moved: Sequence[tuple[UUID, Status]]) -> None:
        """Jobs whose lease ran out (their worker gone) were moved to the status given
        (``pending``, or ``failed`` when out of attempts) by this worker's reaper."""


class Observers:
    """Several observers heard as one, each in turn; one that raises is logged and the
    others still hear of the event."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = tuple(observers)

    def started(self, job: Job) -> Any:
        states = []
        for observer in self.observers:
            try:
                states.append(observer.started(job))
            except Exception:
                log.exception("observer %r failed on a job's start", observer)
                states.append(None)
        return states

    def ran(self, job: Job, started: Any, outcome: Outcome | None) -> None:
        # Innermost first, as nested blocks end.
        for observer, state in reversed(list(zip(self.observers, started, strict=True))):
            try:
                observer.ran(job, state, outcome)
            except Exception:
                log.exception("observer %r failed on a job's end", observer)

    def finished(self, job: Job, event: Event) -> None:
        for observer in self.observers:
            try:
                observer.finished(job, event)
            except Exception:
                log.exception("observer %r failed on a job's outcome", observer)

    def expired(self, jobs: Sequence[Job]) -> None:
        for observer in self.observers:
            try:
                observer.expired(jobs)
            except Exception:
                log.exception("observer %r failed on expired jobs", observer)

    def reaped(self, moved: Sequence[tuple[UUID, Status]]) -> None:
        for observer in self.observers:
            try:
                observer.reaped(moved)
            except Exception:
                log.exception("observer %r failed on reaped jobs", observer)


class Tracing:
    """Continues each job's trace around its run: a ``jobqueue run <kind>`` span, a child
    of the enqueue's span stored with the job (`jobqueue.tracing`), current while the
    handler runs, so the spans it makes (a provider's HTTP calls under OpenTelemetry's
    httpx instrumentation) join the trace. A job enqueued outside any trace gets a span of
    its own only when a tracer provider is set; otherwise nothing happens at all."""

    def started(self, job: Job) -> Any:
        if not tracing.wants_run_span(job.trace_context):
            return None
        stack = contextlib.ExitStack()
        span = stack.enter_context(
            tracing.run_span(
                job.trace_context,
                f"jobqueue run {job.kind}",
                {
                    "messaging.system": "jobqueue",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": job.queue,
                    "messaging.message.id": str(job.id),
                    "jobqueue.kind": job.kind,
                    "jobqueue.attempt": job.attempts,
                },
            )
        )
        return stack, span

    def ran(self, job: Job, started: Any, outcome: Outcome | None) -> None:
        if started is None:
            return
        stack, span = started
        try:
            if span is not None:
                span.set_attribute("jobqueue.outcome", _outcome_name(outcome))
                if isinstance(outcome, Failed):
                    tracing.set_error(span, outcome.reason)
        finally:
            stack.close()

    def finished(self, job: Job, event: Event) -> None:
        pass

    def expired(self, jobs: Sequence[Job]) -> None:
        pass

    def reaped(self, moved: Sequence[tuple[UUID, Status]]) -> None:
        pass


def _outcome_name(outcome: Outcome | None) -> str:
    if isinstance(outcome, Completion):
        return "completed"
    if isinstance(outcome, Failed):
        return "failed"
    if isinstance(outcome, HeldBack):
        return "held_back"
    if isinstance(outcome, Stopped):
        return f"stopped: {outcome.reason.value}"
    return "cancelled"


__all__ = ["Event", "Observer", "Observers", "Tracing"]
