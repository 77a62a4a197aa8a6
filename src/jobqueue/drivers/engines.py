"""Engines and URLs: which driver runs, and how its connections are set up.

Nothing above the driver layer knows which driver runs: URLs are normalised here (a plain
``postgresql://`` URL, as Supabase hands out, means psycopg 3), SQLite is set up here for
many writers (WAL, a busy timeout, ``BEGIN IMMEDIATE``), and PostgreSQL connections read
every time a column can hold. Driver exceptions become our own in `jobqueue.drivers.errors`.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, QueuePool
from sqlalchemy.util import await_only

from ..errors import ConfigurationError, redact
from ..models import END_OF_TIME, START_OF_TIME
from . import plans
from .errors import session_refuses_writes

DEFAULT_URL = "sqlite:///jobqueue.db"
URL_ENV = "JOBQUEUE_DATABASE_URL"

#: How long (seconds) one of our statements on PostgreSQL waits for a lock before it fails
#: with `jobqueue.errors.DatabaseBusy`, unless the queue is given ``lock_timeout`` or
#: ``JOBQUEUE_LOCK_TIMEOUT`` is set. Without a bound, a migration or a DBA holding
#: ``ACCESS EXCLUSIVE`` on the jobs table would keep every enqueue waiting for as long as
#: it holds it (and callers' requests would pile up behind them); with it, enqueue fails
#: clearly and workers back off and try again.
DEFAULT_LOCK_TIMEOUT = 5.0
LOCK_TIMEOUT_ENV = "JOBQUEUE_LOCK_TIMEOUT"

#: How long a SQLite writer waits for the write lock before giving up. Claims and
#: completions are short, so a long wait only happens under heavy multi-process load.
SQLITE_BUSY_TIMEOUT_MS = 60_000

#: How long one try of ``BEGIN IMMEDIATE`` lets SQLite's own busy handler wait for the write
#: lock before it tries again (`begin_immediate`). SQLite's handler sleeps longer and
#: longer between its looks at the lock (up to a tenth of a second each, once it has waited
#: a quarter of a second): a writer that has waited a while then misses most of the moments
#: the lock is free, and under a steady stream of writes from other processes it may wait
#: many times longer than anyone holds the lock. Short tries keep it looking every
#: millisecond or two for as long as it waits.
SQLITE_LOCK_TRY_MS = 5


def database_url(url: str | URL | None = None) -> str:
    """The URL to use: the argument, else ``JOBQUEUE_DATABASE_URL``, else a local SQLite file."""
    if url is not None:
        return url.render_as_string(hide_password=False) if isinstance(url, URL) else url
    return os.environ.get(URL_ENV) or DEFAULT_URL


def normalise_url(url: str | URL, *, asynchronous: bool) -> URL:
    """Pick our driver for a plain URL; keep an explicit ``+driver`` the caller chose."""
    try:
        u = make_url(url) if isinstance(url, str) else url
    except (sa_exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is no number
        raise ConfigurationError(
            f"not a database URL: {redact(str(url))}",
            hint="use e.g. sqlite:///jobqueue.db or postgresql://user@host/dbname",
        ) from exc
    if u.host and "@" in u.host:
        # An unencoded "@" in the password: the driver would take the password's tail for the
        # host name and print it in its "cannot resolve host" error.
        raise ConfigurationError(
            f"not a valid database URL: {redact(str(url))}",
            hint="percent-encode special characters in the password ('@' as %40)",
        ) from None
    backend, _, driver = u.drivername.partition("+")
    if backend in ("postgres", "postgresql"):
        if not driver or (driver == "psycopg2"):
            driver = "psycopg"
        if asynchronous and driver not in ("psycopg", "asyncpg", "psycopg_async"):
            driver = "psycopg"
        return u.set(drivername=f"postgresql+{driver}")
    if backend == "sqlite":
        if asynchronous:
            return u.set(drivername="sqlite+aiosqlite")
        return u.set(drivername="sqlite" if driver in ("", "aiosqlite") else f"sqlite+{driver}")
    raise ConfigurationError(
        f"unsupported database {backend!r}",
        hint="jobqueue supports SQLite (sqlite:///file.db) and PostgreSQL (postgresql://…)",
    )


#: Execution option marking a connection whose transaction only reads. On SQLite it begins
#: with a deferred ``BEGIN`` instead of ``BEGIN IMMEDIATE``, so readers (get, list, stats,
#: wait) never queue behind the write lock: in WAL mode they read the last committed state.
READ_ONLY = "jobqueue_read_only"

#: Key in a SQLite connection's ``info``: its transaction was begun on the connection's own
#: thread (`jobqueue.drivers.sqlite_thread`), so SQLAlchemy's next begin adopts it instead
#: of sending a BEGIN of its own.
BEGUN = "jobqueue_begun"


def lock_timeout_of(lock_timeout: float | None, backend: str) -> float:
    """The lock wait (seconds) an engine for ``backend`` uses: ``lock_timeout`` when given,
    else ``JOBQUEUE_LOCK_TIMEOUT``, else the backend's default (`DEFAULT_LOCK_TIMEOUT` on
    PostgreSQL; on SQLite `SQLITE_BUSY_TIMEOUT_MS`, since there every writer takes the one
    write lock in turn, and a busy moment is no stuck lock)."""
    source, shown = "lock_timeout", repr(lock_timeout)
    if lock_timeout is None:
        text = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
        if not text:
            if backend == "sqlite":
                return SQLITE_BUSY_TIMEOUT_MS / 1000
            return DEFAULT_LOCK_TIMEOUT
        source, shown = LOCK_TIMEOUT_ENV, repr(text)
        # Seconds, as `lock_timeout=` takes them, or with PostgreSQL's own units ("5s",
        # "500ms"), as `ALTER ROLE ... SET lock_timeout` and the docs write them.
        number, scale = text.lower(), 1.0
        if number.endswith("ms"):
            number, scale = number[:-2], 0.001
        elif number.endswith("s"):
            number = number[:-1]
        try:
            lock_timeout = float(number.strip()) * scale
        except ValueError:
            lock_timeout = -1.0
    if not 0 < lock_timeout < 86_400:  # also refuses NaN
        raise ConfigurationError(
            f"{source}={shown} is not a number of seconds between 0 and a day",
            hint=f"set {source} to a few seconds, e.g. 5 (or 5s, 500ms)",
        )
    return float(lock_timeout)


def _setup_sqlite(sync_engine: Engine, busy_ms: int | None = None) -> None:
    """Let many connections (and processes) share one SQLite file safely.

    pysqlite's own transaction handling is turned off so that every transaction that may
    write starts with ``BEGIN IMMEDIATE``: a writer takes the lock up front and waits for it
    (`begin_immediate`) instead of failing half-way with "database is locked".
    Transactions marked `READ_ONLY` begin deferred and take no write lock.
    """

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        # A TEXT column may hold bytes that are not UTF-8 (SQLite checks nothing): read
        # them with U+FFFD in place of the bad bytes rather than fail the whole read.
        record.driver_connection.text_factory = _lenient_text
        cursor = dbapi_connection.cursor()
        # The connection's lock wait: `begin_immediate` reads it back for its deadline.
        wait = SQLITE_BUSY_TIMEOUT_MS if busy_ms is None else busy_ms
        cursor.execute(f"PRAGMA busy_timeout = {int(wait)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.connection.info.pop(BEGUN, False):
            return
        if conn.get_execution_options().get(READ_ONLY, False):
            conn.exec_driver_sql("BEGIN")
            return
        driver = conn.connection.driver_connection
        try:
            if isinstance(driver, sqlite3.Connection):
                begin_immediate(driver)
            else:  # aiosqlite: the whole wait runs on the connection's own thread
                await_only(driver._execute(lambda: begin_immediate(driver._conn)))
        except (sqlite3.Error, ValueError) as exc:
            # Raised as SQLAlchemy raises a statement's error (aiosqlite says a closed
            # connection with a ValueError, which SQLAlchemy's adapter turns into this).
            error = exc if isinstance(exc, sqlite3.Error) else sqlite3.OperationalError(str(exc))
            wrapped = sa_exc.DBAPIError.instance(
                "BEGIN IMMEDIATE", None, error, sqlite3.Error, hide_parameters=True
            )
            raise wrapped from exc


def begin_immediate(raw: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE`` on a sqlite3 connection, waiting for the write lock for up to
    the connection's busy timeout (the engine's lock wait, `SQLITE_BUSY_TIMEOUT_MS` unless
    the queue was given ``lock_timeout``) in tries of `SQLITE_LOCK_TRY_MS` each (see there
    why); then SQLite's "database is locked", which the queue raises as
    `jobqueue.errors.DatabaseBusy`."""
    (wait_ms,) = raw.execute("PRAGMA busy_timeout").fetchone()
    deadline = time.monotonic() + wait_ms / 1000
    raw.execute(f"PRAGMA busy_timeout = {SQLITE_LOCK_TRY_MS}")
    try:
        while True:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() >= deadline:
                    raise
    finally:
        # Every other wait (a reader during recovery, a checkpoint) keeps the long timeout.
        raw.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")


