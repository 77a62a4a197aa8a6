"""The statements on the live-workers table (`jobqueue.sql.table.workers_table`).

Each running `Worker` keeps one row there; a row counts as live until its ``expires_at``;
live workers delete expired rows, so a crashed worker's row does not stay for ever. The
queues read the table to answer "does any live worker serve this job's queue?"
(`jobqueue workers`, `jobqueue check`, and the warning of a wait that no worker serves),
and a worker checks at start that its role may do what a worker does (`access`).

Like `jobqueue.sql.statements`, every statement is built once and reused with new bound
parameters, and the sync and async queues run the same ones.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, Integer, Table, Text, delete, select, text
from sqlalchemy.dialects import postgresql, sqlite

from .common import BuiltOnce
from .common import param as _p
from .dialect import DbNow, DbNowPlus
from .steps import Query
from .table import limits_table_name, workers_table

#: What a worker needs on each table: the jobs table to claim and write its jobs (every
#: write is an UPDATE ... RETURNING, which reads too), its own table to keep its row.
NEEDS: dict[str, tuple[str, ...]] = {
    "jobs": ("SELECT", "UPDATE"),
    "workers": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    # Claims read the limits in force and record rate starts; a provider's 429 pauses a
    # limit key, inserting its row when the key has none.
    "limits": ("SELECT", "INSERT", "UPDATE"),
}
#: ``pg_policy.polcmd`` per privilege (``*`` is a policy FOR ALL).
_POLICY_COMMAND = {"SELECT": "r", "INSERT": "a", "UPDATE": "w", "DELETE": "d"}


def _access_sql_postgres() -> str:
    """One row per table: does it exist, may this role do each thing it needs, and, where
    row-level security applies to this role, is there a permissive policy for it."""
    columns = []
    for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE"):
        low = privilege.lower()
        columns.append(f"has_table_privilege(t.oid, '{privilege}') AS may_{low}")
        columns.append(
            "EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = t.oid AND p.polpermissive "
            f"AND p.polcmd IN ('*', '{_POLICY_COMMAND[privilege]}') "
            "AND (0 = ANY (p.polroles) OR EXISTS (SELECT 1 FROM unnest(p.polroles) AS r(oid) "
            f"WHERE r.oid <> 0 AND pg_has_role(r.oid, 'USAGE')))) AS policy_{low}"
        )
    # As PostgreSQL decides it (check_enable_rls): superusers and BYPASSRLS roles skip RLS,
    # and so does the table's owner unless the table FORCEs it.
    rls = (
        "COALESCE(c.relrowsecurity AND NOT r.rolsuper AND NOT r.rolbypassrls "
        "AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE')), false) AS rls"
    )
    return (
        "SELECT t.what, current_user AS role, t.oid IS NOT NULL AS present, "
        f"{rls}, {', '.join(columns)} "
        "FROM (VALUES ('jobs', to_regclass(:jq_jobs)), ('workers', to_regclass(:jq_workers)), "
        "('limits', to_regclass(:jq_limits))) "
        "AS t(what, oid) "
        "LEFT JOIN pg_class c ON c.oid = t.oid "
        "CROSS JOIN (SELECT rolsuper, rolbypassrls FROM pg_roles "
        "WHERE rolname = current_user) AS r"
    )


def _access_sql_sqlite(schema: str | None) -> str:
    """SQLite has no roles: only whether each table exists."""
    master = f'"{schema}".sqlite_master' if schema else "sqlite_master"
    allowed = ", ".join(
        f"1 AS may_{p}, 1 AS policy_{p}" for p in ("select", "insert", "update", "delete")
    )
    return (
        "SELECT t.what, NULL AS role, "
        f"EXISTS (SELECT 1 FROM {master} WHERE type = 'table' AND name = t.name) AS present, "
        f"0 AS rls, {allowed} "
        "FROM (SELECT 'jobs' AS what, :jq_jobs_name AS name "
        "UNION ALL SELECT 'workers', :jq_workers_name "
        "UNION ALL SELECT 'limits', :jq_limits_name) AS t"
    )


class PresenceStatements(BuiltOnce):
    """The statements on the live-workers table of one jobs table, on one dialect."""

    def __init__(self, jobs: Table, dialect: str) -> None:
        super().__init__(dialect)
        self.jobs = jobs
        self.t = workers_table(jobs.name, jobs.schema, jobs.metadata)
        #: The limits table's name (its `Table` belongs to the queue's `Statements`).
        self.limits_name = limits_table_name(jobs.name)

    def _qualified(self, name: str) -> str:
        """A quoted name for ``to_regclass`` (identifiers are validated: quoting is enough)."""
        schema = self.jobs.schema
        return f'"{schema}"."{name}"' if schema else f'"{name}"'

    def beat(
        self,
        worker_id: str,
        *,
        host: str,
        pid: int,
        queues_json: str,
        kinds_json: str | None,
        concurrency: int,
        ttl: float,
    ) -> Query:
        """Write the worker's row: insert it (at start, or after it was swept as stale),
        else refresh its beat and what it serves. Live until ``ttl`` seconds from now."""

        def build() -> Any:
            insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            now = DbNow()
            json_cast = self.dialect == "postgresql"

            def as_json(name: str) -> Any:
                param = _p(name, Text())
                return param.cast(postgresql.JSONB()) if json_cast else param

            stmt = insert(self.t).values(
                worker_id=_p("worker_id", Text()),
                host=_p("host", Text()),
                pid=_p("pid", Integer()),
                queues=as_json("queues"),
                kinds=as_json("kinds"),
                concurrency=_p("concurrency", Integer()),
                started_at=now,
                last_beat_at=now,
                expires_at=DbNowPlus(_p("ttl", Float())),
            )
            new = stmt.excluded
            return stmt.on_conflict_do_update(
                index_elements=[self.t.c.worker_id],
                set_={
                    "host": new.host,
                    "pid": new.pid,
                    "queues": new.queues,
                    "kinds": new.kinds,
                    "concurrency": new.concurrency,
                    "last_beat_at": new.last_beat_at,
                    "expires_at": new.expires_at,
                },
            ).returning(self.t.c.worker_id)

        params = {
            "jq_worker_id": worker_id,
            "jq_host": host,
            "jq_pid": pid,
            "jq_queues": queues_json,
            "jq_kinds": kinds_json,
            "jq_concurrency": concurrency,
            "jq_ttl": ttl,
        }
        return Query(self.once("beat", build), params)

    def gone(self, worker_id: str) -> Query:
        """Remove the worker's own row (a clean stop)."""

        def build() -> Any:
            c = self.t.c
            return (
                delete(self.t).where(c.worker_id == _p("worker_id", Text())).returning(c.worker_id)
            )

        return Query(self.once("gone", build), {"jq_worker_id": worker_id})

    def sweep(self) -> Query:
        """Delete the rows of workers that stopped beating (crashed, killed, cut off)."""

        def build() -> Any:
            c = self.t.c
            return delete(self.t).where(c.expires_at < DbNow()).returning(c.worker_id)

        return Query(self.once("sweep", build), None)

    def live(self) -> Query:
        """The live workers, oldest first, each with the database clock's ``now``."""

        def build() -> Any:
            c = self.t.c
            return (
                select(*c, DbNow().label("seen_at"))
                .where(c.expires_at >= DbNow())
                .order_by(c.started_at, c.worker_id)
            )

        return Query(self.once("live", build), None)

    def access(self) -> Query:
        """Whether the jobs, workers and limits tables exist and this role may do what a
        worker does to them (`NEEDS`): one row per table (``what`` names it)."""
        if self.dialect == "postgresql":
            stmt = self.once("access", lambda: text(_access_sql_postgres()))
            params = {
                "jq_jobs": self._qualified(self.jobs.name),
                "jq_workers": self._qualified(self.t.name),
                "jq_limits": self._qualified(self.limits_name),
            }
        else:
            stmt = self.once("access", lambda: text(_access_sql_sqlite(self.jobs.schema)))
            params = {
                "jq_jobs_name": self.jobs.name,
                "jq_workers_name": self.t.name,
                "jq_limits_name": self.limits_name,
            }
        return Query(stmt, params)
