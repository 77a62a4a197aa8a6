"""Limits in force: one worker at concurrency 50 drains jobs of 100 owners that a cap or a
rate holds back, so every claim is a claim within limits (`jobqueue.sql.limits`).

- ``limits_caps``: at most 20 running with the limit key, and 2 per owner. Handlers sleep a
  few milliseconds, so that without the caps 50 would run at once. While the key cap
  holds, each claim comes back short and the worker claims again after its poll interval
  (with free slots, a finished job does not wake it): so the rate is about the cap per
  poll interval, whatever the handlers' speed. A thread samples the
  running counts by SQL every few milliseconds; reported: jobs/s and the largest counts
  seen, next to the caps (they must never exceed them).
- ``limits_rate``: at most 200 starts per second with the limit key, no-op handlers.
  Reported: jobs/s (about the rate) and the most starts within any one-second window,
  from the jobs' own start times, next to the rate.

The jobs are enqueued through the library (with their turns), and a SQL count afterwards
checks every job completed exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy import text

from jobqueue import AsyncJobQueue, NewJob
from jobqueue.worker import Worker

from .common import Bench, Result
from .drain import warm

OWNERS = 100
CONCURRENCY = 50
KEY_CAP = 20
OWNER_CAP = 2
#: How long a capped job's handler takes (seconds): long enough that the caps bind.
CAPPED_WORK = 0.005
RATE = 200
PER_SECONDS = 1.0
#: The worker's default: a claim that comes back short (a cap held jobs back) is followed
#: by the next one after this long, unless a slot frees up while every slot is taken.
POLL_INTERVAL = 1.0


class RunningSampler:
    """Samples, by SQL from a thread of its own, how many jobs run in all and for the busiest
    owner, and keeps the largest of each."""

    def __init__(self, bench: Bench, table: str, interval: float = 0.005) -> None:
        self.bench = bench
        self.sql = text(
            "SELECT coalesce(sum(n), 0), coalesce(max(n), 0) FROM (SELECT count(*) AS n"
            f" FROM \"{table}\" WHERE status = 'processing' GROUP BY owner_id) AS per_owner"
        )
        self.interval = interval
        self.max_running = self.max_per_owner = self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.bench.engine.connect() as conn:
            while not self._stop.is_set():
                running, per_owner = conn.execute(self.sql).one()
                conn.rollback()
                self.max_running = max(self.max_running, int(running))
                self.max_per_owner = max(self.max_per_owner, int(per_owner))
                self.samples += 1
                self._stop.wait(self.interval)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _drain(
    bench: Bench, url: str, table: str, jobs: int, limit: dict[str, Any], work: float
) -> tuple[float, int]:
    """Enqueue ``jobs`` of 100 owners in turn, set the limit on their key, and run a worker
    until every job was handled (handlers sleep ``work`` seconds); the worker's seconds and
    the handler calls. Not `Worker.run_until_idle`: it returns once a claim comes back
    empty while nothing runs, and a claim that a cap or a rate holds back comes back empty
    with due jobs left."""
    handled = 0
    done = asyncio.Event()

    async def handler(job: Any, ctx: Any) -> None:
        nonlocal handled
        if work:
            await asyncio.sleep(work)
        handled += 1
        if handled >= jobs:
            done.set()

    async with AsyncJobQueue(url, table=table) as q:
        await q.enqueue_many(
            NewJob(kind="image", payload={"n": i}, owner_id=f"owner-{i % OWNERS}")
            for i in range(jobs)
        )
        await q.set_limit("image", **limit)
        await warm(q)
        worker = Worker(
            q,
            {"image": handler},
            concurrency=CONCURRENCY,
            poll_interval=POLL_INTERVAL,
            grace_period=60,
        )
        start = time.perf_counter()
        task = asyncio.create_task(worker.run())
        await done.wait()
        elapsed = time.perf_counter() - start
        worker.stop()
        await task
    return elapsed, handled


def _most_starts_in_a_window(bench: Bench, table: str, seconds: float) -> int:
    """The most jobs that started within any ``seconds`` (a sliding window over the
    completed jobs' start times)."""
    with bench.engine.connect() as conn:
        # SQLite gives the stored text (ISO 8601, which sorts as the times do).
        starts: list[datetime] = [
            datetime.fromisoformat(r[0]) if isinstance(r[0], str) else r[0]
            for r in conn.execute(
                text(f'SELECT started_at FROM "{table}" WHERE started_at IS NOT NULL ORDER BY 1')
            )
        ]
    most = first = 0
    for last, t in enumerate(starts):
        while (t - starts[first]).total_seconds() >= seconds:
            first += 1
        most = max(most, last - first + 1)
    return most


def _check(bench: Bench, table: str, jobs: int, handled: int, name: str) -> dict[str, int]:
    outcome = bench.outcome(table)
    if not (outcome["completed"] == jobs == outcome["completed_once"] == handled):
        raise RuntimeError(f"{name}: not exactly once: {outcome}, handled {handled}")
    return outcome


async def _caps(bench: Bench, driver: str) -> None:
    jobs = bench.sizes.limits_jobs
    table = bench.table(f"caps_{driver}")
    limit = {"max_running": KEY_CAP, "max_running_per_owner": OWNER_CAP}
    with RunningSampler(bench, table) as sampler:
        elapsed, handled = await _drain(
            bench, bench.async_url(driver), table, jobs, limit, CAPPED_WORK
        )
    outcome = _check(bench, table, jobs, handled, "limits_caps")
    bench.drop(table)
    bench.emit(
        Result(
            "limits_caps",
            jobs / elapsed,
            "jobs/s",
            driver=driver,
            target=f"running <= {KEY_CAP}, per owner <= {OWNER_CAP}",
            met=sampler.max_running <= KEY_CAP and sampler.max_per_owner <= OWNER_CAP,
            extra={
                "jobs": jobs,
                "seconds": round(elapsed, 3),
                "concurrency": CONCURRENCY,
                "handler_seconds": CAPPED_WORK,
                "poll_interval": POLL_INTERVAL,
                "key_cap": KEY_CAP,
                "max_running_seen": sampler.max_running,
                "owner_cap": OWNER_CAP,
                "max_running_per_owner_seen": sampler.max_per_owner,
                "samples": sampler.samples,
                **outcome,
            },
        )
    )


async def _rate(bench: Bench, driver: str) -> None:
    jobs = bench.sizes.rate_jobs
    table = bench.table(f"rate_{driver}")
    limit = {"rate": RATE, "per": PER_SECONDS}
    elapsed, handled = await _drain(bench, bench.async_url(driver), table, jobs, limit, 0.0)
    outcome = _check(bench, table, jobs, handled, "limits_rate")
    most = _most_starts_in_a_window(bench, table, PER_SECONDS)
    bench.drop(table)
    bench.emit(
        Result(
            "limits_rate",
            jobs / elapsed,
            "jobs/s",
            driver=driver,
            target=f"starts per {PER_SECONDS:g} s <= {RATE}",
            met=most <= RATE,
            extra={
                "jobs": jobs,
                "seconds": round(elapsed, 3),
                "concurrency": CONCURRENCY,
                "rate": RATE,
                "per_seconds": PER_SECONDS,
                "most_starts_in_a_window": most,
                **outcome,
            },
        )
    )


def run(bench: Bench) -> None:
    driver = bench.async_drivers()[0]
    asyncio.run(_caps(bench, driver))
    asyncio.run(_rate(bench, driver))
