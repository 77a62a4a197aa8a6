"""Periodic jobs across real worker processes: three workers run the scheduler at once, and
five ticks of a one-second schedule make exactly five jobs, also while the busiest
scheduler is killed with SIGKILL half-way (its transaction dies with it; the others go on
with the next tick).

The default variant runs about six seconds per database; the soak variant kills and
replaces a worker every three ticks, eight times.
"""

from __future__ import annotations

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


def _run(
    workers: Workers, migrated: tuple[str, str], kill_at: list[int], ticks_wanted: int
) -> None:
    """Three workers and a one-second schedule run for ``ticks_wanted`` ticks; once the
    tick numbered in ``kill_at`` has its job, the busiest scheduler is SIGKILLed (and
    replaced, but for the last kill). Each tick made exactly one job."""
    url, table = migrated
    with JobQueue(url, table=table) as queue:
        workers.defaults = {"concurrency": 4, "sleep": 0.05, "lease": 2.0}
        for _ in range(PROCESSES):
            workers.start()
        wait_for(lambda: len(queue.live_workers()) == PROCESSES, 30, "the workers to start")
        first = queue.add_schedule("beat", kind="work", every=1).next_tick

        def ticks_made(n: int) -> bool:
            return first + timedelta(seconds=n - 1) in _ticks(queue, "beat")

        killed: list[str] = []
        for i, at in enumerate(kill_at):
            wait_for(lambda at=at: ticks_made(at), 30, f"{at} ticks")
            # The worker whose scheduler made the most jobs so far: the others take over.
            busiest = max(workers.alive(), key=lambda w: _enqueued(workers, w))
            killed.append(busiest)
            workers.kill(busiest)
            if i < len(kill_at) - 1:
                workers.start()
        wait_for(lambda: ticks_made(ticks_wanted), 30, f"{ticks_wanted} ticks")
        codes = workers.stop_all()
        assert set(codes.values()) == {0}, workers.log_text()
        (schedule,) = queue.list_schedules()  # after the stop: no tick is run any more
        ticks = _ticks(queue, "beat")
        # Exactly one job per tick for the ticks wanted; none left out after them either.
        wanted = [first + timedelta(seconds=i) for i in range(ticks_wanted)]
        assert [ticks[t] for t in wanted] == [1] * ticks_wanted, ticks
        assert set(ticks.values()) == {1}, ticks
        run = sorted(ticks)
        assert run == [first + timedelta(seconds=i) for i in range(len(run))], run
        assert schedule.next_tick == run[-1] + timedelta(seconds=1), (schedule, run)
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
    _run(workers, migrated, kill_at=[2], ticks_wanted=5)


@pytest.mark.soak
def test_one_job_per_tick_while_workers_are_killed_and_replaced(
    workers: Workers, migrated: tuple[str, str]
) -> None:
    _run(workers, migrated, kill_at=[3 * i for i in range(1, 9)], ticks_wanted=27)