def _drop_read_only_sessions(sync_engine: Engine) -> None:
    """A connection whose session refuses writes (`session_refuses_writes`) is handled as
    a lost one: SQLAlchemy drops it and every pooled connection opened before it, so that
    once the database takes writes again (read-only lifted, disk space freed) the next
    connections are new sessions that see it. The error itself is raised as ever
    (`jobqueue.errors.DatabaseReadOnly`)."""

    @event.listens_for(sync_engine, "handle_error")
    def _on_error(context: Any) -> None:
        if session_refuses_writes(context.original_exception):
            context.is_disconnect = True


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _setup_postgres(sync_engine: Engine) -> None:
    """Read every ``timestamptz`` the column can hold (see `jobqueue.models.END_OF_TIME`).

    psycopg refuses such values with ``DataError`` and asyncpg with ``OverflowError``
    (asyncpg reads the infinities, but not years past 9999 or BC), which would fail the
    whole read, a claim batch included. psycopg keeps its own (compiled) loader, wrapped;
    asyncpg gets a codec that reads the value as microseconds since 2000.

    Its connections may also run the worker's hot statements with generic plans
    (`jobqueue.drivers.plans`).
    """

    plans.allow(sync_engine)

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        raw = record.driver_connection
        if hasattr(raw, "set_type_codec"):  # asyncpg
            transport = getattr(raw, "_transport", None)
            sock = None if transport is None else transport.get_extra_info("socket")
            if sock is not None:
                _keepalive_socket(sock)
            dbapi_connection.run_async(
                lambda conn: conn.set_type_codec(
                    "timestamptz",
                    schema="pg_catalog",
                    encoder=_encode_pg_time,
                    decoder=_decode_pg_time,
                    format="tuple",
                )
            )
        elif hasattr(raw, "adapters"):  # psycopg 3, sync or async
            raw.adapters.register_loader("timestamptz", _tolerant_loader(raw.adapters))


