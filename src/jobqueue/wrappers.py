"""Two ways to make an image, as library calls.

- Through the queue: `generate_image_async` and its blocking twin `generate_image_queued`
  enqueue an ``image`` job, hand its id to the caller at once, poll until the job is final
  and return the `GenerationResult`. A worker elsewhere does the generating, so a 2-3 minute
  generation never times out the caller's request, and a caller that gives up
  (``timeout``) can come back later and wait on the id.
- Directly: `generate_image` and `generate_image_sync` call a generator in-process, with
  no queue and no durability.

The queued forms share everything but the waiting: `_ImageCall` builds the payload, logs
the job's progress for whoever watches the log ("Job created: <id>", "Job <id> status:
<status>", and a warning when no live worker serves the job) and maps the final job.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from .generators.base import (
    IMAGE_KIND,
    GenerationRequest,
    GenerationResult,
    Generator,
    JobContext,
    LocalContext,
)
from .models import DEFAULT_QUEUE, Job, Status
from .operations.waiting import NO_WORKER_AFTER
from .queue import AsyncJobQueue, JobQueue

logger = logging.getLogger(__name__)


@dataclass
class _ImageCall:
    """One queued image generation: what to enqueue, what to log and call, how to finish."""

    request: GenerationRequest
    owner_id: str | None
    idempotency_key: str | None
    queue_name: str
    on_created: Callable[[UUID], Any] | None
    on_status: Callable[[Job], Any] | None
    #: The start deadline, as `enqueue` takes it (``expires_in`` or ``start_by``).
    deadline: dict[str, Any]

    @classmethod
    def build(
        cls,
        prompt: str,
        model: str | None,
        images: Iterable[str],
        options: Mapping[str, Any] | None,
        owner_id: str | None,
        idempotency_key: str | None,
        queue_name: str,
        on_created: Callable[[UUID], Any] | None,
        on_status: Callable[[Job], Any] | None,
        expires_in: float | timedelta | None,
        start_by: datetime | None,
    ) -> _ImageCall:
        request = _request(prompt, model, images, options)
        deadline: dict[str, Any] = {}
        if expires_in is not None:
            deadline["expires_in"] = expires_in
        if start_by is not None:
            deadline["start_by"] = start_by
        return cls(request, owner_id, idempotency_key, queue_name, on_created, on_status, deadline)

    def enqueue_kwargs(self) -> dict[str, Any]:
        """Everything ``enqueue`` needs for this call, so the twins pass it on unchanged."""
        return {
            "kind": IMAGE_KIND,
            "payload": self.request.to_payload(),
            "queue": self.queue_name,
            "owner_id": self.owner_id,
            "idempotency_key": self.idempotency_key,
            **self.deadline,
        }

    def created(self, job: Job) -> Any:
        """Log the new id and tell the caller at once (before any waiting)."""
        logger.info("Job created: %s", job.id)
        return None if self.on_created is None else self.on_created(job.id)

    def changed(self, job: Job) -> Any:
        """Log a new status (or progress) and pass the snapshot to ``on_status``."""
        line = f"Job {job.id} status: {job.status}"
        if job.status is Status.PROCESSING and (job.progress or job.progress_message):
            detail = f"{job.progress}%"
            if job.progress_message:
                detail += f", {job.progress_message}"
            line += f" ({detail})"
        if job.status is Status.EXPIRED:
            line += ": not started by its deadline"
        elif job.status in (Status.FAILED, Status.CANCELLED) and job.error:
            line += f": {job.error}"
        logger.info("%s", line)
        return None if self.on_status is None else self.on_status(job)

    @staticmethod
    def no_worker(message: str) -> None:
        """Log that no live worker serves the job (see `JobQueue.wait`)."""
        logger.warning("%s", message)

    @staticmethod
    def finish(job: Job) -> GenerationResult:
        """The `GenerationResult` of a completed job (`wait_result` raised for the others)."""
        return GenerationResult.of_job(job)


def _request(
    prompt: str,
    model: str | None,
    images: Iterable[str],
    options: Mapping[str, Any] | None,
) -> GenerationRequest:
    return GenerationRequest(prompt, model, tuple(images), dict(options or {}))


async def generate_image_async(
    queue: AsyncJobQueue,
    prompt: str,
    *,
    model: str | None = None,
    images: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
    owner_id: str | None = None,
    idempotency_key: str | None = None,
    queue_name: str = DEFAULT_QUEUE,
    poll_interval: float = 3.0,
    timeout: float | None = None,
    on_created: Callable[[UUID], Any] | None = None,
    on_status: Callable[[Job], Any] | None = None,
    no_worker_after: float | None = NO_WORKER_AFTER,
    expires_in: float | timedelta | None = None,
    start_by: datetime | None = None,
) -> GenerationResult:
    """Enqueue an image job, report its id via ``on_created``, wait, and return the result.

    ``on_created`` and ``on_status`` may be plain or async functions. Raises `JobFailed` when
    the job ends ``failed`` or ``cancelled``, and `WaitTimeout` when ``timeout`` seconds pass
    first — the job keeps running, and ``queue.wait(id)`` picks it up again later.
    ``expires_in`` (seconds) or ``start_by`` (a time) is the job's start deadline: when no
    worker has started it by then it ends ``expired``, never reaches the provider, and this
    raises `JobExpired` (a `JobFailed`).
    When the job is not final after ``no_worker_after`` seconds and no live worker serves
    its queue, a warning says so (once) and what to start; None turns that off.
    """
    call = _ImageCall.build(
        prompt, model, images, options, owner_id, idempotency_key, queue_name, on_created,
        on_status, expires_in, start_by,
    )  # fmt: skip
    job = await queue.enqueue(**call.enqueue_kwargs())
    outcome = call.created(job)
    if inspect.isawaitable(outcome):
        await outcome
    final = await queue.wait_result(
        job.id,
        interval=poll_interval,
        timeout=timeout,
        on_change=call.changed,
        no_worker_after=no_worker_after,
        on_no_worker=call.no_worker,
    )
    return call.finish(final)


def generate_image_queued(
    queue: JobQueue,
    prompt: str,
    *,
    model: str | None = None,
    images: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
    owner_id: str | None = None,
    idempotency_key: str | None = None,
    queue_name: str = DEFAULT_QUEUE,
    poll_interval: float = 3.0,
    timeout: float | None = None,
    on_created: Callable[[UUID], Any] | None = None,
    on_status: Callable[[Job], Any] | None = None,
    no_worker_after: float | None = NO_WORKER_AFTER,
    expires_in: float | timedelta | None = None,
    start_by: datetime | None = None,
) -> GenerationResult:
    """The blocking form of `generate_image_async`, on a sync `JobQueue`."""
    call = _ImageCall.build(
        prompt, model, images, options, owner_id, idempotency_key, queue_name, on_created,
        on_status, expires_in, start_by,
    )  # fmt: skip
    job = queue.enqueue(**call.enqueue_kwargs())
    call.created(job)
    final = queue.wait_result(
        job.id,
        interval=poll_interval,
        timeout=timeout,
        on_change=call.changed,
        no_worker_after=no_worker_after,
        on_no_worker=call.no_worker,
    )
    return call.finish(final)


async def generate_image(
    generator: Generator,
    prompt: str,
    *,
    model: str | None = None,
    images: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
    context: JobContext | None = None,
) -> GenerationResult:
    """Generate directly, without a queue: nothing is stored, nothing survives a crash.

    ``context`` defaults to a fresh `LocalContext`; pass one to see progress, or one that
    holds the id of a task to resume (``remote_task_id``).
    """
    request = _request(prompt, model, images, options)
    return await generator.generate(request, context if context is not None else LocalContext())


def generate_image_sync(
    generator: Generator,
    prompt: str,
    *,
    model: str | None = None,
    images: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
    context: JobContext | None = None,
) -> GenerationResult:
    """`generate_image` for code without an event loop (runs one with `asyncio.run`).

    The generator is closed (``aclose``) before the loop ends: connections it opened
    belong to this loop and would otherwise stay open, one client per call. Generators
    open their connections again on their next use (`DefAPIGenerator` does).
    """

    async def generate_then_close() -> GenerationResult:
        try:
            return await generate_image(
                generator, prompt, model=model, images=images, options=options, context=context
            )
        finally:
            await generator.aclose()

    return asyncio.run(generate_then_close())
