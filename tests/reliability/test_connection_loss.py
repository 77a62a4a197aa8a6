"""The database drops every worker connection mid-drain; the workers carry on by themselves.

Instead of restarting the shared PostgreSQL server, the test terminates the worker
processes' backends (``pg_terminate_backend``, only in this test's database and only the
workers' own connections, recognised by ``application_name``): the pooled connections and
the LISTEN connection all die at once, as in a server restart. The worker processes are
never restarted; every job still completes exactly once, and the listener comes back —
shown by a job enqueued afterwards being picked up long before the (two-minute) poll.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import make_url

from jobqueue import JobQueue, NewJob

from .conftest import (
    APP,
    LISTENERS,
    Workers,
    backends,
    check_exactly_once,
    status_counts,
    terminate_worker_backends,
    wait_for,
)

pytestmark = pytest.mark.postgres

JOBS = 300


@pytest.mark.parametrize(
    "limits", [False, pytest.param(True, marks=pytest.mark.soak)], ids=["plain", "with-limits"]
)
def test_workers_survive_losing_every_connection(
    pg_workers: Workers, pg_migrated: tuple[str, str], limits: bool
) -> None:
    """With limits in force too: claims are then transactions that lock the limits rows,
    and a connection lost mid-claim must leave neither a lock nor a job behind."""
    workers = pg_workers
    url, table = pg_migrated
    queue = JobQueue(url, table=table)
    if limits:
        queue.set_limit("work", max_running=6, max_running_per_owner=4)
    workers.url = (
        make_url(url)
        .update_query_dict({"application_name": APP})
        .render_as_string(hide_password=False)
    )
    workers.defaults = {"concurrency": 4, "lease": 5, "sleep": 0.05, "poll_interval": 120}
    ids = [workers.start() for _ in range(2)]
    first_listeners = wait_for(
        lambda: len(b := backends(queue, LISTENERS)) == 2 and b, 30, "both listeners"
    )
    jobs = queue.enqueue_many(
        [NewJob(kind="work", payload={"n": i}, max_attempts=50) for i in range(JOBS)]
    )
    for completed in (JOBS // 5, JOBS // 2):
        wait_for(
            lambda c=completed: status_counts(queue).get("completed", 0) >= c,  # type: ignore[misc]
            60,
            f"{completed} completions",
            pause=0.05,
        )
        assert terminate_worker_backends(queue) >= 2  # the listeners at least
    wait_for(lambda: status_counts(queue) == {"completed": JOBS}, 90, "every job to complete")
    assert workers.alive() == ids, "a worker process died"

    # The listeners reconnected on their own: new backends, one per worker...
    listeners = wait_for(
        lambda: len(b := backends(queue, LISTENERS)) == 2 and b, 60, "listeners to come back"
    )
    assert not listeners & first_listeners
    # ...and they work: with a two-minute poll interval, only a NOTIFY wakes an idle worker.
    time.sleep(1.0)  # let the workers settle into their long idle sleep
    late = queue.enqueue("work", {"late": True}, max_attempts=50)
    wait_for(lambda: queue.get(late.id).status.value == "completed", 30, "the late job")

    codes = workers.stop_all()
    assert set(codes.values()) == {0}, codes
    check_exactly_once(queue, workers, [j.id for j in jobs] + [late.id])
    assert "reconnecting" in workers.log_text()
    queue.close()
