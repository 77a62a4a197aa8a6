"""The invariant drill: a random mix of work and faults, then every recorded move checked.

`run_drill` installs an audit trigger on the jobs table (`install_audit`: every insert and
every change of status, attempts, max_attempts or the error history becomes a row of
``<table>_audit``, written by the database itself whoever changed the job), starts worker
processes (`drill_worker`, whose handlers log each start and end), and then, for a while,
does at random what users and operators do and what goes wrong in production: enqueues
jobs with random plans (success, retryable and permanent failures, timeouts, slow jobs,
saved remote task ids), cancels pending and running jobs, retries failed and cancelled
ones, SIGKILLs busy workers and starts new ones, stops workers gracefully, and — in the
variants that ask for them — takes PostgreSQL away from the workers for a second or so
(`outage`), holds the jobs table (`long_lock`), makes the database refuse writes
(`read_only_spell`), cuts workers off silently (`partition`: each worker then reaches
PostgreSQL through a TCP proxy of its own, `tests.support.netproxy.NetProxy`) and stalls a
worker's event loop past its lease. It waits (polling) until
nothing is pending or processing, stops the workers, and hands everything recorded to
`check`.

`check` judges the run by what the database and the handlers recorded, never by what the
drill meant to do. Each check has a name (`CHECKS`); a failing run raises one
`AssertionError` naming the failed checks, their first findings and the random seed, which
replays the same workload and the same sequence of faults
(``JOBQUEUE_DRILL_SEED=<seed>``; process timing still varies).
"""

from __future__ import annotations

import collections
import json
import os
import random
import secrets
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
from sqlalchemy import Engine, bindparam, make_url, text

from jobqueue import InvalidTransition, JobQueue, NewJob, Status
from jobqueue.drivers.engines import make_engine
from jobqueue.models import can_move
from jobqueue.worker import StopReason
from jobqueue.worker.completer import HAND_BACK_REASON, RELEASE_REASON
from jobqueue.worker.context import TASK_ID_RETRY_CAP
from tests.support.netproxy import Direction, NetProxy

from . import drill_worker
from .conftest import Workers, all_jobs, wait_for

SEED_ENV = "JOBQUEUE_DRILL_SEED"
#: The ``application_name`` of the workers' PostgreSQL connections (their pools and their
#: listeners), so the drill terminates theirs and never its own.
WORKER_APP = "jq-drill-worker"
LISTENER_APP = "jobqueue-listener%"
LOST_LEASE = "lease expired while held by "


def drill_seed() -> int:
    """The random seed of this run: ``JOBQUEUE_DRILL_SEED`` when set, else a fresh random one."""
    given = os.environ.get(SEED_ENV)
    return int(given) if given else secrets.randbelow(2**31)


# -- what a run does ------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """How much of what a drill run does. Faults are spread over ``duration`` seconds."""

    name: str
    jobs: int
    duration: float
    processes: int
    concurrency: tuple[int, int]  # each worker's, drawn from this range
    lease: float
    job_timeout: float
    slow: float  # the longest slow step
    kills: int
    graceful_restarts: int
    cancels: int
    retries: int
    #: Plan steps and their weights.
    steps: dict[str, int]
    #: PostgreSQL only: outages of the workers' connections (`outage`), each lasting
    #: between the two numbers of seconds of ``outage``.
    outages: int = 0
    outage: tuple[float, float] = (0.5, 1.5)
    #: Jobs of the ``stall`` queue: a share of all, with their own steps, served by a
    #: worker process of their own (so that it is the one to claim its expired leases
    #: again when it wakes up); a ``stall`` step blocks it for up to ``stall`` seconds.
    stall_share: float = 0.0
    stall_steps: dict[str, int] = field(default_factory=dict)
    stall: float = 0.0
    #: Each worker's reap interval is drawn from these (None: the lease); the stall
    #: queue's worker takes the longest, so that its claims, not a reaper, meet its
    #: expired leases first when it wakes up.
    reap_intervals: tuple[float | None, ...] = (None,)
    settle_timeout: float = 120.0
    #: Checks beyond `ALWAYS` (see `CHECKS`); they run in the variants that name them.
    extra_checks: tuple[str, ...] = ()
    #: Long locks (`long_lock`): another session holds the jobs table (PostgreSQL:
    #: ``ACCESS EXCLUSIVE``; SQLite: the write lock) for between the two numbers of seconds
    #: of ``lock``. The workers' ``lock_timeout`` (None: the default) decides whether they
    #: wait it out or meet `DatabaseBusy` and back off.
    locks: int = 0
    lock: tuple[float, float] = (1.0, 3.0)
    lock_timeout: float | None = None
    #: PostgreSQL only: spells of a database that refuses writes (`read_only_spell`).
    read_only_spells: int = 0
    read_only: tuple[float, float] = (0.5, 2.0)
    #: PostgreSQL only: silent partitions between workers and PostgreSQL (`partition`),
    #: each lasting between the two numbers of seconds of ``partition`` (a reset is
    #: shorter: `RESET`). With any, every worker connects through a proxy of its own.
    partitions: int = 0
    partition: tuple[float, float] = (1.0, 6.0)
    #: The workers' ``command_timeout`` (None: the queue's default): how soon a worker
    #: cut off by a partition finds out.
    command_timeout: float | None = None
    #: Each job's ``max_attempts`` is drawn from these.
    attempts: tuple[int, ...] = (1, 2, 2, 3, 3, 4)


COMMON_STEPS = {"ok": 55, "slow": 15, "save_task_id": 8, "raise": 14, "permanent": 3, "timeout": 1}

#: The default suite's run: every fault at least once but the slow ones (stalls and
#: outages), which the soak run causes.
SHORT = Variant(
    name="short",
    jobs=160,
    duration=6.0,
    processes=3,
    concurrency=(2, 4),
    lease=4.0,
    job_timeout=6.0,
    slow=1.2,
    kills=2,
    graceful_restarts=1,
    cancels=12,
    retries=4,
    steps=COMMON_STEPS,
    locks=1,
    lock=(0.5, 1.5),
)

SOAK = Variant(
    name="soak",
    jobs=3000,
    duration=90.0,
    processes=4,
    concurrency=(2, 6),
    lease=4.0,
    job_timeout=8.0,
    slow=2.0,
    kills=20,
    graceful_restarts=6,
    cancels=300,
    retries=60,
    steps=COMMON_STEPS,
    outages=30,
    stall_share=0.03,
    stall_steps={"ok": 40, "slow": 20, "stall": 15, "raise": 15, "save_task_id": 10},
    stall=5.2,
    reap_intervals=(None, 20.0, 20.0),
    settle_timeout=600.0,
    extra_checks=("place_kept",),
)

#: The mixed soak (issue 18): every fault at random for ten minutes over four workers and
#: 100,000 jobs that must all complete, each exactly once (the audit trigger counts the
#: completions), and each paid job submitted to the provider once. Its plans only succeed
#: (a job may still lose attempts to the faults, so it gets a few); no cancels or operator
#: retries, which would end jobs otherwise. The workers' lock timeout is shorter than the
#: locks, so they meet `DatabaseBusy` and back off. Partitions last from a second to well
#: past the lease; the workers' command timeout is half the lease, so a cut-off worker
#: finds out within its heartbeat's round and gives its jobs up after one lease. It is
#: longer than the lock timeout: a statement waiting on a lock must meet the server's
#: lock timeout (`DatabaseBusy`: the database answers) before the client's own clock
#: (`DatabaseTimeout`: unreachable, which the lease watch acts on).
MIXED = Variant(
    name="mixed",
    jobs=100_000,
    duration=600.0,
    processes=4,
    concurrency=(8, 16),
    lease=6.0,
    job_timeout=20.0,
    slow=1.0,
    kills=40,
    graceful_restarts=10,
    cancels=0,
    retries=0,
    steps={"ok": 70, "slow": 5, "paid": 25},
    # Enough that the faults (a kill, a lost lease) never spend all of a job's attempts.
    attempts=(25,),
    outages=30,
    locks=20,
    lock=(1.0, 8.0),
    lock_timeout=2.0,
    read_only_spells=10,
    read_only=(1.0, 8.0),
    partitions=20,
    partition=(1.0, 10.0),
    command_timeout=3.0,
    settle_timeout=1800.0,
    extra_checks=("every_job_completed", "one_submission"),
)


def scaled(variant: Variant, share: float) -> Variant:
    """``variant`` with its jobs, duration and faults scaled by ``share`` (at least one of
    each fault it has): a quick run of the same mix."""

    def n(count: int) -> int:
        return max(1, round(count * share)) if count else 0

    return replace(
        variant,
        name=f"{variant.name} x{share:g}",
        jobs=max(50, round(variant.jobs * share)),
        duration=max(10.0, variant.duration * share),
        kills=n(variant.kills),
        graceful_restarts=n(variant.graceful_restarts),
        outages=n(variant.outages),
        locks=n(variant.locks),
        read_only_spells=n(variant.read_only_spells),
        partitions=n(variant.partitions),
    )


