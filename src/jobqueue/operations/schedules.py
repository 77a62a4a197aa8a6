"""Periodic jobs: what a schedule's ticks are, and the operations on the schedules table
(`jobqueue.sql.schedules`).

A schedule is a cron expression read in a time zone (``*/5 * * * *`` in
``Europe/Berlin``), or an interval (``every=30``). Interval ticks are whole multiples of
the interval counted from 1970-01-01 00:00 in the schedule's time zone, so every worker
works out the same ticks, and ``every=3600`` ticks on the hour (of that zone's offset on
that day: an interval counts elapsed time, and keeps its spacing across a DST change;
a cron expression follows the wall clock). Cron expressions need the ``cron`` extra
(cronsim); intervals need nothing.

Every worker's scheduler runs `run_schedules` on a timer: it reads the schedules due by
the database clock, and moves each on with a compare-and-set on its ``next_tick``, in one
statement for the batch; only the schedules this scheduler moved on get their tick's job,
enqueued in the same transaction with the idempotency key ``schedule:<name>:<tick>``. So
a tick makes exactly one job however many workers run, and even a tick replayed (a
schedule removed and added again within it) finds its job already made.

A tick at most `ON_TIME` seconds late is on time: it gets its job even when the
schedulers come to it late (their timers, a busy database, a worker killed just before the
tick), up to the `CATCH_UP` latest such ticks of a schedule in one round. Ticks later than
that were missed while no scheduler ran (every worker stopped), and the schedule's
``missed`` policy decides: ``once`` enqueues one job, for the latest missed tick, then
goes on; ``skip`` enqueues nothing for them and waits for the next tick (see `plan_ticks`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from ..errors import ConfigurationError, PayloadError
from ..models import DEFAULT_QUEUE, MAX_NAME, MAX_PRIORITY, Job, NewJob, Placement
from ..sql.schedules import DEFINITION, ScheduleStatements
from ..sql.statements import Statements
from ..sql.steps import Row
from ..sql.table import MAX_CRON, MAX_EVERY, MAX_TIMEZONE, MIN_EVERY, MISSED_POLICIES
from ..validation import QueueLimits, check_int, check_text, encode_json, new_job_row
from .contract import Access, Steps, operation
from .jobs import enqueue_many

#: Seconds a tick may be late and still count as on time (and get its job whatever the
#: schedule's ``missed`` policy); a later one was missed.
ON_TIME = 60.0

#: The most on-time ticks of one schedule a round catches up on (the latest ones).
CATCH_UP = 5

#: The resolution of ticks: the database keeps times to the microsecond.
_STEP = timedelta(microseconds=1)

#: The prefix of the idempotency key of a scheduled job: ``schedule:<name>:<tick>``.
KEY_PREFIX = "schedule:"

#: Where interval ticks are counted from (in the schedule's time zone).
_EPOCH = datetime(1970, 1, 1)

_INSTALL_CRON = "pip install 'jobqueue[cron]' (cronsim), or use an interval (every=...)"


def zone_of(name: str) -> tzinfo:
    """The time zone ``name`` (an IANA name such as ``Europe/Berlin``, or ``UTC``).

    `PayloadError` for a name the time-zone database does not know; on systems without
    one (Windows) the ``tzdata`` package provides it (the ``cron`` extra installs it there).
    """
    check_text(name, "timezone", limit=MAX_TIMEZONE)
    if name == "UTC":
        return UTC
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PayloadError(
            f"unknown time zone {name!r}",
            hint="use an IANA name such as 'Europe/Berlin' or 'UTC' (on Windows, "
            "pip install tzdata)",
        ) from None


def _check_cron(expression: str) -> None:
    """Refuse an expression cronsim cannot read (or any, without cronsim)."""
    check_text(expression, "cron", limit=MAX_CRON)
    try:
        from cronsim import CronSim, CronSimError
    except ImportError:
        raise ConfigurationError(
            f"the cron schedule {expression!r} needs the cron extra", hint=_INSTALL_CRON
        ) from None
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise PayloadError(
            f"invalid cron expression {expression!r}: {exc}",
            hint="five fields: minute hour day-of-month month day-of-week, e.g. '*/5 * * * *'",
        ) from None


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule ticks: a cron expression or an interval in seconds (one of the two),
    in a time zone. Every time it takes and gives is timezone-aware; it gives UTC."""

    cron: str | None
    every: float | None
    timezone: str = "UTC"
    zone: tzinfo = field(default=UTC, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
    ) -> Timing:
        """The timing checked: exactly one of ``cron`` and ``every`` (at least `MIN_EVERY`
        seconds, at most `MAX_EVERY`), and a known time zone."""
        if (cron is None) == (every is None):
            raise PayloadError(
                "a schedule needs either a cron expression or an interval (not both)",
                hint="cron='*/5 * * * *' or every=30 (seconds, or a timedelta)",
            )
        zone = zone_of(timezone)
        if cron is not None:
            _check_cron(cron)
            return cls(cron, None, timezone, zone)
        assert every is not None
        seconds = every.total_seconds() if isinstance(every, timedelta) else every
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or not MIN_EVERY <= seconds <= MAX_EVERY
        ):
            raise PayloadError(
                f"every must be between {MIN_EVERY:g} second and {MAX_EVERY / 86400:.0f} days, "
                f"not {every!r}",
                hint="give seconds or a timedelta, e.g. every=30",
            )
        # Whole microseconds: what the database stores of a tick.
        return cls(None, round(float(seconds), 6), timezone, zone)

    def _interval(self) -> tuple[datetime, int]:
        assert self.every is not None
        anchor = _EPOCH.replace(tzinfo=self.zone).astimezone(UTC)
        return anchor, round(self.every * 1_000_000)

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``."""
        if self.cron is not None:
            from cronsim import CronSim

            tick: datetime = next(CronSim(self.cron, moment.astimezone(self.zone)))
            return tick.astimezone(UTC)
        anchor, step = self._interval()
        elapsed = (moment - anchor) // timedelta(microseconds=1)
        return anchor + timedelta(microseconds=(elapsed // step + 1) * step)

    def latest_until(self, moment: datetime) -> datetime:
        """The last tick at or before ``moment``."""
        if self.cron is not None:
            from cronsim import CronSim

            after = moment.astimezone(self.zone) + _STEP
            tick: datetime = next(CronSim(self.cron, after, reverse=True))
            return tick.astimezone(UTC)
        anchor, step = self._interval()
        elapsed = (moment - anchor) // timedelta(microseconds=1)
        return anchor + timedelta(microseconds=(elapsed // step) * step)


def plan_ticks(
    timing: Timing, missed: str, next_tick: datetime, now: datetime
) -> tuple[list[datetime], datetime, bool]:
    """What a scheduler does with a schedule due since ``next_tick`` (at or before
    ``now``): the ticks to enqueue a job for, oldest first; the schedule's next tick after
    them; and whether due ticks passed without a job.

    A tick at most `ON_TIME` late is on time and gets its job, so a scheduler that comes a
    little late (a busy database, a worker killed just before the tick) catches up; at most
    the `CATCH_UP` latest such ticks, so a fast schedule after an outage makes a few jobs,
    not a burst. Ticks later than that were missed: with ``missed="once"`` the latest of
    them gets one job when no tick after it is on time; with ``"skip"`` none does."""
    cutoff = now - timedelta(seconds=ON_TIME)
    on_time: list[datetime] = []
    tick = timing.latest_until(now)
    while tick >= next_tick and tick >= cutoff and len(on_time) < CATCH_UP:
        on_time.append(tick)
        tick = timing.latest_until(tick - _STEP)
    on_time.reverse()
    following = timing.next_after(now)
    if on_time:
        return on_time, following, on_time[0] > next_tick
    if missed == "once":
        return [max(timing.latest_until(now), next_tick)], following, False
    return [], following, True


def idempotency_key(name: str, tick: datetime) -> str:
    """The key of the job a schedule's tick makes: unique per schedule and tick."""
    return f"{KEY_PREFIX}{name}:{tick.astimezone(UTC).isoformat()}"


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A schedule's definition, checked (`define_schedule`): what `add_schedule` and a
    worker's registry write."""

    name: str
    kind: str
    timing: Timing
    queue: str = DEFAULT_QUEUE
    #: The payload as the JSON text stored.
    payload: str = "{}"
    priority: int = 0
    missed: str = "once"
    enabled: bool = True

    def values(self) -> dict[str, Any]:
        """The row's columns (`jobqueue.sql.schedules.DEFINITION` and the name)."""
        out = {
            "name": self.name,
            "kind": self.kind,
            "queue": self.queue,
            "payload": self.payload,
            "priority": self.priority,
            "cron": self.timing.cron,
            "every_seconds": self.timing.every,
            "timezone": self.timing.timezone,
            "missed": self.missed,
            "enabled": self.enabled,
        }
        assert set(out) == {"name", *DEFINITION}
        return out


