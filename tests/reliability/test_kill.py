"""kill -9: worker processes die at random moments, again and again, and nothing is lost.

Three worker processes drain a few hundred jobs while the test SIGKILLs one of them at a
random moment every few tenths of a second (at least 20 kills) and starts a replacement.
Short leases bring a dead worker's jobs back within seconds. At the end every job is
completed exactly once — its stored result is its last holder's — every job ran at least
once, each attempt at most once, and the extra executions are bounded by what the kills
could have interrupted (kills times concurrency).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select

from jobqueue import JobQueue, NewJob

from .conftest import Workers, check_exactly_once, status_counts, wait_for

KILLS = 22
JOBS = 400
CONCURRENCY = 4
PROCESSES = 3


def holders(queue: JobQueue) -> set[str]:
    """Workers holding a job at the moment."""
    t = queue.table
    with queue.engine.connect() as conn:
        rows = conn.execute(select(t.c.locked_by).where(t.c.status == "processing").distinct())
        return {r for (r,) in rows if r}


def test_sigkill_at_random_moments_loses_nothing(
    workers: Workers, migrated: tuple[str, str]
) -> None:
    kill_and_restart(workers, migrated, kills_wanted=KILLS, total=JOBS)


@pytest.mark.soak
def test_two_hundred_sigkills_lose_nothing(workers: Workers, migrated: tuple[str, str]) -> None:
    kill_and_restart(workers, migrated, kills_wanted=200, total=4_000)


def kill_and_restart(
    workers: Workers,
    migrated: tuple[str, str],
    *,
    kills_wanted: int,
    total: int,
    setup: Callable[[JobQueue], object] | None = None,
) -> None:
    """Drain ``total`` jobs while killing workers; ``setup`` prepares the queue first (the
    limits in force, for tests/reliability/test_scheduling.py)."""
    url, table = migrated
    queue = JobQueue(url, table=table)
    if setup is not None:
        setup(queue)
    jobs = queue.enqueue_many(
        [NewJob(kind="work", payload={"n": i}, max_attempts=1000) for i in range(total)]
    )
    workers.defaults = {"concurrency": CONCURRENCY, "lease": 2.0, "sleep": 0.2, "grace": 2}
    alive = [workers.start() for _ in range(PROCESSES)]
    rng = random.Random(20261129)
    kills = kills_mid_drain = 0
    while kills < kills_wanted:
        # Kill a worker that holds jobs right now (a fresh one may not have claimed yet),
        # at a random moment of its work.
        busy = wait_for(
            lambda: sorted(holders(queue) & set(alive)), timeout=60, what="a busy worker"
        )
        time.sleep(rng.uniform(0.0, 0.3))
        victim = rng.choice(busy)
        alive.remove(victim)
        workers.kill(victim)
        kills += 1
        counts = status_counts(queue)
        if counts.get("pending", 0) + counts.get("processing", 0):
            kills_mid_drain += 1
        alive.append(workers.start())
    wait_for(
        lambda: status_counts(queue) == {"completed": total},
        timeout=120,
        what=f"all {total} jobs to complete ({status_counts(queue)})",
        pause=0.5,
    )
    codes = workers.stop_all()
    assert set(codes.values()) == {0}, codes
    per_job = check_exactly_once(queue, workers, [j.id for j in jobs])
    extra = sum(per_job.values()) - total
    print(f"kills={kills} mid-drain={kills_mid_drain} extra executions={extra}")
    assert kills_mid_drain >= kills_wanted - 2, "the drain ended before the kills"
    assert extra <= kills * CONCURRENCY, (extra, kills)
    queue.close()
