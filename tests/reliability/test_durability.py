"""Never lost once committed: a job exists exactly when the transaction that made it committed.

An enqueue that joins the caller's transaction (``connection=``) disappears with a rollback
and survives a commit; an enqueue that returned survives the enqueuing process being killed
the next instant (SIGKILL, no chance to flush anything).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import text

from jobqueue import JobNotFound, JobQueue, Status

from .conftest import status_counts, wait_for


def test_a_job_exists_only_if_its_transaction_commits(queue: JobQueue) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort), queue.engine.begin() as conn:
        lost = queue.enqueue("work", {"n": 1}, connection=conn)
        assert conn.execute(text(f"SELECT count(*) FROM {queue.table_name}")).scalar() == 1
        raise Abort  # the caller's own write failed: roll everything back
    with pytest.raises(JobNotFound):
        queue.get(lost.id)

    with queue.engine.begin() as conn:
        kept = queue.enqueue("work", {"n": 2}, connection=conn)
    assert queue.get(kept.id).status is Status.PENDING
    (claimed,) = queue.claim("w")
    assert claimed.id == kept.id
    assert status_counts(queue) == {"processing": 1}


def test_an_enqueue_that_returned_survives_sigkill_of_its_process(
    migrated: tuple[str, str],
) -> None:
    url, table = migrated
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from jobqueue import JobQueue
        q = JobQueue({url!r}, table={table!r})
        job = q.enqueue("work", {{"survives": True}})
        print(job.id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush, no atexit
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    job_id = proc.stdout.strip()
    with JobQueue(url, table=table) as queue:
        job = wait_for(lambda: queue.get(job_id), 5, "the job")
        assert job.payload == {"survives": True} and job.status is Status.PENDING
