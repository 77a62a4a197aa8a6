"""Driver errors as our own (`jobqueue.errors`): what went wrong, in words that say what to do.

PostgreSQL names every error it raises with a SQLSTATE code, and both of its drivers hand
it on (psycopg as ``exc.sqlstate``, asyncpg as ``sqlstate``, also on SQLAlchemy's wrapper of
an asyncpg error): errors are sorted by that code, whatever language the server speaks.
sqlite3 gives no code, so SQLite's errors are sorted by their (English, fixed) text.
An error that fits none of the rules is not ours to explain and passes through unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

from sqlalchemy import exc as sa_exc

from ..errors import (
    DatabaseBusy,
    DatabaseReadOnly,
    DatabaseTimeout,
    DatabaseUnavailable,
    JobQueueError,
    PayloadError,
    PermissionDenied,
    SchemaNotInstalled,
    redact,
)
from ..sql.table import companion_table_names


class Cause(Enum):
    """What a database error means for jobqueue."""

    MISSING_TABLE = "missing table"
    #: The jobs table is there but predates what a statement names: a column (revision
    #: 0005 added ``turn`` and ``limit_key``), or the index an INSERT ... ON CONFLICT
    #: needs (revision 0003 scoped idempotency keys per owner).
    OLD_SCHEMA = "old schema"
    NO_PERMISSION = "no permission"
    OUT_OF_BOUNDS = "out of bounds"
    #: A lock stayed taken past ``lock_timeout`` (SQLite: the write lock past its wait).
    BUSY = "busy"
    #: The database refuses writes: read-only, or out of disk space.
    READ_ONLY = "read only"


#: PostgreSQL's SQLSTATE codes, by what they mean here.
BY_SQLSTATE: dict[str, Cause] = {
    "42P01": Cause.MISSING_TABLE,  # undefined_table
    "42703": Cause.OLD_SCHEMA,  # undefined_column: a table older than its statements
    "42P10": Cause.OLD_SCHEMA,  # invalid_column_reference (no index for ON CONFLICT)
    "42501": Cause.NO_PERMISSION,  # insufficient_privilege, row-level security included
    "23514": Cause.OUT_OF_BOUNDS,  # check_violation
    "55P03": Cause.BUSY,  # lock_not_available: lock_timeout ran out (or NOWAIT)
    "25006": Cause.READ_ONLY,  # read_only_sql_transaction
    "53100": Cause.READ_ONLY,  # disk_full
}

#: SQLSTATE classes of a connection that is gone or a server that will not serve: 08
#: connection exception, 57P01-57P03 the server shutting down or starting up.
UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03")

#: SQLite's messages (sqlite3 gives no SQLSTATE), lower case, by what they mean here.
SQLITE_TEXT: tuple[tuple[str, Cause], ...] = (
    ("no such table", Cause.MISSING_TABLE),
    ("no such column", Cause.OLD_SCHEMA),  # in a query
    ("has no column named", Cause.OLD_SCHEMA),  # in an INSERT's column list
    ("on conflict clause does not match any primary key or unique constraint", Cause.OLD_SCHEMA),
    ("check constraint failed", Cause.OUT_OF_BOUNDS),
    # Its busy wait ran out: another connection held the write lock all along.
    ("database is locked", Cause.BUSY),
    ("attempt to write a readonly database", Cause.READ_ONLY),
    ("database or disk is full", Cause.READ_ONLY),
)
#: What to do about a SQLite file that refuses writes (`DatabaseReadOnly`'s own hint is
#: about a server: its settings, its standby).
SQLITE_READ_ONLY_HINT = (
    "make the database file and its folder writable by this user (the journal is written "
    "beside the file), or free disk space; jobs resume by themselves"
)
#: SQLite's "database is locked" (its busy timeout ran out) is an operational error that
#: does not mean the database is unreachable.
SQLITE_BUSY = "locked"


def sqlstate(error: BaseException | None) -> str | None:
    """The SQLSTATE a driver error carries: psycopg's and asyncpg's own errors have it, and
    so has SQLAlchemy's wrapper of an asyncpg error (else the asyncpg error it wraps)."""
    if error is None:
        return None
    code = getattr(error, "sqlstate", None)
    if code is None and error.__cause__ is not None:
        code = getattr(error.__cause__, "sqlstate", None)
    return code if isinstance(code, str) else None


#: SQLSTATE of a write refused because the session began read-only
#: (``default_transaction_read_only``, which a session reads once, when it starts).
READ_ONLY_SESSION = "25006"


def session_refuses_writes(error: BaseException | None) -> bool:
    """Whether ``error`` says this session will refuse every write, whatever the database
    says now: a PostgreSQL session begun while the database was read-only keeps that
    default for as long as it lives, and a SQLite connection that opened its file
    read-only stays so. Such a connection is dropped (`jobqueue.drivers.engines`,
    `jobqueue.drivers.raw`), so that once writes are back the next one accepts them."""
    if sqlstate(error) == READ_ONLY_SESSION:
        return True
    return _from_sqlite(error) and "readonly database" in str(error).lower()


