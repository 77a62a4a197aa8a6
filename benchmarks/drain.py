"""Drain throughput: one worker (this process) empties a backlog at concurrency 1, 10 and 50.

Jobs/s run from the worker's start to its last completion being written
(`Worker.run_until_idle` returns only then). A SQL count afterwards proves that every job
completed exactly once: all rows ``completed`` with ``attempts = 1``, and the handler saw
each id once.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple
from uuid import UUID

from jobqueue import AsyncJobQueue
from jobqueue.worker import Worker

from . import raw
from .common import Bench, Result
from .peers.harness import Stopwatch

#: concurrency -> (ceiling, minimum ratio); concurrency 1 has no target, only its ratio.
TARGETS: dict[int, tuple[str, float | None]] = {
    1: (raw.CLAIM_ONE, None),
    10: (raw.CLAIM_BATCHED, 0.4),
    50: (raw.CLAIM_BATCHED, 0.6),
}


async def warm(q: AsyncJobQueue) -> None:
    """Open a pooled connection and compile the common statements outside the timing."""
    await q.list(limit=1)


class Drained(NamedTuple):
    """One drain: the ids handled, and its timing from the worker's start to its last
    completion written (seconds; the CPU seconds of this process, the worker's own cost,
    which a shared machine's load inflates less than wall time; and of the whole machine)."""

    seen: list[UUID]
    timed: Stopwatch

    @property
    def seconds(self) -> float:
        return self.timed.seconds

    @property
    def cpu_per_job(self) -> float:
        return self.timed.client_cpu / max(1, len(self.seen))


async def drain(
    bench: Bench,
    url: str,
    table: str,
    *,
    concurrency: int,
    jobs: int | None = None,
    listen: bool = False,
) -> Drained:
    """Run one worker until the table is drained (or ``jobs`` handlers ran, then stop)."""
    seen: list[UUID] = []
    done = asyncio.Event()

    async def handler(job: Any, ctx: Any) -> None:
        seen.append(job.id)
        if jobs is not None and len(seen) >= jobs:
            done.set()

    async with AsyncJobQueue(url, table=table) as q:
        await warm(q)
        worker = Worker(
            q, {"image": handler}, concurrency=concurrency, listen=listen, grace_period=60
        )
        with Stopwatch() as timed:
            if jobs is None:
                await worker.run_until_idle()
            else:
                task = asyncio.create_task(worker.run())
                await done.wait()
                worker.stop()
                await task
    return Drained(seen, timed)


def _bracket(bench: Bench, concurrency: int) -> float:
    """The matching raw ceiling, measured right now."""
    if concurrency == 1:
        return raw.claim_rate(bench, 1, bench.sizes.bracket_claim_one)
    return raw.claim_rate(bench, 100, bench.sizes.bracket_batched)


def backlog(bench: Bench, name: str, jobs: int) -> str:
    """A fresh table holding ``jobs`` due jobs."""
    table = bench.table(name)
    bench.fill(table, pending=jobs)
    return table


class Checked(NamedTuple):
    """The SQL count after a drain, the table dropped, and whether every job completed
    exactly once: all rows ``completed`` with ``attempts = 1``, each id handled once."""

    outcome: dict[str, int]
    once: bool


def check(bench: Bench, table: str, jobs: int, seen: list[UUID]) -> Checked:
    outcome = bench.outcome(table)
    bench.drop(table)
    once = (
        outcome["completed"] == jobs
        and outcome["completed_once"] == jobs
        and len(seen) == jobs
        and len(set(seen)) == jobs
    )
    return Checked(outcome, once)


async def _one(bench: Bench, driver: str, concurrency: int) -> None:
    n = bench.sizes.drain_one if concurrency == 1 else bench.sizes.drain
    table = backlog(bench, f"drain{concurrency}_{driver}", n)
    before = _bracket(bench, concurrency)
    done = await drain(bench, bench.async_url(driver), table, concurrency=concurrency)
    elapsed, seen = done.seconds, done.seen
    after = _bracket(bench, concurrency)
    outcome, once = check(bench, table, n, seen)
    ceiling_now = (before + after) / 2
    ceiling, goal = TARGETS.get(concurrency, (raw.CLAIM_BATCHED, None))
    bench.emit(
        Result(
            f"drain_c{concurrency}",
            n / elapsed,
            "jobs/s",
            driver=driver,
            ceiling=ceiling + " (bracketing)",
            ratio=n / elapsed / ceiling_now,
            target=None if goal is None else f"ratio >= {goal}",
            min_ratio=goal,
            extra={
                "ceiling_before": round(before, 1),
                "ceiling_after": round(after, 1),
                "ratio_to_run_ceiling": round(n / elapsed / bench.ceilings[ceiling], 3)
                if ceiling in bench.ceilings
                else None,
                "jobs": n,
                "seconds": round(elapsed, 3),
                "client_cpu_us_per_job": round(done.cpu_per_job * 1e6, 1),
                "exactly_once": once,
                "handled": len(seen),
                **outcome,
            },
        )
    )
    if not once:
        raise RuntimeError(f"drain at concurrency {concurrency}: not exactly once: {outcome}")


def run(bench: Bench) -> None:
    for driver in bench.async_drivers():
        for concurrency in bench.sizes.drain_concurrency:
            asyncio.run(_one(bench, driver, concurrency))
