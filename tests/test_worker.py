"""The worker against real databases (SQLite and PostgreSQL via the `migrated` fixture).

Handlers here are small real functions; nothing of jobqueue is mocked. Leases are short so
that heartbeats, cancellation and fencing happen within a second or two.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, Status
from jobqueue.errors import GenerationError
from jobqueue.generators.base import GenerationRequest, GenerationResult, JobContext
from jobqueue.worker import HandlerResult, Worker, WorkerContext

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
async def jq(migrated: tuple[str, str]) -> AsyncIterator[AsyncJobQueue]:
    """A queue whose retries come back almost at once, so retry tests stay short."""
    url, table = migrated
    q = AsyncJobQueue(url, table=table, retry_backoff=(0.01, 0.02))
    yield q
    await q.close()


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


async def drain(worker: Worker, queue: AsyncJobQueue, ids: list[Any], timeout: float = 15) -> None:
    """run_until_idle until every job is final (retries come back after a short backoff)."""
    deadline = time.monotonic() + timeout
    while True:
        await worker.run_until_idle()
        jobs = [await queue.get(i) for i in ids]
        if all(j.is_final for j in jobs):
            return
        assert time.monotonic() < deadline, [j.status for j in jobs]
        await asyncio.sleep(0.02)


def messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


# -- running jobs ---------------------------------------------------------------------------


async def test_jobs_held_never_exceed_concurrency_while_batches_overlap(
    jq: AsyncJobQueue,
) -> None:
    """Finished jobs count until their outcome is written, and batches written at once
    claim replacements: at no moment may the worker hold more than ``concurrency`` jobs
    (running or waiting to be written), whichever batch's claim lands first."""
    await jq.enqueue_many([{"kind": "echo", "payload": {"n": n}} for n in range(400)])
    held_at_start: list[int] = []
    worker: Worker

    async def echo(job: Job, ctx: WorkerContext) -> Any:
        held_at_start.append(len(worker._slots.held))
        await asyncio.sleep(random.choice((0, 0, 0.001, 0.003)))
        return None

    worker = Worker(jq, {"echo": echo}, concurrency=6, lease=5)
    assert await worker.run_until_idle() == 400
    assert len(held_at_start) == 400
    assert max(held_at_start) <= 6, max(held_at_start)