def define_schedule(
    name: str,
    *,
    kind: str,
    cron: str | None = None,
    every: float | timedelta | None = None,
    timezone: str = "UTC",
    queue: str = DEFAULT_QUEUE,
    payload: Any = None,
    priority: int = 0,
    missed: str = "once",
    enabled: bool = True,
    limits: QueueLimits | None = None,
) -> ScheduleSpec:
    """A schedule's definition, every value checked (`PayloadError`, or
    `ConfigurationError` for a cron expression without the ``cron`` extra)."""
    check_text(name, "schedule name", limit=MAX_NAME)
    check_text(kind, "kind", limit=MAX_NAME)
    check_text(queue, "queue", limit=MAX_NAME)
    check_int(priority, "priority", -MAX_PRIORITY, MAX_PRIORITY)
    if missed not in MISSED_POLICIES:
        raise PayloadError(
            f"missed must be one of {', '.join(MISSED_POLICIES)}, not {missed!r}",
            hint="'once': one job for the latest missed tick; 'skip': none, wait for the next",
        )
    if not isinstance(enabled, bool):
        raise PayloadError("enabled must be True or False")
    timing = Timing.of(cron, every, timezone)
    text, _ = encode_json({} if payload is None else payload, "payload", limits or QueueLimits())
    return ScheduleSpec(name, kind, timing, queue, text, priority, missed, enabled)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A schedule as stored: its definition, and its ``next_tick`` (the tick the
    schedulers wait for) and ``last_tick`` (the last one that enqueued a job), in UTC."""

    name: str
    kind: str
    queue: str
    payload: Any
    priority: int
    cron: str | None
    every: float | None
    timezone: str
    missed: str
    enabled: bool
    next_tick: datetime
    last_tick: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Row) -> Schedule:
        try:
            payload = json.loads(row["payload"])
        except (TypeError, ValueError):
            payload = row["payload"]
        return cls(
            name=row["name"],
            kind=row["kind"],
            queue=row["queue"],
            payload=payload,
            priority=row["priority"],
            cron=row["cron"],
            every=row["every_seconds"],
            timezone=row["timezone"],
            missed=row["missed"],
            enabled=bool(row["enabled"]),
            next_tick=row["next_tick"],
            last_tick=row["last_tick"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    @property
    def timing(self) -> str:
        """``cron '<expr>'`` or ``every <n>s``, with the time zone unless UTC."""
        what = f"cron {self.cron!r}" if self.cron is not None else f"every {_span(self.every)}"
        return what if self.timezone == "UTC" else f"{what} ({self.timezone})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 text."""
        out: dict[str, Any] = {}
        for key in self.__slots__:
            value = getattr(self, key)
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _span(seconds: float | None) -> str:
    """An interval as ``--every`` takes it: ``1d``, ``2h``, ``30m``, ``45s``, ``1.5s``."""
    secs = seconds or 0.0
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size and secs % size == 0:
            return f"{int(secs // size)}{unit}"
    return f"{secs:g}s"