#: How a partition cuts its workers off, and the weights of each: a blackhole of both
#: directions, of one (``up``: the server hears nothing; ``down``: it hears and acts, and
#: its answers are lost), or a reset of every connection (refusing new ones for `RESET`
#: seconds).
PARTITION_KINDS = {"both": 55, "up": 15, "down": 15, "reset": 15}
RESET = (0.2, 1.5)
#: The share of partitions that cut every worker off, not just one.
PARTITION_ALL = 0.25
#: psycopg's shortest connect timeout: a worker's connection attempt through a blackhole
#: gives up within the drill's timescale.
PROXIED_CONNECT_TIMEOUT = 2


STALL_QUEUE = "stall"


def plan_for(
    rng: random.Random, steps: dict[str, int], attempts: Sequence[int] = (1, 2, 2, 3, 3, 4)
) -> tuple[list[str], int]:
    """A job's plan (a step per attempt, drawn by the weights of ``steps``) and its
    ``max_attempts`` (drawn from ``attempts``)."""
    max_attempts = rng.choice(attempts)
    names, weights = zip(*steps.items(), strict=True)
    plan = rng.choices(names, weights, k=max_attempts)
    # One more step for attempts a retry adds; a stall is followed by ordinary work.
    plan.append(rng.choice(("ok", "slow", "save_task_id")))
    return plan, max_attempts


# -- the audit trigger ----------------------------------------------------------------------

AUDIT_COLUMNS = """
    op, job_id, old_status, new_status, old_attempts, new_attempts,
    old_max_attempts, new_max_attempts, old_locked_by, new_locked_by,
    old_errors, new_errors, old_lease_expires_at, old_run_at, new_run_at, new_started_at
"""


def audit_table(table: str) -> str:
    return f"{table}_audit"


def install_audit(engine: Engine, table: str) -> None:
    """Record every insert and every change of status, attempts, max_attempts or errors of
    ``table`` in ``<table>_audit``, from a trigger: whoever changes a row, the database
    writes the row's move in the same transaction."""
    audit = audit_table(table)
    if engine.dialect.name == "postgresql":
        errors = (
            "CASE WHEN jsonb_typeof({r}.errors) = 'array' "
            "THEN jsonb_array_length({r}.errors) ELSE -1 END"
        )
        statements = [
            f"""CREATE TABLE {audit} (
                seq bigserial PRIMARY KEY,
                at timestamptz NOT NULL DEFAULT clock_timestamp(),
                op text NOT NULL, job_id uuid NOT NULL,
                old_status text, new_status text,
                old_attempts int, new_attempts int,
                old_max_attempts int, new_max_attempts int,
                old_locked_by text, new_locked_by text,
                old_errors int, new_errors int,
                old_lease_expires_at timestamptz,
                old_run_at timestamptz, new_run_at timestamptz,
                new_started_at timestamptz)""",
            f"""CREATE FUNCTION {audit}_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF TG_OP = 'INSERT' THEN
                INSERT INTO {audit} ({AUDIT_COLUMNS}) VALUES (
                  'I', NEW.id, NULL, NEW.status, NULL, NEW.attempts,
                  NULL, NEW.max_attempts, NULL, NEW.locked_by,
                  NULL, {errors.format(r="NEW")}, NULL, NULL, NEW.run_at, NEW.started_at);
                RETURN NULL;
              ELSIF TG_OP = 'DELETE' THEN
                INSERT INTO {audit} ({AUDIT_COLUMNS}) VALUES (
                  'D', OLD.id, OLD.status, NULL, OLD.attempts, NULL,
                  OLD.max_attempts, NULL, OLD.locked_by, NULL,
                  {errors.format(r="OLD")}, NULL, OLD.lease_expires_at, OLD.run_at, NULL, NULL);
                RETURN NULL;
              END IF;
              INSERT INTO {audit} ({AUDIT_COLUMNS}) VALUES (
                'U', NEW.id, OLD.status, NEW.status, OLD.attempts, NEW.attempts,
                OLD.max_attempts, NEW.max_attempts, OLD.locked_by, NEW.locked_by,
                {errors.format(r="OLD")}, {errors.format(r="NEW")},
                OLD.lease_expires_at, OLD.run_at, NEW.run_at, NEW.started_at);
              RETURN NULL;
            END $$""",
            f"""CREATE TRIGGER {audit}_insert AFTER INSERT OR DELETE ON {table}
                FOR EACH ROW EXECUTE FUNCTION {audit}_row()""",
            f"""CREATE TRIGGER {audit}_update AFTER UPDATE ON {table} FOR EACH ROW
                WHEN (OLD.status IS DISTINCT FROM NEW.status
                      OR OLD.attempts IS DISTINCT FROM NEW.attempts
                      OR OLD.max_attempts IS DISTINCT FROM NEW.max_attempts
                      OR OLD.errors IS DISTINCT FROM NEW.errors)
                EXECUTE FUNCTION {audit}_row()""",
        ]
    else:
        now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
        errors = (
            "CASE WHEN json_valid({r}.errors) AND json_type({r}.errors) = 'array' "
            "THEN json_array_length({r}.errors) ELSE -1 END"
        )
        statements = [
            f"""CREATE TABLE {audit} (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,
                op TEXT NOT NULL, job_id TEXT NOT NULL,
                old_status TEXT, new_status TEXT, old_attempts INT, new_attempts INT,
                old_max_attempts INT, new_max_attempts INT,
                old_locked_by TEXT, new_locked_by TEXT, old_errors INT, new_errors INT,
                old_lease_expires_at TEXT, old_run_at TEXT, new_run_at TEXT,
                new_started_at TEXT)""",
            f"""CREATE TRIGGER {audit}_insert AFTER INSERT ON {table} BEGIN
                INSERT INTO {audit} (at, {AUDIT_COLUMNS}) VALUES ({now},
                  'I', NEW.id, NULL, NEW.status, NULL, NEW.attempts,
                  NULL, NEW.max_attempts, NULL, NEW.locked_by,
                  NULL, {errors.format(r="NEW")}, NULL, NULL, NEW.run_at, NEW.started_at);
            END""",
            f"""CREATE TRIGGER {audit}_delete AFTER DELETE ON {table} BEGIN
                INSERT INTO {audit} (at, {AUDIT_COLUMNS}) VALUES ({now},
                  'D', OLD.id, OLD.status, NULL, OLD.attempts, NULL,
                  OLD.max_attempts, NULL, OLD.locked_by, NULL,
                  {errors.format(r="OLD")}, NULL, OLD.lease_expires_at, OLD.run_at, NULL, NULL);
            END""",
            f"""CREATE TRIGGER {audit}_update AFTER UPDATE ON {table}
                WHEN OLD.status IS NOT NEW.status OR OLD.attempts IS NOT NEW.attempts
                  OR OLD.max_attempts IS NOT NEW.max_attempts OR OLD.errors IS NOT NEW.errors
                BEGIN
                INSERT INTO {audit} (at, {AUDIT_COLUMNS}) VALUES ({now},
                  'U', NEW.id, OLD.status, NEW.status, OLD.attempts, NEW.attempts,
                  OLD.max_attempts, NEW.max_attempts, OLD.locked_by, NEW.locked_by,
                  {errors.format(r="OLD")}, {errors.format(r="NEW")},
                  OLD.lease_expires_at, OLD.run_at, NEW.run_at, NEW.started_at);
            END""",
        ]
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def as_time(value: Any) -> datetime | None:
    """A time read from either database as an aware UTC datetime (SQLite stores text)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Move:
    """One audit row: a job inserted (``op`` I), changed (U) or deleted (D)."""

    seq: int
    at: datetime
    op: str
    job: uuid.UUID
    old_status: str | None
    new_status: str | None
    old_attempts: int | None
    new_attempts: int | None
    old_max: int | None
    new_max: int | None
    old_locked_by: str | None
    new_locked_by: str | None
    old_errors: int | None
    new_errors: int | None
    old_lease: datetime | None
    old_run_at: datetime | None
    new_run_at: datetime | None
    new_started: datetime | None

    def __str__(self) -> str:
        return (
            f"#{self.seq} {self.op} {self.old_status}->{self.new_status} "
            f"attempts {self.old_attempts}->{self.new_attempts} "
            f"(max {self.old_max}->{self.new_max}) errors {self.old_errors}->{self.new_errors} "
            f"by {self.old_locked_by}->{self.new_locked_by} at {self.at:%H:%M:%S.%f}"
        )


def read_audit(engine: Engine, table: str) -> list[Move]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(f"SELECT seq, at, {AUDIT_COLUMNS} FROM {audit_table(table)} ORDER BY seq")
        ).all()
    moves = []
    for r in rows:
        at = as_time(r.at)
        assert at is not None
        moves.append(
            Move(
                seq=r.seq,
                at=at,
                op=r.op,
                job=r.job_id if isinstance(r.job_id, uuid.UUID) else uuid.UUID(str(r.job_id)),
                old_status=r.old_status,
                new_status=r.new_status,
                old_attempts=r.old_attempts,
                new_attempts=r.new_attempts,
                old_max=r.old_max_attempts,
                new_max=r.new_max_attempts,
                old_locked_by=r.old_locked_by,
                new_locked_by=r.new_locked_by,
                old_errors=r.old_errors,
                new_errors=r.new_errors,
                old_lease=as_time(r.old_lease_expires_at),
                old_run_at=as_time(r.old_run_at),
                new_run_at=as_time(r.new_run_at),
                new_started=as_time(r.new_started_at),
            )
        )
    return moves


# -- what the handlers logged ---------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One line of the handler log: ``start``/``end`` of a handler call, or ``stall`` /
    ``unstall`` around a stall step (``wall``: the system clock, as the database's)."""

    event: str
    worker: str
    job: uuid.UUID
    attempt: int
    claim: datetime | None
    wall: datetime
    step: str | None = None
    outcome: str | None = None
    #: Why the worker stopped the handler (`StopReason`'s value), on an ``end`` line.
    stopped: str | None = None

    @classmethod
    def parse(cls, raw: str) -> Line:
        d = json.loads(raw)
        return cls(
            event=d["event"],
            worker=d["worker"],
            job=uuid.UUID(d["job"]),
            attempt=int(d["attempt"]),
            claim=None if d["claim"] == "-" else as_time(d["claim"]),
            wall=datetime.fromtimestamp(d["wall"], UTC),
            step=d.get("step"),
            outcome=d.get("outcome"),
            stopped=d.get("stopped"),
        )