async def test_run_until_idle_completes_a_batch_concurrently_and_once(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    jobs = await jq.enqueue_many([{"kind": "echo", "payload": {"n": n}} for n in range(24)])
    calls: list[Any] = []
    running = 0
    peak = 0

    async def echo(job: Job, ctx: WorkerContext) -> Any:
        nonlocal running, peak
        calls.append(job.id)
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return {"twice": job.payload["n"] * 2}

    worker = Worker(jq, {"echo": echo}, concurrency=4, lease=2)
    finished = await worker.run_until_idle()

    assert finished == 24
    assert sorted(calls) == sorted(j.id for j in jobs)  # each exactly once
    assert 1 < peak <= 4
    for job in jobs:
        done = await jq.get(job.id)
        assert done.status is Status.COMPLETED
        assert done.result == {"twice": job.payload["n"] * 2}
        assert done.attempts == 1
    # Batch claiming: far fewer claim statements than jobs.
    assert worker.claims < 24
    text = messages(caplog)
    assert f"Job {jobs[0].id} status: processing" in text
    assert f"Job {jobs[0].id} status: completed in " in text
    assert "concurrency=4" in text


async def test_sync_handler_runs_in_a_thread_and_can_report_progress(jq: AsyncJobQueue) -> None:
    job = await jq.enqueue("sync", {"x": 1})
    seen: dict[str, Any] = {}

    def handler(job: Job, ctx: WorkerContext) -> HandlerResult:
        seen["thread"] = threading.current_thread()
        ctx.run_in_loop(ctx.report_progress(40, "halfway"))
        seen["progress"] = ctx.run_in_loop(jq.get(job.id)).progress
        return HandlerResult({"ok": True}, "https://example.test/out.png")

    await Worker(jq, {"sync": handler}, lease=2).run_until_idle()

    assert seen["thread"] is not threading.main_thread()
    assert seen["progress"] == 40
    done = await jq.get(job.id)
    assert done.status is Status.COMPLETED
    assert done.result == {"ok": True}
    assert done.result_url == "https://example.test/out.png"


async def test_progress_is_written_while_the_job_runs(jq: AsyncJobQueue) -> None:
    job = await jq.enqueue("paint", {})
    observed: list[tuple[int, str | None]] = []

    async def paint(job: Job, ctx: WorkerContext) -> str:
        for percent in (25, 75):
            await ctx.report_progress(percent, f"step {percent}")
            now = await jq.get(job.id)
            observed.append((now.progress, now.progress_message))
        return "done"

    await Worker(jq, {"paint": paint}, lease=2).run_until_idle()
    assert observed == [(25, "step 25"), (75, "step 75")]
    assert (await jq.get(job.id)).progress == 100


async def test_failed_attempts_are_retried_then_succeed(jq: AsyncJobQueue) -> None:
    job = await jq.enqueue("flaky", {}, max_attempts=3)

    async def flaky(job: Job, ctx: WorkerContext) -> str:
        if job.attempts < 3:
            raise ConnectionError(f"provider hiccup {job.attempts}")
        return "third time lucky"

    await drain(Worker(jq, {"flaky": flaky}, lease=2), jq, [job.id])
    done = await jq.get(job.id)
    assert done.status is Status.COMPLETED
    assert done.result == "third time lucky"
    assert done.attempts == 3
    assert [e["error"] for e in done.errors] == [
        "ConnectionError: provider hiccup 1",
        "ConnectionError: provider hiccup 2",
    ]


async def test_out_of_attempts_fails_with_the_error_history(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    job = await jq.enqueue("doomed", {}, max_attempts=2)

    def doomed(job: Job, ctx: WorkerContext) -> None:
        raise ValueError("bad prompt")

    await drain(Worker(jq, {"doomed": doomed}, lease=2), jq, [job.id])
    done = await jq.get(job.id)
    assert done.status is Status.FAILED
    assert done.attempts == 2
    assert done.error == "ValueError: bad prompt"
    assert [e["attempt"] for e in done.errors] == [1, 2]
    text = messages(caplog)
    # The first failure says a retry comes, and which attempt it is; only the last one
    # says the job failed.
    retried = re.search(
        rf"Job {job.id}: attempt 1 of 2 failed: ValueError: bad prompt; "
        r"will retry in \d+\.\d s \(attempt 2 of 2\)",
        text,
    )
    assert retried, text
    assert f"Job {job.id} status: failed: ValueError: bad prompt\n" in text + "\n"
    assert text.count("status: failed") == 1, text


async def test_bad_handlers_fail_their_job_and_the_worker_keeps_serving(
    jq: AsyncJobQueue,
) -> None:
    async def boom(job: Job, ctx: WorkerContext) -> None:
        raise RuntimeError("handler exploded")

    async def garbage(job: Job, ctx: WorkerContext) -> Any:
        return {"value": float("nan"), "thing": object()}

    async def slow(job: Job, ctx: WorkerContext) -> None:
        await asyncio.sleep(30)

    async def ok(job: Job, ctx: WorkerContext) -> int:
        return int(job.payload["n"])

    async def refused(job: Job, ctx: WorkerContext) -> None:
        raise GenerationError("provider rejected the key", retryable=False)

    def exits(job: Job, ctx: WorkerContext) -> None:
        raise SystemExit(3)  # sys.exit() deep in some library: ends this job only

    handlers = {
        "boom": boom,
        "garbage": garbage,
        "slow": slow,
        "ok": ok,
        "refused": refused,
        "exits": exits,
    }
    bad = {
        kind: (await jq.enqueue(kind, {}, max_attempts=1)).id
        for kind in ("boom", "garbage", "slow", "exits")
    }
    refused_id = (await jq.enqueue("refused", {}, max_attempts=5)).id
    stray = (await jq.enqueue("nobody-handles-this", {}, max_attempts=5)).id
    good = [(await jq.enqueue("ok", {"n": n})).id for n in range(6)]

    worker = Worker(jq, handlers, concurrency=3, lease=2, job_timeout=0.3, all_kinds=True)
    await worker.run_until_idle()

    for n, job_id in enumerate(good):
        done = await jq.get(job_id)
        assert (done.status, done.result) == (Status.COMPLETED, n)
    errors = {kind: (await jq.get(job_id)) for kind, job_id in bad.items()}
    assert all(j.status is Status.FAILED for j in errors.values())
    assert errors["boom"].error == "RuntimeError: handler exploded"
    assert "not JSON" in (errors["garbage"].error or "")
    assert "longer than 0.3s" in (errors["slow"].error or "")
    assert errors["exits"].error == "SystemExit: 3"
    # Errors that retrying cannot fix fail at once, whatever attempts remain.
    for job_id, words in ((refused_id, "rejected the key"), (stray, "no handler for job kind")):
        done = await jq.get(job_id)
        assert (done.status, done.attempts) == (Status.FAILED, 1)
        assert words in (done.error or "")


async def test_a_worker_claims_only_the_kinds_it_handles_unless_told_otherwise(
    jq: AsyncJobQueue,
) -> None:
    other = (await jq.enqueue("video", {}, max_attempts=5)).id
    mine = (await jq.enqueue("echo", {})).id

    async def echo(job: Job, ctx: WorkerContext) -> str:
        return "hi"

    # A worker for "echo" on a shared queue leaves the "video" job for a video worker.
    await Worker(jq, {"echo": echo}, lease=2).run_until_idle()
    assert (await jq.get(mine)).status is Status.COMPLETED
    left = await jq.get(other)
    assert (left.status, left.attempts, left.error) == (Status.PENDING, 0, None)

    # Claiming every kind is opt-in: the stray kind then fails at once, visibly.
    await Worker(jq, {"echo": echo}, lease=2, all_kinds=True).run_until_idle()
    failed = await jq.get(other)
    assert (failed.status, failed.attempts) == (Status.FAILED, 1)
    assert "no handler for job kind 'video'" in (failed.error or "")


async def test_a_handler_error_is_stored_as_one_redacted_truncated_line(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue")
    job = await jq.enqueue("leaky", {}, max_attempts=1)

    async def leaky(job: Job, ctx: WorkerContext) -> None:
        raise RuntimeError(
            "cannot reach postgresql://app:s3cret@db.example/jobs " + "x" * 5000
            + "\n[SQL: UPDATE jobs SET result = %(result)s]\n[parameters: {'result': 'private'}]"
        )  # fmt: skip

    await Worker(jq, {"leaky": leaky}, lease=2).run_until_idle()
    error = (await jq.get(job.id)).error or ""
    assert error.startswith("RuntimeError: cannot reach postgresql://app:***@db.example/jobs")
    assert "\n" not in error and "private" not in error and "s3cret" not in error
    assert len(error) <= 1000
    assert "s3cret" not in caplog.text and "private" not in caplog.text


async def test_log_file_gets_the_status_lines(jq: AsyncJobQueue, tmp_path: Path) -> None:
    job = await jq.enqueue("echo", {})

    async def echo(job: Job, ctx: WorkerContext) -> str:
        return "hi"

    log_file = tmp_path / "bot_v16_job_queue.log"
    await Worker(jq, {"echo": echo}, lease=2, log_file=log_file).run_until_idle()
    text = log_file.read_text()
    assert f"Job {job.id} status: processing" in text
    assert f"Job {job.id} status: completed in" in text


# -- generators -----------------------------------------------------------------------------


class RecordingGenerator:
    """A real Generator: 'submits' a remote task once, remembers it, and resumes it later.

    The first attempt dies right after submitting (like a worker crash), so the second must
    resume the remembered task instead of submitting again.
    """

    name = "recording"

    def __init__(self) -> None:
        self.submissions: list[str] = []
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        self.requests.append(request)
        task_id = context.remembered()
        if task_id is None:
            task_id = f"task-{len(self.submissions) + 1}"
            self.submissions.append(task_id)
            await context.remember(task_id)
            raise GenerationError("connection dropped while waiting")
        await context.report_progress(50, f"polling {task_id}")
        return GenerationResult(
            (f"https://img.example.test/{task_id}.png",), text=request.prompt, cost=0.04
        )

    async def aclose(self) -> None:
        pass


async def test_a_generator_is_wired_to_image_jobs_and_resumes_its_remote_task(
    jq: AsyncJobQueue,
) -> None:
    gen = RecordingGenerator()
    job = await jq.enqueue(
        "image", GenerationRequest("a lego castle", "google/nano-banana").to_payload()
    )

    await drain(Worker(jq, generator=gen, lease=2), jq, [job.id])

    done = await jq.get(job.id)
    assert done.status is Status.COMPLETED
    assert gen.submissions == ["task-1"]  # the second attempt resumed, it did not resubmit
    assert done.remote_task_id == "task-1"
    assert done.result_url == "https://img.example.test/task-1.png"
    assert done.result["images"] == ["https://img.example.test/task-1.png"]
    assert done.result["text"] == "a lego castle"
    assert done.result["cost"] == 0.04
    assert gen.requests[0].model == "google/nano-banana"
    assert done.attempts == 2


async def test_a_generator_in_handlers_and_a_bad_payload(jq: AsyncJobQueue) -> None:
    gen = RecordingGenerator()
    job = await jq.enqueue("picture", {"no": "prompt"}, max_attempts=3)
    await Worker(jq, {"picture": gen}, lease=2).run_until_idle()
    done = await jq.get(job.id)
    assert (done.status, done.attempts) == (Status.FAILED, 1)
    assert "prompt" in (done.error or "")
    assert gen.requests == []


async def test_an_image_job_with_a_misspelt_prompt_fails_naming_the_field(
    jq: AsyncJobQueue,
) -> None:
    """A payload written by other code (psql, a web front end) reaches the worker as is."""
    gen = RecordingGenerator()
    job = await jq.enqueue("image", {"promt": "a cat"})
    await Worker(jq, generator=gen, lease=2).run_until_idle()
    done = await jq.get(job.id)
    assert (done.status, done.attempts) == (Status.FAILED, 1)  # no retry: it cannot succeed
    assert done.error is not None
    assert "no 'prompt' field" in done.error and "'promt'" in done.error, done.error
    assert gen.requests == []


# -- cancellation, stopping, fencing --------------------------------------------------------


async def run_in_background(worker: Worker) -> asyncio.Task[None]:
    return asyncio.create_task(worker.run())


async def stop(worker: Worker, task: asyncio.Task[None]) -> None:
    worker.stop()
    await asyncio.wait_for(task, 15)


async def test_cancelling_a_running_job_stops_its_handler(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    job = await jq.enqueue("long", {})
    started = asyncio.Event()
    stopped = asyncio.Event()
    contexts: list[WorkerContext] = []

    async def long(job: Job, ctx: WorkerContext) -> None:
        contexts.append(ctx)
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    worker = Worker(jq, {"long": long}, lease=0.6, poll_interval=0.1, listen=False)
    task = await run_in_background(worker)
    await asyncio.wait_for(started.wait(), 10)
    await jq.cancel(job.id)
    await asyncio.wait_for(stopped.wait(), 10)
    assert contexts[0].cancelled.is_set()
    await stop(worker, task)
    done = await jq.get(job.id)
    assert done.status is Status.CANCELLED
    assert f"Job {job.id} status: cancelled" in messages(caplog)


async def test_graceful_stop_finishes_quick_jobs_and_releases_the_rest(
    jq: AsyncJobQueue,
) -> None:
    slow_ids = [(await jq.enqueue("slow", {})).id for _ in range(3)]
    quick_id = (await jq.enqueue("quick", {})).id
    started: set[Any] = set()
    finish_quick = asyncio.Event()

    async def slow(job: Job, ctx: WorkerContext) -> None:
        started.add(job.id)
        await asyncio.sleep(60)

    async def quick(job: Job, ctx: WorkerContext) -> str:
        started.add(job.id)
        await finish_quick.wait()
        return "made it"

    worker = Worker(
        jq, {"slow": slow, "quick": quick}, concurrency=4, lease=2, grace_period=0.5, listen=False
    )
    task = await run_in_background(worker)
    await eventually(lambda: len(started) == 4)
    worker.stop()
    await asyncio.sleep(0.05)
    finish_quick.set()  # finishes inside the grace period
    await asyncio.wait_for(task, 15)

    quick_job = await jq.get(quick_id)
    assert (quick_job.status, quick_job.result) == (Status.COMPLETED, "made it")
    for job_id in slow_ids:
        job = await jq.get(job_id)
        assert job.status is Status.PENDING
        assert job.locked_by is None
        # The released attempt was given back; the job's own limit stays.
        assert (job.attempts, job.max_attempts) == (0, 3)
        assert "released" in job.errors[-1]["error"]
    assert not await jq.list(status="processing")


async def test_immediate_stop_skips_the_grace_period(jq: AsyncJobQueue) -> None:
    job = await jq.enqueue("slow", {})
    started = asyncio.Event()

    async def slow(job: Job, ctx: WorkerContext) -> None:
        started.set()
        await asyncio.sleep(60)

    worker = Worker(jq, {"slow": slow}, lease=2, grace_period=60, listen=False)
    task = await run_in_background(worker)
    await asyncio.wait_for(started.wait(), 10)
    worker.stop()
    await asyncio.sleep(0.1)
    assert not task.done()  # still inside the 60 s grace period
    worker.stop(immediate=True)
    await asyncio.wait_for(task, 10)
    assert (await jq.get(job.id)).status is Status.PENDING


async def test_stop_from_another_thread(jq: AsyncJobQueue) -> None:
    async def noop(job: Job, ctx: WorkerContext) -> None:
        return None

    worker = Worker(jq, {"noop": noop}, lease=2, poll_interval=30, listen=False)
    task = await run_in_background(worker)
    await eventually(lambda: worker.claims >= 1)
    threading.Thread(target=worker.stop).start()
    await asyncio.wait_for(task, 10)


async def test_a_worker_whose_lease_expired_is_fenced_off(
    jq: AsyncJobQueue,
    raw_sql: Callable[..., list[Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    job = await jq.enqueue("work", {})
    started = asyncio.Event()
    let_a_finish = asyncio.Event()

    async def slow_a(job: Job, ctx: WorkerContext) -> str:
        started.set()
        await let_a_finish.wait()
        return "from A"

    async def quick_b(job: Job, ctx: WorkerContext) -> str:
        return "from B"

    # A long lease so that A's own heartbeat does not notice before it tries to complete.
    a = Worker(jq, {"work": slow_a}, worker_id="worker-a", lease=30, listen=False)
    task = await run_in_background(a)
    await asyncio.wait_for(started.wait(), 10)
    # A stalls (a GC pause, a frozen VM): its lease runs out in the database.
    raw_sql(
        f"UPDATE {jq.table_name} SET lease_expires_at = '2000-01-01 00:00:00' WHERE id = :id",
        id=job.id.hex if jq.dialect == "sqlite" else job.id,
    )
    b = Worker(jq, {"work": quick_b}, worker_id="worker-b", lease=2, listen=False)
    assert await b.run_until_idle() == 1
    let_a_finish.set()
    await eventually(lambda: "LeaseLost" in messages(caplog))
    await stop(a, task)

    done = await jq.get(job.id)
    assert (done.status, done.result, done.locked_by) == (Status.COMPLETED, "from B", "worker-b")
    assert done.attempts == 2


async def test_lost_lease_noticed_by_heartbeat_stops_the_handler(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="jobqueue.worker")
    job = await jq.enqueue("work", {})
    started = asyncio.Event()
    stopped = asyncio.Event()

    async def hang(job: Job, ctx: WorkerContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise

    a = Worker(jq, {"work": hang}, worker_id="worker-a", lease=0.6, listen=False)
    task = await run_in_background(a)
    await asyncio.wait_for(started.wait(), 10)
    # Another worker takes the job over (as after an expired lease) through the queue API.
    await jq.release(await jq.get(job.id))  # A's attempt ends; nothing tells A
    [taken] = await jq.claim("worker-b", queues=["default"])
    await asyncio.wait_for(stopped.wait(), 10)
    await stop(a, task)
    assert "LeaseLost" in messages(caplog)
    now = await jq.get(taken.id)
    assert (now.status, now.locked_by) == (Status.PROCESSING, "worker-b")


async def test_worker_rejects_settings_that_cannot_work(jq: AsyncJobQueue) -> None:
    from jobqueue.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="at least one handler"):
        Worker(jq)
    with pytest.raises(ConfigurationError, match="concurrency"):
        Worker(jq, {"x": print}, concurrency=0)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("lease", 0),
        ("lease", float("inf")),
        ("poll_interval", float("nan")),
        ("grace_period", -1),
        ("job_timeout", True),
        ("reap_interval", timedelta(days=10_000)),
    ],
)
async def test_worker_durations_follow_the_queues_rule(
    jq: AsyncJobQueue, setting: str, value: Any
) -> None:
    from jobqueue.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=setting):
        Worker(jq, {"x": print}, **{setting: value})


async def test_worker_durations_may_be_timedeltas(jq: AsyncJobQueue) -> None:
    worker = Worker(jq, {"x": print}, lease=timedelta(seconds=5), grace_period=0)
    assert (worker.lease, worker.grace_period, worker.reap_interval) == (5.0, 0.0, 5.0)


# -- database outages -----------------------------------------------------------------------


@pytest.mark.postgres
async def test_the_worker_survives_a_database_outage(
    postgres_url: str,
    jobqueue_postgres_server_url: str,
    table_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refuse all connections to the test database for a while (and kill the open ones):
    the worker logs, backs off, and carries on when the database is back."""
    from sqlalchemy import make_url, text

    from jobqueue import migrate
    from jobqueue.database import make_engine

    caplog.set_level(logging.WARNING, logger="jobqueue")
    migrate(postgres_url, table=table_name)
    jq = AsyncJobQueue(postgres_url, table=table_name)
    database = make_url(postgres_url).database
    admin = make_engine(jobqueue_postgres_server_url, isolation_level="AUTOCOMMIT")

    def outage(on: bool) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {not on!s}'))
            if on:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                )

    async def echo(job: Job, ctx: WorkerContext) -> Any:
        return job.payload

    worker = Worker(jq, {"echo": echo}, lease=1.5, poll_interval=0.1)
    task = asyncio.create_task(worker.run())
    try:
        first = await jq.enqueue("echo", {"n": 1})
        assert (await jq.wait(first.id, interval=0.05, timeout=10)).status is Status.COMPLETED
        later = await jq.enqueue("echo", {"n": 2}, delay=1.0)  # comes due during the outage
        outage(True)
        await asyncio.sleep(2.0)
        assert not task.done()
        outage(False)
        done = await jq.wait(later.id, interval=0.05, timeout=15)
        assert (done.status, done.result) == (Status.COMPLETED, {"n": 2})
        text_ = messages(caplog)
        assert "claiming jobs failed" in text_
        assert "listener on channel" in text_  # the listener noticed and reconnected
    finally:
        outage(False)
        worker.stop()
        await asyncio.wait_for(task, 15)
        await jq.close()
        admin.dispose()


async def test_sigterm_stops_gracefully_and_a_second_one_at_once(jq: AsyncJobQueue) -> None:
    import os
    import signal

    job = await jq.enqueue("slow", {})
    started = asyncio.Event()

    async def slow(job: Job, ctx: WorkerContext) -> None:
        started.set()
        await asyncio.sleep(60)

    worker = Worker(jq, {"slow": slow}, lease=2, grace_period=60, listen=False)
    worker.install_signal_handlers()  # before run: installed when serving starts
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), 10)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.2)
    assert not task.done()  # graceful: the running job has 60 s to finish
    assert (await jq.get(job.id)).status is Status.PROCESSING
    os.kill(os.getpid(), signal.SIGINT)
    await asyncio.wait_for(task, 10)
    assert (await jq.get(job.id)).status is Status.PENDING
    # The handlers are gone again: the loop no longer routes SIGTERM to the worker.
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)


async def test_reclaiming_its_own_expired_job_stops_the_stale_attempt(
    jq: AsyncJobQueue, raw_sql: Callable[..., list[Any]]
) -> None:
    """After a stall, a worker may claim the very job it still runs (its lease expired):
    the stale attempt is stopped and the new one's result stands."""
    job = await jq.enqueue("work", {})
    first_started = asyncio.Event()
    first_stopped = asyncio.Event()

    async def work(job: Job, ctx: WorkerContext) -> str:
        if job.attempts == 1:
            first_started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                first_stopped.set()
                raise
        return f"attempt {job.attempts}"

    worker = Worker(jq, {"work": work}, concurrency=2, lease=30, poll_interval=0.1, listen=False)
    task = await run_in_background(worker)
    try:
        await asyncio.wait_for(first_started.wait(), 10)
        raw_sql(
            f"UPDATE {jq.table_name} SET lease_expires_at = '2000-01-01 00:00:00' WHERE id = :id",
            id=job.id.hex if jq.dialect == "sqlite" else job.id,
        )
        done = await jq.wait(job.id, interval=0.05, timeout=10)
        assert (done.status, done.result, done.attempts) == (Status.COMPLETED, "attempt 2", 2)
        await asyncio.wait_for(first_stopped.wait(), 10)
    finally:
        await stop(worker, task)


async def test_heartbeats_keep_a_job_longer_than_its_lease(jq: AsyncJobQueue) -> None:
    """A handler running for several leases keeps its job: no reap, no second claim."""
    job = await jq.enqueue("long", {})
    started = asyncio.Event()

    async def long(job: Job, ctx: WorkerContext) -> str:
        started.set()
        await asyncio.sleep(2.0)  # more than three leases
        return "still mine"

    worker = Worker(jq, {"long": long}, lease=0.6, listen=False)
    task = await run_in_background(worker)
    try:
        await asyncio.wait_for(started.wait(), 10)
        for _ in range(6):
            await asyncio.sleep(0.25)
            assert await jq.reap() == []
            assert await jq.claim("thief", queues=["default"]) == []
        done = await jq.wait(job.id, interval=0.05, timeout=10)
        assert (done.status, done.result, done.attempts) == (Status.COMPLETED, "still mine", 1)
    finally:
        await stop(worker, task)


async def test_the_reaper_fails_a_vanished_workers_job_with_no_attempts_left(
    jq: AsyncJobQueue,
) -> None:
    job = await jq.enqueue("work", {}, max_attempts=1)
    [ghost] = await jq.claim("vanished-worker", queues=["default"], lease=0.1)

    async def work(job: Job, ctx: WorkerContext) -> None:
        raise AssertionError("a job with no attempts left must not run again")

    worker = Worker(jq, {"work": work}, lease=2, reap_interval=0.2, listen=False)
    task = await run_in_background(worker)
    try:
        done = await jq.wait(ghost.id, interval=0.05, timeout=10)
    finally:
        await stop(worker, task)
    assert done.status is Status.FAILED
    assert "lease expired while held by vanished-worker" in (done.error or "")
    assert done.id == job.id


async def test_a_handler_that_finishes_despite_the_stop_keeps_its_result(
    jq: AsyncJobQueue,
) -> None:
    job = await jq.enqueue("stubborn", {})
    started = asyncio.Event()

    async def stubborn(job: Job, ctx: WorkerContext) -> str:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "saved my work"  # swallows the cancellation and returns a result
        return "slept"

    worker = Worker(jq, {"stubborn": stubborn}, lease=2, grace_period=0.1, listen=False)
    task = await run_in_background(worker)
    await asyncio.wait_for(started.wait(), 10)
    await stop(worker, task)
    done = await jq.get(job.id)
    assert (done.status, done.result) == (Status.COMPLETED, "saved my work")
