"""jobqueue's own Alembic migrations, shipped inside the package.

`migrate` applies them; `sql` prints them as PostgreSQL SQL for the Supabase SQL Editor;
`schema_state` says whether a database is installed and current; `include_object` keeps a
host application's autogenerate away from our table. The version table is named after the
jobs table (``generation_jobs_alembic_version`` by default), never ``alembic_version``, so
our history and the host's never meet.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, Engine, inspect, make_url, text
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from alembic import command

from ..drivers.engines import database_url, make_engine, normalise_url
from ..drivers.errors import translated_errors
from ..errors import ConfigurationError, DatabaseBusy, PermissionDenied
from ..models import DEFAULT_TABLE
from ..sql.table import (
    companion_table_names,
    validate_identifier,
    validate_table_name,
)
from ..sql.table import version_table as version_table  # documented here too

SCRIPT_LOCATION = "jobqueue:migrations"

log = logging.getLogger("jobqueue.migrations")


@dataclass(frozen=True)
class Target:
    """The jobs table a migration run works on, with its names ready for raw SQL."""

    name: str
    schema: str | None
    dialect: str

    @property
    def qualified(self) -> str:
        """Schema-qualified, quoted name (identifiers are validated, so quoting is enough)."""
        return f'"{self.schema}"."{self.name}"' if self.schema else f'"{self.name}"'

    def qualify(self, name: str) -> str:
        validate_identifier(name)
        return f'"{self.schema}"."{name}"' if self.schema else f'"{name}"'

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel that inserts into this table signal on."""
        return self.name


@dataclass(frozen=True)
class TableWork:
    """What a revision does to an existing jobs table, declared by each revision as
    ``TABLE_WORK`` (listed in docs/operations.md, and as a comment in `sql`'s script).

    Each run of `migrate` holds the strongest lock any of its revisions takes until it
    commits (one transaction), so the longest of them bounds how long enqueue and claim
    wait (each for at most its own ``lock_timeout``, then `DatabaseBusy`)."""

    #: The table lock PostgreSQL takes and what it holds it for.
    locks: str
    #: Whether PostgreSQL copies the whole table (none of ours does).
    rewrites: bool
    #: Whether SQLite copies the whole table.
    sqlite_rewrites: bool

    def comment(self) -> str:
        """One SQL comment line for the PostgreSQL script."""
        copies = "rewrites the table" if self.rewrites else "no rewrite"
        return f"-- jobs table: {copies}; lock: {self.locks}"


def table_work(revision: str) -> TableWork:
    """The `TableWork` that ``revision`` declares."""
    script = ScriptDirectory.from_config(_config(DEFAULT_TABLE, None)).get_revision(revision)
    assert script is not None and script.module is not None
    work: TableWork = script.module.TABLE_WORK
    return work


def target() -> Target:
    """The current run's target, for use inside revision scripts."""
    from alembic import context

    value: Target = context.config.attributes["jobqueue_target"]
    return value


def _config(table: str, schema: str | None) -> Config:
    validate_table_name(table)
    if schema is not None:
        validate_identifier(schema, "schema name")
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["jobqueue_table"] = table
    cfg.attributes["jobqueue_schema"] = schema
    return cfg


