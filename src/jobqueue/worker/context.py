"""The handler's side of the worker: what a handler is (`Handler`), what it may return
(`HandlerResult`), what it may do to its job while it runs (`WorkerContext`), and a
`Generator` as a handler (`generator_handler`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

from ..errors import JobNotFound, LeaseLost, PayloadError, describe_error
from ..generators.base import GenerationRequest, GenerationResult, Generator, OldContextNames
from ..models import Job
from ..queue import AsyncJobQueue

log = logging.getLogger("jobqueue.worker")

T = TypeVar("T")

Handler: TypeAlias = Callable[[Job, "WorkerContext"], Any]
"""``async def h(job, ctx)`` or a plain function (run in a thread); see `Worker`."""


@dataclass(frozen=True, slots=True)
class HandlerResult:
    """What a handler returns to set both ``result`` (JSON) and ``result_url``."""

    result: Any = None
    result_url: str | None = None


class WorkerContext(OldContextNames):
    """What a running handler may do to its job: the `JobContext` of a generator.

    ``cancelled`` is set when the worker stops the handler (the job was cancelled, its lease
    was lost, or the worker is shutting down). Async handlers are cancelled anyway; a sync
    handler running in a thread cannot be, so it should check ``cancelled.is_set()``.
    """

    def __init__(
        self,
        queue: AsyncJobQueue,
        job: Job,
        worker_id: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.queue = queue
        self.job = job
        self.worker_id = worker_id
        self.cancelled = asyncio.Event()
        self._loop = loop
        self._remote_task_id = job.remote_task_id

    async def report_progress(self, percent: int, message: str | None = None) -> None:
        """Write progress (0-100) and a message on the job; `LeaseLost` if no longer ours.

        A write the database refuses or loses (a hiccup) is logged as a warning and the
        handler goes on: progress is news for whoever watches, and the attempt's work is
        worth more than one missed update. An invalid ``percent`` still raises."""
        try:
            await self.queue.set_progress(self.job, percent, message)
        except (LeaseLost, JobNotFound, PayloadError):
            raise
        except Exception as exc:
            log.warning(
                "Job %s: progress %s%% not recorded (%s); the job goes on",
                self.job.id,
                percent,
                describe_error(exc),
            )

    async def save_remote_task_id(self, task_id: str) -> None:
        """Save the provider's task id on the job (its ``remote_task_id``), so a later
        attempt resumes the task; `LeaseLost` if the job is no longer ours."""
        await self.queue.save_remote_task_id(self.job, task_id)
        self._remote_task_id = task_id

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
