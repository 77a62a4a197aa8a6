"""Worker memory: the resident set of a worker process across a long drain.

The worker runs in a child process (``python -m benchmarks.memory --child ...``) so that its
RSS is its own. The child reports progress every few thousand jobs; the parent reads the
child's RSS from ``/proc`` at each report and on a timer, and gives the RSS at the start
(connected and warmed, before the first job), at the end, the peak, and the growth from
10% of the jobs to the end (what a leak per job would show).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .common import Bench, Result, rss_bytes

URL_ENV = "JOBQUEUE_BENCH_URL"
FLAT_MB = 10.0
MB = 1024 * 1024


def _child(url: str, table: str, jobs: int, concurrency: int) -> None:
    from jobqueue import AsyncJobQueue
    from jobqueue.worker import Worker

    from .drain import warm

    every = max(1, jobs // 40)

    async def main() -> None:
        count = 0

        async def handler(job: Any, ctx: Any) -> dict[str, Any]:
            nonlocal count
            count += 1
            if count % every == 0:
                print(f"progress {count}", flush=True)
            return {"url": f"https://images.example/{job.id}.png", "seed": count}

        async with AsyncJobQueue(url, table=table) as q:
            await warm(q)
            worker = Worker(q, {"image": handler}, concurrency=concurrency, listen=False)
            print("ready", flush=True)
            sys.stdin.readline()
            start = time.perf_counter()
            finished = await worker.run_until_idle()
            print(f"done {finished} {time.perf_counter() - start:.3f}", flush=True)
            sys.stdin.readline()

    asyncio.run(main())


def _measure(bench: Bench, driver: str) -> None:
    n = bench.sizes.memory_jobs
    concurrency = max(bench.sizes.drain_concurrency)
    table = bench.table(f"mem_{driver}")
    bench.fill(table, pending=n)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.memory",
        "--child",
        table,
        str(n),
        str(concurrency),
    ]
    # The URL travels in the environment, not on the command line that `ps` shows.
    env = {**os.environ, URL_ENV: bench.async_url(driver)}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root
    )
    assert proc.stdin is not None and proc.stdout is not None
    samples: list[tuple[float, int, int]] = []  # (seconds, jobs done, rss)
    lock = threading.Lock()
    progress = [0]
    stop = threading.Event()

    def sample() -> None:
        rss, _ = rss_bytes(proc.pid)
        with lock:
            samples.append((time.perf_counter(), progress[0], rss))

    def ticker() -> None:
        while not stop.wait(0.25):
            try:
                sample()
            except OSError:
                return

    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise RuntimeError(f"the memory benchmark's worker did not start: {line!r}")
    start_rss, _ = rss_bytes(proc.pid)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    finished = 0
    seconds = 0.0
    for line in proc.stdout:
        word, *rest = line.split()
        if word == "progress":
            progress[0] = int(rest[0])
            sample()
        elif word == "done":
            finished, seconds = int(rest[0]), float(rest[1])
            break
    stop.set()
    thread.join()
    end_rss, peak_hwm = rss_bytes(proc.pid)
    proc.stdin.write("exit\n")
    proc.stdin.flush()
    proc.wait(timeout=60)
    bench.drop(table)

    peak = max([start_rss, end_rss] + [r for _, _, r in samples])
    tenth = next((r for _, done, r in samples if done >= n // 10), start_rss)
    growth = (peak - start_rss) / MB
    steady = (end_rss - tenth) / MB
    curve = [(done, round(r / MB, 1)) for _, done, r in samples[:: max(1, len(samples) // 20)]]
    bench.emit(
        Result(
            "worker_rss_growth",
            growth,
            "MB",
            driver=driver,
            target=f"peak - start <= {FLAT_MB:g} MB",
            met=growth <= FLAT_MB,
            extra={
                "jobs": n,
                "finished": finished,
                "seconds": seconds,
                "jobs_per_s": round(finished / seconds, 1) if seconds else None,
                "rss_start_mb": round(start_rss / MB, 1),
                "rss_end_mb": round(end_rss / MB, 1),
                "rss_peak_mb": round(peak / MB, 1),
                "rss_hwm_mb": round(peak_hwm / MB, 1),
                "growth_10pct_to_end_mb": round(steady, 2),
                "curve_jobs_mb": json.dumps(curve),
            },
        )
    )


def run(bench: Bench) -> None:
    for driver in bench.async_drivers():
        _measure(bench, driver)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=3, metavar=("TABLE", "JOBS", "CONCURRENCY"))
    args = parser.parse_args()
    table, jobs, concurrency = args.child
    _child(os.environ[URL_ENV], table, int(jobs), int(concurrency))