def _tolerant_loader(adapters: Any) -> type[Any]:
    """A psycopg loader for ``timestamptz`` text that calls the loader psycopg uses now
    and reads what it refuses by `END_OF_TIME`'s rule."""
    from psycopg import DataError
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    inner = adapters.get_loader(adapters.types["timestamptz"].oid, Format.TEXT)

    class TolerantTimestamptzLoader(Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._load = inner(oid, context).load

        def load(self, data: Any) -> datetime:
            try:
                value: datetime = self._load(data)
            except DataError:
                text = bytes(data)
                before = text.startswith(b"-") or text.endswith(b"BC")
                return START_OF_TIME if before else END_OF_TIME
            return value

    return TolerantTimestamptzLoader


#: PostgreSQL keeps a ``timestamptz`` as microseconds since 2000-01-01 UTC; the largest and
#: smallest 64-bit values are ``infinity`` and ``-infinity``.
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_PG_INFINITY = 2**63 - 1


def _decode_pg_time(value: tuple[int]) -> datetime:
    microseconds = value[0]
    try:
        return _PG_EPOCH + timedelta(microseconds=microseconds)
    except OverflowError:
        return END_OF_TIME if microseconds > 0 else START_OF_TIME


def _encode_pg_time(value: datetime | date) -> tuple[int]:
    """A time as asyncpg's own codec sends it: a naive one in local time, except that
    naive ``datetime.max`` and ``min`` mean the infinities; a date at local midnight."""
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        if value == datetime.max:
            return (_PG_INFINITY,)
        if value == datetime.min:
            return (-_PG_INFINITY - 1,)
        value = value.astimezone()
    return ((value - _PG_EPOCH) // _MICROSECOND,)


#: No ping before each use of a pooled PostgreSQL connection: it would be a second round trip
#: for every queue operation (which is one statement). A connection that died (server
#: restart, idle timeout) fails the one operation that meets it; SQLAlchemy then discards
#: every pooled connection older than the failure, the worker retries with backoff, and
#: callers see `DatabaseUnavailable`. Pass ``pool_pre_ping=True`` to `make_engine` to trade
#: the round trip for never seeing that error.
PRE_PING = False


def _pooler_options(u: URL, kwargs: dict[str, Any]) -> URL:
    """Honour ``?prepare_threshold=none`` (or a number) in a PostgreSQL URL.

    Transaction-mode poolers (PgBouncer, Supabase's pooler on port 6543) run consecutive
    transactions on different server connections, so psycopg's server-side prepared
    statements (made after 5 runs of a statement) break there. The URL is what reaches every
    process (workers, CLI), so the switch lives in it; it is psycopg's own option name.
    """
    raw = u.query.get("prepare_threshold")
    if raw is None or u.get_driver_name() not in ("psycopg", "psycopg_async"):
        return u
    value = raw[-1] if isinstance(raw, tuple) else raw
    threshold: int | None
    if value.strip().lower() in ("none", "null", "off", "false", ""):
        threshold = None
    elif value.strip().isdigit():
        threshold = int(value)
    else:
        raise ConfigurationError(
            f"prepare_threshold must be a number or none, not {value!r}",
            hint="behind a transaction-mode pooler use ?prepare_threshold=none",
        )
    connect_args = dict(kwargs.get("connect_args") or {})
    connect_args.setdefault("prepare_threshold", threshold)
    kwargs["connect_args"] = connect_args
    return u.difference_update_query(["prepare_threshold"])


#: The longest one queue operation waits for PostgreSQL's answer by default (seconds), by
#: the client's own clock (`jobqueue.drivers.deadline`): the queue's ``command_timeout``.
DEFAULT_COMMAND_TIMEOUT = 30.0

#: TCP and connection settings every PostgreSQL connection gets unless its URL (or the
#: engine's ``connect_args``) says otherwise, so that a connection whose network went silent
#: is found dead in bounded time, by the operating system, even while idle in the pool:
#: keepalive probes after 30 s of silence, every 10 s, 3 unanswered ones drop it (about a
#: minute); data sent and not acknowledged for 30 s drops it (``tcp_user_timeout``, Linux);
#: a connection attempt gives up after 10 s. libpq's names; asyncpg gets the same socket
#: options and connect timeout (it has no parameters of its own for them).
PG_CONNECT_DEFAULTS: dict[str, int] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def _connect_defaults(u: URL, kwargs: dict[str, Any]) -> None:
    """`PG_CONNECT_DEFAULTS` as connect arguments, each unless the URL's query or the
    caller's ``connect_args`` set it already (theirs win)."""
    connect_args = dict(kwargs.get("connect_args") or {})
    if u.get_driver_name() == "asyncpg":
        if "timeout" not in u.query:
            connect_args.setdefault("timeout", PG_CONNECT_DEFAULTS["connect_timeout"])
    else:
        for key, value in PG_CONNECT_DEFAULTS.items():
            if key not in u.query:
                connect_args.setdefault(key, value)
    kwargs["connect_args"] = connect_args


def _keepalive_socket(sock: socket.socket) -> None:
    """`PG_CONNECT_DEFAULTS`' TCP settings on a socket a driver opened itself (asyncpg)."""
    d = PG_CONNECT_DEFAULTS
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, key in (
        ("TCP_KEEPIDLE", "keepalives_idle"),
        ("TCP_KEEPINTVL", "keepalives_interval"),
        ("TCP_KEEPCNT", "keepalives_count"),
        ("TCP_USER_TIMEOUT", "tcp_user_timeout"),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), d[key]))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:  # not a TCP socket (a Unix socket path), or not on this system
            return