def read_lines(path: Path) -> list[Line]:
    if not path.exists():
        return []
    return [Line.parse(raw) for raw in path.read_text().splitlines() if raw.strip()]


@dataclass(frozen=True)
class Stall:
    worker: str
    began: datetime
    ended: datetime | None  # None: the worker died stalled


def stalls_of(lines: Sequence[Line]) -> list[Stall]:
    begun: dict[tuple[str, uuid.UUID, int], datetime] = {}
    out = []
    for line in lines:
        key = (line.worker, line.job, line.attempt)
        if line.event == "stall":
            begun[key] = line.wall
        elif line.event == "unstall":
            out.append(Stall(line.worker, begun.pop(key), line.wall))
    out += [Stall(worker, began, None) for (worker, _, _), began in begun.items()]
    return out


# -- the evidence and the checks ------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """A partition the drill played: which workers it cut off, how (`PARTITION_KINDS`),
    and when it began and ended (database clock)."""

    workers: frozenset[str]
    kind: str
    began: datetime
    ended: datetime


@dataclass
class Evidence:
    """What a drill run recorded: the audit trail, the final rows, the handler log, and the
    faults the drill caused (which explain lost leases and some failures)."""

    variant: Variant
    seed: int
    moves: list[Move]
    jobs: dict[uuid.UUID, Any]  # the final rows (jobqueue.Job)
    lines: list[Line]
    concurrency: dict[str, int]  # per worker id
    plans: dict[uuid.UUID, list[str]]
    killed: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)  # sent SIGTERM
    #: Outages of the workers' PostgreSQL connections: (began, ended), database clock.
    outages: list[tuple[datetime, datetime]] = field(default_factory=list)
    #: Long locks and read-only spells: (began, ended, which), database clock. No write of
    #: a worker's lands meanwhile, its heartbeats included.
    write_stops: list[tuple[datetime, datetime, str]] = field(default_factory=list)
    #: Partitions, each cutting some workers off.
    partitions: list[Partition] = field(default_factory=list)
    #: When each killed worker was SIGKILLed (system clock, as the handler log's).
    kill_times: dict[str, datetime] = field(default_factory=dict)
    cancels: collections.Counter[uuid.UUID] = field(default_factory=collections.Counter)
    retries: collections.Counter[uuid.UUID] = field(default_factory=collections.Counter)

    def moves_by_job(self) -> dict[uuid.UUID, list[Move]]:
        out: dict[uuid.UUID, list[Move]] = collections.defaultdict(list)
        for m in self.moves:
            out[m.job].append(m)
        return out


Findings = list[str]


def kind_of(m: Move) -> str:
    """What a recorded move is, by the statuses it joins (and, for a job that stays
    ``processing``, its attempts): the names the checks use."""
    if m.op == "I":
        return "enqueue"
    if m.op == "D":
        return "delete"
    old, new = m.old_status, m.new_status
    if old == new:
        if old == Status.PROCESSING and m.new_attempts == (m.old_attempts or 0) + 1:
            return "reclaim"  # an expired lease claimed again: processing -> pending -> processing
        return f"{old} -> {new}"
    if old == Status.PENDING and new == Status.PROCESSING:
        return "claim"
    if new == Status.COMPLETED:
        return "complete"
    if new == Status.CANCELLED:
        return "cancel"
    if old in (Status.FAILED, Status.CANCELLED) and new == Status.PENDING:
        return "retry"
    if old == Status.PROCESSING and new in (Status.PENDING, Status.FAILED):
        return "fail-or-reap-or-release"
    return f"{old} -> {new}"


def check_moves_allowed(ev: Evidence) -> Findings:
    """Every recorded move is one `jobqueue.models` allows: a job is inserted ``pending``
    with no attempt, moves only along `MOVES` (an expired lease claimed again counts as
    its two allowed moves, processing -> pending -> processing, with one more attempt),
    and is never deleted. A row's status changes or stays put, nothing else."""
    out = []
    for m in ev.moves:
        kind = kind_of(m)
        if kind == "enqueue":
            if m.new_status != Status.PENDING or m.new_attempts != 0:
                out.append(f"job {m.job}: inserted as {m.new_status}, {m.new_attempts} attempts")
        elif kind == "delete":
            out.append(f"job {m.job}: deleted during the drill ({m})")
        elif kind == "reclaim":
            if not (
                can_move(Status.PROCESSING, Status.PENDING)
                and can_move(Status.PENDING, Status.PROCESSING)
            ):
                out.append(f"job {m.job}: claimed again while processing ({m})")
        elif m.old_status == m.new_status:
            if m.old_attempts != m.new_attempts:
                out.append(f"job {m.job}: attempts changed while {m.new_status} ({m})")
        elif not can_move(Status(m.old_status), Status(m.new_status)):
            out.append(f"job {m.job}: forbidden move {m.old_status} -> {m.new_status} ({m})")
    return out


def check_attempts(ev: Evidence) -> Findings:
    """Attempts never exceed ``max_attempts``; a claim adds exactly one, a release gives
    exactly one back, no other move changes them; ``max_attempts`` only grows, and only
    where a retry needs one more attempt."""
    out = []
    for m in ev.moves:
        kind = kind_of(m)
        if m.new_attempts is not None and m.new_max is not None and m.new_attempts > m.new_max:
            out.append(f"job {m.job}: {m.new_attempts} attempts of at most {m.new_max} ({m})")
        if m.op != "U":
            continue
        assert m.old_attempts is not None and m.new_attempts is not None
        delta = m.new_attempts - m.old_attempts
        if kind in ("claim", "reclaim"):
            expected: tuple[int, ...] = (1,)
        elif kind == "fail-or-reap-or-release":
            expected = (0, -1)  # -1: a release, checked with its error entry
        else:
            expected = (0,)
        if delta not in expected:
            out.append(f"job {m.job}: {kind} changed attempts by {delta} ({m})")
        if m.new_max != m.old_max:
            assert m.new_max is not None and m.old_max is not None
            grows = kind in ("retry", "fail-or-reap-or-release") and m.new_status == Status.PENDING
            if not grows or m.new_max != m.new_attempts + 1 or m.old_max > m.new_attempts:
                out.append(f"job {m.job}: max_attempts changed by a {kind} ({m})")
    return out


def claim_before(moves: Sequence[Move], index: int) -> Move | None:
    """The claim (or reclaim) that started the attempt ``moves[index]`` ends."""
    for m in reversed(moves[:index]):
        if kind_of(m) in ("claim", "reclaim"):
            return m
    return None