def run_env(context: Any) -> None:
    """The body of ``env.py``: configure Alembic for our table and run the revisions.

    Run by the ``alembic`` command itself (not through `migrate`), its engine comes from
    `make_engine`, so every statement waits for a lock at most the engine's lock timeout
    (`jobqueue.drivers.engines.lock_timeout_of`) and then fails, the revisions rolled back
    with it; `migrate` adds a shorter wait and the retries."""
    cfg = context.config
    x = context.get_x_argument(as_dictionary=True)
    table = cfg.attributes.get("jobqueue_table") or x.get("table") or DEFAULT_TABLE
    schema = cfg.attributes.get("jobqueue_schema") or x.get("schema") or None
    validate_table_name(table)
    if schema is not None:
        validate_identifier(schema, "schema name")
    options: dict[str, Any] = {
        "target_metadata": None,
        "version_table": version_table(table),
        "version_table_schema": schema,
    }
    if context.is_offline_mode():
        url = normalise_url(
            cfg.attributes.get("url") or x.get("url") or database_url(), asynchronous=False
        )
        cfg.attributes["jobqueue_target"] = Target(table, schema, url.get_backend_name())
        context.configure(
            url=url,
            literal_binds=True,
            dialect_opts={"paramstyle": "named"},
            # `migration_statements` renders one revision at a time and wraps each itself.
            transactional_ddl=not cfg.attributes.get("jobqueue_bare", False),
            **options,
        )
        with context.begin_transaction():
            context.run_migrations()
        return

    def run(connection: Connection) -> None:
        dialect = connection.dialect.name
        cfg.attributes["jobqueue_target"] = Target(table, schema, dialect)
        context.configure(connection=connection, render_as_batch=dialect == "sqlite", **options)
        with context.begin_transaction():
            context.run_migrations()

    connection = cfg.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    engine = make_engine(x.get("url") or database_url())
    try:
        with engine.connect() as conn:
            run(conn)
            conn.commit()
    finally:
        engine.dispose()


#: How long (seconds) one statement of a migration waits for a lock on PostgreSQL, and how
#: many times a run that met a lock held longer is tried (all or nothing each time: the
#: revisions run in one transaction). A DDL statement waiting for its lock blocks every
#: statement that comes after it on the table, enqueue and claim included: a short wait
#: given up and tried again later keeps the queue moving while, say, a long report reads
#: the table.
MIGRATION_LOCK_TIMEOUT = 2.0
MIGRATION_ATTEMPTS = 10
#: The longest pause between two tries (they grow from half a second).
MIGRATION_RETRY_CAP = 15.0


def migrate(
    url: str | URL | Engine | None = None,
    *,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    revision: str = "head",
    lock_timeout: float = MIGRATION_LOCK_TIMEOUT,
    attempts: int = MIGRATION_ATTEMPTS,
) -> None:
    """Bring the database at ``url`` (an `Engine`, or ``JOBQUEUE_DATABASE_URL``) to
    ``revision``. Safe to run repeatedly and from several processes at once on PostgreSQL
    (each run takes a transaction-level advisory lock first).

    Every revision runs in one transaction. On PostgreSQL each statement waits at most
    ``lock_timeout`` seconds for its lock; a run that waited longer is rolled back whole
    and tried again, ``attempts`` times in all, with growing pauses, and then fails with
    `DatabaseBusy`, the database as it was (docs/operations.md lists what each revision
    locks). On SQLite a run waits for the write lock as every writer does."""
    if not 0 < lock_timeout < 86_400 or attempts < 1:
        raise ConfigurationError(
            f"migrate needs a lock_timeout in (0, 86400) seconds and attempts >= 1, not "
            f"{lock_timeout!r} and {attempts!r}",
        )
    cfg = _config(table, schema)
    engine = make_engine(url)
    retrying = Retrying(
        retry=retry_if_exception_type(DatabaseBusy),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=MIGRATION_RETRY_CAP) + wait_random(0, 0.5),
        before_sleep=_log_lock_wait,
        reraise=True,
    )
    try:
        retrying(_migrate_once, engine, cfg, table, schema, revision, lock_timeout)
    except DatabaseBusy as exc:
        raise DatabaseBusy(
            f"migrating {table} gave up after {attempts} tries: another session held a lock "
            f"it needs for longer than {lock_timeout:g}s each time; nothing was changed",
            hint="find the holder in pg_locks / pg_stat_activity (a long transaction, a "
            "LOCK TABLE) and run `jobqueue migrate` again once it is gone",
        ) from exc
    finally:
        if not isinstance(url, Engine):
            engine.dispose()