def behind_transaction_pooler(u: URL) -> bool:
    """Whether ``u`` says its server is a transaction-mode pooler: it turns prepared
    statements off, as such a pooler needs (``?prepare_threshold=none`` for psycopg,
    ``?prepared_statement_cache_size=0`` for asyncpg)."""
    raw = u.query.get("prepare_threshold") or u.query.get("prepared_statement_cache_size")
    if raw is None:
        return False
    value = (raw[-1] if isinstance(raw, tuple) else raw).strip().lower()
    return value in ("none", "null", "off", "false", "", "0")


def _lock_timeout_option(u: URL, kwargs: dict[str, Any], seconds: float) -> None:
    """Start every PostgreSQL session with ``lock_timeout``, as a startup parameter: no
    round trip, and no statement that could find the setting missing.

    Not behind a transaction-mode pooler (`behind_transaction_pooler`): PgBouncer refuses a
    connection that brings startup parameters it does not know ("unsupported startup
    parameter"), and a session ``SET`` would stay on whichever server connection ran it.
    There the setting belongs to the role (``ALTER ROLE ... SET lock_timeout``), which the
    server applies to every connection the pooler opens (docs/operations.md).
    A ``lock_timeout`` the caller put in the connection's options already is kept.
    """
    if behind_transaction_pooler(u):
        return
    ms = max(1, round(seconds * 1000))
    connect_args = dict(kwargs.get("connect_args") or {})
    if u.get_driver_name() == "asyncpg":
        settings = dict(connect_args.get("server_settings") or {})
        settings.setdefault("lock_timeout", str(ms))
        connect_args["server_settings"] = settings
    else:
        given = connect_args.get("options") or u.query.get("options") or ""
        given = given[-1] if isinstance(given, tuple) else given
        if "lock_timeout" not in given:
            connect_args["options"] = f"{given} -c lock_timeout={ms}".strip()
    kwargs["connect_args"] = connect_args


