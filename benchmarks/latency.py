"""Pickup latency: an idle worker, jobs enqueued one at a time, and the time from `enqueue`
returning to the handler starting.

The worker and the producer share this process and its monotonic clock. Between samples
the producer waits for the job's completion to be written and then a little more, so every
job meets an idle worker. Measured with LISTEN/NOTIFY (PostgreSQL) and with polling only.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

from jobqueue import AsyncJobQueue
from jobqueue.worker import Worker

from . import raw
from .common import Bench, Result, summary_ms
from .drain import warm
from .peers import harness

P50_MS = 2.0
P99_MS = 5.0
WARMUP = harness.WARMUP


class Pickups(NamedTuple):
    """One run's samples (seconds), the SQL count afterwards (the table is dropped), and
    the raw floor's samples taken before each of ours (none without the floor)."""

    samples: list[float]
    outcome: dict[str, int]
    floor: list[float] | None


async def pickups(bench: Bench, driver: str, *, listen: bool, floor: bool = True) -> Pickups:
    """Time `bench.sizes.latency_samples` pickups by an idle worker at concurrency 10.

    With ``floor`` and NOTIFY on PostgreSQL, a raw psycopg pickup sample runs before each
    of ours (the peer comparison leaves it out: the peers run without one).
    """
    mode = "notify" if listen else "polling"
    n = bench.sizes.latency_samples
    poll = 1.0 if listen else bench.sizes.latency_poll_interval
    table = bench.table(f"lat_{mode}_{driver}")
    started: list[float] = []
    arrived = asyncio.Event()

    async def handler(job: Any, ctx: Any) -> None:
        started.append(time.perf_counter())
        arrived.set()

    raw_floor = raw.RawPickup(bench) if floor and listen and bench.is_postgres else None
    async with AsyncJobQueue(bench.async_url(driver), table=table) as q:
        await warm(q)
        worker = Worker(q, {"image": handler}, concurrency=10, listen=listen, poll_interval=poll)
        serving = asyncio.create_task(worker.run())
        if listen:
            for _ in range(1500):  # up to 15 s on a busy machine
                if worker.listener is not None and worker.listener.listening.is_set():
                    break
                await asyncio.sleep(0.01)
            else:
                raise RuntimeError("the worker's listener did not start")
        await asyncio.sleep(0.1)
        samples = await harness.pickup_samples(
            lambda i: q.enqueue("image", {**raw.PAYLOAD, "n": i}),
            arrived,
            started,
            n,
            jitter=0.005 if listen else poll,
            timeout=max(10.0, poll * 5),
            # blocks the loop briefly: the worker is idle meanwhile
            before_each=None if raw_floor is None else raw_floor.sample,
        )
        worker.stop()
        await serving
    outcome = bench.outcome(table)
    bench.drop(table)
    floor_samples = None
    if raw_floor is not None:
        floor_samples = raw_floor.samples[WARMUP:]
        raw_floor.close()
    return Pickups(samples, outcome, floor_samples)


async def _measure(bench: Bench, driver: str, *, listen: bool) -> None:
    mode = "notify" if listen else "polling"
    samples, outcome, floor = await pickups(bench, driver, listen=listen)
    poll = 1.0 if listen else bench.sizes.latency_poll_interval
    stats = summary_ms(samples)
    extra: dict[str, Any] = {**stats, "poll_interval_s": poll, "completed": outcome["completed"]}
    raw_stats: dict[str, Any] = {}
    if floor is not None:
        raw_stats = summary_ms(floor)
        extra["raw_pickup"] = raw_stats
    for q_name, limit in (("p50", P50_MS), ("p99", P99_MS)):
        value = stats[f"{q_name}_ms"]
        base = raw_stats.get(f"{q_name}_ms")
        bench.emit(
            Result(
                f"pickup_{mode}_{q_name}",
                value,
                "ms",
                driver=driver,
                ceiling="raw_pickup (interleaved; lower is better)" if base else None,
                ratio=value / base if base else None,
                target=f"<= {limit} ms" if listen else None,
                met=(value <= limit) if listen else None,
                extra=extra,
            )
        )


def run(bench: Bench) -> None:
    for driver in bench.async_drivers():
        if bench.is_postgres:
            asyncio.run(_measure(bench, driver, listen=True))
        asyncio.run(_measure(bench, driver, listen=False))
