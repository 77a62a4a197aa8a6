"""What `jobqueue check` examines: the seed's "what if it does not work" list, as checks.

Each `Check` is one line of the report: the database answers, the schema is installed and
current, the jobs table is readable, no job is stuck past its lease or waiting unclaimed,
and a generator is configured. A failed check carries its fix, so the report reads as a
to-do list. The checks only read; nothing is created or changed (a missing SQLite file is
reported, not created by connecting to it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .database import describe_url
from .errors import ConfigurationError, JobQueueError, PermissionDenied
from .queue import JobQueue
from .schema import DEFAULT_TABLE, Job, Status


@dataclass(frozen=True)
class Check:
    """One line of `jobqueue check`: what was checked, how it went, and how to fix it."""

    name: str
    state: str  # "ok", "warn", "fail" or "skip"
    detail: str
    fix: str = ""


def sqlite_file_missing(url: str) -> Path | None:
    """The path of a SQLite database file that does not exist (connecting would create it)."""
    from sqlalchemy import make_url

    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    path = Path(u.database)
    return None if path.exists() else path


def run_checks(url: str, *, table: str = DEFAULT_TABLE, schema: str | None = None) -> list[Check]:
    """The seed's "what if it does not work" list, each item checked against the database."""
    from .migrations import schema_state, version_table

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
            checks.append(Check("database", "ok", f"reachable: {describe_url(url)}"))
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
            checks.append(Check("database", "ok", f"reachable: {describe_url(url)}"))
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


#: How many processing and pending jobs `check` reads (newest first) to look for stuck ones.
CHECK_SAMPLE = 1000


def _job_checks(url: str, table: str, schema: str | None) -> list[Check]:
    """Can we read the table, and are jobs stuck (no worker running or reaping)?"""
    try:
        with JobQueue(url, table=table, schema=schema) as q:
            processing = q.list(status=Status.PROCESSING, limit=CHECK_SAMPLE)
            pending = q.list(status=Status.PENDING, limit=CHECK_SAMPLE)
    except JobQueueError as exc:
        return [Check("access", "fail", exc.message, exc.hint)]
    checks = [Check("access", "ok", f"can read {table}")]
    # This machine's clock, not the database's: fine for a diagnosis in seconds and minutes
    # (the reaper itself, which acts, uses the database clock).
    now = datetime.now(UTC)
    expired = [j for j in processing if j.lease_expires_at and j.lease_expires_at < now]
    if expired:
        checks.append(
            Check(
                "stuck jobs",
                "warn",
                f"{_count(expired)} job(s) in processing past their lease: no worker is reaping",
                "start `jobqueue worker` (it reaps), or run `jobqueue reap`; read the worker's "
                "log (--log-file) for why it stopped",
            )
        )
    else:
        checks.append(
            Check("stuck jobs", "ok", f"{_count(processing)} processing, none past its lease")
        )
    waiting = [j for j in pending if (now - j.run_at) > timedelta(minutes=1)]
    if waiting:
        checks.append(
            Check(
                "backlog",
                "warn",
                f"{_count(waiting)} job(s) due for over a minute and not claimed",
                "is a worker running for their queue? `jobqueue worker --queue NAME`",
            )
        )
    else:
        checks.append(Check("backlog", "ok", f"{_count(pending)} pending, none overdue"))
    return checks


def _count(jobs: Sequence[Job]) -> str:
    return f"{len(jobs)}+" if len(jobs) >= CHECK_SAMPLE else str(len(jobs))


def _generator_check() -> Check:
    from .config import Settings

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