def _utc_session_option(u: URL, kwargs: dict[str, Any]) -> None:
    """Start every psycopg session with ``TimeZone=UTC``, as a startup parameter.

    The queue's SQL names UTC wherever the zone matters (``AT TIME ZONE 'UTC'``) and reads
    every time back as UTC (`jobqueue.sql.dialect.UTCDateTime`), so the session's zone
    changes no value. It changes what decoding costs: psycopg maps only the zone named
    ``UTC`` to `datetime.timezone.utc`; any other name, ``Etc/UTC`` included, becomes a
    `zoneinfo` zone that its ``timestamptz`` loader converts each value to, and a claimed
    job has five times. Not behind a transaction-mode pooler (see `_lock_timeout_option`), nor
    when the caller's options set a time zone already; asyncpg reads times with the
    codec `_setup_postgres` registers, whatever the zone.
    """
    if behind_transaction_pooler(u) or u.get_driver_name() not in ("psycopg", "psycopg_async"):
        return
    connect_args = dict(kwargs.get("connect_args") or {})
    given = connect_args.get("options") or u.query.get("options") or ""
    given = given[-1] if isinstance(given, tuple) else given
    if "timezone" not in given.lower():
        connect_args["options"] = f"{given} -c TimeZone=UTC".strip()
    kwargs["connect_args"] = connect_args


def _engine_settings(
    url: str | URL | None,
    kwargs: dict[str, Any],
    *,
    asynchronous: bool,
    lock_timeout: float | None,
) -> tuple[URL, dict[str, Any], float]:
    """The URL, engine options and lock wait both `make_engine` and `make_async_engine` use.

    Statement parameters are kept out of SQLAlchemy's error messages
    (``hide_parameters=True``): they hold payloads and results (user data), and a failed
    batched completion would otherwise print hundreds of them into a log.
    """
    kwargs.setdefault("hide_parameters", True)
    u = normalise_url(database_url(url), asynchronous=asynchronous)
    wait = lock_timeout_of(lock_timeout, u.get_backend_name())
    if u.get_backend_name() == "sqlite":
        return u, kwargs, wait
    kwargs.setdefault("pool_pre_ping", PRE_PING)
    _connect_defaults(u, kwargs)
    _lock_timeout_option(u, kwargs, wait)
    _utc_session_option(u, kwargs)
    return _pooler_options(u, kwargs), kwargs, wait