def started_claims(ev: Evidence) -> set[tuple[uuid.UUID, int, datetime | None, str]]:
    return {(x.job, x.attempt, x.claim, x.worker) for x in ev.lines if x.event == "start"}


def lease_loss_explained(
    ev: Evidence, worker: str | None, claim: Move | None, lost_at: datetime
) -> str | None:
    """Why an attempt held by ``worker`` could lose its lease, or None: its worker was
    killed; it stalled past its lease while holding the attempt; or an outage lost the
    claim's answer (the claim committed, the worker never learnt of it, so never ran it),
    or hit a worker that was stopping (it gives its writes up); a partition cut its worker
    off while it held the attempt; a long lock or a read-only spell kept every heartbeat
    out while it held the attempt."""
    if worker in ev.killed:
        return "its worker was killed"
    if claim is None or worker is None:
        return None
    for s in stalls_of(ev.lines):
        if s.worker == worker and s.began <= lost_at and (s.ended is None or claim.at <= s.ended):
            return "its worker stalled while holding it"
    terminated = any(claim.at <= ended and began <= lost_at for began, ended in ev.outages)
    started = (claim.job, claim.new_attempts, claim.new_started, worker) in started_claims(ev)
    if terminated and (not started or worker in ev.stopped):
        return "an outage lost the claim's answer, or the stopping worker's writes"
    for p in ev.partitions:
        if worker in p.workers and claim.at <= p.ended and p.began <= lost_at:
            return f"a partition ({p.kind}) cut its worker off"
    for began, ended, what in ev.write_stops:
        if claim.at <= ended and began <= lost_at:
            return f"{what} kept its heartbeats out"
    return None


def stall_disturbed(ev: Evidence, worker: str | None, claim: Move | None, at: datetime) -> bool:
    """Whether ``worker`` stalled while it held the attempt ``claim`` started (so its
    handler's timeout may have run out while the loop stood still)."""
    return claim is not None and any(
        s.worker == worker and s.began <= at and (s.ended is None or claim.at <= s.ended)
        for s in stalls_of(ev.lines)
    )


def check_error_history(ev: Evidence) -> Findings:
    """The ``errors`` history matches the failed attempts: exactly the moves that end an
    attempt without success (a failure, a reaped or re-claimed expired lease, a release)
    add one entry, naming the attempt they end and a cause that happened — the plan's
    failure for that attempt, the timeout, an expired lease the drill's faults explain,
    the release of a stopping worker — and no other move adds one; the final row holds
    exactly the entries recorded."""
    out = []
    by_job = ev.moves_by_job()
    for job_id, moves in by_job.items():
        job = ev.jobs.get(job_id)
        if job is None:
            continue
        entries = job.errors
        plan = ev.plans.get(job_id, [])
        for i, m in enumerate(moves):
            if m.op != "U":
                continue
            kind = kind_of(m)
            assert m.old_errors is not None and m.new_errors is not None
            added = m.new_errors - m.old_errors
            ends_attempt = kind in ("reclaim", "fail-or-reap-or-release")
            if added != (1 if ends_attempt else 0):
                out.append(f"job {job_id}: a {kind} added {added} error entries ({m})")
                continue
            if not ends_attempt:
                continue
            if m.old_errors >= len(entries):
                out.append(f"job {job_id}: entry {m.old_errors} of {len(entries)} missing ({m})")
                continue
            entry = entries[m.old_errors]
            if entry.get("attempt") != m.old_attempts:
                out.append(
                    f"job {job_id}: error entry {entry!r} names attempt {entry.get('attempt')}, "
                    f"the move ended attempt {m.old_attempts} ({m})"
                )
            problem = explain_entry(ev, m, claim_before(moves, i), str(entry.get("error")), plan)
            if problem:
                out.append(f"job {job_id}: {problem}: {entry.get('error')!r} ({m})")
        last = moves[-1]
        if last.new_errors != len(entries):
            out.append(
                f"job {job_id}: {len(entries)} error entries, the audit recorded {last.new_errors}"
            )
    return out


def explain_entry(
    ev: Evidence, m: Move, claim: Move | None, error: str, plan: list[str]
) -> str | None:
    """None when the entry ``error`` written by move ``m`` has a cause, else what is wrong."""
    kind = kind_of(m)
    assert m.old_attempts is not None and m.new_attempts is not None and m.old_max is not None
    spent = m.old_attempts >= m.old_max
    if error.startswith(LOST_LEASE):
        if error != LOST_LEASE + (m.old_locked_by or "unknown worker"):
            return "a lost lease naming another holder"
        if kind == "fail-or-reap-or-release":
            if m.new_attempts != m.old_attempts:
                return "a reap changed the attempts"
            if (m.new_status == Status.FAILED) != spent:
                return f"a reap moved the job to {m.new_status} with {m.old_attempts} attempts"
        if m.old_lease is None or m.old_lease > m.at:
            return f"the lease was taken before it expired (it ran until {m.old_lease})"
        if lease_loss_explained(ev, m.old_locked_by, claim, m.at) is None:
            return "a lease lost with its worker alive, not stalled, its connections intact"
        return None
    if error in (RELEASE_REASON, HAND_BACK_REASON):
        # A stopping worker releases the jobs it runs, and hands back unrun those that a
        # completion batch in flight claimed as it began to stop (or, never seen in a
        # drill, a claim that brought more jobs than it had free places).
        if kind != "fail-or-reap-or-release" or m.new_status != Status.PENDING:
            return "a release that did not return the job to pending"
        if m.new_attempts != m.old_attempts - 1:
            return "a release that did not give its attempt back"
        if m.old_locked_by not in ev.stopped:
            return "a release by a worker that was never stopped"
        return None
    if kind != "fail-or-reap-or-release":
        return "an expired lease claimed again with a handler's error"
    if m.new_attempts != m.old_attempts:
        return "a failure changed the attempts"
    attempt = m.old_attempts
    step = drill_worker.step_of(plan, attempt) if plan else None
    if claim is None or (
        m.job,
        attempt,
        claim.new_started,
        m.old_locked_by,
    ) not in started_claims(ev):
        return "a failure of an attempt whose handler never started"
    if error == drill_worker.timeout_error(ev.variant.job_timeout):
        # A handler's time includes its waits on the database (a paid step's lease
        # confirmation and save are retried until they land): a fault that held its
        # writes up may run the timeout out as a stall does.
        held_up = m.old_locked_by is not None and any(
            "SIGTERM" not in f for f in faults_during(ev, m.old_locked_by, claim.at, m.at)
        )
        if (
            step != "timeout"
            and not held_up
            and not stall_disturbed(ev, m.old_locked_by, claim, m.at)
        ):
            return f"a timeout of a {step} step that neither stalled nor waited on a fault"
        expect_failed = spent
    elif step in ("raise", "permanent") and error == drill_worker.planned_error(step, attempt):
        expect_failed = spent or step == "permanent"
    else:
        return f"attempt {attempt} (plan: {step}) failed for a reason the handler never raised"
    if (m.new_status == Status.FAILED) != expect_failed:
        return f"the failure moved the job to {m.new_status} with {attempt} of {m.old_max} attempts"
    return None


def check_completions(ev: Evidence) -> Findings:
    """At most one completion per job, written by the final claim: the job is still at
    that claim's attempt, its result is the one that claim's handler returned, and that
    handler's call ended normally."""
    out = []
    ended_ok = {
        (x.job, x.attempt, x.claim, x.worker)
        for x in ev.lines
        if x.event == "end" and x.outcome == "ok"
    }
    for job_id, moves in ev.moves_by_job().items():
        completions = [i for i, m in enumerate(moves) if kind_of(m) == "complete"]
        if len(completions) > 1:
            out.append(f"job {job_id} completed {len(completions)} times")
        job = ev.jobs.get(job_id)
        if job is None or job.status != Status.COMPLETED:
            continue
        if not completions:
            out.append(f"job {job_id} is completed but no completion was recorded")
            continue
        claim = claim_before(moves, completions[0])
        started = job.started_at
        expected = {
            "attempt": job.attempts,
            "worker": job.locked_by,
            "claim": started.isoformat() if started else "-",
        }
        if job.result != expected:
            out.append(f"job {job_id}: result {job.result!r}, its final claim is {expected!r}")
        if claim is None or claim.new_started != started or claim.new_locked_by != job.locked_by:
            out.append(f"job {job_id}: completed by a claim the audit did not record last")
        if (job_id, job.attempts, started, job.locked_by) not in ended_ok:
            out.append(f"job {job_id}: completed, but its final claim's handler never ended well")
    return out


