"""Worker processes sharing one database: enqueue latency while they drain, and their rate.

``contention_workers`` worker processes (1, 2, 4, 8), each a `Worker` at concurrency 10
with a no-op handler, drain a backlog of one jobs table, while this process enqueues one
job at a time at a steady rate (``contention_rate`` a second, for ``contention_seconds``)
with the sync `JobQueue`, as a web app does. Reported per number of processes: the latency
of each of those `enqueue` calls (p50, p99, max; a late call does not delay the schedule
of the next ones) and the drain rate over the same window (completed rows counted before
and after it). No-op handlers make the most writes a worker can: the worst case for a
database with one writer at a time.

The workload runs on SQLite (the run's file, or a file in a temporary directory when the
run is on PostgreSQL) and, when the run's URL is a PostgreSQL one, there too: both in one
run, on the same machine at nearly the same time. Afterwards a SQL count and the handlers'
own counts prove that every job completed at most once and each completion was handled
once.

Each worker is a child process (``python -m benchmarks.contention --child ...``, `Workers`;
the `scaleout` workload starts its workers the same way) that starts, connects and warms up
first, then starts serving when told; the parent waits a moment for them to be busy before
it starts the clock.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import text

from jobqueue import JobQueue
from jobqueue.drivers.engines import READ_ONLY

from . import raw
from .common import Bench, Result, summary_ms

URL_ENV = "JOBQUEUE_BENCH_URL"
CONCURRENCY = 10
#: Seconds the workers serve before the clock starts (their first claims and the
#: write-ahead log's first growth are not what is measured).
WARMUP = 1.0
START_TIMEOUT = 120.0


def _child(url: str, table: str, concurrency: int, until_idle: bool) -> None:
    from jobqueue import AsyncJobQueue
    from jobqueue.worker import Worker

    from .drain import warm

    async def main() -> None:
        handled = 0

        async def handler(job: Any, ctx: Any) -> None:
            nonlocal handled
            handled += 1

        async with AsyncJobQueue(url, table=table) as q:
            await warm(q)
            worker = Worker(q, {"image": handler}, concurrency=concurrency, grace_period=60)
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)  # "go"
            cpu = time.process_time()
            if until_idle:
                await worker.run_until_idle()
            else:
                serving = asyncio.create_task(worker.run())
                await asyncio.to_thread(sys.stdin.readline)  # "stop"
                worker.stop()
                await serving
            print(f"done {handled} {time.process_time() - cpu:.4f}", flush=True)
            # Connected until told to go (or stdin closes): the parent reads the server's
            # CPU time from these connections' processes before they end.
            await asyncio.to_thread(sys.stdin.readline)

    asyncio.run(main())


class Done(NamedTuple):
    """What a worker process reports when it stops: the jobs its handler ran, and the CPU
    seconds it spent from "go" to then."""

    handled: int
    cpu: float


class Workers:
    """``n`` worker processes on ``table`` (``python -m benchmarks.contention --child``):
    started, told to go, then told to stop (`stop`) or, with ``until_idle``, left to drain
    the table and stop by themselves (`finish`); `close` ends them. Each connects and warms
    up before it says it is ready, so "go" starts them all at once."""

    def __init__(
        self,
        url: str,
        table: str,
        n: int,
        *,
        concurrency: int = CONCURRENCY,
        until_idle: bool = False,
    ) -> None:
        cmd = [sys.executable, "-m", "benchmarks.contention", "--child", table, str(concurrency)]
        if until_idle:
            cmd.append("--until-idle")
        self.until_idle = until_idle
        self._ready = False
        # The URL travels in the environment, not on the command line that `ps` shows.
        env = {**os.environ, URL_ENV: url}
        root = Path(__file__).resolve().parent.parent
        self.procs = [
            subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root
            )
            for _ in range(n)
        ]

    def _say(self, word: str) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(word + "\n")
            p.stdin.flush()

    def _read(self, word: str) -> list[str]:
        """The rest of each child's next line, which must start with ``word``."""
        rests = []
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline().split()
            if not line or line[0] != word:
                self.kill()
                raise RuntimeError(f"a worker process said {line!r}, not {word!r}")
            rests.append(" ".join(line[1:]))
        return rests

    def ready(self) -> None:
        """Wait until every process has connected and warmed up."""
        if not self._ready:
            self._read("ready")
            self._ready = True

    def go(self) -> None:
        self.ready()
        self._say("go")

    def finish(self) -> list[Done]:
        """Each process's report once it has stopped: told to (serving) or by itself (with
        ``until_idle``, when its claims find nothing left)."""
        if not self.until_idle:
            self._say("stop")
        return [Done(int(h), float(c)) for h, c in (r.split() for r in self._read("done"))]

    def close(self) -> None:
        """Let the stopped processes disconnect and exit."""
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in self.procs:
            p.wait(timeout=START_TIMEOUT)

    def stop(self) -> int:
        """Stop them all (gracefully); the jobs their handlers ran, in all."""
        handled = sum(d.handled for d in self.finish())
        self.close()
        return handled

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _completed(lab: Bench, table: str) -> int:
    # A reading transaction: on SQLite it takes no write lock, so the referee does not add
    # to the contention it measures.
    reader = lab.engine.execution_options(**{READ_ONLY: True})
    with reader.connect() as conn:
        sql = f"SELECT count(*) FROM \"{table}\" WHERE status = 'completed'"
        return int(conn.execute(text(sql)).scalar() or 0)