def _migrate_once(
    engine: Engine,
    cfg: Config,
    table: str,
    schema: str | None,
    revision: str,
    lock_timeout: float,
) -> None:
    """One try of `migrate`: all its revisions in one transaction."""
    with translated_errors(table), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Another migration of this table is waited for as long as it runs...
            conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
            conn.exec_driver_sql(
                "SELECT pg_advisory_xact_lock(hashtext('jobqueue:' || %s))",
                (f"{schema}.{table}",),
            )
            # ...but the table's users only as long as a short wait (see migrate).
            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, round(lock_timeout * 1000))}")
            if schema is not None:
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _log_lock_wait(state: RetryCallState) -> None:
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning(
        "migration try %d met a lock held too long (rolled back, nothing changed); "
        "trying again in %.1fs",
        state.attempt_number,
        wait,
    )


def _offline(table: str, schema: str | None, url: str, spec: str) -> str:
    """Alembic's offline rendering of ``spec`` (``rev`` or ``from:to``), with no BEGIN/COMMIT."""
    cfg = _config(table, schema)
    cfg.attributes["url"] = url
    cfg.attributes["jobqueue_bare"] = True
    out = io.StringIO()
    cfg.output_buffer = out
    command.upgrade(cfg, spec, sql=True)
    return out.getvalue().strip()


#: Dollar-quote tags of the guarded steps; no revision's SQL may contain them.
_STEP_TAG = "$jobqueue_step$"
_SQL_TAG = "$jobqueue_sql$"


def migration_statements(
    *,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    url: str = "postgresql://",
    start: str | None = None,
    revision: str = "head",
) -> list[str]:
    """The migrations as PostgreSQL statements that are safe to run again, in order.

    Each revision is one ``DO`` block that runs the revision's SQL only where the database
    stands just before it (read from our version table), so a second paste changes
    nothing, and a script from a newer version brings an older database up to date.
    """
    validate_table_name(table)
    if schema is not None:
        validate_identifier(schema, "schema name")
    if make_url(url).get_backend_name() != "postgresql":
        raise ConfigurationError(
            "the migrations are printed as SQL for PostgreSQL only",
            hint="run `jobqueue migrate` against SQLite instead",
        )
    scripts = ScriptDirectory.from_config(_config(table, schema))
    chain = list(reversed(list(scripts.walk_revisions(head=revision))))
    if start is not None:
        ids = [s.revision for s in chain]
        chain = chain[ids.index(start) + 1 :] if start in ids else chain
    where = Target(table, schema, "postgresql")
    versions = where.qualify(version_table(table))
    out = [f'CREATE SCHEMA IF NOT EXISTS "{schema}"'] if schema is not None else []
    for step in chain:
        down = step.down_revision
        assert down is None or isinstance(down, str), "jobqueue's history is linear"
        text = _offline(table, schema, url, f"{down}:{step.revision}" if down else step.revision)
        assert _STEP_TAG not in text and _SQL_TAG not in text
        before = (
            f"to_regclass('{versions}') IS NULL"
            if down is None
            else f"EXISTS (SELECT FROM {versions} WHERE version_num = '{down}')"
        )
        out.append(
            f"-- revision {step.revision}: {step.doc.splitlines()[0]}\n"
            f"{step.module.TABLE_WORK.comment()}\n"
            f"DO {_STEP_TAG} BEGIN IF {before} THEN EXECUTE {_SQL_TAG}\n{text}\n{_SQL_TAG}; "
            f"END IF; END {_STEP_TAG}"
        )
    return out


def sql(
    *,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    url: str = "postgresql://",
    start: str | None = None,
    revision: str = "head",
) -> str:
    """The migrations as one SQL script for the Supabase SQL Editor or psql: one
    transaction, safe to run again (see `migration_statements`)."""
    statements = migration_statements(
        table=table, schema=schema, url=url, start=start, revision=revision
    )
    where = f"{schema}.{table}" if schema else table
    header = (
        f"-- jobqueue: the jobs table {where} and its version table {version_table(table)}\n"
        "-- Safe to run again: each revision runs only where the database stands before it.\n"
        f"{LOCK_TIMEOUT_NOTE}"
    )
    return (
        f"{header}BEGIN;\n{LOCK_TIMEOUT_SQL};\n\n"
        + ";\n\n".join(statements)
        + ";\n\nCOMMIT;\n"
    )


