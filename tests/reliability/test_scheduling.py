"""Scheduling across worker processes: fair share, caps and rates hold however many
processes race, and a worker killed with limits in force gives its slots back.

Real worker processes (`worker_process`) on SQLite and PostgreSQL; what ran is read from
the jobs table, and the running counts are sampled by SQL while the workers drain.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from jobqueue import JobQueue, NewJob
from jobqueue.sql.dialect import DbNow

from .conftest import Workers, check_exactly_once, status_counts, wait_for
from .test_kill import kill_and_restart

PROCESSES = 2
CONCURRENCY = 4


def test_single_jobs_start_within_one_round_of_a_backlog(
    workers: Workers, migrated: tuple[str, str]
) -> None:
    """A enqueues 1,000, then B, C and D one each: with 2 processes at concurrency 4, each
    single job starts before A's 16th (twice the total concurrency) does."""
    url, table = migrated
    with JobQueue(url, table=table) as queue:
        workers.defaults = {"concurrency": CONCURRENCY, "sleep": 0.2, "lease": 5.0}
        for _ in range(PROCESSES):
            workers.start()
        wait_for(lambda: len(queue.live_workers()) == PROCESSES, 30, "the workers to start")
        queue.enqueue_many([NewJob(kind="work", owner_id="A") for _ in range(1000)])
        singles = [queue.enqueue("work", owner_id=o).id for o in ("B", "C", "D")]
        wait_for(
            lambda: all(queue.get(j).status == "completed" for j in singles),
            60,
            "the single jobs to complete",
        )
        workers.stop_all()
        t = queue.table
        with queue.engine.connect() as conn:
            a_starts = sorted(
                conn.execute(
                    select(t.c.started_at).where(t.c.owner_id == "A", t.c.started_at.isnot(None))
                ).scalars()
            )
        bound = PROCESSES * CONCURRENCY * 2
        single_starts = [queue.get(j).started_at for j in singles]
        assert all(s is not None for s in single_starts)
        if len(a_starts) >= bound:
            assert max(single_starts) < a_starts[bound - 1], (single_starts, a_starts[:bound])


class RunningSampler:
    """Samples, every few milliseconds, how many jobs run per limit key and per owner (rows
    processing under a lease not yet expired), keeping the largest counts seen."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        self.per_key: Counter[str] = Counter()
        self.per_owner: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        t = self.queue.table
        key = func.coalesce(t.c.limit_key, t.c.kind)
        query = (
            select(key, t.c.owner_id, func.count())
            .where(t.c.status == "processing", t.c.lease_expires_at >= DbNow())
            .group_by(key, t.c.owner_id)
        )
        with self.queue.engine.connect() as conn:
            while not self._stop.is_set():
                keys: Counter[str] = Counter()
                owners: Counter[str] = Counter()
                for k, owner, n in conn.execute(query):
                    keys[k] += n
                    owners[owner] += n
                conn.rollback()
                for k, n in keys.items():
                    self.per_key[k] = max(self.per_key[k], n)
                for o, n in owners.items():
                    self.per_owner[o] = max(self.per_owner[o], n)
                self.samples += 1
                time.sleep(0.003)


def test_caps_hold_across_four_processes_and_every_job_completes(
    workers: Workers, migrated: tuple[str, str]
) -> None:
    """4 processes at concurrency 10; at most 3 running per owner and 5 per key."""
    url, table = migrated
    with JobQueue(url, table=table) as queue:
        queue.set_limit("default", scope="queue", max_running_per_owner=3)
        for key in ("provider-a", "provider-b"):
            queue.set_limit(key, max_running=5)
        jobs = queue.enqueue_many(
            [
                NewJob(kind="work", owner_id=f"user-{i % 6}", limit_key=f"provider-{'ab'[i % 2]}")
                for i in range(120)
            ]
        )
        workers.defaults = {"concurrency": 10, "sleep": 0.15, "lease": 5.0}
        with RunningSampler(queue) as sampler:
            for _ in range(4):
                workers.start()
            wait_for(
                lambda: status_counts(queue) == {"completed": len(jobs)},
                120,
                "every job to complete",
                pause=0.3,
            )
        codes = workers.stop_all()
        assert set(codes.values()) == {0}, codes
        check_exactly_once(queue, workers, [j.id for j in jobs])
        print(f"samples={sampler.samples} keys={dict(sampler.per_key)}")
        print(f"owners={dict(sampler.per_owner)}")
        assert sampler.samples > 50
        assert max(sampler.per_key.values()) <= 5, sampler.per_key
        assert max(sampler.per_owner.values()) <= 3, sampler.per_owner
        assert max(sampler.per_key.values()) >= 4  # the caps were reached, not idle workers


@pytest.mark.soak
def test_a_rate_holds_across_processes(workers: Workers, migrated: tuple[str, str]) -> None:
    """At most 10 starts in any second, two processes claiming."""
    url, table = migrated
    with JobQueue(url, table=table) as queue:
        queue.set_limit("work", rate=10, per=1.0)
        jobs = queue.enqueue_many([NewJob(kind="work") for _ in range(35)])
        workers.defaults = {"concurrency": 8, "sleep": 0.05, "lease": 5.0}
        for _ in range(2):
            workers.start()
        wait_for(
            lambda: status_counts(queue) == {"completed": len(jobs)},
            60,
            "every job to complete",
            pause=0.3,
        )
        workers.stop_all()
        starts = sorted(j.started_at for j in (queue.get(job.id) for job in jobs))
        window = timedelta(seconds=1)
        busiest = max(sum(1 for s in starts if t <= s < t + window) for t in starts)
        assert busiest <= 10, busiest
        assert starts[-1] - starts[0] >= timedelta(seconds=3)  # 35 starts take 3 windows


@pytest.mark.soak
def test_kill_9_with_limits_in_force_loses_nothing(
    workers: Workers, migrated: tuple[str, str]
) -> None:
    """A killed worker's slots come back when its leases expire: the drain completes."""

    def limits(queue: JobQueue) -> Any:
        queue.set_limit("work", max_running=6)
        queue.set_limit("default", scope="queue", max_running_per_owner=4)

    kill_and_restart(workers, migrated, kills_wanted=8, total=150, setup=limits)
