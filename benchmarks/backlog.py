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

from sqlalchemy import Engine

from jobqueue import JobQueue
from jobqueue.testing import statement_as_sent

from .common import Bench, Result, summary_ms
from .drain import drain

TARGET = 0.8


def _claim_sql(q: JobQueue) -> Any:
    step = q.statements.claim("bench-probe", limit=50, lease=30.0, queues=["default"], kinds=None)
    return step.statement, step.params


def plan_scans(engine: Engine, q: JobQueue) -> list[str]:
    """The scans the claim statement's plan makes, e.g. ``Index Scan on t_claim_idx``."""
    sql, parameters = statement_as_sent(engine, *_claim_sql(q))
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            doc: Any = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, parameters).scalar()
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
    sizes = {"small": s.backlog_small, "large": s.backlog_large}
    tables: dict[str, str] = {}
    for label, pending in sizes.items():
        table = tables[label] = bench.table(f"backlog_{label}")
        bench.note(f"backlog {label}: filling {pending:,} pending + {s.backlog_finished:,} done")
        bench.fill(table, pending=pending, finished=s.backlog_finished)
    for label, table in tables.items():
        with JobQueue(bench.engine, table=table) as q:
            scans = plan_scans(bench.engine, q)
            latency = claim_latency(bench.engine, q, s.claim_samples)
        bench.emit(
            Result(
                f"claim_query_{label}",
                latency["p50_ms"],
                "ms p50",
                extra={
                    "pending": sizes[label],
                    "finished": s.backlog_finished,
                    "plan": scans,
                    **latency,
                },
            )
        )
    # Small, large, large, small: a load that drifts during the run affects both alike.
    # Each driver drains 2 x take from each table; half the small backlog stays as slack, so
    # every round finds its jobs (a stopping worker finishes what it already claimed).
    take = max(1, min(s.backlog_drain // 2, s.backlog_small // (4 * len(drivers))))
    for driver in drivers:
        done = {"small": 0, "large": 0}
        seconds = {"small": 0.0, "large": 0.0}
        for label in ("small", "large", "large", "small"):
            drained = asyncio.run(
                drain(
                    bench,
                    bench.async_url(driver),
                    tables[label],
                    concurrency=concurrency,
                    jobs=take,
                )
            )
            done[label] += len(drained.seen)
            seconds[label] += drained.seconds
        rates = {label: done[label] / seconds[label] for label in done}
        for label, rate in rates.items():
            bench.emit(
                Result(
                    f"backlog_{label}_drain",
                    rate,
                    "jobs/s",
                    driver=driver,
                    extra={
                        "pending": sizes[label],
                        "finished": s.backlog_finished,
                        "jobs": done[label],
                        "concurrency": concurrency,
                    },
                )
            )
        ratio = rates["large"] / rates["small"]
        bench.emit(
            Result(
                "backlog_large_vs_small",
                ratio,
                "ratio",
                driver=driver,
                target=f">= {TARGET}",
                met=ratio >= TARGET,
                extra={
                    "small_jobs_per_s": round(rates["small"], 1),
                    "large_jobs_per_s": round(rates["large"], 1),
                },
            )
        )
    for table in tables.values():
        bench.drop(table)
