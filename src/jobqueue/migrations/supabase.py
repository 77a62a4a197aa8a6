"""Supabase's whole set-up from the migrations and the row-level security
(`jobqueue.sql.rls`): one script for its SQL Editor (`supabase_script`, ``jobqueue sql
--supabase``), or the security statements run against a database (`apply_rls`)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import URL, Connection, Engine, text

from ..drivers.engines import make_engine
from ..drivers.errors import translated_errors
from ..errors import ConfigurationError
from ..models import DEFAULT_KIND, DEFAULT_QUEUE, DEFAULT_TABLE
from ..sql.rls import ANONYMOUS_ROLE, DEFAULT_WORKER_ROLE, USER_ROLE, rls_statements
from . import LOCK_TIMEOUT_NOTE, LOCK_TIMEOUT_SQL, migration_statements


def supabase_script(
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    worker_role: str = DEFAULT_WORKER_ROLE,
    *,
    user_kinds: Sequence[str] = (DEFAULT_KIND,),
    user_queues: Sequence[str] = (DEFAULT_QUEUE,),
) -> str:
    """Everything Supabase needs, as one script for its SQL Editor (``jobqueue sql
    --supabase``): the migrations, then the row-level security, in one transaction.

    Safe to paste again: revisions already applied are skipped (`migration_statements`),
    the RLS statements are repeatable. A missing ``auth.uid()`` or role stops it before
    anything is changed, and a failure anywhere leaves the database as it was.
    """
    guard, *rls = rls_statements(
        table, schema, worker_role, user_kinds=user_kinds, user_queues=user_queues
    )
    statements = [guard, *migration_statements(table=table, schema=schema), *rls]
    where = f"{schema}.{table}" if schema else table
    header = (
        f"-- jobqueue: the jobs table {where}, then its row-level security for Supabase\n"
        f"-- authenticated: insert and read own jobs; {worker_role}: everything; anon: nothing\n"
        "-- Safe to run again: revisions already applied are skipped.\n"
        f"{LOCK_TIMEOUT_NOTE}"
    )
    return (
        f"{header}BEGIN;\n{LOCK_TIMEOUT_SQL};\n\n"
        + ";\n\n".join(statements)
        + ";\n\nCOMMIT;\n"
    )


def _check_prerequisites(conn: Connection, roles: tuple[str, ...]) -> None:
    """Say plainly what is missing, before any statement fails half-way with a driver error."""
    has_uid = conn.exec_driver_sql("SELECT to_regprocedure('auth.uid()') IS NOT NULL").scalar()
    found = {
        name
        for (name,) in conn.execute(
            text("SELECT rolname FROM pg_roles WHERE rolname = ANY(:names)"),
            {"names": list(roles)},
        )
    }
    missing = [r for r in roles if r not in found]
    if not has_uid or missing:
        what = (["the function auth.uid()"] if not has_uid else []) + [
            f"the role {r}" for r in missing
        ]
        raise ConfigurationError(
            f"cannot set up row-level security: {', '.join(what)} missing",
            hint="Supabase provides these; on plain PostgreSQL create them first "
            "(RLS setup never creates or replaces anything in the auth schema)",
        )


def apply_rls(
    url_or_engine: str | URL | Engine | None = None,
    *,
    table: str = DEFAULT_TABLE,
    schema: str | None = None,
    worker_role: str = DEFAULT_WORKER_ROLE,
    user_kinds: Sequence[str] = (DEFAULT_KIND,),
    user_queues: Sequence[str] = (DEFAULT_QUEUE,),
) -> None:
    """Run the statements of `jobqueue.sql.rls.supabase_sql` against a PostgreSQL
    database, in one transaction.

    The roles ``anon``, ``authenticated`` and ``worker_role`` and the function ``auth.uid()``
    must exist (Supabase provides them); the jobs table must be migrated. ``user_kinds``
    and ``user_queues`` are what ``authenticated`` may insert (see `rls_statements`).
    """
    statements = rls_statements(
        table, schema, worker_role, user_kinds=user_kinds, user_queues=user_queues
    )
    engine = make_engine(url_or_engine)
    try:
        if engine.dialect.name != "postgresql":
            raise ConfigurationError(
                f"row-level security needs PostgreSQL, not {engine.dialect.name}",
                hint="apply RLS on the Supabase/PostgreSQL database the web front end uses",
            )
        with translated_errors(table), engine.begin() as conn:
            _check_prerequisites(conn, (ANONYMOUS_ROLE, USER_ROLE, worker_role))
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        if not isinstance(url_or_engine, Engine):
            engine.dispose()