def check_claims_ran_once(ev: Evidence) -> Findings:
    """Each handler call belongs to a recorded claim (job, attempt, claim time and
    worker), and no claim ran twice."""
    out = []
    claims = {
        (m.job, m.new_attempts, m.new_started, m.new_locked_by)
        for m in ev.moves
        if kind_of(m) in ("claim", "reclaim")
    }
    starts = collections.Counter(
        (x.job, x.attempt, x.claim, x.worker) for x in ev.lines if x.event == "start"
    )
    for key, n in starts.items():
        if key not in claims:
            out.append(f"job {key[0]}: attempt {key[1]} ran in {key[3]} without a recorded claim")
        if n > 1:
            out.append(f"job {key[0]}: the claim of attempt {key[1]} by {key[3]} ran {n} times")
    return out


def check_nothing_left(ev: Evidence) -> Findings:
    """Nothing is left ``pending`` or ``processing``, every job the drill enqueued is in
    the audit, and each final row agrees with its last recorded move."""
    out = []
    by_job = ev.moves_by_job()
    for job_id, job in ev.jobs.items():
        if not job.status.is_final:
            out.append(f"job {job_id} left {job.status}")
        moves = by_job.get(job_id)
        if not moves:
            out.append(f"job {job_id} has no recorded move")
            continue
        last = moves[-1]
        if (last.new_status, last.new_attempts, last.new_max) != (
            job.status,
            job.attempts,
            job.max_attempts,
        ):
            out.append(f"job {job_id}: final row {job.status}/{job.attempts}, audit says {last}")
    missing = set(ev.plans) - set(ev.jobs)
    if missing:
        out.append(f"{len(missing)} enqueued jobs are gone, e.g. {sorted(missing)[:3]}")
    return out


def check_cancels_and_retries(ev: Evidence) -> Findings:
    """Only the client cancels and retries: each recorded cancel and operator retry is
    one the drill's client made and saw succeed."""
    out = []
    for job_id, moves in ev.moves_by_job().items():
        cancels = sum(kind_of(m) == "cancel" for m in moves)
        retries = sum(kind_of(m) == "retry" for m in moves)
        made = ev.cancels[job_id]
        if cancels != made:
            out.append(f"job {job_id}: {cancels} cancels recorded, the client made {made}")
        made = ev.retries[job_id]
        if retries != made:
            out.append(f"job {job_id}: {retries} retries recorded, the client made {made}")
    return out


def check_concurrency(ev: Evidence) -> Findings:
    """No worker process ever ran more handlers at once than its concurrency (its own
    lines of the handler log, in the order it wrote them; a killed worker's calls that
    never ended count until it died)."""
    out = []
    running: collections.Counter[str] = collections.Counter()
    peak: collections.Counter[str] = collections.Counter()
    for x in ev.lines:
        if x.event == "start":
            running[x.worker] += 1
            peak[x.worker] = max(peak[x.worker], running[x.worker])
        elif x.event == "end":
            running[x.worker] -= 1
    for worker, most in peak.items():
        limit = ev.concurrency.get(worker)
        if limit is None or most > limit:
            out.append(f"worker {worker} ran {most} handlers at once (concurrency {limit})")
    return out


def check_handlers_stopped_for_cause(ev: Evidence) -> Findings:
    """A worker stops a handler only for a cause: the attempt was cancelled or taken from
    it (a move recorded before the handler ended), the handler's timeout ran out, the
    worker was stopping, or its worker could not reach the database (its lease watch gives
    up the attempts whose lease must have run out: during a partition of the worker, or as
    late after it as a lease and a command timeout; or stopped as `StopReason.CUT_OFF`
    after any fault that cut its worker off: a partition, an outage, a read-only spell
    ending its sessions, a stall, in the two leases and a command timeout before). A
    handler stopped while its attempt was still the job's current one, held by its worker,
    leaves the job to wait out its lease for nothing."""
    out = []
    by_job = ev.moves_by_job()
    starts = {(x.job, x.attempt, x.claim, x.worker): x for x in ev.lines if x.event == "start"}
    timeout = ev.variant.job_timeout
    after = timedelta(seconds=ev.variant.lease + (ev.variant.command_timeout or 0))
    # A lease watch stop comes a lease after the last answer, which came before the fault.
    lookback = after + timedelta(seconds=ev.variant.lease)
    for x in ev.lines:
        if x.event != "end" or x.outcome != "CancelledError" or x.worker in ev.stopped:
            continue
        start = starts.get((x.job, x.attempt, x.claim, x.worker))
        if start is not None and (x.wall - start.wall).total_seconds() >= timeout * 0.99:
            continue  # its timeout
        if any(
            x.worker in p.workers and p.began <= x.wall <= p.ended + after for p in ev.partitions
        ):
            continue  # cut off: its lease watch gave the attempt up
        moves = by_job.get(x.job, [])
        claimed = [
            i
            for i, m in enumerate(moves)
            if kind_of(m) in ("claim", "reclaim")
            and (m.new_attempts, m.new_started, m.new_locked_by) == (x.attempt, x.claim, x.worker)
        ]
        if not claimed:
            continue  # claims_ran_once reports it
        later = moves[claimed[0] + 1 :]
        if x.stopped == StopReason.CUT_OFF.value and cut_off_by(
            ev, x.worker, x.wall - lookback, x.wall
        ):
            continue  # its lease watch, after a fault kept the database out of its reach
        if not later or later[0].at > x.wall:
            ended = f"; the attempt then ended by: {later[0]}" if later else ""
            out.append(
                f"job {x.job}: worker {x.worker} stopped its handler of attempt {x.attempt} "
                f"at {x.wall:%H:%M:%S.%f} while the attempt was still its own{ended}"
            )
    return out


def check_place_kept(ev: Evidence) -> Findings:
    """A job whose expired lease the reaper returns to ``pending`` keeps its place in
    line: its ``run_at`` does not move later (a retry's backoff, a failure, is not a reap)."""
    out = []
    for m in ev.moves:
        if (
            kind_of(m) == "fail-or-reap-or-release"
            and m.new_status == Status.PENDING
            and m.new_attempts == m.old_attempts
            and m.old_run_at is not None
            and m.new_run_at is not None
            and m.new_run_at > m.old_run_at
            and m.old_lease is not None
            and m.old_lease <= m.at
            and not is_failure_retry(ev, m)
        ):
            out.append(
                f"job {m.job}: reaped to the back of the line "
                f"(run_at {m.old_run_at} -> {m.new_run_at})"
            )
    return out


def is_failure_retry(ev: Evidence, m: Move) -> bool:
    """Whether ``m`` is a handler failure being retried (its entry is not a lost lease)."""
    job = ev.jobs.get(m.job)
    if job is None or m.old_errors is None or m.old_errors >= len(job.errors):
        return False
    return not str(job.errors[m.old_errors].get("error", "")).startswith(LOST_LEASE)


def check_every_job_completed(ev: Evidence) -> Findings:
    """Every job ended ``completed`` and the audit trigger counted exactly one completion
    for it (for variants whose plans only succeed)."""
    completions = collections.Counter(m.job for m in ev.moves if kind_of(m) == "complete")
    out = [
        f"job {job_id} ended {job.status} after {completions[job_id]} completions"
        for job_id, job in ev.jobs.items()
        if job.status != Status.COMPLETED or completions[job_id] != 1
    ]
    missing = set(ev.plans) - set(ev.jobs)
    out += [f"job {job_id} was enqueued and is gone" for job_id in sorted(missing)[:20]]
    return out


def submissions(ev: Evidence) -> dict[uuid.UUID, list[Line]]:
    """The ``submit`` lines of each paid job, in the order they were written."""
    by_job: dict[uuid.UUID, list[Line]] = collections.defaultdict(list)
    for x in ev.lines:
        if x.event == "submit":
            by_job[x.job].append(x)
    return by_job


def key_of(x: Line) -> tuple[uuid.UUID, int, datetime | None, str]:
    """The handler call a line belongs to: job, attempt, claim time and worker."""
    return (x.job, x.attempt, x.claim, x.worker)


