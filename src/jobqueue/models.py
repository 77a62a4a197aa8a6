"""The records of the queue and the rules they follow: read this module first.

`Status` and `MOVES` are the whole state machine; `Job` is one row of the jobs table;
`NewJob`, `Completion` and `StatusStats` are what callers hand the queue and get back;
`WorkerPresence` and `LiveWorker` are a worker's row in the live-workers table. The limits
(``MAX_*``) and defaults (``DEFAULT_*``) are the library's own: `jobqueue.validation`
checks values against them before a write, and the table's check constraints
(`jobqueue.sql.table.bounds`) hold every other client to the same.

Nothing here touches SQL or a connection; every other module refers to these names
instead of repeating them.
"""

from __future__ import annotations

import operator
import os
import socket
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from itertools import repeat
from typing import TYPE_CHECKING, Any

from .errors import InvalidTransition

if TYPE_CHECKING:
    from .validation import QueueLimits

DEFAULT_TABLE = "generation_jobs"
DEFAULT_QUEUE = "default"
DEFAULT_KIND = "image"
DEFAULT_MAX_ATTEMPTS = 3
#: Seconds a claim holds a job unless the queue or the call says otherwise.
DEFAULT_LEASE = 30.0
DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576

# What a job may hold. The library refuses a value outside these bounds with `PayloadError`
# before it writes (`jobqueue.validation`), and the table's check constraints refuse it from
# every other client (migration 0003); tests/sql/test_bounds.py checks that the two agree.
MAX_NAME = 200  # kind, queue
MAX_TEXT = 255  # owner_id, idempotency_key, locked_by (the worker's id)
MAX_PRIORITY = 1_000_000
MAX_ATTEMPTS_LIMIT = 1000  # attempts a job may have left: max_attempts - attempts
MAX_PROGRESS_MESSAGE = 1000
MAX_REMOTE_TASK_ID = 1000
MAX_RESULT_URL = 8192
MAX_LIMIT = 100_000  # a cap on running jobs, or a rate's number of starts
MAX_RATE_PERIOD = 86_400.0 * 31  # a rate's period, in seconds
MAX_TURN = 1e15  # a place in the fair-share line (see jobqueue.sql.fair)
MAX_ERROR = 10_000  # a failed attempt's message, cut to this many characters
#: A cost (a job's, an estimate, a budget) is an exact decimal with at most `COST_PLACES`
#: places, from 0 to `MAX_COST`: ``numeric(20, 6)`` on PostgreSQL, whole millionths
#: (an integer) on SQLite (`jobqueue.sql.dialect.Money`).
COST_PLACES = 6
MAX_COST = Decimal(10) ** 12
#: A cost's unit or currency (``USD``, ``credits``): 1 to this many characters.
MAX_COST_UNIT = 20
#: The longest duration a call may give (a delay, a lease, a retention period): the
#: checks (`jobqueue.validation.seconds_of`) refuse longer ones.
MAX_DELAY = timedelta(days=366)
#: Deeper values are refused: JSON encoders and decoders recurse, so a value nested a few
#: thousand levels deep could be written and then fail to read back (or fail half-way).
MAX_JSON_DEPTH = 200
#: The most digits a JSON integer may have and still be read: Python's default
#: ``sys.get_int_max_str_digits()``. The library cannot write a longer one (encoding it
#: fails the same way); the Supabase insert policy keeps users from storing one.
MAX_JSON_INT_DIGITS = 4300

#: The columns holding JSON (``jsonb`` on PostgreSQL, text on SQLite).
JSON_COLUMNS = ("payload", "result", "errors")

#: How a time beyond what Python's `datetime` can hold reads: PostgreSQL's ``infinity``
#: and times after the year 9999 as the end of time, ``-infinity`` and times before the
#: year 1 (BC) as its start. A row a client wrote with such a time must stay readable.
END_OF_TIME = datetime.max.replace(tzinfo=UTC)
START_OF_TIME = datetime.min.replace(tzinfo=UTC)