#: The script's first statement: it waits for the jobs table's lock as `migrate` does, so
#: that a paste while a long transaction reads the table fails (and changes nothing)
#: instead of stalling every enqueue and claim behind it.
LOCK_TIMEOUT_SQL = f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_TIMEOUT:g}s'"
LOCK_TIMEOUT_NOTE = (
    f"-- Waits at most {MIGRATION_LOCK_TIMEOUT:g}s for each lock (\"canceling statement due to "
    "lock timeout\": nothing changed; run it again).\n"
)


@dataclass(frozen=True)
class SchemaState:
    """What `jobqueue check` reports about a database."""

    table_exists: bool
    current: str | None
    head: str

    @property
    def installed(self) -> bool:
        return self.table_exists and self.current is not None

    @property
    def up_to_date(self) -> bool:
        return self.installed and self.current == self.head


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config(DEFAULT_TABLE, None)).get_current_head()
    assert head is not None
    return head


def schema_state(
    url: str | URL | Engine | None = None,
    *,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
) -> SchemaState:
    validate_table_name(table)  # before any SQL, like every other entry point
    if schema is not None:
        validate_identifier(schema, "schema name")
    engine = make_engine(url)
    try:
        with translated_errors(table), engine.connect() as conn:
            exists = inspect(conn).has_table(table, schema=schema)
            ctx = MigrationContext.configure(
                conn,
                opts={"version_table": version_table(table), "version_table_schema": schema},
            )
            current = ctx.get_current_revision()
            if exists and current is None:
                _refuse_hidden_versions(conn, table, schema)
            conn.rollback()
    finally:
        if not isinstance(url, Engine):
            engine.dispose()
    return SchemaState(exists, current, head_revision())


def _refuse_hidden_versions(conn: Connection, table: str, schema: str | None) -> None:
    """`PermissionDenied` when the version table exists but row-level security hides its
    row from this role: the schema is there, and "run jobqueue migrate" would mislead."""
    if conn.dialect.name != "postgresql":
        return
    versions = version_table(table)
    name = f'"{schema}"."{versions}"' if schema else f'"{versions}"'
    hidden = conn.execute(
        text(
            "SELECT CASE WHEN to_regclass(:name) IS NULL THEN false "
            "ELSE row_security_active(:name) END"
        ),
        {"name": name},
    ).scalar()
    if hidden:
        raise PermissionDenied(
            f"row-level security hides the revision in {versions} from this role",
            hint="give the role a SELECT policy on it (`jobqueue sql --supabase --worker-role "
            "ROLE` adds one), or run `jobqueue check` as the table's owner",
        )


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """An ``include_object`` hook for a host application's Alembic ``env.py``.

    Pass it to ``context.configure(include_object=jobqueue.migrations.include_object)`` and
    autogenerate ignores ``generation_jobs``, its version table, its live-workers table and
    its limits and budgets tables (with their indexes), so it never proposes to drop or
    alter them. Use `exclude_tables` for other table names.
    """
    return exclude_tables(DEFAULT_TABLE)(obj, name, type_, reflected, compare_to)


IncludeObject = Callable[[Any, str | None, str, bool, Any], bool]


def exclude_tables(*tables: str) -> IncludeObject:
    """Build an ``include_object`` hook that hides the given jobqueue tables."""
    hidden = {
        t
        for name in tables
        for t in (name, version_table(name), *companion_table_names(name))
    }

    def hook(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table":
            return name not in hidden
        table = getattr(obj, "table", None)
        return str(getattr(table, "name", "")) not in hidden

    return hook
