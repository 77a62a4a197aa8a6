"""Pickup latency: an idle worker, jobs enqueued one at a time, and the time from `enqueue`
returning to the handler starting.

The worker and the producer share this process and its monotonic clock. Between samples
the producer waits for the job's completion to be written and then a little more, so every
job meets an idle worker. Measured with LISTEN/NOTIFY (PostgreSQL) and with polling only.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from jobqueue import AsyncJobQueue
from jobqueue.worker import Worker

from . import raw
from .common import Bench, Result, summary_ms
from .drain import warm

P50_MS = 2.0
P99_MS = 5.0
WARMUP = 5


async def _measure(bench: Bench, driver: str, *, listen: bool) -> None:
    mode = "notify" if listen else "polling"
    n = bench.sizes.latency_samples
    poll = 1.0 if listen else bench.sizes.latency_poll_interval
    table = bench.table(f"lat_{mode}_{driver}")
    started: list[float] = []
    arrived = asyncio.Event()

    async def handler(job: Any, ctx: Any) -> None:
        started.append(time.perf_counter())
        arrived.set()

    samples: list[float] = []
    # With NOTIFY on PostgreSQL, a raw psycopg pickup sample runs before each of ours.
    floor = raw.RawPickup(bench) if listen and bench.is_postgres else None
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
        for i in range(n + WARMUP):
            if floor is not None:
                floor.sample()  # blocks the loop briefly: the worker is idle meanwhile
            arrived.clear()
            await q.enqueue("image", {**raw.PAYLOAD, "n": i})
            enqueued = time.perf_counter()
            async with asyncio.timeout(max(10.0, poll * 5)):
                await arrived.wait()
            if i >= WARMUP:
                samples.append(started[-1] - enqueued)
            # Let the completion be written, then leave the worker idle for a moment; the
            # jitter keeps polling samples from locking onto the poll timer's phase.
            await asyncio.sleep(0.01 + random.uniform(0, 0.005 if listen else poll))
        worker.stop()
        await serving
    outcome = bench.outcome(table)
    bench.drop(table)
    stats = summary_ms(samples)
    extra: dict[str, Any] = {**stats, "poll_interval_s": poll, "completed": outcome["completed"]}
    raw_stats: dict[str, Any] = {}
    if floor is not None:
        raw_stats = summary_ms(floor.samples[WARMUP:])
        floor.close()
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
