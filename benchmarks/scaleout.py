"""Scale-out: 1, 2, 4 and 8 worker processes drain one PostgreSQL backlog together.

Each round fills a fresh table with ``scaleout_jobs`` due jobs (100,000), starts
``n`` worker processes (`benchmarks.contention.Workers`: each a `Worker` at concurrency 10
with a no-op handler, connected and warmed up before the clock starts), tells them to go
and waits until every one has found nothing left to claim (`Worker.run_until_idle`).
Jobs/s run from "go" to the last process's report. Afterwards a SQL count and the
handlers' own counts prove that each job completed exactly once.

Beside the rate, where the CPU went over the same window: the worker processes' own CPU
time (each reports it), the database server's (its backends serving this database, and
apart its background processes, from ``/proc``: only when the server runs on this
machine), and the machine's in all (``/proc/stat``), so the report can say whether the
server or the workers were the limit, or a machine without a spare core. The numbers of
processes run in turn in each round, in the opposite order in the next round (1, 2, 4, 8,
then 8, 4, 2, 1, ...); each number's result is the median of its rounds. The load average
is recorded with each.
"""

from __future__ import annotations

import itertools
import statistics
import time
from typing import Any

from . import cpu
from .common import Bench, Result
from .contention import CONCURRENCY, Workers

#: A further process that adds less than this to the rate has flattened the curve.
FLAT = 1.1


def _round(bench: Bench, workers: int, label: str) -> dict[str, Any]:
    jobs = bench.sizes.scaleout_jobs
    table = bench.table(f"scaleout{workers}_{label}")
    bench.fill(table, pending=jobs)
    load = cpu.load_average()
    pool = Workers(bench.url, table, workers, until_idle=True)
    try:
        with bench.engine.connect() as conn:
            pool.ready()
            before = cpu.Snapshot.take(conn)
            start = time.perf_counter()
            pool.go()
            done = pool.finish()
            elapsed = time.perf_counter() - start
            after = cpu.Snapshot.take(conn)  # the workers are still connected
        pool.close()
    except BaseException:
        pool.kill()
        raise
    outcome = bench.outcome(table)
    bench.drop(table)
    handled = sum(d.handled for d in done)
    once = outcome["completed"] == outcome["completed_once"] == handled == jobs
    if not once:
        raise RuntimeError(f"scale-out x{workers}: not exactly once: {outcome}, {handled=}")
    use = cpu.used(before, after)
    worker_cpu = sum(d.cpu for d in done)
    run: dict[str, Any] = {
        "rate": jobs / elapsed,
        "seconds": elapsed,
        "workers_cores": worker_cpu / elapsed,
        "server_cores": None if use.server is None else use.server / elapsed,
        "background_cores": None if use.background is None else use.background / elapsed,
        "machine_cores": None if use.machine_busy is None else use.machine_busy / elapsed,
        "machine_cpus": None if use.machine_total is None else round(use.machine_total / elapsed),
        "workers_cpu_us_per_job": worker_cpu / jobs * 1e6,
        "server_cpu_us_per_job": None if use.server is None else use.server / jobs * 1e6,
        "load_1m": None if load is None else load[0],
        "per_process_handled": sorted(d.handled for d in done),
        **outcome,
    }
    bench.note(f"scale-out x{workers} ({label}): {run['rate']:,.0f} jobs/s, load {run['load_1m']}")
    return run


def _median(runs: list[dict[str, Any]], key: str, digits: int = 2) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return round(statistics.median(values), digits) if values else None


def run(bench: Bench) -> None:
    if not bench.is_postgres:
        bench.note("scaleout runs on PostgreSQL only: skipped")
        return
    s = bench.sizes
    counts = list(s.scaleout_workers)
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for r in range(s.scaleout_rounds):
        for n in counts if r % 2 == 0 else counts[::-1]:
            runs[n].append(_round(bench, n, f"r{r}"))
    rates = {n: statistics.median(x["rate"] for x in runs[n]) for n in counts}
    base = rates[counts[0]]
    flattens: int | None = None
    for previous, n in itertools.pairwise(counts):
        if flattens is None and rates[n] < FLAT * rates[previous]:
            flattens = n
    for n in counts:
        rs = runs[n]
        server = _median(rs, "server_cores")
        background = _median(rs, "background_cores")
        workers = _median(rs, "workers_cores")
        machine = _median(rs, "machine_cores")
        cpus = rs[0]["machine_cpus"]
        extra: dict[str, Any] = {
            "processes": n,
            "concurrency": CONCURRENCY,
            "jobs": s.scaleout_jobs,
            "rounds": len(rs),
            "rates": [round(x["rate"], 1) for x in rs],
            "load_1m": [x["load_1m"] for x in rs],
            "speedup": round(rates[n] / base, 2),
            # CPU in cores (CPU seconds per second of the drain), medians over the rounds.
            "workers_cores": workers,
            "server_cores": server,
            "background_cores": background,
            "machine_cores": machine,
            "machine_cpus": cpus,
            # the rest: other databases' backends, other people's processes, this one
            "other_cores": None
            if machine is None or server is None or workers is None
            else round(machine - server - (background or 0.0) - workers, 2),
            "workers_cpu_us_per_job": _median(rs, "workers_cpu_us_per_job", 1),
            "server_cpu_us_per_job": _median(rs, "server_cpu_us_per_job", 1),
            "limit": _limit(server, workers, machine, cpus),
            "exactly_once": True,
            "per_process_handled": rs[-1]["per_process_handled"],
        }
        bench.emit(Result(f"scaleout_w{n}", rates[n], "jobs/s", driver="psycopg", extra=extra))
    bench.emit(
        Result(
            "scaleout_flattens_at",
            float(flattens or 0),
            "processes",
            driver="psycopg",
            extra={
                "rule": f"the first count whose median rate is below {FLAT}x the previous "
                "count's (0: it did not flatten)",
                "rates": {n: round(rates[n], 1) for n in counts},
            },
        )
    )


def _limit(
    server: float | None, workers: float | None, machine: float | None, cpus: int | None
) -> str:
    """Which side used more CPU, and whether the machine had a core to spare."""
    if server is None or workers is None or machine is None or not cpus:
        return "unknown (the server's processes are not readable here)"
    side = "database server" if server >= workers else "worker processes"
    if machine >= 0.9 * cpus:
        return f"machine CPU ({machine:.2f} of {cpus} cores busy); the larger share: {side}"
    return f"{side} (machine {machine:.2f} of {cpus} cores busy)"
