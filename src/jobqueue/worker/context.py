"""The handler's side of the worker: what a handler is (`Handler`), what it may return
(`HandlerResult`), what it may do to its job while it runs (`WorkerContext`), and a
`Generator` as a handler (`generator_handler`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from ..backoff import Backoff
from ..errors import LeaseLost
from ..generators.base import GenerationRequest, GenerationResult, Generator, OldContextNames
from ..models import Job
from ..queue import AsyncJobQueue
from .writes import GaveUp, persist

if TYPE_CHECKING:
    from .outcome import StopReason  # which imports this module

T = TypeVar("T")

#: The longest pause between two tries of a handler's write: short, since the handler
#: waits on it (the worker's own writes pause up to `Backoff`'s default cap).
WRITE_RETRY_CAP = 1.0
#: The longest pause between two tries of saving a provider's task id: shorter still. The
#: save races the lease (a later attempt that finds no id pays again), and a database
#: that refused writes for most of a lease must get it the moment it takes writes again.
TASK_ID_RETRY_CAP = 0.25

Handler: TypeAlias = Callable[[Job, "WorkerContext"], Any]
"""``async def h(job, ctx)`` or a plain function (run in a thread); see `Worker`."""


@dataclass(frozen=True, slots=True)
class HandlerResult:
    """What a handler returns to set ``result`` (JSON) and ``result_url``, and to report
    what the job cost: ``cost`` (an exact amount: a `Decimal`, an int, or decimal text such
    as ``"0.04"``) in ``cost_unit`` (``"USD"``, ``"credits"``), stored in the job's ``cost``
    and ``cost_unit`` columns."""

    result: Any = None
    result_url: str | None = None
    cost: Decimal | int | str | None = None
    cost_unit: str | None = None


class WorkerContext(OldContextNames):
    """What a running handler may do to its job: the `JobContext` of a generator.

    ``cancelled`` is set when the worker stops the handler (the job was cancelled, its lease
    was lost, or the worker is shutting down). Async handlers are cancelled anyway; a sync
    handler running in a thread cannot be, so it should check ``cancelled.is_set()``.

    Its writes follow the worker's own retry rule (`jobqueue.worker.writes`): a refusal
    (`LeaseLost`: the job is no longer this attempt's; `PayloadError`) is raised at once,
    any other error (the database unreachable for a moment) is retried with backoff. How
    long depends on what is written: progress for up to one ``lease`` (the worker's, by
    default the queue's), then dropped; the provider's task id until it is written or the
    attempt is stopped.
    """

    def __init__(
        self,
        queue: AsyncJobQueue,
        job: Job,
        worker_id: str,
        loop: asyncio.AbstractEventLoop,
        *,
        lease: float | None = None,
    ) -> None:
        self.queue = queue
        self.job = job
        self.worker_id = worker_id
        self.cancelled = asyncio.Event()
        #: How long a progress write is retried before it is dropped.
        self.lease = queue.lease if lease is None else lease
        self._loop = loop
        self._remote_task_id = job.remote_task_id
        #: When the database last confirmed this claim's lease (monotonic seconds): the
        #: claim's answer, then each heartbeat answer that matched it (`confirm`). By the
        #: database's clock the lease runs out no later than a lease after it.
        self.confirmed = time.monotonic()
        #: Why the worker stopped this attempt's handler, once it has (a handler that
        #: catches the cancellation may look).
        self.stopped_because: StopReason | None = None
        #: Cleared from the lease's confirmation before a paid request (`lease_confirmed`)
        #: until the provider's task id is saved: a graceful stop waits for the save
        #: instead of stopping the handler, since the saved id is what keeps the next
        #: attempt from paying again.
        self.paid_saved = asyncio.Event()
        self.paid_saved.set()

    async def report_progress(self, percent: int, message: str | None = None) -> None:
        """Write progress (0-100) and a message on the job; `LeaseLost` if no longer ours.

        Best-effort: a write the database refuses or loses is retried for up to one lease
        (the database back within it, the progress lands late), then logged as a warning
        and dropped, and the handler goes on: progress is news for whoever watches, and the
        attempt's work is worth more than one missed update. An invalid ``percent`` still
        raises `PayloadError`."""
        give_up_at = time.monotonic() + self.lease
        write = functools.partial(self.queue.set_progress, self.job, percent, message)
        with contextlib.suppress(GaveUp):
            await persist(
                write,
                gives_up=lambda: self.cancelled.is_set() or time.monotonic() >= give_up_at,
                subject=f"Job {self.job.id}: ",
                what=f"recording progress {percent}%",
                consequence="progress not recorded (progress is best-effort)",
                backoff=Backoff(cap=WRITE_RETRY_CAP),
                give_up_level=logging.WARNING,
            )

    async def save_remote_task_id(self, task_id: str) -> None:
        """Save the provider's task id on the job (its ``remote_task_id``), so a later
        attempt resumes the task.

        Durable before it returns: the id is what keeps a later attempt from paying for the
        task again, so a write the database refuses or loses is retried (logged) until it
        is written; `LeaseLost` when the job is no longer this attempt's, or when the
        worker stops the attempt (cancelled, lease lost, shutdown) first."""
        write = functools.partial(self.queue.save_remote_task_id, self.job, task_id)
        try:
            await persist(
                write,
                gives_up=self.cancelled.is_set,
                subject=f"Job {self.job.id}: ",
                what="saving the provider's task id",
                consequence="the attempt was stopped before it was saved",
                backoff=Backoff(base=0.05, cap=TASK_ID_RETRY_CAP),
                give_up_level=logging.WARNING,
            )
        except GaveUp as exc:
            raise LeaseLost(
                f"cannot save the remote task id of job {self.job.id}: the worker stopped "
                "this attempt before the database took the write",
                hint="the job was cancelled, its lease lost or the worker is stopping, while "
                "the database refused the write; nothing was saved",
            ) from exc.__cause__
        self._remote_task_id = task_id
        self.paid_saved.set()

    def confirm(self, when: float) -> None:
        """The database confirmed the lease at ``when`` (monotonic): a heartbeat answer, or
        the answer of the confirmation before a paid request."""
        self.confirmed = max(self.confirmed, when)

    async def lease_confirmed(self) -> None:
        """Extend the job's lease now, in a round trip of its own, and return once the
        database has confirmed that the job is still this attempt's (a whole lease ahead).

        A generator calls it (`jobqueue.generators.base.before_paid_request`) right before
        a request that costs money and starts work that only its saved task id lets a
        later attempt find (a provider's submit). A write that fails is retried (logged),
        as the task id's is; a worker cut off from the database never gets its answer, and
        its lease watch stops the attempt here before the lease runs out, so the
        request is never sent and the attempt that takes the job over pays only once.
        `LeaseLost` when the job is no longer this attempt's, or the attempt was stopped."""

        async def beat() -> None:
            sent = time.monotonic()
            alive = await self.queue.heartbeat_many(self.worker_id, [self.job], lease=self.lease)
            if self.job.id not in alive:
                raise LeaseLost(
                    f"job {self.job.id} is no longer this attempt's: not sending a paid request"
                )
            self.confirm(sent)

        try:
            await persist(
                beat,
                gives_up=self.cancelled.is_set,
                subject=f"Job {self.job.id}: ",
                what="confirming the lease before a paid request",
                consequence="the attempt was stopped; no paid request was sent",
                backoff=Backoff(cap=WRITE_RETRY_CAP),
                give_up_level=logging.WARNING,
            )
        except GaveUp as exc:
            raise LeaseLost(
                f"job {self.job.id}: the attempt was stopped before the database confirmed "
                "its lease; no paid request was sent"
            ) from exc.__cause__
        self.paid_saved.clear()

    @property
    def remote_task_id(self) -> str | None:
        """The task id saved by this or an earlier attempt of the job, if any."""
        return self._remote_task_id

    def run_in_loop(self, awaitable: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the worker's event loop from a sync handler's thread and
        return its result, e.g. ``ctx.run_in_loop(ctx.report_progress(50))``."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            awaitable.close()
            raise RuntimeError("run_in_loop is for sync handlers; async handlers await directly")
        return asyncio.run_coroutine_threadsafe(awaitable, self._loop).result()


def generator_handler(generator: Generator) -> Handler:
    """A handler that runs ``generator`` on the job's payload (a `GenerationRequest`)."""

    async def run_generation(job: Job, ctx: WorkerContext) -> GenerationResult:
        request = GenerationRequest.from_payload(job.payload)
        return await generator.generate(request, ctx)

    run_generation.__qualname__ = f"generator_handler({generator.name!r})"
    return run_generation


__all__ = ["Handler", "HandlerResult", "WorkerContext", "generator_handler"]
