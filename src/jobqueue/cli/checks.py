"""What `jobqueue check` examines: the usual reasons a set-up does not work, as checks.

Each `Check` is one line of the report: the database answers, the schema is installed and
current, the jobs table is readable, no job is stuck past its lease or waiting unclaimed,
what is paused, which workers are live, whether periodic jobs tick, and a generator is
configured. A failed check carries its fix, so the report reads as a to-do list. The
checks only read; nothing is created or changed (a missing SQLite file is reported, not
created by connecting to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from ..drivers.engines import describe_database, sqlite_path
from ..errors import ConfigurationError, JobQueueError, PermissionDenied
from ..models import DEFAULT_TABLE, Limit
from ..operations.gauges import OVERDUE_AFTER
from ..queue import JobQueue


@dataclass(frozen=True)
class Check:
    """One line of `jobqueue check`: what was checked, how it went, and how to fix it."""

    name: str
    state: str  # "ok", "warn", "fail" or "skip"
    detail: str
    fix: str = ""


def sqlite_file_missing(url: str) -> Path | None:
    """The path of a SQLite database file that does not exist (connecting would create it)."""
    path = sqlite_path(url)
    return None if path is None or path.exists() else path


def run_checks(url: str, *, table: str = DEFAULT_TABLE, schema: str | None = None) -> list[Check]:
    """Every check against the database at ``url``, in report order; a check that needs
    what an earlier one found missing is reported as skipped."""
    from ..migrations import schema_state, version_table

    checks: list[Check] = []
    state = None
    missing_file = sqlite_file_missing(url)
    if missing_file is not None:
        checks.append(
            Check(
                "database",
                "fail",
                f"{missing_file} does not exist",
                "run `jobqueue migrate` to create it, or set --database-url",
            )
        )
    else:
        try:
            state = schema_state(url, table=table, schema=schema)
        except PermissionDenied:
            # A worker role granted the jobs table only (docs/supabase.md) may not read our
            # version table: the database answered, so look at the jobs themselves.
            checks.append(Check("database", "ok", f"reachable: {describe_database(url)}"))
            checks.append(
                Check(
                    "schema",
                    "warn",
                    f"this role may not read {version_table(table)}: revision unknown",
                    "run `jobqueue check` as the table's owner to see it",
                )
            )
            checks.extend(_job_checks(url, table, schema))
            checks.append(_generator_check())
            return checks
        except JobQueueError as exc:
            checks.append(Check("database", "fail", exc.message, exc.hint))
        else:
            checks.append(Check("database", "ok", f"reachable: {describe_database(url)}"))
    if state is None:
        checks.append(Check("schema", "skip", "needs a reachable database"))
    elif not state.installed:
        checks.append(
            Check(
                "schema",
                "fail",
                f"table {table} is not installed",
                "run `jobqueue migrate`, or paste `jobqueue sql` into the Supabase SQL Editor",
            )
        )
    elif not state.up_to_date:
        checks.append(
            Check(
                "schema",
                "fail",
                f"at revision {state.current}, the latest is {state.head}",
                "run `jobqueue migrate`",
            )
        )
    else:
        checks.append(Check("schema", "ok", f"table {table} at revision {state.current}"))
    if state is not None and state.up_to_date:
        checks.extend(_job_checks(url, table, schema))
    else:
        checks.append(Check("access", "skip", "needs the schema"))
    checks.append(_generator_check())
    return checks


@dataclass(frozen=True)
class JobCounts:
    """What the stuck-job and backlog checks need, counted over the whole table."""

    processing: int
    expired: int  # processing with the lease in the past
    pending: int
    overdue: int  # pending and due for longer than OVERDUE_AFTER
    oldest_due: datetime | None  # the earliest run_at among the overdue
    now: datetime  # the database clock


def count_jobs(q: JobQueue) -> JobCounts:
    """Count processing and pending jobs (`JobQueue.backlog`), on the database's clock.

    Counting (not reading a sample of rows) sees every job, and the overdue ones are the
    oldest, so a sample of the newest would miss exactly them; the database's clock is the
    one leases and ``run_at`` were set by.
    """
    seen = q.backlog()
    queues = seen.queues.values()
    overdue = sum(g.overdue for g in queues)
    oldest = max((g.oldest_pending_age for g in queues), default=0.0)
    oldest_due = None
    if overdue:
        try:
            oldest_due = seen.now - timedelta(seconds=oldest)
        except OverflowError:  # a row due at the start of time (written by hand, say)
            oldest_due = datetime.min.replace(tzinfo=seen.now.tzinfo)
    return JobCounts(
        processing=sum(g.running for g in queues),
        expired=sum(g.stuck for g in queues),
        pending=sum(g.pending for g in queues),
        overdue=overdue,
        oldest_due=oldest_due,
        now=seen.now,
    )


def _job_checks(url: str, table: str, schema: str | None) -> list[Check]:
    """Can we read the table, and are jobs stuck (no worker running or reaping)?"""
    try:
        with JobQueue(url, table=table, schema=schema) as q:
            counts = count_jobs(q)
            paused = _paused_check(q)
            workers = _workers_check(q, counts)
            writes = _writes_check(q)
            schedules = _schedules_check(q, counts.now)
    except JobQueueError as exc:
        return [Check("access", "fail", exc.message, exc.hint)]
    checks = [Check("access", "ok", f"can read {table}"), writes]
    if counts.expired:
        checks.append(
            Check(
                "stuck jobs",
                "warn",
                f"{counts.expired} job(s) in processing past their lease: no worker is reaping",
                "start `jobqueue worker` (it reaps), or run `jobqueue reap`; read the worker's "
                "log (--log-file) for why it stopped",
            )
        )
    else:
        checks.append(
            Check("stuck jobs", "ok", f"{counts.processing} processing, none past its lease")
        )
    checks.append(paused)
    if counts.overdue:
        since = f", the oldest due since {counts.oldest_due:%Y-%m-%d %H:%M:%S} UTC"
        fix = "is a worker running for their queue? `jobqueue worker --queue NAME`"
        if paused.state == "warn":
            fix += "; or are they paused (above)?"
        checks.append(
            Check(
                "backlog",
                "warn",
                f"{counts.overdue} of {counts.pending} pending job(s) due for over a minute "
                f"and not claimed{since if counts.oldest_due else ''}",
                fix,
            )
        )
    else:
        checks.append(Check("backlog", "ok", f"{counts.pending} pending, none overdue"))
    checks.append(workers)
    checks.append(schedules)
    return checks


def _schedules_check(q: JobQueue, now: datetime) -> Check:
    """The periodic jobs: how many run and are paused, and a warning when a running one's
    tick is overdue at ``now`` (the database clock): no worker runs the scheduler."""
    try:
        schedules = q.list_schedules()
    except JobQueueError as exc:
        return Check("schedules", "warn", f"cannot read the schedules: {exc.message}", exc.hint)
    if not schedules:
        return Check("schedules", "ok", "none (`jobqueue schedule add` makes one)")
    paused = [s.name for s in schedules if not s.enabled]
    late = [s.name for s in schedules if s.enabled and s.next_tick < now - OVERDUE_AFTER]
    detail = f"{len(schedules) - len(paused)} running"
    if paused:
        detail += f", {len(paused)} paused ({', '.join(paused[:WORKERS_SHOWN])})"
    if late:
        return Check(
            "schedules",
            "warn",
            f"{detail}; {len(late)} overdue by over a minute ({', '.join(late[:WORKERS_SHOWN])})",
            "no worker runs the scheduler: start `jobqueue worker` (without --no-schedules)",
        )
    return Check("schedules", "ok", detail)


def refuses_writes(q: JobQueue) -> str | None:
    """Why the database would refuse a write now, read without writing: a new session of
    PostgreSQL's that begins read-only (``default_transaction_read_only``, as a provider
    sets when the disk fills up) or a standby; a SQLite connection made read-only. None
    when it would take one (a disk that is full shows only when a write fails: then
    workers log `DatabaseReadOnly` and back off)."""
    with q.engine.connect() as conn:
        if q.is_postgres:
            read_only, standby = conn.exec_driver_sql(
                "SELECT current_setting('transaction_read_only') = 'on', pg_is_in_recovery()"
            ).one()
            if standby:
                return "the server is a standby (in recovery)"
            return (
                "new sessions begin read-only (default_transaction_read_only)"
                if read_only
                else None
            )
        if conn.exec_driver_sql("PRAGMA query_only").scalar():
            return "the connection is read-only (PRAGMA query_only)"
    return None


def _writes_check(q: JobQueue) -> Check:
    """Whether the database takes writes: while it refuses them enqueue fails with
    `DatabaseReadOnly` and workers back off, keeping the outcomes they hold."""
    from ..drivers.errors import translated_errors

    try:
        with translated_errors(q.table_name):
            why = refuses_writes(q)
    except JobQueueError as exc:
        return Check("writes", "warn", f"cannot tell: {exc.message}", exc.hint)
    if why is None:
        return Check("writes", "ok", "the database takes writes")
    return Check(
        "writes",
        "fail",
        f"the database refuses writes: {why}; enqueue fails and workers back off, holding "
        "the outcomes of running jobs until writes come back",
        "make it writable again (free disk space, ALTER DATABASE ... RESET "
        "default_transaction_read_only, or point at the primary)",
    )


def _paused_check(q: JobQueue) -> Check:
    """What is paused, since when, until when and why: their jobs wait on purpose."""
    from .output import pause_text

    try:
        limits = q.list_limits(counts=False)
    except JobQueueError as exc:
        return Check("paused", "warn", f"cannot read the limits: {exc.message}", exc.hint)
    paused = [limit for limit in limits if limit.paused]
    if not paused:
        return Check("paused", "ok", f"nothing paused{_in_force(limits)}")
    return Check(
        "paused",
        "warn",
        "; ".join(pause_text(limit) for limit in paused),
        "`jobqueue resume NAME` (--key for a key) when their pending jobs should run",
    )


def _in_force(limits: list[Limit]) -> str:
    count = sum(1 for limit in limits if limit.in_force)
    return f"; {count} limits row(s) in force (`jobqueue limits show`)" if count else ""


#: Live workers named on the `check` line; `jobqueue workers` lists them all.
WORKERS_SHOWN = 5


def _workers_check(q: JobQueue, counts: JobCounts) -> Check:
    """The live workers, with their queues, concurrency and last beat; a warning when
    jobs wait and none is live."""
    try:
        workers = q.live_workers()
    except JobQueueError as exc:
        return Check("workers", "warn", f"cannot list the live workers: {exc.message}", exc.hint)
    if not workers:
        waiting = counts.pending + counts.processing
        if waiting:
            return Check(
                "workers",
                "warn",
                f"no live worker, and {waiting} job(s) pending or processing",
                "start one: `jobqueue worker` (with --queue for each queue to serve)",
            )
        return Check("workers", "ok", "no live worker (no job is waiting)")
    shown = "; ".join(
        f"{w.worker_id} (queues {', '.join(w.queues)}, concurrency {w.concurrency}, "
        f"beat {w.beat_age:.0f}s ago)"
        for w in workers[:WORKERS_SHOWN]
    )
    more = len(workers) - WORKERS_SHOWN
    if more > 0:
        shown += f"; and {more} more (`jobqueue workers` lists them)"
    return Check("workers", "ok", f"{len(workers)} live: {shown}")


def _generator_check() -> Check:
    from ..config import Settings

    try:
        settings = Settings.from_env()
        mock = settings.use_mock
    except ConfigurationError as exc:
        return Check("generator", "fail", exc.message, exc.hint)
    detail = settings.describe().removeprefix("generator: ")
    if mock:
        return Check(
            "generator",
            "ok",
            f"{detail} (no real images)",
            "set MOCK_AI=false and DEFAPI_API_KEY in .env for real generations",
        )
    return Check("generator", "ok", detail)