def double_submissions(ev: Evidence) -> tuple[Findings, Findings]:
    """Each submission of a paid job that a later one repeated, as (explained,
    unexplained). With no idempotency key at the provider, one window cannot be closed: a
    worker SIGKILLed, or cut off from the database for most of a lease, between the
    provider's answer and the save of its task id. So a submission is explained only when
    its handler call wrote no ``saved`` line and either never ended and its worker was
    killed after it submitted, or ended while a partition of its worker that began right
    after the submit lasted most of a lease (`cut_off_after`), or while the database
    refused writes from the submit until the lease had all but run out (`refused_after`);
    any other repeat (after a
    save, or by a handler that went on or was stopped while its process could reach the
    database, a graceful stop included) is not."""
    saved = {key_of(x) for x in ev.lines if x.event == "saved"}
    ended = {key_of(x): x.outcome for x in ev.lines if x.event == "end"}
    explained: Findings = []
    unexplained: Findings = []
    lease = timedelta(seconds=ev.variant.lease)
    for job_id, submits in submissions(ev).items():
        for x in submits[:-1]:
            killed_at = ev.kill_times.get(x.worker)
            what = (
                f"job {job_id}: attempt {x.attempt} by {x.worker} submitted at {x.wall:%H:%M:%S.%f}"
            )
            if key_of(x) in saved:
                unexplained.append(f"{what}, saved its task id, and the job was submitted again")
            elif key_of(x) not in ended and killed_at is not None and killed_at >= x.wall:
                explained.append(f"{what}; its worker was killed before the save landed")
            elif key_of(x) in ended and (cut := cut_off_after(ev, x.worker, x.wall)):
                explained.append(
                    f"{what}; its worker was cut off from the database right after "
                    f"({cut}) until its lease watch stopped the handler before the save"
                )
            elif key_of(x) in ended and (refused := refused_after(ev, x.wall)):
                explained.append(
                    f"{what}; the database refused writes from the submit until its lease "
                    f"had all but run out ({refused}), so the save could not land in time"
                )
            else:
                how = (
                    f"its handler ended ({ended[key_of(x)]})"
                    if key_of(x) in ended
                    else "its worker lived on"
                )
                faults = faults_during(ev, x.worker, x.wall, x.wall + lease)
                unexplained.append(
                    f"{what}, {how} without saving the task id; faults meanwhile: "
                    f"{', '.join(faults) or 'none'}"
                )
    return explained, unexplained


def cut_off_after(ev: Evidence, worker: str, submitted: datetime) -> str | None:
    """A partition of ``worker`` that began by a second after a submission and lasted most
    of a lease past it: the save of the task id could not reach the database before the
    lease watch had to stop the handler (the window only an idempotency key closes)."""
    soon = timedelta(seconds=1)
    most = timedelta(seconds=ev.variant.lease * 0.8)
    for p in ev.partitions:
        if worker in p.workers and p.began <= submitted + soon and p.ended >= submitted + most:
            return f"a partition ({p.kind}) of {p.began:%H:%M:%S.%f}-{p.ended:%H:%M:%S.%f}"
    return None


def refused_after(ev: Evidence, submitted: datetime) -> str | None:
    """Read-only spells and long locks that, one after the other, refused every write from
    a submission until nine tenths of a lease past it, with no gap between them that the
    save's retries (a try at least every `TASK_ID_RETRY_CAP` seconds) and a round trip
    could use: the task id could not be saved before another worker could take the job
    over (the window only an idempotency key, or a takeover that lets the holder write
    first, closes)."""
    until = submitted + timedelta(seconds=ev.variant.lease * 0.9)
    gap = timedelta(seconds=TASK_ID_RETRY_CAP + 0.25)
    covered, used = submitted, []
    for b, e, what in sorted(ev.write_stops):
        if e < covered or b > until:
            continue
        if b > covered + gap:
            break
        covered = max(covered, e)
        used.append(f"{what} of {b:%H:%M:%S.%f}-{e:%H:%M:%S.%f}")
    return ", ".join(used) if covered >= until else None


def cut_off_by(ev: Evidence, worker: str, began: datetime, ended: datetime) -> str | None:
    """A fault between ``began`` and ``ended`` that could keep ``worker`` from reaching
    the database (a partition of it, an outage, a read-only spell, which ends sessions;
    its own stall), or None. A long lock cannot: waiting on it is an answer, not silence."""
    for s in stalls_of(ev.lines):
        if s.worker == worker and s.began <= ended and (s.ended is None or began <= s.ended):
            return "its stall"
    faults = faults_during(ev, worker, began, ended)
    return next((f for f in faults if "SIGTERM" not in f and "long lock" not in f), None)


def faults_during(ev: Evidence, worker: str, began: datetime, ended: datetime) -> list[str]:
    """The faults that touched ``worker`` between ``began`` and ``ended`` (for findings)."""
    out = [
        f"a partition ({p.kind}) of {p.began:%H:%M:%S.%f}-{p.ended:%H:%M:%S.%f}"
        for p in ev.partitions
        if worker in p.workers and p.began <= ended and began <= p.ended
    ]
    out += [
        f"{what} of {b:%H:%M:%S.%f}-{e:%H:%M:%S.%f}"
        for b, e, what in ev.write_stops
        if b <= ended and began <= e
    ]
    out += [
        f"an outage of {b:%H:%M:%S.%f}-{e:%H:%M:%S.%f}"
        for b, e in ev.outages
        if b <= ended and began <= e
    ]
    if worker in ev.stopped:
        out.append("its worker was stopped (SIGTERM)")
    return out


def check_one_submission(ev: Evidence) -> Findings:
    """A paid job's task is submitted to the provider once: a handler submits only when
    the job has no task id saved (and its lease was just confirmed), so a second
    submission is allowed only where the first one's worker was SIGKILLed between the
    submit and the save (`double_submissions`)."""
    return double_submissions(ev)[1]


def lost_leases(ev: Evidence) -> collections.Counter[str]:
    """The recorded lost leases (error entries of expired leases), by the explanation
    `lease_loss_explained` gives each (``unexplained`` where it gives none)."""
    causes: collections.Counter[str] = collections.Counter()
    for job_id, moves in ev.moves_by_job().items():
        job = ev.jobs.get(job_id)
        if job is None:
            continue
        for i, m in enumerate(moves):
            if m.op != "U" or m.old_errors is None or m.new_errors != m.old_errors + 1:
                continue
            if m.old_errors >= len(job.errors):
                continue
            if not str(job.errors[m.old_errors].get("error", "")).startswith(LOST_LEASE):
                continue
            why = lease_loss_explained(ev, m.old_locked_by, claim_before(moves, i), m.at)
            causes[why or "unexplained"] += 1
    return causes


#: The checks, by name. ``place_kept`` holds once a reaped job keeps its place in line; the
#: variants that run it list it in `Variant.extra_checks`.
CHECKS: dict[str, Callable[[Evidence], Findings]] = {
    "moves_allowed": check_moves_allowed,
    "attempts": check_attempts,
    "one_completion": check_completions,
    "error_history": check_error_history,
    "nothing_left": check_nothing_left,
    "claims_ran_once": check_claims_ran_once,
    "cancels_and_retries": check_cancels_and_retries,
    "concurrency": check_concurrency,
    "handlers_stopped_for_cause": check_handlers_stopped_for_cause,
    "place_kept": check_place_kept,
    "every_job_completed": check_every_job_completed,
    "one_submission": check_one_submission,
}
#: Checks only some variants run (`Variant.extra_checks`).
OPTIONAL = ("place_kept", "every_job_completed", "one_submission")
ALWAYS = tuple(name for name in CHECKS if name not in OPTIONAL)


def check(ev: Evidence, names: Sequence[str] | None = None) -> dict[str, Findings]:
    """Run the checks (``names``, default: those every variant runs plus the variant's
    extra ones); the findings of those that failed."""
    names = names or (*ALWAYS, *ev.variant.extra_checks)
    found = {name: CHECKS[name](ev) for name in names}
    return {name: f for name, f in found.items() if f}


def failure_message(ev: Evidence, failed: dict[str, Findings], summary: str) -> str:
    lines = [
        f"the {ev.variant.name} drill broke {len(failed)} invariant(s) "
        f"(seed {ev.seed}; replay with {SEED_ENV}={ev.seed})",
        summary,
    ]
    for name, findings in failed.items():
        lines.append(f"- {name}: {len(findings)} finding(s)")
        lines += [f"    {f}" for f in findings[:8]]
    return "\n".join(lines)


# -- running a drill ------------------------------------------------------------------------


@dataclass
class Run:
    """What `run_drill` did, for the report (and the failure message)."""

    evidence: Evidence
    counts: collections.Counter[str]
    seconds: float

    def summary(self) -> str:
        ev = self.evidence
        statuses = collections.Counter(str(j.status) for j in ev.jobs.values())
        done = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        kinds = collections.Counter(kind_of(m) for m in ev.moves)
        moves = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        causes = collections.Counter(
            cause_of(str(e.get("error"))) for j in ev.jobs.values() for e in j.errors
        )
        paid = submissions(ev)
        explained, unexplained = double_submissions(ev)
        return (
            f"{ev.variant.name} drill, seed {ev.seed}, {self.seconds:.1f}s: {len(ev.jobs)} jobs "
            f"({dict(sorted(statuses.items()))}), "
            f"{sum(x.event == 'start' for x in ev.lines)} handler calls; "
            f"did: {done}; recorded moves: {moves}; error entries: {dict(causes)}; "
            f"lost leases: {dict(lost_leases(ev).most_common())}; "
            f"paid jobs submitted: {len(paid)}, submissions: "
            f"{sum(len(s) for s in paid.values())}, repeated: {len(explained)} explained "
            f"(worker killed between submit and save), {len(unexplained)} unexplained"
        )