# -- the operations ------------------------------------------------------------------------------


@operation(Access.ONE_WRITE)
def add_schedule(ss: ScheduleStatements, spec: ScheduleSpec) -> Steps[Schedule]:
    """Create the schedule, or replace its definition; its next tick is the first after
    now (by the database clock) when it is new or its timing changed, else kept."""
    now: datetime = (yield ss.now())[0]["now"]
    rows = yield ss.upsert(spec.values(), spec.timing.next_after(now))
    return Schedule.from_row(rows[0])


@operation(Access.TRANSACTION)
def declare_schedules(ss: ScheduleStatements, specs: Sequence[ScheduleSpec]) -> Steps[int]:
    """`add_schedule` for each of ``specs`` (a worker's registry, at start), together."""
    if not specs:
        return 0
    now: datetime = (yield ss.now())[0]["now"]
    for spec in specs:
        yield ss.upsert(spec.values(), spec.timing.next_after(now), keep_enabled=True)
    return len(specs)


@operation(Access.READ)
def list_schedules(ss: ScheduleStatements) -> Steps[list[Schedule]]:
    return [Schedule.from_row(r) for r in (yield ss.list())]


@operation(Access.ONE_WRITE)
def remove_schedule(ss: ScheduleStatements, name: str) -> Steps[bool]:
    """Delete a schedule; whether there was one. Jobs it enqueued stay."""
    check_text(name, "schedule name", limit=MAX_NAME)
    return bool((yield ss.delete(name)))


