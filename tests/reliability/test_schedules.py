"""Periodic jobs across real worker processes: three workers run the scheduler at once, and
each tick of a one-second schedule makes exactly one job, also while one of them is killed
with SIGKILL half-way (its transaction dies with it; the others go on with the next tick).

The default variant runs about six seconds per database; the soak variant kills and
restarts workers for longer.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta

import pytest

from jobqueue import JobQueue, Status
from jobqueue.operations.schedules import KEY_PREFIX

from .conftest import Workers, all_jobs, wait_for

PROCESSES = 3


def _ticks(queue: JobQueue, name: str) -> Counter[datetime]:
    """How many jobs each tick of schedule ``name`` made."""
    prefix = f"{KEY_PREFIX}{name}:"
    return Counter(
        datetime.fromisoformat(j.idempotency_key.removeprefix(prefix))
        for j in all_jobs(queue)
        if j.idempotency_key and j.idempotency_key.startswith(prefix)
    )


def _enqueued(workers: Workers, worker_id: str) -> int:
    """How many jobs the scheduler of ``worker_id`` enqueued, by its log."""
    log = workers.log_file(worker_id)
    return log.read_text(errors="replace").count("enqueued by its schedule") if log.exists() else 0


def _run(workers: Workers, migrated: tuple[str, str], rounds: int, pause: float) -> None:
    """Three workers and a one-second schedule; each round SIGKILLs one worker after
    ``pause`` seconds and starts a replacement (the last round only kills)."""
    url, table = migrated
    with JobQueue(url, table=table) as queue:
        workers.defaults = {"concurrency": 4, "sleep": 0.05, "lease": 2.0}
        for _ in range(PROCESSES):
            workers.start()
        wait_for(lambda: len(queue.live_workers()) == PROCESSES, 30, "the workers to start")
        first = queue.add_schedule("beat", kind="work", every=1).next_tick
        killed: list[str] = []
        for i in range(rounds):
            time.sleep(pause)
            # The worker whose scheduler made the most jobs so far: the others take over.
            busiest = max(workers.alive(), key=lambda w: _enqueued(workers, w))
            killed.append(busiest)
            workers.kill(busiest)
            if i < rounds - 1:
                workers.start()
        time.sleep(pause)
        codes = workers.stop_all()
        assert set(codes.values()) == {0}, workers.log_text()
        (schedule,) = queue.list_schedules()  # after the stop: no tick is run any more
        ticks = _ticks(queue, "beat")
        # One job per tick, and no tick left out from the first to the last one run.
        assert set(ticks.values()) == {1}, ticks
        run = sorted(ticks)
        assert run[0] == first, (first, run)
        assert run == [first + timedelta(seconds=i) for i in range(len(run))], run
        assert schedule.next_tick == run[-1] + timedelta(seconds=1), (schedule, run)
        # The schedulers kept up until the end: about one tick per second of the run (a
        # busy machine may leave the last tick or two to a round that never came).
        assert len(run) >= int((rounds + 1) * pause) - 2, (len(run), rounds, pause)
        assert "running the schedules failed" not in workers.log_text()
        assert _enqueued(workers, killed[0]) >= 1
        others = {p.stem for p in workers.directory.glob("*.log")} - set(killed)
        assert sum(_enqueued(workers, w) for w in others) >= 1, workers.log_text()
        executed = {job_id for job_id, _, _ in workers.executions()}
        for job in all_jobs(queue):
            assert job.status is not Status.FAILED, job
            if job.status is Status.COMPLETED:
                assert str(job.id) in executed


def test_three_workers_make_one_job_per_tick_even_when_one_is_killed(
    workers: Workers, migrated: tuple[str, str]
) -> None:
    _run(workers, migrated, rounds=1, pause=2.5)


@pytest.mark.soak
def test_one_job_per_tick_while_workers_are_killed_and_replaced(
    workers: Workers, migrated: tuple[str, str]
) -> None:
    _run(workers, migrated, rounds=8, pause=2.5)