def cause_of(error: str) -> str:
    """An error entry's cause in a word, for the summary."""
    if error.startswith(LOST_LEASE):
        return "lost lease"
    if error == RELEASE_REASON:
        return "release"
    if error == HAND_BACK_REASON:
        return "handed back"
    return error.split(":")[0]


def worker_url(url: str) -> str:
    """``url`` with the workers' ``application_name`` on PostgreSQL."""
    u = make_url(url)
    if u.get_backend_name() != "postgresql":
        return url
    return u.update_query_dict({"application_name": WORKER_APP}).render_as_string(
        hide_password=False
    )


def terminate_worker_backends(engine: Engine) -> datetime:
    """Terminate every connection of the workers (pools and listeners) in this database;
    the database's time once they are gone."""
    with engine.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND (application_name = :app OR application_name LIKE :listeners)"
            ),
            {"app": WORKER_APP, "listeners": LISTENER_APP},
        )
        at = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
    result = as_time(at)
    assert result is not None
    return result


def outage(engine: Engine, seconds: float) -> tuple[datetime, datetime]:
    """A database outage for the workers only: their connections are terminated, and so is
    every connection they open again, for ``seconds``; when it began and ended (database
    clock)."""
    began = terminate_worker_backends(engine)
    deadline = time.monotonic() + seconds
    ended = began
    while time.monotonic() < deadline:
        time.sleep(0.02)
        ended = terminate_worker_backends(engine)
    return began, ended


def database_now(engine: Engine) -> datetime:
    """The database's clock (on SQLite, the system's: what its statements use)."""
    if engine.dialect.name != "postgresql":
        return datetime.now(UTC)
    with engine.connect() as conn:
        result = as_time(conn.execute(text("SELECT clock_timestamp()")).scalar_one())
    assert result is not None
    return result


def long_lock(engine: Engine, url: str, table: str, seconds: float) -> tuple[datetime, datetime]:
    """Another session holds the jobs table for ``seconds`` (PostgreSQL: ``ACCESS
    EXCLUSIVE``, as a migration's ALTER TABLE; SQLite: the write lock); when it began and
    ended."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        assert u.database
        conn = sqlite3.connect(u.database, isolation_level=None)
        try:
            conn.execute("BEGIN EXCLUSIVE")
            began = datetime.now(UTC)
            time.sleep(seconds)
            conn.execute("ROLLBACK")
        finally:
            conn.close()
        return began, datetime.now(UTC)
    dsn = u.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, application_name="jq-drill-lock") as holder:
        holder.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        began = database_now(engine)
        time.sleep(seconds)
        holder.rollback()
    return began, database_now(engine)


def read_only_spell(engine: Engine, seconds: float) -> tuple[datetime, datetime]:
    """The database refuses the workers' writes for ``seconds`` (PostgreSQL): new sessions
    begin read-only and the workers' open ones are ended. The drill's own sessions are
    exempt (`drill_engine`). When it began and ended."""
    with engine.begin() as conn:
        name = conn.execute(text("SELECT current_database()")).scalar_one()
        conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
    try:
        began = terminate_worker_backends(engine)
        time.sleep(seconds)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" RESET default_transaction_read_only'))
    return began, database_now(engine)


def drill_engine(url: str) -> Engine:
    """The drill's own engine: on PostgreSQL it writes through read-only spells (its
    sessions say so when they start) and waits out long locks, as an operator would."""
    if make_url(url).get_backend_name() != "postgresql":
        return make_engine(url)
    return make_engine(
        url,
        lock_timeout=600,
        connect_args={"options": "-c default_transaction_read_only=off"},
    )


@contextmanager
def drill_workers(url: str, table: str, directory: Path) -> Iterator[Workers]:
    workers = Workers(worker_url(url), table, directory, target=drill_worker.main)
    try:
        yield workers
    finally:
        workers.cleanup()


@contextmanager
def proxies_stopped_at_the_end() -> Iterator[dict[str, NetProxy]]:
    """The workers' proxies by worker id, each stopped at the end of the block."""
    proxies: dict[str, NetProxy] = {}
    try:
        yield proxies
    finally:
        for proxy in proxies.values():
            proxy.stop()


def proxied_url(proxy: NetProxy, url: str) -> str:
    """A worker's URL through ``proxy``, with a connect timeout a partition runs out."""
    u = make_url(worker_url(proxy.url_for(url)))
    u = u.update_query_dict({"connect_timeout": str(PROXIED_CONNECT_TIMEOUT)})
    return u.render_as_string(hide_password=False)


def partition(engine: Engine, proxies: dict[str, NetProxy], kind: str, seconds: float) -> Partition:
    """Cut off the workers of ``proxies`` for ``seconds`` (`PARTITION_KINDS`): a
    blackhole keeps every socket open and drops the bytes; a reset closes every connection
    with an RST and refuses new ones meanwhile."""
    began = database_now(engine)
    for proxy in proxies.values():
        if kind == "reset":
            proxy.reset(refuse=True)
        else:
            proxy.blackhole(cast(Direction, kind))
    try:
        time.sleep(seconds)
    finally:
        for proxy in proxies.values():
            proxy.passing()
    return Partition(frozenset(proxies), kind, began, database_now(engine))


def stuck(workers: Workers, worker_id: str, seed: int) -> str:
    """Why a stopped worker process has not exited: its log's end and its threads' stacks."""
    proc = workers.procs[worker_id]
    stacks = Path(f"{workers.log_file(worker_id)}.stacks")
    if proc.is_alive():
        workers.signal(worker_id, signal.SIGUSR1)
        wait_for(lambda: stacks.exists() and stacks.stat().st_size, 10, "a stack dump")
    log = workers.log_file(worker_id).read_text(errors="replace")
    return (
        f"worker {worker_id} was stopped and has not exited (exit code {proc.exitcode}; "
        f"seed {seed})\n--- its log ends ---\n{log[-4000:]}\n--- its threads ---\n"
        f"{stacks.read_text(errors='replace') if stacks.exists() else '(none)'}"
    )


