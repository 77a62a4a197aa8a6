"""The command line and start deadlines: ``--expires-in`` when creating a job, and an
expired job in ``status``, ``list``, ``stats`` and ``retry``, on SQLite and PostgreSQL (the
first command as the console script, the rest in this process through the same entry
point)."""

from __future__ import annotations

import json
import time

from jobqueue import JobQueue, Status, migrate
from tests.cli.helpers import Run


def test_an_expired_job_in_status_list_stats_and_retry(
    jq: Run, jq_in_process: Run, db_url: str, table_name: str
) -> None:
    migrate(db_url, table=table_name)
    created = jq("enqueue", "email", "--expires-in", "1s", "--json")
    assert created.code == 0, created.err
    jq = jq_in_process
    job = json.loads(created.out)
    assert job["start_by"] is not None
    refused = jq("enqueue", "email", "--expires-in", "5s", "--delay", "10s")
    refused.one_line_error(2, "expires_in must be longer than delay")
    time.sleep(1.2)
    with JobQueue(db_url, table=table_name) as q:
        assert [j.id for j in q.expire()] == [q.get(job["id"]).id]

    shown = jq("status", job["id"])
    assert shown.code == 1  # like a failed or cancelled job
    assert "expired" in shown.out and "start by" in shown.out
    watched = jq("status", job["id"], "--watch", "--json")
    assert watched.code == 1 and json.loads(watched.out)["status"] == "expired"
    listed = jq("list", "--status", "expired")
    assert listed.code == 0, listed.err
    assert job["id"][:8] in listed.out and "not started by its deadline" in listed.out
    stats = jq("stats")
    assert stats.code == 0 and "expired" in stats.out

    again = jq("retry", job["id"])
    assert again.code == 0, again.err
    with JobQueue(db_url, table=table_name) as q:
        back = q.get(job["id"])
        assert (back.status, back.start_by) == (Status.PENDING, None)
