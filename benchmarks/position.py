"""What `JobQueue.position` costs with a long line: 100,000 pending jobs (10,000 in
--quick; the size follows ``backlog_small``'s scale), 1,000 completed runs to estimate from,
and one live worker.

Each answer is computed afresh (``max_age=0``), for jobs at three places: the front (no
job ahead), the 1,000th (the most the default limit counts exactly) and the back (more
than 1,000 ahead: the count stops at the limit). Reported: milliseconds per call (p50,
p95), which must not grow with the line, and the cost of a kept answer (the many clients
polling one job within ``max_age``).
"""

from __future__ import annotations

import time

from sqlalchemy import text

from jobqueue import JobQueue
from jobqueue.models import DEFAULT_POSITION_LIMIT, WorkerPresence

from .common import Bench, Result, Sizes, summary_ms

PENDING = 100_000
FINISHED = 1_000
SAMPLES = 200


def run(bench: Bench) -> None:
    scale = bench.sizes.backlog_small / Sizes().backlog_small
    pending = max(2 * DEFAULT_POSITION_LIMIT, int(PENDING * scale))
    samples = max(10, int(SAMPLES * scale))
    table = bench.table("position")
    bench.note(f"position: filling {pending:,} pending + {FINISHED:,} done")
    bench.fill(table, pending=pending, finished=FINISHED)
    earlier = (
        "completed_at - interval '10 seconds'"
        if bench.is_postgres
        else "strftime('%Y-%m-%d %H:%M:%f000', completed_at, '-10 seconds')"
    )
    with bench.engine.begin() as conn:
        conn.execute(
            text(f"UPDATE \"{table}\" SET started_at = {earlier} WHERE status = 'completed'")
        )
        ids = conn.execute(
            text(
                f"SELECT id FROM \"{table}\" WHERE status = 'pending'"
                " ORDER BY priority DESC, turn, id"
            )
        ).scalars()
        line = list(ids)
    places = {
        "front": line[0],
        f"at_{DEFAULT_POSITION_LIMIT}": line[DEFAULT_POSITION_LIMIT - 1],
        "back": line[-1],
    }
    with JobQueue(bench.url, table=table) as q:
        q.worker_beat(WorkerPresence("bench-position", ("default",), None, 10), ttl=3600)
        for place, job_id in places.items():
            first = q.position(job_id, max_age=0)
            times = []
            for _ in range(samples):
                start = time.perf_counter()
                q.position(job_id, max_age=0)
                times.append(time.perf_counter() - start)
            ms = summary_ms(times)
            del ms["samples"]
            bench.emit(
                Result(
                    f"position_{place}",
                    ms["p50_ms"],
                    "ms/call",
                    driver="psycopg" if bench.is_postgres else "sqlite",
                    extra={
                        "pending": pending,
                        "ahead": first.ahead,
                        "more": first.more,
                        "finish_in": None if first.finish_in is None else round(first.finish_in),
                        "samples": samples,
                        **ms,
                    },
                )
            )
        q.position(places["back"])
        kept = []
        for _ in range(samples * 10):
            start = time.perf_counter()
            q.position(places["back"])
            kept.append(time.perf_counter() - start)
        ms = summary_ms(kept)
        bench.emit(
            Result(
                "position_kept",
                ms["p50_ms"] * 1000,
                "us/call",
                extra={"pending": pending, "samples": len(kept)},
            )
        )
    bench.drop(table)
