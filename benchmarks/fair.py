"""Fair share: one worker drains a backlog that 100 owners enqueued one after another (owner
0's whole backlog first, then owner 1's, ...), with no-op handlers.

Without fair share the worker would serve the owners in that order, and the last owner's
first job would start after nearly every other job. With it, the line interleaves them:
each owner's first job starts within about one round of the start (one job of each owner),
so the largest "first start" position is about the number of owners (plus the jobs already
running), not about the number of jobs. Reported: jobs/s from the worker's start to its
last completion, and for each owner the position in the start order of its first job (the
largest and the mean over owners). The backlog is enqueued through the library (so each
job has the turn its enqueue gives it), and a SQL count afterwards checks every job
completed exactly once.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from jobqueue import AsyncJobQueue, NewJob
from jobqueue.worker import Worker

from .common import Bench, Result
from .drain import warm

OWNERS = 100
CONCURRENCY = 10


async def enqueue_backlogs(url: str, table: str, jobs: int, owners: int) -> float:
    """Owner 0's backlog, then owner 1's, ... (one `enqueue_many` each); seconds taken."""
    per_owner = jobs // owners
    async with AsyncJobQueue(url, table=table) as q:
        start = time.perf_counter()
        for o in range(owners):
            await q.enqueue_many(
                NewJob(kind="image", payload={"n": i}, owner_id=f"owner-{o}")
                for i in range(per_owner)
            )
        return time.perf_counter() - start


def first_starts(started: list[str | None]) -> dict[str | None, int]:
    """Each owner's first position (1-based) in the order jobs started."""
    first: dict[str | None, int] = {}
    for position, owner in enumerate(started, 1):
        first.setdefault(owner, position)
    return first


async def _one(bench: Bench, driver: str) -> None:
    jobs = bench.sizes.fair_jobs - bench.sizes.fair_jobs % OWNERS
    table = bench.table(f"fair_{driver}")
    url = bench.async_url(driver)
    enqueue_seconds = await enqueue_backlogs(url, table, jobs, OWNERS)
    started: list[str | None] = []

    async def handler(job: Any, ctx: Any) -> None:
        started.append(job.owner_id)

    async with AsyncJobQueue(url, table=table) as q:
        await warm(q)
        worker = Worker(q, {"image": handler}, concurrency=CONCURRENCY, grace_period=60)
        start = time.perf_counter()
        await worker.run_until_idle()
        elapsed = time.perf_counter() - start
    outcome = bench.outcome(table)
    bench.drop(table)
    first = first_starts(started)
    once = outcome["completed"] == jobs == outcome["completed_once"] == len(started)
    bench.emit(
        Result(
            "fair_100_owners",
            jobs / elapsed,
            "jobs/s",
            driver=driver,
            extra={
                "jobs": jobs,
                "owners": OWNERS,
                "concurrency": CONCURRENCY,
                "seconds": round(elapsed, 3),
                "enqueue_jobs_per_s": round(jobs / enqueue_seconds, 1),
                # Fair: about OWNERS (+ CONCURRENCY); first come, first served: about jobs.
                "max_first_start": max(first.values()),
                "mean_first_start": round(statistics.fmean(first.values()), 1),
                "last_owner_first_start": first.get(f"owner-{OWNERS - 1}"),
                "owners_started": len(first),
                "exactly_once": once,
                **outcome,
            },
        )
    )
    if not once:
        raise RuntimeError(f"fair: not exactly once: {outcome}")


def run(bench: Bench) -> None:
    # One driver: the drain workload compares drivers; this one shows the order.
    asyncio.run(_one(bench, bench.async_drivers()[0]))