class Status(StrEnum):
    """Where a job is in its life. Stored as plain text so other clients can read it."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Not started by its start deadline (``start_by``): it never ran and never will,
    #: unless an operator retries it.
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES: frozenset[Status] = frozenset(
    {Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED}
)

#: Every allowed move, and only those. The moves anyone may ask for (cancel, retry) take
#: their ``WHERE status IN (...)`` from this mapping (``sources_of``); a worker's moves name
#: the one status they start from (``pending`` for a claim, ``processing`` for every fenced
#: write and the reaper), which is this mapping's too. tests/test_state_machine.py tries
#: every move of the API from every status, so SQL and this mapping cannot part unnoticed.
MOVES: Mapping[Status, frozenset[Status]] = {
    # claim; cancel before it started; expire: its start deadline passed before a claim
    Status.PENDING: frozenset({Status.PROCESSING, Status.CANCELLED, Status.EXPIRED}),
    # finish; fail for good; retry, release, or reap back to the queue; cancel while running
    Status.PROCESSING: frozenset(
        {Status.COMPLETED, Status.FAILED, Status.PENDING, Status.CANCELLED}
    ),
    # an operator's `retry`
    Status.FAILED: frozenset({Status.PENDING}),
    Status.CANCELLED: frozenset({Status.PENDING}),
    Status.EXPIRED: frozenset({Status.PENDING}),
    Status.COMPLETED: frozenset(),
}


def can_move(source: Status, target: Status) -> bool:
    return target in MOVES[source]


def sources_of(target: Status) -> tuple[Status, ...]:
    """The statuses from which a job may move to ``target`` (in a stable order)."""
    return tuple(s for s in Status if target in MOVES[s])


def check_move(source: Status, target: Status, job_id: object = None) -> None:
    """Raise `InvalidTransition` unless ``source -> target`` is an allowed move."""
    if not can_move(source, target):
        allowed = ", ".join(sorted(MOVES[source])) or "none: it is final"
        raise InvalidTransition(
            f"job {job_id} cannot move from {source} to {target} (allowed from {source}: {allowed})"
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one row of the jobs table.

    ``attempts`` and ``started_at`` are the fencing token: a worker holds the job only
    while the row still has the ``attempts`` and ``started_at`` it was claimed with and is
    ``processing`` (a release gives the attempt back, so only ``started_at`` tells its
    claim from the next one).

    ``start_by`` is the job's start deadline (None: none): a job no claim has taken by
    then is moved to ``expired`` and never runs (`JobQueue.expire`).

    ``unreadable`` says why part of a row written by another client could not be read
    (``"payload could not be decoded: …"``); that value reads as None (``errors`` as
    ``[]``). A worker fails such a job at once, without running it.
    """

    id: uuid.UUID
    queue: str
    kind: str
    status: Status
    payload: Any
    result: Any
    result_url: str | None
    error: str | None
    errors: list[dict[str, Any]]
    progress: int
    progress_message: str | None
    priority: int
    attempts: int
    max_attempts: int
    run_at: datetime
    locked_by: str | None
    lease_expires_at: datetime | None
    remote_task_id: str | None
    owner_id: str | None
    idempotency_key: str | None
    turn: float | None
    limit_key: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    updated_at: datetime
    #: What the job cost so far (every attempt's reported cost added up), in ``cost_unit``;
    #: None until a cost is reported.
    cost: Decimal | None
    cost_unit: str | None
    #: The estimate its owner's budget reserved for it at enqueue (`jobqueue.sql.budgets`):
    #: counted against the budget while the job is pending or running.
    reserved: Decimal | None
    start_by: datetime | None
    #: The trace the job was enqueued in (`jobqueue.tracing`: W3C ``traceparent`` and
    #: ``tracestate`` as JSON text), which its runs continue; None without tracing.
    trace_context: str | None = field(default=None, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    unreadable: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> Job:
        """The job a row of the table holds (its JSON columns decoded)."""
        return cls.from_values(dict(row))

    @classmethod
    def from_values(cls, values: dict[str, Any], unreadable: str | None = None) -> Job:
        """`from_row` taking over ``values`` (a fresh dict it may change)."""
        # Called for every row a claim or a listing returns, so the common case (exactly
        # the table's columns) skips sorting out extra columns.
        extra: dict[str, Any] = {}
        if values.keys() != _JOB_FIELD_SET:
            extra = {k: values.pop(k) for k in [k for k in values if k not in _JOB_FIELD_SET]}
        status = values["status"]
        values["status"] = _STATUS_OF.get(status) or Status(status)
        errors = values.get("errors")
        values["errors"] = read_errors(errors) if errors else []
        job_id = values["id"]
        if not isinstance(job_id, uuid.UUID):
            values["id"] = uuid.UUID(str(job_id))
        if cls is Job and len(values) == len(_JOB_FIELDS):
            # By position, through the slots' own setters: for every claimed job.
            return job_of((*_job_values(values), extra, unreadable))
        return cls(**values, extra=extra, unreadable=unreadable)

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    @property
    def duration(self) -> float | None:
        """Seconds from creation to the final status (what the statistics average)."""
        if self.completed_at is None:
            return None
        return (self.completed_at - self.created_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (ids and times as strings) for APIs and the CLI; the table's
        columns, and ``unreadable`` when it is set."""
        out: dict[str, Any] = {}
        for name in _JOB_FIELDS:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, uuid.UUID):
                value = str(value)
            elif isinstance(value, Status):
                value = value.value
            elif isinstance(value, Decimal):
                value = str(value)
            out[name] = value
        if self.unreadable is not None:
            out["unreadable"] = self.unreadable
        return out


def read_errors(errors: Any) -> list[Any]:
    """A job's ``errors`` history with every ``at`` in the one format all backends write
    (`error_time`), whatever wrote the row."""
    out = list(errors)
    for i, entry in enumerate(out):
        if isinstance(entry, dict) and "at" in entry:
            at = error_time(entry["at"])
            if at is not entry["at"]:
                out[i] = {**entry, "at": at}
    return out


def error_time(value: Any) -> Any:
    """An ``errors[].at`` as ISO 8601 UTC text, ``2026-11-29T07:05:48.123456+00:00``.

    Both backends write that now (`jobqueue.sql.dialect.DbNowText`). Rows written before read the
    same: SQLite's clock text (``2026-11-29 07:05:48.123000``, UTC) and PostgreSQL's JSON
    time in the session's time zone (``…+01:00``). Text that is no time stays as it is.
    """
    written_now = isinstance(value, str) and len(value) == 32 and value[26:] == "+00:00"
    if not isinstance(value, str) or (written_now and value[10] == "T"):
        return value
    try:
        at = datetime.fromisoformat(value)
        if at.tzinfo is None:  # SQLite's clock: UTC
            at = at.replace(tzinfo=UTC)
        return at.astimezone(UTC).isoformat(timespec="microseconds")
    except (ValueError, OverflowError):  # no time, or none that exists in UTC
        return value


#: The table's columns, in `Job`'s field order.
_JOB_FIELDS = tuple(f for f in Job.__dataclass_fields__ if f not in ("extra", "unreadable"))
_JOB_FIELD_SET = frozenset(_JOB_FIELDS)
#: A row's values in the order of `Job`'s fields (which end with ``extra``, ``unreadable``).
_job_values = operator.itemgetter(*_JOB_FIELDS)
_STATUS_OF = {s.value: s for s in Status}

#: The setter of each of `Job`'s slots, in field order (`job_of`).
_JOB_SETTERS = tuple(vars(Job)[name].__set__ for name in Job.__dataclass_fields__)
_consume: Any = deque(maxlen=0).extend


def job_of(values: tuple[Any, ...]) -> Job:
    """``Job(*values)``: every field, in order, for about two thirds of the time. A
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``; this
    sets the same slots through their own descriptors, in C (`enqueue_many` builds one
    `Job` for every job of its batch)."""
    if len(values) != len(_JOB_SETTERS):
        raise TypeError(f"a Job has {len(_JOB_SETTERS)} fields, not {len(values)}")
    job: Job = object.__new__(Job)
    _consume(map(operator.call, _JOB_SETTERS, repeat(job), values))
    return job


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job to enqueue, as the caller described it (see `JobQueue.enqueue`)."""

    kind: str = DEFAULT_KIND
    payload: Any = None
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    run_at: datetime | None = None
    delay: float | timedelta | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    owner_id: str | None = None
    idempotency_key: str | None = None
    limit_key: str | None = None
    #: The start deadline: not started (claimed) by then, the job becomes ``expired``
    #: instead of running. ``expires_in`` counts from the enqueue, by the database clock;
    #: ``start_by`` is a timezone-aware time. At most one of the two.
    expires_in: float | timedelta | None = None
    start_by: datetime | None = None
    #: What the job is expected to cost, reserved against its owner's budget (if the
    #: owner has one) while it is pending or running; None: the queue's estimate for its
    #: kind (`JobQueue(estimated_costs=...)`), else nothing.
    estimated_cost: Decimal | int | str | None = None

    def to_row(self, limits: QueueLimits) -> dict[str, Any]:
        """The job checked against ``limits`` and made into the row the queue inserts
        (`jobqueue.validation.new_job_row`)."""
        from .validation import new_job_row

        return new_job_row(self, limits)


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished job waiting in the worker's completion batch."""

    job: Job
    result: Any = None
    result_url: str | None = None
    #: What the attempt cost (added to the job's ``cost``), and its unit.
    cost: Decimal | None = None
    cost_unit: str | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    """An owner's budget (`JobQueue.set_budget`) and what counts against it now.

    ``period`` is ``day`` or ``month`` (calendar, UTC, by the database clock: the period
    starts at ``since``) or ``balance`` (prepaid: it never starts over, ``since`` is None).
    ``spent`` is what the owner's jobs created in the period count: a pending or running
    job what it reserved or what it cost so far, whichever is more; a finished job what
    it cost. ``remaining`` is ``amount - spent`` (negative once real costs passed it)."""

    owner_id: str
    amount: Decimal
    period: str
    cost_unit: str | None = None
    spent: Decimal = Decimal(0)
    since: datetime | None = None
    updated_at: datetime | None = None

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.spent

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: amounts as decimal strings (exact), times in ISO 8601."""
        return {
            "owner_id": self.owner_id,
            "amount": str(self.amount),
            "period": self.period,
            "cost_unit": self.cost_unit,
            "spent": str(self.spent),
            "remaining": str(self.remaining),
            "since": None if self.since is None else self.since.isoformat(),
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
        }


@dataclass(slots=True)
class ClaimMode:
    """What a queue last learnt about limits: whether its claims must obey limits rows in
    force. Only a hint for choosing the claim's shape: the plain claim takes nothing while
    a row is in force, and the claim within limits falls back to the plain one when none
    is (`jobqueue.sql.limits`)."""

    limited: bool = False


@dataclass(slots=True)
class Placement:
    """Whether a queue's role may place its jobs in the fair-share line itself (write
    ``turn`` and ``limit_key``), learnt at its first enqueue. A role with column grants only
    (Supabase's ``authenticated``) may not: its jobs enter the line through the workers
    (`jobqueue.sql.fair`), and a limit key is not its to choose."""

    placed: bool | None = None
    #: Whether it may read the owners' budgets, learnt with ``placed``. A role that may
    #: not (the budgets are the operator's, `jobqueue.sql.rls`) is not held to them:
    #: owned jobs are inserted without a look at the budgets (docs/costs.md).
    budgets: bool = True


@dataclass(frozen=True, slots=True)
class Limit:
    """One limits row (see `JobQueue.set_limit`): what it caps, rates or pauses, and the jobs
    of its queue or key running and pending now.

    ``scope`` is ``queue``, ``key`` (a job's ``limit_key``, else its kind) or ``owner``
    (whose ``weight`` in the fair share it holds). ``paused`` says whether a pause is
    running now: from ``paused_at`` until ``paused_until`` (None: until resumed).
    """

    scope: str
    name: str
    max_running: int | None = None
    max_running_per_owner: int | None = None
    rate: int | None = None
    per_seconds: float | None = None
    weight: float | None = None
    paused: bool = False
    paused_at: datetime | None = None
    paused_until: datetime | None = None
    pause_reason: str | None = None
    running: int = 0
    pending: int = 0
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Limit:
        fields = {f: row[f] for f in cls.__dataclass_fields__ if f in row}
        fields["paused"] = bool(fields.get("paused"))
        fields["running"] = int(fields.get("running") or 0)
        fields["pending"] = int(fields.get("pending") or 0)
        return cls(**fields)

    @classmethod
    def empty(cls, scope: str, name: str) -> Limit:
        """A queue, key or owner without a row: no limits."""
        return cls(scope, name)

    @property
    def in_force(self) -> bool:
        """Whether claims must obey this row (a cap, a rate or a running pause)."""
        return self.scope != "owner" and (
            self.max_running is not None
            or self.max_running_per_owner is not None
            or self.rate is not None
            or self.paused
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in self.__dataclass_fields__:
            value = getattr(self, f)
            out[f] = value.isoformat() if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True, slots=True)
class StatusStats:
    """One line of the statistics: a status (and, grouped ``by`` one, a kind or an
    owner), its job count and mean duration, and what its jobs cost.

    ``cost`` is the sum of the jobs' costs in ``cost_unit`` (a line per unit when jobs
    report several; None for jobs that reported none), ``charged`` how many of the jobs
    cost money (for ``failed`` and ``cancelled`` lines: what was paid for and not
    delivered)."""

    status: Status
    count: int
    avg_duration_sec: float | None
    kind: str | None = None
    owner_id: str | None = None
    cost: Decimal = Decimal(0)
    cost_unit: str | None = None
    charged: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the cost as a decimal string)."""
        return {
            "status": self.status.value,
            "kind": self.kind,
            "owner_id": self.owner_id,
            "count": self.count,
            "avg_duration_sec": self.avg_duration_sec,
            "cost": str(self.cost),
            "cost_unit": self.cost_unit,
            "charged": self.charged,
        }


# -- live workers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerPresence:
    """What a worker says about itself in its row of the live-workers table."""

    worker_id: str
    queues: tuple[str, ...]
    #: None: the worker claims every kind.
    kinds: tuple[str, ...] | None
    concurrency: int
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


@dataclass(frozen=True, slots=True)
class LiveWorker:
    """A worker whose last beat is recent, as its row says (times by the database clock)."""

    worker_id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    #: None: the worker claims every kind.
    kinds: tuple[str, ...] | None
    concurrency: int
    started_at: datetime
    last_beat_at: datetime
    expires_at: datetime
    #: The database clock when the row was read.
    seen_at: datetime

    @property
    def beat_age(self) -> float:
        """Seconds since the last beat, by the database clock."""
        return max(0.0, (self.seen_at - self.last_beat_at).total_seconds())

    def serves(self, queue: str, kind: str | None = None) -> bool:
        """Whether this worker claims jobs of ``kind`` (any kind when None) in ``queue``."""
        if queue not in self.queues:
            return False
        return kind is None or self.kinds is None or kind in self.kinds

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO strings), for `jobqueue workers --json`."""
        return {
            "worker_id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "queues": list(self.queues),
            "kinds": None if self.kinds is None else list(self.kinds),
            "concurrency": self.concurrency,
            "started_at": self.started_at.isoformat(),
            "last_beat_at": self.last_beat_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "beat_age_sec": round(self.beat_age, 3),
        }


# -- a job's place in the line ---------------------------------------------------------------

#: How many jobs ahead of one `JobQueue.position` counts at most; past it, it says "more
#: than" this many (`Position.more`) rather than read further.
DEFAULT_POSITION_LIMIT = 1000
#: How many of its kind's latest completed runs a position's estimate is taken from.
RUN_TIME_SAMPLES = 20


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ``11th``, ``21st``…"""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def about(seconds: float) -> str:
    """A duration as a person waits it: ``about 40 s``, ``about 3 min``, ``about 2 h``."""
    if seconds < 1:
        return "any moment"
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {round(seconds / 3600)} h"


@dataclass(frozen=True, slots=True)
class Position:
    """Where a job stands: how many jobs are ahead of it and when it may start and finish
    (`JobQueue.position`). Every time is measured by the database clock, at ``measured_at``.

    - pending, in the line: ``ahead`` jobs will be claimed before it (``more``: more than
      that many; it was not counted further). ``start_in`` and ``finish_in`` are estimates
      in seconds, None when nothing can be estimated: no completed run of its kind to go
      by, no live worker serving it, or too many jobs ahead to count;
    - pending, not yet in the line (scheduled for later, backing off after a failure,
      held back, or inserted by another client): ``ahead`` is None, ``enters_line_in``
      says when it is due (0: now; a worker puts it in line within a second or so);
    - processing: ``ahead`` is 0, ``start_in`` None (it started), ``finish_in`` its
      kind's typical run time less the time it has run (None once it has run longer);
    - final: ``ahead`` None and no estimate.
    """

    job_id: uuid.UUID
    status: Status
    ahead: int | None
    more: bool = False
    start_in: float | None = None
    finish_in: float | None = None
    enters_line_in: float | None = None
    #: The median run time of its kind's latest completed runs (`RUN_TIME_SAMPLES`), in
    #: seconds; None when none completed.
    run_time: float | None = None
    #: How many jobs the live workers that serve this job run at once (their concurrency);
    #: None when the live workers could not be read.
    capacity: int | None = None
    measured_at: datetime | None = None

    @property
    def place(self) -> int | None:
        """Its place in the line, counting from 1 (``ahead`` + 1), while it waits in it."""
        if self.status is not Status.PENDING or self.ahead is None:
            return None
        return self.ahead + 1

    def describe(self) -> str:
        """One line for a person waiting: ``3rd in line · about 40 s`` (until it is done),
        ``running · about 12 s left``, ``more than 1000 jobs ahead``, ``scheduled: enters
        the line in about 5 min``, or empty for a final job."""
        if self.status.is_final:
            return ""
        if self.status is Status.PROCESSING:
            if self.finish_in is None:
                return "running"
            if self.finish_in < 1:
                return "running · finishing any moment"
            return f"running · {about(self.finish_in)} left"
        if self.ahead is None:
            if self.enters_line_in is not None and self.enters_line_in >= 1:
                return f"scheduled: enters the line in {about(self.enters_line_in)}"
            return "entering the line"
        parts: list[str] = []
        if self.more:
            parts.append(f"more than {self.ahead} jobs ahead")
        else:
            parts.append(f"{ordinal(self.ahead + 1)} in line")
        if self.finish_in is not None:
            parts.append(about(self.finish_in))
        elif self.capacity == 0:
            parts.append("no worker serves it")
        return " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (seconds rounded to tenths), for ``jobqueue status --json``."""

        def tenths(value: float | None) -> float | None:
            return None if value is None else round(value, 1)

        return {
            "job_id": str(self.job_id),
            "status": self.status.value,
            "ahead": self.ahead,
            "more": self.more,
            "place": self.place,
            "start_in": tenths(self.start_in),
            "finish_in": tenths(self.finish_in),
            "enters_line_in": tenths(self.enters_line_in),
            "run_time": tenths(self.run_time),
            "capacity": self.capacity,
            "measured_at": None if self.measured_at is None else self.measured_at.isoformat(),
            "text": self.describe(),
        }
