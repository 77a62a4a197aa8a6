"""SIGTERM to busy worker processes: jobs that cannot finish in the grace period go back.

Three worker processes run long jobs (seconds) with a short grace period; all get SIGTERM
while every slot is busy. Each exits cleanly, no job stays ``processing``, the unfinished
ones are ``pending`` again with the release recorded, and fresh workers then finish
everything exactly once.
"""

from __future__ import annotations

from jobqueue import JobQueue, NewJob, Status

from .conftest import Workers, all_jobs, check_exactly_once, status_counts, wait_for

PROCESSES = 3
CONCURRENCY = 4
JOBS = 30


def test_sigterm_under_load_releases_unfinished_jobs(
    workers: Workers, migrated: tuple[str, str]
) -> None:
    url, table = migrated
    queue = JobQueue(url, table=table)
    jobs = queue.enqueue_many(
        [NewJob(kind="work", payload={"n": i}, max_attempts=3) for i in range(JOBS)]
    )
    for _ in range(PROCESSES):
        workers.start(concurrency=CONCURRENCY, lease=30, sleep=20, grace=0.5)
    busy = PROCESSES * CONCURRENCY
    wait_for(lambda: status_counts(queue).get("processing", 0) == busy, 30, "every slot busy")
    codes = workers.stop_all(timeout=30)
    assert set(codes.values()) == {0}, codes

    counts = status_counts(queue)
    assert counts == {"pending": JOBS}, counts
    released = [j for j in all_jobs(queue) if j.errors]
    assert len(released) == busy
    for job in released:
        assert job.status is Status.PENDING and job.locked_by is None
        assert job.lease_expires_at is None
        assert "released" in job.errors[-1]["error"]
        # A release does not spend an attempt, and the job keeps its limit.
        assert (job.attempts, job.max_attempts) == (0, 3)

    for _ in range(2):
        workers.start(concurrency=8, lease=30, sleep=0.05)
    wait_for(lambda: status_counts(queue) == {"completed": JOBS}, 60, "the rest to finish")
    assert set(workers.stop_all().values()) == {0}
    check_exactly_once(queue, workers, [j.id for j in jobs])
    queue.close()
