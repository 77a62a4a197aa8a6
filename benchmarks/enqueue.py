"""Enqueue throughput: one job per call and transaction, and one `enqueue_many` batch.

Each runs with the sync queue (psycopg or pysqlite) and with the async queue on every
asyncio driver, on a fresh table, and is compared with the raw single-row INSERT loop and
with the faster of multi-row INSERT and COPY.
"""

from __future__ import annotations

import asyncio
import time

from jobqueue import AsyncJobQueue, JobQueue, NewJob

from . import raw
from .common import Bench, Result
from .peers.harness import Stopwatch

ONE_TARGET = 0.8
MANY_TARGET = 0.7


def _payload(n: int) -> dict[str, object]:
    return {**raw.PAYLOAD, "n": n}


def _one(bench: Bench, driver: str, rate: float, n: int, mixed: raw.InsertOneLoop) -> None:
    """One-by-one enqueue, compared with the raw loop interleaved with it (same moments)."""
    bench.emit(
        Result(
            "enqueue_one",
            rate,
            "jobs/s",
            driver=driver,
            ceiling=raw.INSERT_ONE + " (interleaved)",
            ratio=rate / mixed.rate,
            target=f"ratio >= {ONE_TARGET}",
            min_ratio=ONE_TARGET,
            extra={"jobs": n, "raw_interleaved_rows_per_s": round(mixed.rate, 1)},
        )
    )


BLOCKS = 10


def _many(bench: Bench, driver: str, rate: float, n: int) -> None:
    bench.emit(
        Result(
            "enqueue_many",
            rate,
            "jobs/s",
            driver=driver,
            ceiling=raw.INSERT_BEST,
            target=f"ratio >= {MANY_TARGET}",
            min_ratio=MANY_TARGET,
            extra={"jobs": n},
        )
    )


def _sync(bench: Bench) -> None:
    s = bench.sizes
    driver = "psycopg (sync)" if bench.is_postgres else "pysqlite (sync)"
    table = bench.table("enq_one_sync")
    mixed = raw.InsertOneLoop(bench)
    with JobQueue(bench.url, table=table) as q:
        q.enqueue("image", _payload(-1))  # connect and warm caches outside the timing
        seconds = 0.0
        per_block = max(1, s.enqueue_one // BLOCKS)
        for b in range(BLOCKS):
            mixed.block(per_block)
            start = time.perf_counter()
            for i in range(per_block):
                q.enqueue("image", _payload(b * per_block + i))
            seconds += time.perf_counter() - start
        _one(bench, driver, per_block * BLOCKS / seconds, per_block * BLOCKS, mixed)
    mixed.close()
    bench.drop(table)

    table = bench.table("enq_many_sync")
    jobs = [NewJob(kind="image", payload=_payload(i)) for i in range(s.enqueue_many)]
    with JobQueue(bench.url, table=table) as q:
        q.enqueue("image", _payload(-1))
        start = time.perf_counter()
        done = q.enqueue_many(jobs)
        _many(bench, driver, len(done) / (time.perf_counter() - start), s.enqueue_many)
    bench.drop(table)


async def one_by_one(q: AsyncJobQueue, first: int, count: int) -> float:
    """Seconds for ``count`` `enqueue` calls, each its own transaction."""
    start = time.perf_counter()
    for i in range(first, first + count):
        await q.enqueue("image", _payload(i))
    return time.perf_counter() - start


async def batch(q: AsyncJobQueue, count: int) -> tuple[int, Stopwatch]:
    """Jobs enqueued by one `enqueue_many` of ``count`` jobs, and its timing (seconds, and
    the CPU of this process and of the machine)."""
    jobs = [NewJob(kind="image", payload=_payload(i)) for i in range(count)]
    with Stopwatch() as timed:
        done = await q.enqueue_many(jobs)
    return len(done), timed


async def _async(bench: Bench, driver: str) -> None:
    s = bench.sizes
    table = bench.table(f"enq_one_{driver}")
    mixed = raw.InsertOneLoop(bench)
    async with AsyncJobQueue(bench.async_url(driver), table=table) as q:
        await q.enqueue("image", _payload(-1))
        seconds = 0.0
        per_block = max(1, s.enqueue_one // BLOCKS)
        for b in range(BLOCKS):
            mixed.block(per_block)  # blocks the loop, which has nothing else to do
            seconds += await one_by_one(q, b * per_block, per_block)
        _one(bench, driver, per_block * BLOCKS / seconds, per_block * BLOCKS, mixed)
    mixed.close()
    bench.drop(table)

    table = bench.table(f"enq_many_{driver}")
    async with AsyncJobQueue(bench.async_url(driver), table=table) as q:
        await q.enqueue("image", _payload(-1))
        done, timed = await batch(q, s.enqueue_many)
        _many(bench, driver, done / timed.seconds, s.enqueue_many)
    bench.drop(table)


def run(bench: Bench) -> None:
    _sync(bench)
    for driver in bench.async_drivers():
        asyncio.run(_async(bench, driver))
