"""generate_image (direct) and generate_image_async / generate_image_queued (through a queue
on SQLite and PostgreSQL, with a real Worker running the jobs)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from jobqueue import (
    AsyncJobQueue,
    DefAPIGenerator,
    GenerationRequest,
    Generator,
    Job,
    JobExpired,
    JobFailed,
    JobQueue,
    LocalContext,
    MockGenerator,
    Status,
    WaitTimeout,
    generate_image,
    generate_image_async,
    generate_image_queued,
    generate_image_sync,
)
from jobqueue.worker import Worker
from tests.support.fake_defapi import FakeDefAPI


@contextlib.asynccontextmanager
async def running_worker(queue: AsyncJobQueue, generator: Generator) -> AsyncIterator[Worker]:
    """A real Worker serving ``queue`` in a task of this event loop."""
    worker = Worker(queue, generator=generator, poll_interval=0.05, lease=10, grace_period=2)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 20)


@contextlib.contextmanager
def worker_thread(url: str, table: str, generator: Generator) -> Iterator[Worker]:
    """A real Worker in its own thread and event loop, for the blocking wrapper."""
    ready = threading.Event()
    holder: dict[str, Worker] = {}

    def main() -> None:
        async def serve() -> None:
            queue = AsyncJobQueue(url, table=table)
            worker = Worker(queue, generator=generator, poll_interval=0.05, grace_period=2)
            holder["worker"] = worker
            task = asyncio.create_task(worker.run())
            await asyncio.sleep(0)
            ready.set()
            try:
                await task
            finally:
                await queue.close()

        asyncio.run(serve())

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(20)
    try:
        yield holder["worker"]
    finally:
        holder["worker"].stop()
        thread.join(20)
        assert not thread.is_alive()


# -- direct calls ----------------------------------------------------------------------------


async def test_generate_image_direct_with_the_mock() -> None:
    mock = MockGenerator(delay=0.02, steps=2)
    ctx = LocalContext()
    result = await generate_image(
        mock, "a cat", model="m", images=["https://x.invalid/a.png"], options={"n": 1}, context=ctx
    )
    expected = mock.urls_for(
        GenerationRequest("a cat", "m", ("https://x.invalid/a.png",), {"n": 1})
    )
    assert result.images == expected
    assert [p for p, _ in ctx.progress] == [50, 100]


def test_generate_image_sync_with_the_mock() -> None:
    mock = MockGenerator(delay=0)
    assert generate_image_sync(mock, "a cat").images == mock.urls_for(GenerationRequest("a cat"))


async def test_generate_image_direct_with_fake_defapi(fake_defapi: FakeDefAPI) -> None:
    gen = DefAPIGenerator(fake_defapi.api_key, base_url=fake_defapi.url, poll_interval=0.02)
    result = await generate_image(gen, "direct", options={"aspect_ratio": "1:1"})
    await gen.aclose()
    (task,) = fake_defapi.tasks_for("direct")
    assert result.url == f"https://cdn.fake-defapi.invalid/{task.task_id}/0.png"


# -- through the queue -----------------------------------------------------------------------


async def test_generate_image_async_end_to_end(
    aqueue: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue")
    mock = MockGenerator(delay=0.2, steps=2)
    events: list[tuple[str, Any]] = []

    def created(job_id: UUID) -> None:
        events.append(("created", job_id))

    async def status(job: Job) -> None:  # async callbacks are awaited
        events.append(("status", job.status))

    async with running_worker(aqueue, mock):
        result = await generate_image_async(
            aqueue,
            "a lego castle",
            options={"aspect_ratio": "16:9"},
            owner_id="user-1",
            poll_interval=0.05,
            timeout=30,
            on_created=created,
            on_status=status,
        )
    assert result.images == mock.urls_for(
        GenerationRequest("a lego castle", options={"aspect_ratio": "16:9"})
    )
    assert events[0][0] == "created"
    job_id = events[0][1]
    statuses = [s for kind, s in events if kind == "status"]
    # Each change is reported once per status/progress; the order only moves forward.
    order = [Status.PENDING, Status.PROCESSING, Status.COMPLETED]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
    assert statuses[-1] is Status.COMPLETED and Status.PROCESSING in statuses
    job = await aqueue.get(job_id)
    assert job.kind == "image" and job.owner_id == "user-1"
    assert job.payload == {"prompt": "a lego castle", "options": {"aspect_ratio": "16:9"}}
    assert job.result_url == result.url and job.remote_task_id is not None
    assert f"Job created: {job_id}" in caplog.text
    assert f"Job {job_id} status: completed" in caplog.text


async def test_generate_image_async_with_fake_defapi(
    aqueue: AsyncJobQueue, fake_defapi: FakeDefAPI
) -> None:
    gen = DefAPIGenerator(fake_defapi.api_key, base_url=fake_defapi.url, poll_interval=0.02)
    ids: list[UUID] = []
    async with running_worker(aqueue, gen):
        result = await generate_image_async(
            aqueue, "via defapi", poll_interval=0.05, timeout=30, on_created=ids.append
        )
    await gen.aclose()
    (task,) = fake_defapi.tasks_for("via defapi")
    job = await aqueue.get(ids[0])
    assert job.status is Status.COMPLETED and job.remote_task_id == task.task_id
    assert result.cost == Decimal("0.04")  # exact, as DefAPI reported it
    assert fake_defapi.api_key not in str(job.result)


def test_generate_image_queued_blocking(
    queue: JobQueue, migrated: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue")
    mock = MockGenerator(delay=0.1, steps=2)
    seen: list[Status] = []
    ids: list[UUID] = []
    with worker_thread(*migrated, mock):
        result = generate_image_queued(
            queue,
            "blocking",
            poll_interval=0.05,
            timeout=30,
            on_created=ids.append,
            on_status=lambda job: seen.append(job.status),
        )
    assert result.images == mock.urls_for(GenerationRequest("blocking"))
    assert seen[-1] is Status.COMPLETED
    assert queue.get(ids[0]).status is Status.COMPLETED
    assert f"Job {ids[0]} status: completed" in caplog.text


async def test_failed_job_raises_job_failed(migrated: tuple[str, str]) -> None:
    url, table = migrated
    queue = AsyncJobQueue(url, table=table, retry_backoff=(0.01, 0.02))
    try:
        async with running_worker(queue, MockGenerator(delay=0, failure_rate=1.0)):
            with pytest.raises(JobFailed, match="failed on purpose") as info:
                await generate_image_async(queue, "doomed", poll_interval=0.05, timeout=30)
        job = await queue.get(info.value.job_id)  # type: ignore[arg-type]
        assert job.status is Status.FAILED and job.attempts == job.max_attempts
    finally:
        await queue.close()


async def test_cancelled_job_raises_job_failed(aqueue: AsyncJobQueue) -> None:
    async def cancel_at_once(job_id: UUID) -> None:
        await aqueue.cancel(job_id)

    with pytest.raises(JobFailed, match="cancelled"):
        await generate_image_async(
            aqueue, "never mind", poll_interval=0.05, timeout=10, on_created=cancel_at_once
        )


class Recording(MockGenerator):
    """The mock, remembering every prompt it was asked for."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.prompts: list[str] = []
        self.started = asyncio.Event()

    async def generate(self, request: GenerationRequest, context: Any) -> Any:
        self.prompts.append(request.prompt)
        self.started.set()
        return await super().generate(request, context)


