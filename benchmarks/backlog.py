"""Backlog scale: does a huge backlog (and finished rows left behind) slow the queue down?

Two tables: ``backlog_small`` pending jobs and ``backlog_large`` (1,000,000) pending jobs,
each with ``backlog_finished`` completed rows left in it. On each, one worker at the highest
drain concurrency takes ``backlog_drain`` jobs; the large table's rate is divided by the small
one's. The claim statement's own latency (run inside a transaction that is rolled back, so
no commit is timed) and its plan are recorded at both sizes.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from sqlalchemy import Engine, event

from jobqueue import JobQueue

from .common import Bench, Result, summary_ms
from .drain import drain

TARGET = 0.8


def _claim_sql(q: JobQueue) -> Any:
    return q.statements.claim("bench-probe", limit=50, lease=30.0, queues=["default"], kinds=None)


def driver_sql(engine: Engine, stmt: Any, params: Any) -> tuple[str, Any]:
    """The SQL text and parameters the driver receives for ``stmt`` (run once, rolled
    back), so that EXPLAIN sees exactly what the queue sends."""
    seen: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append((statement, parameters))

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", grab)
        with conn.begin() as tx:
            conn.execute(stmt, params)
            tx.rollback()
        event.remove(conn, "before_cursor_execute", grab)
    return seen[-1]


def plan_scans(engine: Engine, q: JobQueue) -> list[str]:
    """The scans the claim statement's plan makes, e.g. ``Index Scan on t_claim_idx``."""
    sql, parameters = driver_sql(engine, *_claim_sql(q))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            doc = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, parameters).scalar()
            plan = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
            found: list[str] = []
            _walk(plan, found)
            return found
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, parameters)
        return [str(r[-1]) for r in rows if "SCAN" in str(r[-1]) or "SEARCH" in str(r[-1])]


def _walk(node: dict[str, Any], found: list[str]) -> None:
    kind = node.get("Node Type", "")
    if "Scan" in kind and ("Relation Name" in node or "Index Name" in node):
        where = node.get("Index Name") or node.get("Relation Name")
        found.append(f"{kind} on {where}")
    for child in node.get("Plans", []):
        _walk(child, found)


def claim_latency(engine: Engine, q: JobQueue, samples: int) -> dict[str, float]:
    """Time the claim statement alone, each run rolled back so the backlog stays put."""
    stmt, params = _claim_sql(q)
    times: list[float] = []
    with engine.connect() as conn:
        for _ in range(samples):
            tx = conn.begin()
            start = time.perf_counter()
            rows = conn.execute(stmt, params).all()
            times.append(time.perf_counter() - start)
            tx.rollback()
            if not rows:
                raise RuntimeError("the claim found nothing to claim")
    return summary_ms(times)


def run(bench: Bench) -> None:
    s = bench.sizes
    drivers = bench.async_drivers()
    concurrency = max(s.drain_concurrency)
    rates: dict[tuple[str, str], float] = {}
    for label, pending in (("small", s.backlog_small), ("large", s.backlog_large)):
        table = bench.table(f"backlog_{label}")
        bench.note(f"backlog {label}: filling {pending:,} pending + {s.backlog_finished:,} done")
        bench.fill(table, pending=pending, finished=s.backlog_finished)
        with JobQueue(bench.engine, table=table) as q:
            scans = plan_scans(bench.engine, q)
            latency = claim_latency(bench.engine, q, s.claim_samples)
        bench.emit(
            Result(
                f"claim_query_{label}",
                latency["p50_ms"],
                "ms p50",
                extra={
                    "pending": pending,
                    "finished": s.backlog_finished,
                    "plan": scans,
                    **latency,
                },
            )
        )
        take = min(s.backlog_drain, pending // len(drivers))
        for driver in drivers:
            elapsed, seen = asyncio.run(
                drain(bench, bench.async_url(driver), table, concurrency=concurrency, jobs=take)
            )
            rate = len(seen) / elapsed
            rates[(label, driver)] = rate
            bench.emit(
                Result(
                    f"backlog_{label}_drain",
                    rate,
                    "jobs/s",
                    driver=driver,
                    extra={
                        "pending": pending,
                        "finished": s.backlog_finished,
                        "jobs": len(seen),
                        "concurrency": concurrency,
                    },
                )
            )
        bench.drop(table)
    for driver in drivers:
        small, large = rates[("small", driver)], rates[("large", driver)]
        bench.emit(
            Result(
                "backlog_large_vs_small",
                large / small,
                "ratio",
                driver=driver,
                target=f">= {TARGET}",
                met=large / small >= TARGET,
                extra={"small_jobs_per_s": round(small, 1), "large_jobs_per_s": round(large, 1)},
            )
        )
