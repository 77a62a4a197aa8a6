"""Handlers that misbehave in every way we could think of: each failure is recorded on its
job and the worker keeps serving the others.

Garbage results (not JSON, NaN, non-string keys, lone surrogates, too deep, too big),
exceptions whose text cannot be stored as is (NUL, lone surrogates, megabytes), exceptions
whose ``str()`` itself fails, and handlers that hang past the job timeout (async and in a
thread).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, Job, Status
from jobqueue.worker import Worker, WorkerContext


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception fails")


def deep(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


GARBAGE: dict[str, Any] = {
    "object": object(),
    "nan": {"x": float("nan")},
    "int-keys": {1: "a", "1": "b"},
    "surrogate": {"text": "\ud800"},
    "nul": {"text": "a\x00b"},
    "deep": deep(5_000),
    "huge": {"blob": "x" * 3_000_000},
    "set": {1, 2, 3},
    "bytes": b"\x00\xff",
}

ERRORS: dict[str, BaseException] = {
    "raise-nul": RuntimeError("bad\x00byte"),
    "raise-surrogate": ValueError("lone \udc80 surrogate"),
    "raise-huge": RuntimeError("y" * 2_000_000),
    "raise-unprintable": Unprintable(),
    "raise-empty": RuntimeError(),
}


@pytest.fixture
async def aq(migrated: tuple[str, str]) -> AsyncIterator[AsyncJobQueue]:
    url, table = migrated
    q = AsyncJobQueue(url, table=table)
    yield q
    await q.close()


async def test_every_misbehaving_handler_fails_only_its_own_job(aq: AsyncJobQueue) -> None:
    release_thread = threading.Event()

    def returns(value: Any) -> Any:
        async def handler(job: Job, ctx: WorkerContext) -> Any:
            return value

        return handler

    def raises(exc: BaseException) -> Any:
        async def handler(job: Job, ctx: WorkerContext) -> Any:
            raise exc

        return handler

    async def hangs(job: Job, ctx: WorkerContext) -> None:
        await asyncio.sleep(3600)

    def hangs_in_a_thread(job: Job, ctx: WorkerContext) -> None:
        release_thread.wait(30)  # a sync handler cannot be cancelled; it is abandoned

    async def ok(job: Job, ctx: WorkerContext) -> dict[str, int]:
        return {"n": job.payload["n"]}

    handlers: dict[str, Any] = {kind: returns(v) for kind, v in GARBAGE.items()}
    handlers |= {kind: raises(e) for kind, e in ERRORS.items()}
    handlers |= {"hangs": hangs, "hangs-in-a-thread": hangs_in_a_thread, "ok": ok}
    bad = [k for k in handlers if k != "ok"]
    bad_ids = {kind: (await aq.enqueue(kind, {}, max_attempts=1)).id for kind in bad}
    good_ids = [(await aq.enqueue("ok", {"n": n})).id for n in range(20)]

    worker = Worker(aq, handlers, concurrency=4, lease=5, job_timeout=0.5)
    started = time.monotonic()
    try:
        await asyncio.wait_for(worker.run_until_idle(), 60)
    finally:
        release_thread.set()
    assert time.monotonic() - started < 60

    for n, job_id in enumerate(good_ids):
        job = await aq.get(job_id)
        assert (job.status, job.result) == (Status.COMPLETED, {"n": n})
    for kind, job_id in bad_ids.items():
        job = await aq.get(job_id)
        assert job.status is Status.FAILED, (kind, job.status, job.error)
        assert job.error and job.errors and job.errors[-1]["error"] == job.error, kind
        assert len(job.error) <= 10_000, kind
        assert "\x00" not in job.error
    timed_out = (await aq.get(bad_ids["hangs"])).error or ""
    assert "longer than 0.5s" in timed_out
