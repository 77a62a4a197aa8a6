"""Several worker processes drain one table together: every job completed exactly once.

Four processes compete for the same jobs on PostgreSQL (SKIP LOCKED) and on SQLite (one
writer at a time, BEGIN IMMEDIATE with a busy timeout): nothing is claimed twice, nothing is
skipped, and SQLite never fails with "database is locked". The default run drains 5,000
jobs (a few seconds per backend); the 100,000-job variant is marked
``soak`` (run it with ``pytest -m soak``).
"""

from __future__ import annotations

import pytest

from jobqueue import JobQueue, NewJob

from .conftest import Workers, check_exactly_once, status_counts, wait_for

PROCESSES = 4
DEFAULT_JOBS = 5_000
SOAK_JOBS = 100_000


def drain_together(workers: Workers, migrated: tuple[str, str], total: int) -> None:
    url, table = migrated
    queue = JobQueue(url, table=table)
    ids = []
    for start in range(0, total, 5_000):
        batch = [NewJob(kind="work", payload={"n": i}) for i in range(start, start + 5_000)]
        ids += [j.id for j in queue.enqueue_many(batch[: total - start])]
    for _ in range(PROCESSES):
        workers.start(concurrency=50, lease=30, sleep=0, poll_interval=0.2)
    wait_for(
        lambda: status_counts(queue) == {"completed": total},
        timeout=total / 20,  # far above the expected time; only a stuck drain hits it
        what=f"{total} jobs to complete",
        pause=1.0,
    )
    codes = workers.stop_all()
    assert set(codes.values()) == {0}, codes
    per_job = check_exactly_once(queue, workers, ids)
    assert set(per_job.values()) == {1}, "a job ran twice without any crash"
    logs = workers.log_text()
    assert "database is locked" not in logs
    assert "WARNING" not in logs and "ERROR" not in logs, logs[-2000:]
    queue.close()


def test_four_processes_drain_5000_jobs(workers: Workers, migrated: tuple[str, str]) -> None:
    drain_together(workers, migrated, DEFAULT_JOBS)


@pytest.mark.soak
def test_four_processes_drain_100000_jobs(workers: Workers, migrated: tuple[str, str]) -> None:
    drain_together(workers, migrated, SOAK_JOBS)