def schedule(rng: random.Random, variant: Variant, postgres: bool) -> list[tuple[float, str]]:
    """The faults and client actions of a run, each at a moment of ``duration``, in order.
    Jobs arrive in waves over the first two thirds, so there is work when faults come."""
    events: list[tuple[float, str]] = []
    d = variant.duration
    waves = max(4, variant.jobs // 40)
    events += [(rng.uniform(0, d * 2 / 3), "enqueue") for _ in range(waves - 1)]
    events.append((0.0, "enqueue"))
    events += [(rng.uniform(0.1, d), "kill") for _ in range(variant.kills)]
    events += [(rng.uniform(0.1, d), "restart") for _ in range(variant.graceful_restarts)]
    cancels = ("cancel-pending", "cancel-running")
    events += [(rng.uniform(0, d), rng.choice(cancels)) for _ in range(variant.cancels)]
    events += [(rng.uniform(d / 3, d), "retry") for _ in range(variant.retries)]
    events += [(rng.uniform(0.1, d), "lock") for _ in range(variant.locks)]
    if postgres:
        events += [(rng.uniform(0.1, d), "outage") for _ in range(variant.outages)]
        events += [(rng.uniform(0.1, d), "read-only") for _ in range(variant.read_only_spells)]
        events += [(rng.uniform(0.1, d), "partition") for _ in range(variant.partitions)]
    return sorted(events)


def run_drill(url: str, table: str, directory: Path, variant: Variant, seed: int) -> Run:
    """Run one drill on the migrated ``table`` at ``url``; the evidence, checked by the
    caller with `check`."""
    began = time.monotonic()
    if variant.command_timeout is not None and variant.lock_timeout is not None:
        assert variant.command_timeout > variant.lock_timeout, (
            "a command timeout no longer than the lock timeout makes every lock wait look "
            "like a silent network"
        )
    rng = random.Random(seed)
    engine = drill_engine(url)
    install_audit(engine, table)
    postgres = engine.dialect.name == "postgresql"
    queue = JobQueue(engine, table=table)
    counts: collections.Counter[str] = collections.Counter()
    plans: dict[uuid.UUID, list[str]] = {}
    concurrency: dict[str, int] = {}
    ev = Evidence(variant, seed, [], {}, [], concurrency, plans)
    protected: set[uuid.UUID] = set()
    events = schedule(rng, variant, postgres)
    waves = sum(1 for _, e in events if e == "enqueue")
    per_wave = [variant.jobs // waves + (i < variant.jobs % waves) for i in range(waves)]
    stall = variant.stall

    # Partitions need a proxy in front of each worker: one of its own, so that a partition
    # can cut one worker off while the others go on and take its jobs over (and see its
    # late writes refused once it is back), or cut every worker off at once.
    routed = postgres and variant.partitions > 0
    with drill_workers(url, table, directory) as workers, proxies_stopped_at_the_end() as proxies:
        retiring: list[str] = []

        queue_of: dict[str, str] = {}

        def start(queue_name: str = "default") -> str:
            n = rng.randint(*variant.concurrency)
            reap_interval = rng.choice(variant.reap_intervals)
            if queue_name == STALL_QUEUE:
                # Slots to spare when it wakes up: its claim takes pending jobs first.
                n = variant.concurrency[1] + 2
                reap_interval = max(variant.reap_intervals, key=lambda i: i or variant.lease)
            proxy = NetProxy.for_url(url).start() if routed else None
            if proxy is not None:
                workers.url = proxied_url(proxy, url)
            worker_id = workers.start(
                queues=queue_name,
                reap_interval=reap_interval,
                seed=seed,
                concurrency=n,
                lease=variant.lease,
                job_timeout=variant.job_timeout,
                slow=variant.slow,
                stall=stall,
                grace=0.5,
                poll_interval=0.3,
                lock_timeout=variant.lock_timeout,
                command_timeout=variant.command_timeout,
            )
            if proxy is not None:
                proxies[worker_id] = proxy
            concurrency[worker_id] = n
            queue_of[worker_id] = queue_name
            return worker_id

        alive = [start() for _ in range(variant.processes)]
        if variant.stall_share:
            alive.append(start(STALL_QUEUE))

        def holders() -> list[str]:
            t = queue.table
            with queue.engine.connect() as conn:
                rows = conn.execute(
                    text(f"SELECT DISTINCT locked_by FROM {t.name} WHERE status = 'processing'")
                )
                return sorted({r for (r,) in rows if r in alive})

        def serves(worker_id: str) -> bool:
            path = workers.log_file(worker_id)
            return path.exists() and "started: queues=" in path.read_text(errors="replace")

        def ids_in(*statuses: str) -> list[uuid.UUID]:
            with queue.engine.connect() as conn:
                rows = conn.execute(
                    text(f"SELECT id FROM {table} WHERE status IN :s").bindparams(
                        bindparam("s", expanding=True)
                    ),
                    {"s": list(statuses)},
                )
                return sorted(i if isinstance(i, uuid.UUID) else uuid.UUID(str(i)) for (i,) in rows)

        t0 = time.monotonic()
        for at, event in events:
            pause = at - (time.monotonic() - t0)
            if pause > 0:
                time.sleep(pause)
            if event == "enqueue":
                n = per_wave.pop()
                new = []
                for _ in range(n):
                    stalls = rng.random() < variant.stall_share
                    plan, max_attempts = plan_for(
                        rng, variant.stall_steps if stalls else variant.steps, variant.attempts
                    )
                    new.append(
                        NewJob(
                            kind=drill_worker.KIND,
                            queue=STALL_QUEUE if stalls else "default",
                            payload={"plan": plan},
                            max_attempts=max_attempts,
                            priority=rng.choice((0, 0, 0, 1, 5)),
                            # Some wait a little, so that there are pending jobs to cancel.
                            delay=rng.choice((None,) * 5 + (rng.uniform(0.5, 3.0),)),
                        )
                    )
                if not plans and "every_job_completed" not in variant.extra_checks:
                    # One job that ends failed whatever happens to it (the drill never
                    # cancels or retries it): a run always has every final status to check.
                    new[0] = replace(new[0], payload={"plan": ["permanent"]}, max_attempts=1)
                added = queue.enqueue_many(new)
                if not plans:
                    protected.add(added[0].id)
                for job in added:
                    plans[job.id] = job.payload["plan"]
                counts["enqueued"] += n
            elif event in ("cancel-pending", "cancel-running"):
                candidates = ids_in("pending" if event == "cancel-pending" else "processing")
                candidates = [i for i in candidates if i not in protected]
                if not candidates:
                    counts[f"{event} (none to cancel)"] += 1
                    continue
                job_id = rng.choice(candidates)
                try:
                    done = queue.cancel(job_id)
                except InvalidTransition:
                    counts[f"{event} (finished first)"] += 1
                    continue
                assert done.status is Status.CANCELLED, done
                ev.cancels[job_id] += 1
                counts[event] += 1
            elif event == "retry":
                done_with = ids_in("failed", "cancelled")
                candidates = [i for i in done_with if not ev.retries[i] and i not in protected]
                if not candidates:
                    counts["retry (none to retry)"] += 1
                    continue
                job_id = rng.choice(candidates)
                queue.retry(job_id)
                ev.retries[job_id] += 1
                counts["retry"] += 1
            elif event == "kill":
                busy = holders()
                victim = rng.choice(busy or alive)
                workers.kill(victim)
                ev.kill_times[victim] = datetime.now(UTC)  # it wrote its last line before
                alive.remove(victim)
                ev.killed.add(victim)
                counts["kill -9" + ("" if busy else " (idle)")] += 1
                alive.append(start(queue_of[victim]))
            elif event == "restart":
                # Only a worker that serves has its signal handlers in place: a SIGTERM
                # before then ends the process as the default action does.
                serving = wait_for(
                    lambda: [w for w in alive if serves(w)], 60, "a worker to serve", pause=0.05
                )
                busy = [w for w in holders() if w in serving]
                victim = rng.choice(busy or serving)
                workers.signal(victim, signal.SIGTERM)
                alive.remove(victim)
                retiring.append(victim)
                ev.stopped.add(victim)
                counts["graceful restart"] += 1
                alive.append(start(queue_of[victim]))
            elif event == "outage":
                ev.outages.append(outage(engine, rng.uniform(*variant.outage)))
                counts["outage"] += 1
            elif event == "lock":
                stop = long_lock(engine, url, table, rng.uniform(*variant.lock))
                ev.write_stops.append((*stop, "a long lock"))
                counts["long lock"] += 1
            elif event == "read-only":
                stop = read_only_spell(engine, rng.uniform(*variant.read_only))
                ev.write_stops.append((*stop, "a read-only spell"))
                counts["read-only spell"] += 1
            elif event == "partition":
                reachable = [w for w in alive if w in proxies]
                cut = reachable if rng.random() < PARTITION_ALL else [rng.choice(reachable)]
                names, weights = zip(*PARTITION_KINDS.items(), strict=True)
                kind = rng.choices(names, weights)[0]
                seconds = rng.uniform(*(RESET if kind == "reset" else variant.partition))
                ev.partitions.append(partition(engine, {w: proxies[w] for w in cut}, kind, seconds))
                counts["partition"] += 1
                counts[f"partition: {kind}, {'every worker' if len(cut) > 1 else 'one'}"] += 1

        def left() -> int:
            dead = [w for w in alive if not workers.procs[w].is_alive()]
            if dead:
                raise AssertionError(
                    f"worker processes died: {dead} (seed {seed})\n{workers.log_text()[-3000:]}"
                )
            return len(ids_in("pending", "processing"))

        wait_for(
            lambda: left() == 0,
            variant.settle_timeout,
            f"every job to finish ({left()} pending or processing)",
            pause=0.25,
        )
        for worker_id in retiring:
            proc = workers.procs[worker_id]
            proc.join(60)
            assert proc.exitcode == 0, stuck(workers, worker_id, seed)
            del workers.procs[worker_id]
        wait_for(lambda: all(serves(w) for w in alive), 60, "every worker to serve")
        ev.stopped.update(workers.procs)
        for worker_id in alive:
            workers.signal(worker_id, signal.SIGTERM)
        for worker_id in alive:
            workers.procs[worker_id].join(60)
            assert workers.procs[worker_id].exitcode == 0, stuck(workers, worker_id, seed)
        ev.lines = read_lines(workers.executions_file)

    ev.moves = read_audit(engine, table)
    ev.jobs = {j.id: j for j in all_jobs(queue)}
    queue.close()
    engine.dispose()
    return Run(ev, counts, time.monotonic() - began)


def drill(url: str, table: str, directory: Path, variant: Variant) -> Run:
    """Run the drill and its checks; fail with the random seed and the findings."""
    seed = drill_seed()
    run = run_drill(url, table, directory, variant, seed)
    failed = check(run.evidence)
    print(run.summary())
    assert not failed, failure_message(run.evidence, failed, run.summary())
    return run


__all__ = [
    "CHECKS",
    "MIXED",
    "SHORT",
    "SOAK",
    "Evidence",
    "Variant",
    "check",
    "drill",
    "install_audit",
    "read_audit",
    "run_drill",
]
