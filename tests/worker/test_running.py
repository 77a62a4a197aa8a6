"""Running jobs: batches, sync and async handlers, progress, retries, bad handlers, kinds,
generators, and the worker's settings (real databases, small real handlers)."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
from datetime import timedelta
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, Status
from jobqueue.errors import GenerationError
from jobqueue.generators.base import GenerationRequest, GenerationResult, JobContext
from jobqueue.worker import HandlerResult, Worker, WorkerContext
from tests.worker.conftest import drain, eventually, messages

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


# -- running jobs -------------------------------------------------------------------------


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


async def test_writers_keep_their_connections_only_while_they_write(jq: AsyncJobQueue) -> None:
    """On PostgreSQL each completion writer keeps one pooled connection from one batch to
    the next (at most `WRITERS` kept at once) and gives it back when the run ends: no
    connection of the pool stays checked out."""
    from jobqueue.worker.completer import WRITERS

    await jq.enqueue_many([{"kind": "echo", "payload": {"n": n}} for n in range(300)])
    pool: Any = jq.engine.pool
    kept: list[int] = []
    worker: Worker

    async def echo(job: Job, ctx: WorkerContext) -> Any:
        kept.append(sum(h.holds for h in worker._completer._held))
        await asyncio.sleep(random.choice((0, 0, 0.001)))

    worker = Worker(jq, {"echo": echo}, concurrency=8, lease=5)
    assert await worker.run_until_idle() == 300
    assert max(kept) <= WRITERS
    if jq.dialect == "postgresql":
        assert max(kept) >= 1  # the writers did keep theirs
    assert not any(h.holds for h in worker._completer._held)
    # The queue's spare (its last operation's connection) goes back once the loop turns.
    await eventually(lambda: pool.checkedout() == 0)


async def test_the_claim_loop_keeps_one_connection_while_claims_follow_and_gives_it_back(
    jq: AsyncJobQueue,
) -> None:
    """On PostgreSQL the claim loop keeps the connection its claims run on from one claim
    to the next (a pickup does not pay for a pool checkout), gives it back to the pool
    once no claim found a job for `HOLD_IDLE` seconds while the worker runs on, and none
    stays out after the run; SQLite keeps none."""
    from jobqueue.worker.completer import HOLD_IDLE

    pool: Any = jq.engine.pool
    kept: list[object] = []
    done = asyncio.Event()
    worker: Worker

    async def echo(job: Job, ctx: WorkerContext) -> Any:
        held = worker._claiming
        kept.append(None if held is None else held.conn)
        if len(kept) == 10:
            done.set()

    postgres = jq.dialect == "postgresql"
    # PostgreSQL: jobs wake the worker by NOTIFY, and no poll comes in between.
    poll = 30.0 if postgres else 0.05
    worker = Worker(jq, {"echo": echo}, concurrency=2, lease=5, poll_interval=poll)
    running = asyncio.create_task(worker.run())
    if postgres:
        await eventually(lambda: worker.listener is not None and worker.listener.listening.is_set())
    for n in range(10):
        await jq.enqueue("echo", {"n": n})
        await asyncio.sleep(0.03)
    await asyncio.wait_for(done.wait(), 10)
    if postgres:
        # One connection for every claim that found a job.
        assert len({id(c) for c in kept}) == 1 and kept[0] is not None
        claiming = worker._claiming
        assert claiming is not None
        await eventually(lambda: not claiming.holds, timeout=HOLD_IDLE + 5)
        await asyncio.sleep(0.3)
        assert not claiming.holds
    else:
        assert kept == [None] * 10
    assert not running.done()
    worker.stop()
    await running
    await eventually(lambda: pool.checkedout() == 0)
    assert len(await jq.list(status=Status.COMPLETED)) == 10


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


# -- generators ---------------------------------------------------------------------------


class RecordingGenerator:
    """A real Generator: 'submits' a remote task once, saves its id, and resumes it later.

    The first attempt dies right after submitting (like a worker crash), so the second must
    resume the saved task instead of submitting again.
    """

    name = "recording"

    def __init__(self) -> None:
        self.submissions: list[str] = []
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        self.requests.append(request)
        task_id = context.remote_task_id
        if task_id is None:
            task_id = f"task-{len(self.submissions) + 1}"
            self.submissions.append(task_id)
            await context.save_remote_task_id(task_id)
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


# -- settings -----------------------------------------------------------------------------


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
