"""Many claimers at once: every job is claimed exactly once (SKIP LOCKED on PostgreSQL, the
write lock on SQLite)."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from collections import Counter

import psycopg
import pytest

from jobqueue import AsyncJobQueue, Completion, JobQueue, NewJob, migrate


def _drain(url: str, table: str, worker: str, limit: int, out: list[str]) -> None:
    with JobQueue(url, table=table) as q:
        while jobs := q.claim(worker, limit=limit):
            out.extend(str(j.id) for j in jobs)
            q.complete_many([Completion(j) for j in jobs])


def test_threads_claim_2000_jobs_exactly_once(migrated: tuple[str, str]) -> None:
    url, table = migrated
    with JobQueue(url, table=table) as q:
        ids = {str(j.id) for j in q.enqueue_many([NewJob(payload={"i": i}) for i in range(2000)])}
    results: list[list[str]] = [[] for _ in range(8)]
    threads = [
        threading.Thread(target=_drain, args=(url, table, f"t{i}", 1 + i * 7, results[i]))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = Counter(i for r in results for i in r)
    assert set(claimed) == ids
    assert max(claimed.values()) == 1
    assert sum(1 for r in results if r) > 1  # the work really was shared


def _drain_process(url: str, table: str, worker: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out: list[str] = []
    _drain(url, table, worker, 25, out)
    queue.put(out)


@pytest.mark.postgres
def test_processes_claim_2000_jobs_exactly_once_on_postgres(
    postgres_url: str, table_name: str
) -> None:
    migrate(postgres_url, table=table_name)
    with JobQueue(postgres_url, table=table_name) as q:
        ids = {str(j.id) for j in q.enqueue_many([NewJob(payload={}) for _ in range(2000)])}
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(target=_drain_process, args=(postgres_url, table_name, f"p{i}", results))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    claimed: Counter[str] = Counter()
    for _ in procs:
        claimed.update(results.get(timeout=120))
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert set(claimed) == ids and max(claimed.values()) == 1
    with JobQueue(postgres_url, table=table_name) as q:
        stats = {s.status.value: s.count for s in q.stats()}
    assert stats == {"completed": 2000}


@pytest.mark.postgres
@pytest.mark.parametrize("twin", ["sync", "async"])
def test_a_claim_takes_jobs_another_worker_enters_while_it_looks(
    postgres_url: str, table_name: str, twin: str
) -> None:
    """A claim that finds nothing enters due jobs itself. When another worker (its entrance
    timer) is entering them at that moment, the claim's entry waits for it and then finds
    them in the line already, entering none itself: the claim takes them all the same,
    instead of coming back empty with due jobs waiting (which would end `run_until_idle`
    early)."""
    migrate(postgres_url, table=table_name)
    with psycopg.connect(postgres_url) as other:
        # A row another client inserted: no turn, so not in the line yet.
        (row,) = other.execute(f"INSERT INTO {table_name} DEFAULT VALUES RETURNING id").fetchall()
        other.commit()
        # The other worker's entry, still in its transaction: the row is locked, its turn
        # not yet visible.
        other.execute(f"UPDATE {table_name} SET turn = 0 WHERE id = %s", row)
        claimed: list[object] = []

        def claim() -> None:
            if twin == "sync":
                with JobQueue(postgres_url, table=table_name) as q:
                    claimed.extend(j.id for j in q.claim("w", limit=5))
                return

            async def run() -> None:
                q = AsyncJobQueue(postgres_url, table=table_name)
                try:
                    claimed.extend(j.id for j in await q.claim("w", limit=5))
                finally:
                    await q.close()

            asyncio.run(run())

        thread = threading.Thread(target=claim)
        thread.start()
        thread.join(1.0)  # the claim found nothing and its entry waits for the lock
        assert thread.is_alive()
        other.commit()
        thread.join(30)
    assert claimed == [row[0]]
