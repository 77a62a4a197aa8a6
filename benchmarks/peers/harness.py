"""What every library's side of the peer comparison shares, in the standard library only.

The peer scripts (``bench_<peer>.py`` beside this file) import it as a top-level module in
their own virtualenvs, where jobqueue is not installed; jobqueue's latency workload imports
it as ``benchmarks.peers.harness``. One pickup loop and one payload for every library, so a
difference in the numbers is a difference in the libraries, not in how they were timed.

A peer script runs one workload on a schema of its own and prints one JSON line
(`report`, `result`): the seconds it took or the pickup samples, and the SQL counts that prove each
job was enqueued, or ran, exactly once. The parent turns seconds and samples into rates and
percentiles, with the same code for every library.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

#: What each job carries (the raw ceilings insert the same).
PAYLOAD: dict[str, Any] = {
    "prompt": "a lighthouse at dusk, oil painting",
    "width": 1024,
    "height": 1024,
}

DRAIN, ENQUEUE_ONE, ENQUEUE_BATCH, PICKUP = "drain", "enqueue_one", "enqueue_batch", "pickup"
KINDS = (DRAIN, ENQUEUE_ONE, ENQUEUE_BATCH, PICKUP)

#: Pickup samples taken before the measured ones (connections, caches, the first plans).
WARMUP = 5


#: Clock ticks per second, the unit of ``/proc`` CPU times.
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of all the machine's CPUs since boot, from ``/proc/stat``
    (busy: all but idle and iowait), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / TICK, total / TICK


class Stopwatch:
    """Times a workload's measured part: wall seconds, the CPU seconds of this process (the
    library's side: its threads included) and of the whole machine (the library, the
    database server, anything else running). On a quiet machine the difference is the
    server's work for the library, so a run says where its jobs' cost went, not only how
    long they took.

    ``with Stopwatch() as timed: ...`` then ``timed.fields()`` for `result`.
    """

    def __enter__(self) -> Stopwatch:
        self.cpu = time.process_time()
        self.machine = machine_times()
        self.start = time.perf_counter()
        self.seconds = 0.0
        self.client_cpu = 0.0
        self.machine_cpu: float | None = None
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self.client_cpu = time.process_time() - self.cpu
        after = machine_times()
        if self.machine is not None and after is not None:
            self.machine_cpu = after[0] - self.machine[0]

    def fields(self) -> dict[str, Any]:
        """``seconds``, ``client_cpu_s`` and ``machine_cpu_s`` (None off Linux)."""
        return {
            "seconds": self.seconds,
            "client_cpu_s": self.client_cpu,
            "machine_cpu_s": self.machine_cpu,
        }


def payload(n: int) -> dict[str, Any]:
    return {**PAYLOAD, "n": n}


@dataclass(frozen=True)
class Task:
    """One workload for one library: what the parent asks a peer script to run."""

    url: str
    kind: str
    jobs: int
    concurrency: int

    def argv(self) -> list[str]:
        return [
            "--url",
            self.url,
            "--workload",
            self.kind,
            "--jobs",
            str(self.jobs),
            "--concurrency",
            str(self.concurrency),
        ]


def parse_task(argv: Sequence[str] | None = None) -> Task:
    p = argparse.ArgumentParser(description="one peer workload; prints one JSON line")
    p.add_argument("--url", required=True, help="postgresql://... (libpq form)")
    p.add_argument("--workload", required=True, choices=KINDS)
    p.add_argument("--jobs", type=int, required=True, help="jobs, or pickup samples")
    p.add_argument("--concurrency", type=int, default=10)
    a = p.parse_args(argv)
    return Task(a.url, a.workload, a.jobs, a.concurrency)


def schema_name(peer: str) -> str:
    """A fresh schema per run: nothing is left from an earlier run, or shared with one."""
    return f"peers_{peer}_{secrets.token_hex(4)}"


def expected_jobs(task: Task) -> int:
    """Jobs a run makes: pickup enqueues its warm-up jobs too, and the enqueue workloads one
    job to connect and warm up outside the timing (as jobqueue's own enqueue workload)."""
    if task.kind == PICKUP:
        return task.jobs + WARMUP
    if task.kind in (ENQUEUE_ONE, ENQUEUE_BATCH):
        return task.jobs + 1
    return task.jobs


async def pickup_samples(
    enqueue: Callable[[int], Awaitable[object]],
    arrived: asyncio.Event,
    started: list[float],
    samples: int,
    *,
    jitter: float = 0.005,
    timeout: float = 10.0,
    before_each: Callable[[], None] | None = None,
) -> list[float]:
    """Seconds from each ``enqueue(i)`` returning to its handler starting, idle worker.

    The handler appends ``time.perf_counter()`` to ``started`` and sets ``arrived``.
    Between samples the loop waits a little more than the completion takes to be written,
    so every job meets an idle worker; the jitter keeps polling samples from locking onto
    a poll timer's phase. The first `WARMUP` samples are dropped.
    """
    out: list[float] = []
    for i in range(samples + WARMUP):
        if before_each is not None:
            before_each()
        arrived.clear()
        await enqueue(i)
        enqueued = time.perf_counter()
        async with asyncio.timeout(timeout):
            await arrived.wait()
        if i >= WARMUP:
            out.append(started[-1] - enqueued)
        await asyncio.sleep(0.01 + random.uniform(0, jitter))
    return out


async def wait_for(count: Callable[[], Awaitable[int]], target: int, timeout: float) -> int:
    """Poll ``count()`` until it reaches ``target`` (for libraries whose worker has no
    "stop when drained" mode: the last completion is written after the handler returns)."""
    deadline = time.monotonic() + timeout
    while True:
        n = await count()
        if n >= target or time.monotonic() > deadline:
            return n
        await asyncio.sleep(0.005)


def result(
    task: Task,
    *,
    peer: str,
    version: str,
    driver: str,
    rows: int,
    handled: Sequence[Hashable] | None = None,
    seconds: float | None = None,
    samples: Sequence[float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A run's outcome, as a peer script prints it and as the parent reads it.

    ``rows`` is the SQL count of the jobs that are as they should be at the end: enqueued
    (enqueue workloads), or completed after exactly one attempt (drain, pickup).
    ``handled`` names each job the handler saw (its payload's ``n``, or its id), for the
    runs that run jobs.
    """
    want = expected_jobs(task)
    once = rows == want
    if handled is not None:
        once = once and len(handled) == want and len(set(handled)) == want
    out: dict[str, Any] = {
        "peer": peer,
        "version": version,
        "driver": driver,
        "workload": task.kind,
        "jobs": task.jobs,
        "concurrency": task.concurrency,
        "expected_rows": want,
        "rows": rows,
        "exactly_once": once,
        **extra,
    }
    if handled is not None:
        out["handled"] = len(handled)
        out["handled_distinct"] = len(set(handled))
    if seconds is not None:
        out["seconds"] = seconds
    if samples is not None:
        out["samples_s"] = list(samples)
    return out


def report(task: Task, **fields: Any) -> None:
    """Print the run's one JSON line (see `result`) on standard output."""
    print(json.dumps(result(task, **fields)), flush=True)