def _cause(orig: BaseException | None, text: str) -> Cause | None:
    code = sqlstate(orig)
    if code is not None:
        return BY_SQLSTATE.get(code)
    if _from_sqlite(orig):
        for marker, cause in SQLITE_TEXT:
            if marker in text:
                return cause
    return None


def _names_a_later_table(text: str, table: str) -> bool:
    """Whether the (lower-case) error ``text`` names one of the tables that later revisions
    added next to the jobs table ``table``: its live workers (0004), its limits (0005), its
    budgets (0007), its schedules (0009)."""
    return any(name.lower() in text for name in companion_table_names(table))


def translate(exc: BaseException, *, table: str) -> JobQueueError | None:
    """Our error for a driver error, or None when it is not one we can explain better."""
    if isinstance(exc, JobQueueError):
        return exc
    if not isinstance(exc, sa_exc.DBAPIError):
        if isinstance(exc, sa_exc.TimeoutError):
            # Every pooled connection busy for pool_timeout: with a silent network, each
            # waits out command_timeout first. A 503 for the web API, not a 500.
            return DatabaseTimeout(f"no database connection came free in time: {exc}")
        if isinstance(exc, TimeoutError):  # asyncpg's connect timeout, unwrapped
            return DatabaseTimeout("could not connect to the database in time")
        if isinstance(exc, OSError | ConnectionError):
            return DatabaseUnavailable(f"cannot reach the database: {redact(str(exc))}")
        return None
    orig = exc.orig
    text = redact(str(orig if orig is not None else exc)).lower()
    first_line = redact(str(orig if orig is not None else exc)).strip().splitlines()[0:1]
    detail = first_line[0] if first_line else type(exc).__name__
    cause = _cause(orig, text)
    if cause is Cause.MISSING_TABLE and _names_a_later_table(text, table):
        # The jobs table is there; a table a later revision added next to it is not.
        cause = Cause.OLD_SCHEMA
    if cause is Cause.NO_PERMISSION:
        return PermissionDenied(f"the database refused access to {table}: {detail}")
    if cause is Cause.MISSING_TABLE:
        return SchemaNotInstalled(f"the jobs table {table!r} is not installed ({detail})")
    if cause is Cause.OLD_SCHEMA:
        return SchemaNotInstalled(
            f"the jobs table {table!r} is older than this version of jobqueue ({detail})"
        )
    if cause is Cause.OUT_OF_BOUNDS:
        # The library checks every value it writes against the same bounds, so this is a
        # row stored by another client before the bounds existed (migration 0003).
        return PayloadError(
            f"a job in {table} holds a value outside the table's bounds ({detail})",
            hint="correct the job's values (the constraint named says which) and try again",
        )
    if _connect_timed_out(orig):
        return DatabaseTimeout(f"could not connect to the database in time: {detail}")
    if cause is Cause.BUSY:
        return DatabaseBusy(f"a lock on {table} stayed taken too long; nothing written ({detail})")
    if cause is Cause.READ_ONLY:
        message = f"the database refuses writes; nothing written ({detail})"
        if _from_sqlite(orig):  # the server-side remedies of the default hint do not apply
            return DatabaseReadOnly(message, hint=SQLITE_READ_ONLY_HINT)
        return DatabaseReadOnly(message)
    if _unreachable(exc, text):
        return DatabaseUnavailable(f"database error: {detail}")
    return None


def _unreachable(exc: sa_exc.DBAPIError, text: str) -> bool:
    """Whether ``exc`` says the database cannot be used right now: the connection was lost
    (SQLAlchemy invalidated it), the driver's operational or interface errors (a refused or
    broken connection, a timeout, a deadlock: worth a retry later), or the server says so."""
    code = sqlstate(exc.orig)
    if code is not None and code.startswith(UNREACHABLE_SQLSTATES):
        return True
    if not (
        exc.connection_invalidated
        or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    ):
        return False
    return not (_from_sqlite(exc.orig) and SQLITE_BUSY in text)


def _connect_timed_out(error: BaseException | None) -> bool:
    """Whether ``error`` is a connection attempt that ran out of its ``connect_timeout``
    (psycopg's ``ConnectionTimeout``; asyncpg raises the built-in `TimeoutError`)."""
    return isinstance(error, TimeoutError) or type(error).__name__ == "ConnectionTimeout"


def _from_sqlite(error: BaseException | None) -> bool:
    """Whether ``error`` is sqlite3's (aiosqlite raises sqlite3's errors too)."""
    return type(error).__module__ == "sqlite3"


@contextmanager
def translated_errors(table: str) -> Iterator[None]:
    """Raise our error (`translate`) in place of a driver error that has one."""
    try:
        yield
    except JobQueueError:
        raise
    except Exception as exc:
        ours = translate(exc, table=table)
        if ours is None:
            raise
        raise ours from exc
