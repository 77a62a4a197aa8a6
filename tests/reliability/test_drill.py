"""The invariant drill: random work and faults on real worker processes, every move audited.

A trigger records every status, attempts and error-history change of the jobs table, the
handlers log each start and end, and after a random mix — successes, retried and
permanent failures, timeouts, slow jobs, cancels of pending and running jobs, operator
retries, SIGKILLed and gracefully restarted workers, and in the soak run outages of
PostgreSQL and event-loop stalls past the lease — the drill checks (see
`drill.CHECKS`): every recorded move is one the state machine allows, at most one
completion per job and from its final claim, attempts never above ``max_attempts``, the
error history matches the failed attempts, nothing is left pending or processing, and no
worker ran more handlers at once than its concurrency.

Each run draws a random value for its generator and prints it on a failure;
``JOBQUEUE_DRILL_SEED=<value>`` replays the same workload and faults.

The short run leaves out the two faults that take longest to play out; the soak run
causes them:

- event-loop stalls past the lease: ``handlers_stopped_for_cause`` (a worker that claims
  its own expired job again does not stop the new attempt) and ``error_history``;
- outages of PostgreSQL: ``error_history`` (a write through the context, such as
  ``ctx.save_remote_task_id``, that meets the outage does not spend the attempt).

On SQLite a stall is also a test of the write lock: a worker whose event loop stands
still must not hold it (every other worker's heartbeats would wait, and ``error_history``
would find leases lost by live, unstalled workers).

Both runs cancel handlers in the middle of their writes through the context, and hold
the jobs table for a while (a long lock).

The mixed soak (`drill.MIXED`) mixes every fault for ten minutes over 100,000 jobs that
must all complete, each exactly once, with each paid job submitted once (twice only where
the first submission's worker was SIGKILLed before its task id was saved); on PostgreSQL
each worker reaches the database through a TCP proxy of its own, which the drill uses to
cut one worker or all of them off silently. A short variant runs the same mix at a
fiftieth of the size.

``place_kept`` (a reaped job keeps its place in line) runs in the soak run only, since the
short run's SIGKILLs lead to reaps too.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url

from jobqueue import JobQueue, Status
from jobqueue.drivers.engines import make_engine

from . import drill
from .drill import MIXED, SHORT, SOAK, Evidence, check, install_audit, read_audit


def test_the_short_drill_breaks_no_invariant(migrated: tuple[str, str], tmp_path: Path) -> None:
    url, table = migrated
    run = drill.drill(url, table, tmp_path, SHORT)
    ev, counts = run.evidence, run.counts
    # The run did what it is meant to check: without these the checks would pass vacuously.
    assert counts["kill -9"] + counts["kill -9 (idle)"] == SHORT.kills
    assert counts["graceful restart"] == SHORT.graceful_restarts
    assert counts["long lock"] == SHORT.locks
    assert counts["cancel-pending"] + counts["cancel-running"] > 0, counts
    statuses = {j.status for j in ev.jobs.values()}
    assert {Status.COMPLETED, Status.FAILED} <= statuses, statuses


@pytest.mark.soak
def test_the_soak_drill_breaks_no_invariant(migrated: tuple[str, str], tmp_path: Path) -> None:
    url, table = migrated
    drill.drill(url, table, tmp_path, SOAK)


def _mixed(url: str, table: str, directory: Path, variant: drill.Variant) -> None:
    run = drill.drill(url, table, directory, variant)
    postgres = make_url(url).get_backend_name() == "postgresql"
    faults = {"long lock": variant.locks}
    if postgres:
        faults.update(
            {
                "outage": variant.outages,
                "read-only spell": variant.read_only_spells,
                "partition": variant.partitions,
            }
        )
    assert {k: run.counts[k] for k in faults} == faults, run.counts
    assert run.counts["kill -9"] + run.counts["kill -9 (idle)"] == variant.kills
    explained, _ = drill.double_submissions(run.evidence)
    print(f"{variant.name}: submissions repeated after a kill between submit and save:")
    print("\n".join(f"  {e}" for e in explained) or "  none")


@pytest.mark.soak
def test_the_mixed_soak_completes_every_job_once(migrated: tuple[str, str], tmp_path: Path) -> None:
    """Issue 18's mixed soak: ten minutes of every fault over four workers and 100,000
    jobs (`drill.MIXED`); every job completed exactly once, each paid job submitted once
    unless its worker was killed between the submit and the save of its task id."""
    url, table = migrated
    _mixed(url, table, tmp_path, MIXED)


@pytest.mark.soak
def test_a_short_mixed_soak(migrated: tuple[str, str], tmp_path: Path) -> None:
    """The same mix, a fiftieth as long: every fault at least once in twelve seconds."""
    url, table = migrated
    _mixed(url, table, tmp_path, drill.scaled(MIXED, 0.02))


# -- the checks catch what they claim to --------------------------------------------------


def evidence(url: str, table: str, queue: JobQueue) -> Evidence:
    engine = make_engine(url)
    try:
        moves = read_audit(engine, table)
    finally:
        engine.dispose()
    jobs = {j.id: j for j in queue.list(limit=1000)}
    return Evidence(SHORT, 0, moves, jobs, [], {}, {j: ["ok"] for j in jobs})


def test_the_checks_see_what_the_database_did_wrong(
    migrated: tuple[str, str], raw_sql: Any
) -> None:
    """Damage done behind the library's back, through SQL, is what the audit trigger
    records and the checks report: a forbidden move, a second completion, attempts above
    the maximum, an error entry with no failure behind it, a job left pending."""
    url, table = migrated
    engine = make_engine(url)
    install_audit(engine, table)
    engine.dispose()
    queue = JobQueue(url, table=table)
    a, b, c = (queue.enqueue("drill", {"plan": ["ok"]}, max_attempts=1) for _ in range(3))
    for job in queue.claim("w", queues=None, limit=3):
        queue.complete(job, {"attempt": 1, "worker": "w", "claim": job.started_at.isoformat()})
    clean = evidence(url, table, queue)
    assert check(clean, ["moves_allowed", "attempts", "nothing_left", "error_history"]) == {}

    where = "WHERE id = :id"
    ids = {"a": a.id, "b": b.id, "c": c.id}

    def sql(statement: str, job: str) -> None:
        job_id = ids[job]
        key = job_id if queue.dialect == "postgresql" else job_id.hex
        raw_sql(f"UPDATE {table} SET {statement} {where}", id=key)

    sql("status = 'pending'", "a")  # completed -> pending: forbidden
    sql("status = 'completed'", "a")  # and a second completion
    sql("attempts = 5", "b")  # beyond max_attempts (1)
    sql('errors = \'[{"attempt": 1, "error": "invented"}]\'', "c")  # no failure behind it
    queue.enqueue("drill", {"plan": ["ok"]})  # never run
    found = check(evidence(url, table, queue))
    queue.close()

    assert any(
        f"job {a.id}: forbidden move completed -> pending" in f for f in found["moves_allowed"]
    )
    assert any(f"job {a.id} completed 2 times" in f for f in found["one_completion"])
    assert any(f"job {b.id}: 5 attempts of at most 1" in f for f in found["attempts"])
    assert any(
        f"job {c.id}: a completed -> completed added 1 error entries" in f
        for f in found["error_history"]
    )
    assert any("left pending" in f for f in found["nothing_left"])


def test_the_concurrency_check_counts_overlapping_handlers() -> None:
    """Starts and ends of one worker, in the order it logged them."""
    job = str(uuid.uuid4())

    def line(event: str, attempt: int) -> drill.Line:
        raw = {"event": event, "worker": "w", "job": job, "attempt": attempt, "claim": "-"}
        return drill.Line.parse(json.dumps({**raw, "wall": 0.0}))

    ev = Evidence(SHORT, 0, [], {}, [], {"w": 2}, {})
    ev.lines = [line("start", 1), line("start", 2), line("end", 1), line("start", 3)]
    assert check(ev, ["concurrency"]) == {}
    ev.lines.append(line("start", 4))
    assert check(ev, ["concurrency"]) == {
        "concurrency": ["worker w ran 3 handlers at once (concurrency 2)"]
    }


def test_audit_trigger_ignores_heartbeats_and_progress(queue: JobQueue) -> None:
    """Only moves are recorded: a heartbeat or a progress write is no move."""
    engine = queue.engine
    install_audit(engine, queue.table.name)
    queue.enqueue("drill", {"plan": ["ok"]})
    (job,) = queue.claim("w", queues=None)
    queue.heartbeat(job)
    queue.set_progress(job, 50)
    queue.complete(job, {"done": True})
    moves = read_audit(engine, queue.table.name)
    assert [(m.op, m.old_status, m.new_status) for m in moves] == [
        ("I", None, "pending"),
        ("U", "pending", "processing"),
        ("U", "processing", "completed"),
    ]


def test_a_repeated_submission_is_explained_only_by_a_kill_between_submit_and_save() -> None:
    """The provider has no idempotency key: a worker SIGKILLed between the submit and the
    save of its task id makes the next attempt submit again, and only that is allowed."""
    job = str(uuid.uuid4())

    def line(event: str, worker: str, attempt: int, wall: float, **more: str) -> drill.Line:
        raw = {"event": event, "worker": worker, "job": job, "attempt": attempt, "claim": "-"}
        return drill.Line.parse(json.dumps({**raw, "wall": wall, **more}))

    def at(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    def judged(
        first: list[drill.Line],
        killed_at: float | None,
        refusals: tuple[tuple[float, float], ...] = (),
    ) -> tuple[int, int]:
        ev = Evidence(MIXED, 0, [], {}, [], {}, {})
        ev.lines = [*first, line("start", "w2", 2, 20.0), line("submit", "w2", 2, 21.0)]
        ev.write_stops = [(at(b), at(e), "a read-only spell") for b, e in refusals]
        if killed_at is not None:
            ev.killed.add("w1")
            ev.kill_times["w1"] = datetime.fromtimestamp(killed_at, UTC)
        explained, unexplained = drill.double_submissions(ev)
        assert check(ev, ["one_submission"]) == (
            {"one_submission": unexplained} if unexplained else {}
        )
        return len(explained), len(unexplained)

    began = [line("start", "w1", 1, 1.0), line("submit", "w1", 1, 2.0)]
    assert judged(began, killed_at=3.0) == (1, 0)  # killed after the submit, nothing saved
    assert judged(began, killed_at=None) == (0, 1)  # alive: nothing explains it
    ended = [*began, line("end", "w1", 1, 2.5, outcome="LeaseLost")]
    assert judged(ended, killed_at=3.0) == (0, 1)  # its handler ended first
    saved = [*began, line("saved", "w1", 1, 2.2)]
    assert judged(saved, killed_at=3.0) == (0, 1)  # the id was saved: never again
    assert judged([line("start", "w1", 1, 1.0), line("submit", "w1", 1, 5.0)], 3.0) == (0, 1)
    # Writes refused from the submit until the lease had all but run out: the save could
    # not land in time. A gap the save's quick retries could use, or a refusal that ended
    # early, explains nothing.
    lease = MIXED.lease
    assert judged(ended, None, ((1.9, 2.0 + lease),)) == (1, 0)
    assert judged(ended, None, ((1.9, 2.0 + lease / 2), (2.1 + lease / 2, 2.0 + lease))) == (1, 0)
    assert judged(ended, None, ((1.9, 2.0 + lease / 2), (3.0 + lease / 2, 2.0 + lease))) == (0, 1)
    assert judged(ended, None, ((1.9, 2.0 + lease * 0.8),)) == (0, 1)
    assert judged(saved, None, ((1.9, 2.0 + lease),)) == (0, 1)
