"""The executor on its own: each way a handler can end becomes one outcome value, and the
executor writes nothing to the database (the jobs are claimed from a real queue and read
back unchanged)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Completion, GenerationResult, Job, PayloadError, Status
from jobqueue.errors import GenerationError
from jobqueue.worker import HandlerResult, WorkerContext
from jobqueue.worker.executor import Executor
from jobqueue.worker.outcome import Failed, Stopped, StopReason
from jobqueue.worker.slots import Slot
from tests.worker.conftest import messages

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


async def value(job: Job, ctx: WorkerContext) -> Any:
    return {"n": job.payload["n"]}


async def both(job: Job, ctx: WorkerContext) -> HandlerResult:
    return HandlerResult({"ok": True}, "https://example.test/a.png")


async def image(job: Job, ctx: WorkerContext) -> GenerationResult:
    return GenerationResult(("https://img.example.test/1.png",), text="a fox", cost=0.04)


async def raises(job: Job, ctx: WorkerContext) -> None:
    raise ValueError("bad prompt")


async def refused(job: Job, ctx: WorkerContext) -> None:
    raise GenerationError("provider rejected the key", retryable=False)


async def bad_payload(job: Job, ctx: WorkerContext) -> None:
    raise PayloadError("no 'prompt' field")


def exits(job: Job, ctx: WorkerContext) -> None:
    raise SystemExit(3)


def in_a_thread(job: Job, ctx: WorkerContext) -> str:
    return threading.current_thread().name


async def slow(job: Job, ctx: WorkerContext) -> None:
    await asyncio.sleep(30)


HANDLERS = {
    "value": value,
    "both": both,
    "image": image,
    "raises": raises,
    "refused": refused,
    "bad_payload": bad_payload,
    "exits": exits,
    "thread": in_a_thread,
    "slow": slow,
}


@pytest.fixture
async def claimed(jq: AsyncJobQueue) -> dict[str, Job]:
    """One claimed job per kind (and two of a kind nobody handles)."""
    kinds = [*HANDLERS, "stray", "stray"]
    await jq.enqueue_many([{"kind": k, "payload": {"n": i}} for i, k in enumerate(kinds)])
    jobs = await jq.claim("executor-test", queues=["default"], limit=len(kinds), lease=60)
    assert len(jobs) == len(kinds)
    by_kind: dict[str, Job] = {}
    for job in jobs:
        by_kind[job.kind if job.kind not in by_kind else f"{job.kind}-2"] = job
    return by_kind


def slot_of(jq: AsyncJobQueue, job: Job) -> Slot:
    ctx = WorkerContext(jq, job, "executor-test", asyncio.get_running_loop())
    return Slot(job, ctx, time.monotonic())


async def test_each_end_of_a_handler_is_one_outcome_and_nothing_is_written(
    jq: AsyncJobQueue, claimed: dict[str, Job], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    executor = Executor(HANDLERS, timeouts={"slow": 0.1}, job_timeout=None, threads=2)
    outcomes = {}
    slots = {}
    try:
        for kind, job in claimed.items():
            slots[kind] = slot_of(jq, job)
            outcomes[kind] = await executor.run(slots[kind])
    finally:
        executor.close()

    j = claimed
    assert outcomes["value"] == Completion(j["value"], {"n": j["value"].payload["n"]})
    assert outcomes["both"] == Completion(j["both"], {"ok": True}, "https://example.test/a.png")
    completed = outcomes["image"]
    assert isinstance(completed, Completion)
    assert completed.result_url == "https://img.example.test/1.png"
    assert completed.result["text"] == "a fox"
    assert outcomes["thread"] == Completion(j["thread"], "jobqueue-handler_0")
    # Failures carry the stored error and whether a retry may help (None: the job's policy).
    assert outcomes["raises"] == Failed("ValueError: bad prompt", None)
    assert outcomes["exits"] == Failed("SystemExit: 3", None)
    refusal = outcomes["refused"]
    assert isinstance(refusal, Failed) and refusal.retry is False
    assert refusal.reason.startswith("GenerationError: provider rejected the key")
    failed = outcomes["bad_payload"]
    assert isinstance(failed, Failed) and failed.retry is False and "prompt" in failed.reason
    assert outcomes["slow"] == Failed("JobTimeout: the handler ran longer than 0.1s", None)
    assert slots["slow"].ctx.cancelled.is_set()
    # A kind nobody handles fails at once; the second one of the kind is quiet.
    stray, again = outcomes["stray"], outcomes["stray-2"]
    assert isinstance(stray, Failed) and isinstance(again, Failed)
    assert "no handler for job kind 'stray'" in stray.reason
    assert (stray.retry, stray.quiet, again.retry, again.quiet) == (False, False, False, True)
    assert messages(caplog).count("No handler for jobs of kind 'stray'") == 1

    for kind, job in claimed.items():
        now = await jq.get(job.id)
        assert (now.status, now.attempts, now.result, now.error) == (
            Status.PROCESSING,
            1,
            None,
            None,
        ), kind


async def test_a_handler_the_worker_stops_is_a_stop_any_other_cancellation_is_raised(
    jq: AsyncJobQueue, claimed: dict[str, Job]
) -> None:
    executor = Executor(HANDLERS, timeouts={}, job_timeout=None, threads=2)
    stopped = slot_of(jq, claimed["slow"])
    stopped.task = asyncio.create_task(executor.run(stopped))
    await asyncio.sleep(0.05)
    stopped.stop_handler(StopReason.LEASE_LOST)
    assert await stopped.task == Stopped(StopReason.LEASE_LOST)
    assert stopped.ctx.cancelled.is_set()

    other = slot_of(jq, claimed["slow"])
    task = asyncio.create_task(executor.run(other))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_row_no_decoder_reads_fails_without_running(
    jq: AsyncJobQueue, claimed: dict[str, Job]
) -> None:
    unreadable = dataclasses.replace(claimed["value"], unreadable="payload could not be decoded")
    executor = Executor(HANDLERS, timeouts={}, job_timeout=None, threads=2)
    outcome = await executor.run(slot_of(jq, unreadable))
    assert outcome == Failed("payload could not be decoded", False)