def _one(bench: Bench, lab: Bench, driver: str, workers: int) -> None:
    s = bench.sizes
    table = lab.table(f"contention{workers}")
    lab.fill(table, pending=s.contention_backlog)
    period = 1.0 / s.contention_rate
    calls = max(1, round(s.contention_seconds * s.contention_rate))
    latencies: list[float] = []
    pool = Workers(lab.url, table, workers)
    try:
        with JobQueue(lab.url, table=table) as q:
            q.enqueue("image", {**raw.PAYLOAD, "n": -1})  # connect outside the timing
            pool.go()
            time.sleep(WARMUP)
            before = _completed(lab, table)
            start = time.perf_counter()
            for i in range(calls):
                pause = start + i * period - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                t0 = time.perf_counter()
                q.enqueue("image", {**raw.PAYLOAD, "n": i})
                latencies.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            after = _completed(lab, table)
        handled = pool.stop()
    except BaseException:
        pool.kill()
        raise
    outcome = lab.outcome(table)
    lab.drop(table)
    drained = (after - before) / elapsed
    once = outcome["completed"] == outcome["completed_once"] == handled
    stats = summary_ms(latencies)
    extra: dict[str, Any] = {
        "workers": workers,
        "concurrency": CONCURRENCY,
        "enqueue_per_s": s.contention_rate,
        "seconds": round(elapsed, 2),
        **stats,
        "drain_jobs_per_s": round(drained, 1),
        "backlog": s.contention_backlog,
        "pending_left": outcome["pending"],
        "handled": handled,
        "exactly_once": once,
    }
    if outcome["pending"] == 0:
        bench.note(f"contention {driver} x{workers}: the backlog ran dry; enlarge it")
    for name in ("p50", "p99", "max"):
        bench.emit(
            Result(
                f"contention_w{workers}_enqueue_{name}",
                stats[f"{name}_ms"],
                "ms",
                driver=driver,
                extra=extra,
            )
        )
    drain = Result(f"contention_w{workers}_drain", drained, "jobs/s", driver=driver, extra=extra)
    bench.emit(drain)
    if not once:
        raise RuntimeError(f"contention x{workers}: not exactly once: {outcome}, {handled=}")


def run(bench: Bench) -> None:
    """SQLite and (on a PostgreSQL run) PostgreSQL, alternating at each number of workers."""
    with tempfile.TemporaryDirectory(prefix="jobqueue-contention-") as tmp:
        lite = bench
        if bench.is_postgres:
            lite = Bench(f"sqlite:///{tmp}/contention.db", bench.sizes, quiet=True)
        try:
            for workers in bench.sizes.contention_workers:
                _one(bench, lite, "sqlite", workers)
                if bench.is_postgres:
                    _one(bench, bench, "psycopg", workers)
        finally:
            if lite is not bench:
                lite.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", nargs=2, metavar=("TABLE", "CONCURRENCY"))
    parser.add_argument("--until-idle", action="store_true")
    args = parser.parse_args()
    table, concurrency = args.child
    _child(os.environ[URL_ENV], table, int(concurrency), args.until_idle)
