"""A worker that stalls past its lease cannot overwrite the job's new holder (fencing).

The worker process is frozen with SIGSTOP while it runs two jobs — a stop-the-world pause,
as a long GC pause, a swapped-out VM or a laptop lid would cause. Its leases expire, a
second worker takes both jobs and completes them; then the first one is thawed and tries to
finish its stale attempts. Its writes are refused (`LeaseLost`) and the table keeps what the
second worker wrote.
"""

from __future__ import annotations

import signal
import time

import pytest

from jobqueue import JobQueue, LeaseLost, Status

from .conftest import Workers, wait_for

pytestmark = pytest.mark.postgres


def test_a_frozen_worker_is_fenced_off_after_its_lease(
    pg_workers: Workers, pg_migrated: tuple[str, str]
) -> None:
    url, table = pg_migrated
    queue = JobQueue(url, table=table)
    jobs = [queue.enqueue("work", {"n": i}, max_attempts=5) for i in range(2)]
    stalled = pg_workers.start(concurrency=2, lease=1.0, sleep=2.0, grace=0, poll_interval=0.2)
    wait_for(
        lambda: all(
            (j := queue.get(job.id)).status is Status.PROCESSING and j.locked_by == stalled
            for job in jobs
        ),
        30,
        "the first worker to hold both jobs",
        pause=0.05,
    )
    pg_workers.signal(stalled, signal.SIGSTOP)
    try:
        # Expired leases are claimable again: the second worker gets both jobs.
        taken = wait_for(
            lambda: queue.claim("second-worker", limit=2, lease=60) or None,
            30,
            "the leases to expire",
        )
        while len(taken) < 2:
            taken += wait_for(lambda: queue.claim("second-worker", lease=60), 30, "2nd lease")
        for job in taken:
            assert job.attempts == 2
            queue.complete(job, {"attempt": job.attempts, "worker": "second-worker"})
    finally:
        pg_workers.signal(stalled, signal.SIGCONT)

    # Thawed, the first worker's handlers finish and it tries to write: refused, and said so.
    wait_for(
        lambda: all(
            f"Job {job.id}: LeaseLost" in pg_workers.log_file(stalled).read_text() for job in jobs
        ),
        30,
        "the stalled worker to report LeaseLost for both jobs",
    )
    time.sleep(0.5)  # give any (wrong) late write the chance to land before looking
    for job in jobs:
        final = queue.get(job.id)
        assert final.status is Status.COMPLETED
        assert final.result == {"attempt": 2, "worker": "second-worker"}
        assert (final.locked_by, final.attempts) == ("second-worker", 2)
    codes = pg_workers.stop_all()
    assert set(codes.values()) == {0}, codes
    queue.close()


def test_a_stale_holder_gets_lease_lost_and_changes_nothing(queue: JobQueue) -> None:
    """The same, through the API on both backends: the stale attempt's every write fails."""
    queue.enqueue("work", {"n": 1})
    (stale,) = queue.claim("first", lease=0.2)
    (current,) = wait_for(lambda: queue.claim("second", lease=60), 10, "the lease to expire")
    done = queue.complete(current, {"by": "second"})
    for write in (
        lambda: queue.complete(stale, {"by": "first"}),
        lambda: queue.fail(stale, "first failed"),
        lambda: queue.heartbeat(stale),
        lambda: queue.set_progress(stale, 50),
        lambda: queue.release(stale),
        lambda: queue.save_remote_task_id(stale, "task-of-first"),
    ):
        with pytest.raises(LeaseLost):
            write()
    assert queue.get(stale.id) == done
    assert done.result == {"by": "second"} and done.locked_by == "second"
