"""The statements that write new jobs: INSERT (one job, or a batch as arrays), COPY for
large batches, and the look-up of jobs an idempotency key already names."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    DateTime,
    Float,
    Integer,
    String,
    Text,
    Uuid,
    and_,
    bindparam,
    cast,
    func,
    literal_column,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import TypeEngine

from ..models import Job
from .common import StatementsBase, param, unnest
from .dialect import DbNow, DbNowPlus, UTCDateTime
from .steps import CopyRows, Direct, Query
from .table import idempotency_scope, owner_scope


class Enqueueing(StatementsBase):
    """Writing new jobs."""

    def insert_many(self, rows: Sequence[Mapping[str, Any]]) -> Query:
        """Insert jobs (rows as `jobqueue.validation.new_job_row` makes them) in one
        statement.

        ``run_at`` is the caller's time when given, else the database clock plus the delay.
        Rows whose (queue, owner, idempotency_key) already exists are skipped: the caller
        learns which from RETURNING and reads the existing jobs with `by_idempotency_keys`.
        RETURNING gives only what the database chose (`INSERTED`): the caller knows the rest.

        PostgreSQL gets every column as one array parameter and ``unnest``\\s them: one
        statement and one round trip for any number of jobs, with a single cached plan; a
        single job (`enqueue`, the hottest write there is) gets plain parameters, cheaper to
        send and to plan, as a `Direct` step. SQLite runs a multi-row INSERT per batch of
        rows (SQLAlchemy's insertmanyvalues).
        """
        if self.dialect == "postgresql" and len(rows) > 1:
            return Query(
                self.once("insert_pg", self._insert_unnest),
                {
                    "jq_ids": [r["id"] for r in rows],
                    "jq_queues": [r["queue"] for r in rows],
                    "jq_kinds": [r["kind"] for r in rows],
                    "jq_payloads": [r["payload"] for r in rows],
                    "jq_priorities": [r["priority"] for r in rows],
                    "jq_max_attempts": [r["max_attempts"] for r in rows],
                    "jq_owner_ids": [r["owner_id"] for r in rows],
                    "jq_keys": [r["idempotency_key"] for r in rows],
                    "jq_run_ats": [r["run_at_value"] for r in rows],
                    "jq_delays": [r["delay_seconds"] for r in rows],
                },
            )
        stmt = self.once("insert", self._insert_values)
        if len(rows) == 1:
            returning = self.once(
                "inserted_types", lambda: {c.name: c.type for c in self._inserted()}
            )
            return Direct(stmt, rows[0], returning)
        return Query(stmt, list(rows))

    #: What RETURNING gives after an insert: the id (which rows were inserted) and the
    #: values the database clock chose.
    INSERTED = ("id", "created_at", "updated_at", "run_at")

    def _inserted(self) -> list[Any]:
        return [self.t.c[name] for name in self.INSERTED]

    def _insert_values(self) -> Any:
        run_at = func.coalesce(
            bindparam("run_at_value", type_=UTCDateTime()),
            DbNowPlus(bindparam("delay_seconds", type_=Float())),
        )
        payload = bindparam("payload", type_=Text())  # JSON text from check_json
        insert = sqlite.insert if self.dialect == "sqlite" else postgresql.insert
        stmt = insert(self.t).values(
            id=bindparam("id", type_=Uuid()),
            queue=bindparam("queue", type_=String()),
            kind=bindparam("kind", type_=String()),
            payload=cast(payload, postgresql.JSONB()) if self.dialect == "postgresql" else payload,
            priority=bindparam("priority", type_=Integer()),
            max_attempts=bindparam("max_attempts", type_=Integer()),
            owner_id=bindparam("owner_id", type_=Text()),
            idempotency_key=bindparam("idempotency_key", type_=Text()),
            run_at=run_at,
        )
        # Rows are matched to jobs by id, so RETURNING need not keep the parameters' order
        # (asking for it would make SQLAlchemy insert one row per statement).
        return stmt.on_conflict_do_nothing(**self._key_conflict()).returning(*self._inserted())

    def _insert_unnest(self) -> Any:
        c = self.t.c
        arrays: list[tuple[str, str, TypeEngine[Any]]] = [
            ("id", "ids", Uuid()),
            ("queue", "queues", Text()),
            ("kind", "kinds", Text()),
            ("payload", "payloads", Text()),
            ("priority", "priorities", Integer()),
            ("max_attempts", "max_attempts", Integer()),
            ("owner_id", "owner_ids", Text()),
            ("idempotency_key", "keys", Text()),
            ("run_at_value", "run_ats", DateTime(timezone=True)),
            ("delay_seconds", "delays", Float()),
        ]
        n = unnest(arrays, "new_jobs").c
        rows = select(
            n.id,
            n.queue,
            n.kind,
            cast(n.payload, postgresql.JSONB()),
            n.priority,
            n.max_attempts,
            n.owner_id,
            n.idempotency_key,
            func.coalesce(n.run_at_value, DbNowPlus(n.delay_seconds)),
        )
        targets = [
            c.id,
            c.queue,
            c.kind,
            c.payload,
            c.priority,
            c.max_attempts,
            c.owner_id,
            c.idempotency_key,
            c.run_at,
        ]
        return (
            postgresql.insert(self.t)
            .from_select(targets, rows)
            .on_conflict_do_nothing(**self._key_conflict())
            .returning(*self._inserted())
        )

    def _key_conflict(self) -> dict[str, Any]:
        """The ON CONFLICT target: the idempotency index (a key is unique per queue and
        owner, see `idempotency_scope`), so an insert never meets another owner's."""
        return {
            "index_elements": list(idempotency_scope(self.t)),
            "index_where": self.t.c.idempotency_key.isnot(None),
        }

    #: The columns `copy_new` writes; every other column takes its server default.
    COPY_COLUMNS = (
        "id",
        "queue",
        "kind",
        "payload",
        "priority",
        "max_attempts",
        "owner_id",
        "run_at",
        "created_at",
        "updated_at",
    )

    def copy_context(self) -> Query:
        """What the COPY path needs first, in one round trip: the database clock (the new
        jobs' ``created_at``, so they can be returned without RETURNING) and whether this
        role may COPY here at all. COPY FROM refuses a table where row-level security
        applies to the role, and needs INSERT on every column it names (a role with
        column grants only, like Supabase's ``authenticated``, lacks it): then the INSERT
        runs instead."""

        def build() -> Any:
            name = param("table", Text())
            may_copy = and_(
                func.row_security_active(name).is_(False),
                func.has_table_privilege(name, literal_column("'INSERT'")),
            )
            return select(DbNow().label("now"), may_copy.label("may_copy"))

        t = self.t
        name = f'"{t.schema}"."{t.name}"' if t.schema else f'"{t.name}"'
        return Query(self.once("copy_context", build), {"jq_table": name})

    def copy_new(self, jobs: Iterable[tuple[Job, str]]) -> CopyRows:
        """COPY new jobs (PostgreSQL): each `Job` as it will be stored, with its payload
        as JSON text. ``jobs`` may be lazy (see `CopyRows`)."""
        records = (
            (
                j.id,
                j.queue,
                j.kind,
                payload,
                j.priority,
                j.max_attempts,
                j.owner_id,
                j.run_at,
                j.created_at,
                j.updated_at,
            )
            for j, payload in jobs
        )
        types = tuple(self.t.c[name].type for name in self.COPY_COLUMNS)
        return CopyRows(self.t.schema, self.t.name, self.COPY_COLUMNS, types, records)

    def by_idempotency_keys(self, queue: str, owner_id: str | None, keys: Sequence[str]) -> Query:
        """The jobs holding ``keys`` in ``queue`` for ``owner_id`` (None: the unowned jobs'),
        matched as the idempotency index matches them."""

        def build() -> Any:
            c = self.t.c
            return select(*self.columns).where(
                c.queue == param("queue", Text()),
                owner_scope(self.t) == param("owner_scope", Text()),
                c.idempotency_key.in_(bindparam("jq_keys", expanding=True, type_=Text())),
            )

        params = {"jq_queue": queue, "jq_owner_scope": owner_id or "", "jq_keys": list(keys)}
        return Query(self.once("by_keys", build), params)