@operation(Access.ONE_WRITE)
def set_schedule_enabled(ss: ScheduleStatements, name: str, enabled: bool) -> Steps[bool]:
    """Pause or resume a schedule; whether there was one. A paused schedule makes no jobs
    and keeps its definition; a worker declaring it again leaves it paused."""
    check_text(name, "schedule name", limit=MAX_NAME)
    return bool((yield ss.set_enabled(name, enabled)))


@operation(Access.READ)
def any_due(ss: ScheduleStatements) -> Steps[bool]:
    """Whether a schedule's tick has come: what a round asks before it starts writing."""
    return bool((yield ss.any_due())[0]["due"])


@dataclass
class ScheduleRound:
    """What one round of `run_schedules` did."""

    #: The jobs enqueued, one per tick run.
    enqueued: list[Job] = field(default_factory=list)
    #: The schedules moved past due ticks that got no job (missed, or beyond `CATCH_UP`).
    skipped: list[str] = field(default_factory=list)
    #: Schedules that cannot tick (a cron expression without the ``cron`` extra, an
    #: unknown time zone, a row another client wrote badly), with why; they stay due.
    broken: dict[str, str] = field(default_factory=dict)
    #: How many due schedules another scheduler moved on first.
    lost: int = 0
    #: How many schedules were due (a full batch means more may be).
    due: int = 0


@operation(Access.TRANSACTION)
def run_schedules(
    ss: ScheduleStatements,
    s: Statements,
    limits: QueueLimits,
    placement: Placement | None = None,
) -> Steps[ScheduleRound]:
    """One scheduler round: the schedules due, moved on in one compare-and-set statement,
    and a job for each tick this call moved on, enqueued in the same transaction."""
    done = ScheduleRound()
    due = yield ss.due()
    done.due = len(due)
    if not due:
        return done
    moves: list[tuple[str, datetime, datetime, datetime | None]] = []
    jobs: dict[str, list[dict[str, Any]]] = {}
    for row in due:
        name = row["name"]
        try:
            timing = Timing.of(row["cron"], row["every_seconds"], row["timezone"])
            runs, following, dropped = plan_ticks(
                timing, row["missed"], row["next_tick"], row["now"]
            )
            jobs[name] = [new_job_row(_job_of(row, tick), limits) for tick in runs]
        except (PayloadError, ConfigurationError) as exc:
            done.broken[name] = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
            continue
        moves.append((name, row["next_tick"], following, runs[-1] if runs else None))
        if dropped:
            done.skipped.append(name)
    if not moves:
        return done
    moved = {r["name"] for r in (yield ss.advance(moves))}
    done.lost = len(moves) - len(moved)
    done.skipped = [n for n in done.skipped if n in moved]
    rows = [job for name, made in jobs.items() if name in moved for job in made]
    if rows:
        # None would mean an owner's budget must be checked first; scheduled jobs have no
        # owner, so no budget holds them back.
        done.enqueued = (yield from enqueue_many(s, rows, placement).steps) or []
    return done


def _job_of(row: Mapping[str, Any], tick: datetime) -> NewJob:
    try:
        payload = json.loads(row["payload"])
    except (TypeError, ValueError):
        raise PayloadError("its payload is not JSON") from None
    return NewJob(
        kind=row["kind"],
        payload=payload,
        queue=row["queue"],
        priority=row["priority"],
        idempotency_key=idempotency_key(row["name"], tick),
    )


__all__ = [
    "CATCH_UP",
    "KEY_PREFIX",
    "ON_TIME",
    "Schedule",
    "ScheduleRound",
    "ScheduleSpec",
    "Timing",
    "add_schedule",
    "any_due",
    "declare_schedules",
    "define_schedule",
    "idempotency_key",
    "list_schedules",
    "plan_ticks",
    "remove_schedule",
    "run_schedules",
    "zone_of",
]