async def test_a_job_not_started_by_its_deadline_raises_job_expired(aqueue: AsyncJobQueue) -> None:
    """The only slot is busy past the deadline: the worker's expiry timer ends the job
    ``expired``, and it never reaches the generator."""
    generator = Recording(delay=1.5, steps=1)
    worker = Worker(aqueue, generator=generator, poll_interval=0.05, concurrency=1, lease=10)
    busy = await aqueue.enqueue("image", GenerationRequest("busy").to_payload())
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(generator.started.wait(), 20)  # the only slot is taken
        assert (await aqueue.get(busy.id)).status is Status.PROCESSING
        with pytest.raises(JobExpired, match="not started in time") as info:
            await generate_image_async(aqueue, "too late", poll_interval=0.05, expires_in=0.3)
        job = await aqueue.get(info.value.job_id)  # type: ignore[arg-type]
        assert (job.status, job.attempts, job.started_at) == (Status.EXPIRED, 0, None)
        assert isinstance(info.value, JobFailed)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 20)
    assert generator.prompts == ["busy"]


async def test_timeout_leaves_the_job_running(aqueue: AsyncJobQueue) -> None:
    ids: list[UUID] = []
    with pytest.raises(WaitTimeout) as info:
        await generate_image_async(
            aqueue, "later", poll_interval=0.05, timeout=0.2, on_created=ids.append
        )
    assert info.value.job_id == ids[0]
    assert (await aqueue.get(ids[0])).status is Status.PENDING
    # The caller comes back later and waits on the id; a worker finishes the job meanwhile.
    mock = MockGenerator(delay=0)
    async with running_worker(aqueue, mock):
        job = await aqueue.wait(ids[0], interval=0.05, timeout=30)
    assert job.status is Status.COMPLETED
    assert job.result_url == mock.urls_for(GenerationRequest("later"))[0]


async def test_idempotency_key_returns_the_same_job(aqueue: AsyncJobQueue) -> None:
    ids: list[UUID] = []
    for _ in range(2):
        with pytest.raises(WaitTimeout):
            await generate_image_async(
                aqueue, "once", idempotency_key="k1", timeout=0.05, on_created=ids.append
            )
    assert ids[0] == ids[1]


async def test_a_result_without_usable_images_falls_back_to_result_url(
    aqueue: AsyncJobQueue,
) -> None:
    """The wrappers, the web API and the CLI agree on a job's images (one helper)."""
    from jobqueue.cli.output import job_summary
    from jobqueue.web.views import result_images
    from jobqueue.worker import HandlerResult, WorkerContext

    url = "https://cdn.example/only.png"
    shapes = iter([{"images": "abc"}, {"images": []}, {"images": [1, 2]}])

    async def own_shape(job: Job, ctx: WorkerContext) -> HandlerResult:
        return HandlerResult(result=next(shapes), result_url=url)

    worker = Worker(aqueue, {"image": own_shape}, poll_interval=0.05, lease=10, grace_period=2)
    task = asyncio.create_task(worker.run())
    try:
        for n in range(3):
            result = await generate_image_async(aqueue, f"shape {n}", poll_interval=0.05)
            assert result.images == (url,)
            job = (await aqueue.list(limit=1))[0]
            assert result_images(job) == [url]
            assert job_summary(job) == url
    finally:
        worker.stop()
        await asyncio.wait_for(task, 20)