def make_engine(
    url: str | URL | Engine | None = None, *, lock_timeout: float | None = None, **kwargs: Any
) -> Engine:
    """A sync engine for ``url`` set up for jobqueue (an `Engine` is returned as it is).

    ``lock_timeout``: how long (seconds) a statement waits for a lock before it fails with
    `jobqueue.errors.DatabaseBusy` (see `lock_timeout_of` for the default)."""
    if isinstance(url, Engine):
        return url
    u, options, wait = _engine_settings(url, kwargs, asynchronous=False, lock_timeout=lock_timeout)
    engine = create_engine(u, **options)
    if u.get_backend_name() == "sqlite":
        _setup_sqlite(engine, round(wait * 1000))
    else:
        _setup_postgres(engine)
    _drop_read_only_sessions(engine)
    return engine


def make_async_engine(
    url: str | URL | AsyncEngine | None = None,
    *,
    lock_timeout: float | None = None,
    **kwargs: Any,
) -> AsyncEngine:
    """The asyncio twin of `make_engine`."""
    if isinstance(url, AsyncEngine):
        return url
    u, options, wait = _engine_settings(url, kwargs, asynchronous=True, lock_timeout=lock_timeout)
    engine = create_async_engine(u, **options)
    if u.get_backend_name() == "sqlite":
        _setup_sqlite(engine.sync_engine, round(wait * 1000))
    else:
        _setup_postgres(engine.sync_engine)
    _drop_read_only_sessions(engine.sync_engine)
    return engine


def statements_outlive_cancellation(engine: Engine | AsyncEngine) -> bool:
    """Whether a statement whose await is cancelled carries on without its caller.

    aiosqlite runs each call on its connection's own thread, which finishes a call whose
    await was cancelled. SQLAlchemy takes the cancellation for a lost connection and
    closes it; the cancelled statement's cursor, still held by the cancellation's
    traceback, keeps SQLite from closing it for good, so the connection lingers with its
    transaction open and the write lock taken, and every other writer (the close of a
    connection queued behind one of them too) waits for it. The queue therefore lets such
    an operation finish before the cancellation goes on (`jobqueue.queue`). psycopg and
    asyncpg stop the statement on the server and close the connection, which the server
    rolls back: their operations stay cancellable at once.
    """
    return engine.dialect.driver == "aiosqlite"


def pool_capacity(engine: Engine | AsyncEngine) -> int | None:
    """How many connections ``engine``'s pool hands out at most (``pool_size`` plus
    ``max_overflow``); None when it has no such bound (a pool that opens a connection for
    each checkout, or an unlimited overflow), 0 when it is not a queue pool."""
    pool = engine.pool
    if isinstance(pool, NullPool):
        return None
    if not isinstance(pool, QueuePool | AsyncAdaptedQueuePool):
        return 0
    overflow = getattr(pool, "_max_overflow", 0)
    return None if overflow < 0 else pool.size() + overflow


def describe_url(url: str | URL) -> str:
    """A URL safe to print: no password."""
    try:
        u = make_url(url) if isinstance(url, str) else url
    except (sa_exc.ArgumentError, ValueError):
        return redact(str(url))
    return redact(u.render_as_string(hide_password=True))


def sqlite_path(url: str | URL) -> Path | None:
    """The absolute path of a SQLite database file (None for other databases and memory).

    A relative ``sqlite:///jobqueue.db`` is a different file in every working directory:
    shown absolute, two directories are not silently two databases.
    """
    try:
        u = make_url(url) if isinstance(url, str) else url
    except (sa_exc.ArgumentError, ValueError):
        return None
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database).absolute()


def describe_database(url: str | URL) -> str:
    """Which database ``url`` is, safe to print: a SQLite file by its absolute path, any
    other database by its URL without the password (`describe_url`)."""
    path = sqlite_path(url)
    return f"SQLite file {path}" if path is not None else describe_url(url)
