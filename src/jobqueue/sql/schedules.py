"""The statements on the schedules table (`jobqueue.sql.table.schedules_table`).

A schedule's row holds ``next_tick``, the tick every worker's scheduler waits for. A
scheduler's round reads the schedules due by the database clock (`due`), works out in
Python what each tick means (the cron expression or interval, in its time zone: see
`jobqueue.operations.schedules`), and moves each schedule on with `advance`: one UPDATE
for the whole batch that changes a row only where ``next_tick`` still holds the value read
(a compare-and-set). Only the scheduler whose UPDATE changed the row enqueues that tick's
job, in the same transaction, so one tick makes one job however many workers run. On
PostgreSQL `due` also locks the rows it returns and skips rows another scheduler holds,
so two schedulers seldom even try the same tick; the compare-and-set is what decides.

Like `jobqueue.sql.statements`, every statement is built once and reused with new bound
parameters, and the sync and async queues run the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    Table,
    Text,
    case,
    cast,
    delete,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.types import TypeEngine

from .common import BuiltOnce, batch_json, json_param, json_rows, param, unnest
from .dialect import DbNow, UTCDateTime
from .steps import Query
from .table import schedules_table

#: How many due schedules one round of a scheduler takes.
DUE_BATCH = 100

#: The columns of a schedule's definition (what `upsert` writes), in order.
DEFINITION = (
    "kind",
    "queue",
    "payload",
    "priority",
    "cron",
    "every_seconds",
    "timezone",
    "missed",
    "enabled",
)

#: The columns whose change moves the next tick: the timing.
TIMING = ("cron", "every_seconds", "timezone")

#: The columns of one move of `advance` (SQLite's JSON batch).
_ADVANCE_COLUMNS: list[tuple[str, TypeEngine[Any]]] = [
    ("name", Text()),
    ("expected", UTCDateTime()),
    ("next", UTCDateTime()),
    ("ran", UTCDateTime()),
]


class ScheduleStatements(BuiltOnce):
    """The statements on the schedules table of one jobs table on one dialect."""

    def __init__(self, table: Table, dialect: str) -> None:
        super().__init__(dialect)
        self.s = schedules_table(table.name, table.schema, table.metadata)

    def _columns(self) -> list[Any]:
        sc = self.s.c
        # As text, decoded row by row (`jobqueue.operations.schedules`): a row another
        # client wrote must not fail the whole round.
        payload = sc.payload
        if self.dialect == "postgresql":
            as_text: Any = cast(payload, Text())
        else:
            as_text = type_coerce(payload, Text())
        return [
            sc.name,
            sc.kind,
            sc.queue,
            as_text.label("payload"),
            sc.priority,
            sc.cron,
            sc.every_seconds,
            sc.timezone,
            sc.missed,
            sc.enabled,
            sc.next_tick,
            sc.last_tick,
            sc.created_at,
            sc.updated_at,
        ]

    def upsert(
        self, values: dict[str, Any], next_tick: datetime, *, keep_enabled: bool = False
    ) -> Query:
        """Create the schedule ``values["name"]``, or replace its definition. Its next tick
        becomes ``next_tick`` when it is new or its timing (cron, interval, time zone)
        changed, so a worker that starts with the same definition leaves the schedule's
        place as it was (RETURNING the row). With ``keep_enabled`` an existing schedule
        stays paused or running as it was (a worker declaring its registry's schedules
        must not resume one an operator paused)."""

        def build() -> Any:
            sc = self.s.c
            insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            fields: dict[str, Any] = {
                col: (
                    json_param("payload", self.dialect)
                    if col == "payload"
                    else param(col, sc[col].type)
                )
                for col in DEFINITION
            }
            stmt = insert(self.s).values(
                name=param("name", Text()), next_tick=param("next_tick", UTCDateTime()), **fields
            )
            new = stmt.excluded
            changed = (
                sc.cron.is_distinct_from(new.cron)
                | sc.every_seconds.is_distinct_from(new.every_seconds)
                | sc.timezone.is_distinct_from(new.timezone)
            )
            return stmt.on_conflict_do_update(
                index_elements=[sc.name],
                set_={
                    **{col: new[col] for col in DEFINITION},
                    **({"enabled": sc.enabled} if keep_enabled else {}),
                    "next_tick": case((changed, new.next_tick), else_=sc.next_tick),
                    "updated_at": DbNow(),
                },
            ).returning(*self._columns())

        params = {f"jq_{k}": v for k, v in values.items()}
        params["jq_next_tick"] = next_tick
        name = "upsert_keeping_enabled" if keep_enabled else "upsert"
        return Query(self.once(name, build), params)

    def set_enabled(self, name: str, enabled: bool) -> Query:
        """Pause (``enabled`` false) or resume one schedule (RETURNING the row). A resumed
        schedule's missed ticks are its ``missed`` policy's to handle, as after an outage."""

        def build() -> Any:
            sc = self.s.c
            return (
                update(self.s)
                .where(sc.name == param("name", Text()))
                .values(enabled=param("enabled", sc.enabled.type), updated_at=DbNow())
                .returning(*self._columns())
            )

        return Query(self.once("set_enabled", build), {"jq_name": name, "jq_enabled": enabled})

    def list(self) -> Query:
        """Every schedule, by name."""

        def build() -> Any:
            return select(*self._columns()).order_by(self.s.c.name)

        return Query(self.once("list", build), None)

    def delete(self, name: str) -> Query:
        """Remove one schedule (RETURNING its name)."""

        def build() -> Any:
            sc = self.s.c
            return delete(self.s).where(sc.name == param("name", Text())).returning(sc.name)

        return Query(self.once("delete", build), {"jq_name": name})

    def any_due(self) -> Query:
        """Whether any enabled schedule's next tick has come (one row: ``due``): a read, so
        the rounds that find nothing to do (most of them) take no lock, not even SQLite's
        write lock."""

        def build() -> Any:
            sc = self.s.c
            found = (
                select(sc.name)
                .where(sc.enabled.is_(True), sc.next_tick <= DbNow())
                .limit(1)
                .exists()
            )
            return select(found.label("due"))

        return Query(self.once("any_due", build), None)

    def due(self) -> Query:
        """The enabled schedules whose next tick has come by the database clock, with the
        clock (``now``), at most `DUE_BATCH`. On PostgreSQL the rows are locked, and rows
        another scheduler has locked are skipped: that one is moving them on."""

        def build() -> Any:
            sc = self.s.c
            stmt = (
                select(*self._columns(), DbNow().label("now"))
                .where(sc.enabled.is_(True), sc.next_tick <= DbNow())
                .order_by(sc.next_tick, sc.name)
                .limit(param("limit", Integer()))
            )
            if self.dialect == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True)
            return stmt

        return Query(self.once("due", build), {"jq_limit": DUE_BATCH})

    def advance(self, moves: Sequence[tuple[str, datetime, datetime, datetime | None]]) -> Query:
        """Move each schedule of ``moves`` ``(name, expected, next, ran)`` on, in one
        statement: ``next_tick`` from ``expected`` to ``next``, and ``last_tick`` to ``ran``
        when a job is enqueued for that tick. A schedule whose ``next_tick`` no longer holds
        ``expected`` (another scheduler moved it on, or it was changed meanwhile) is left
        alone: RETURNING names only the schedules this call moved on."""
        if self.dialect == "postgresql":
            arrays: list[tuple[str, str, TypeEngine[Any]]] = [
                ("name", "names", Text()),
                ("expected", "expected", DateTime(timezone=True)),
                ("next", "nexts", DateTime(timezone=True)),
                ("ran", "rans", DateTime(timezone=True)),
            ]
            stmt = self.once("advance_pg", lambda: self._advance_from(unnest(arrays, "batch")))
            params: dict[str, Any] = {
                "jq_names": [m[0] for m in moves],
                "jq_expected": [m[1] for m in moves],
                "jq_nexts": [m[2] for m in moves],
                "jq_rans": [m[3] for m in moves],
            }
            return Query(stmt, params)
        stmt = self.once(
            "advance_sqlite", lambda: self._advance_from(json_rows(_ADVANCE_COLUMNS, "batch"))
        )
        return Query(stmt, {"jq_batch": batch_json(moves)})

    def _advance_from(self, batch: Any) -> Any:
        sc = self.s.c
        b = batch.c
        return (
            update(self.s)
            .where(sc.name == b.name, sc.next_tick == b.expected)
            .values(
                next_tick=b.next,
                last_tick=case((b.ran.is_(None), sc.last_tick), else_=b.ran),
                updated_at=DbNow(),
            )
            .returning(sc.name)
        )


__all__ = ["DEFINITION", "DUE_BATCH", "TIMING", "ScheduleStatements"]
