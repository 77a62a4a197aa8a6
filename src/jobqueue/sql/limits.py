"""The statements of limits: the rows every worker enforces, the claim that obeys them, and
the line's entrance.

A limits row (`jobqueue.sql.table.limits_table`) is about a queue, a limit key (a job's
``limit_key``, else its kind) or an owner. Rows of queues and keys may cap the jobs running
(in all, and per owner), rate their starts, or pause them; they are *in force* while one
of those is set (a pause only until its end). Owner rows hold a weight in the fair share
(`jobqueue.sql.fair`).

Claims come in two shapes. While no row is in force, a claim is the single statement of
`jobqueue.sql.claim`, guarded so that it takes nothing once one is. While rows are in force
a claim is a transaction (`jobqueue.operations.limits`): `lock_limits` locks the rows in
force in one order (claims that obey limits take turns, so two can never both see the
same free slot), then `claim_within` counts the jobs running from the jobs table itself
(no counter that could drift: a job whose lease expired no longer counts) and takes the
first due jobs of the line that fit, then `record_starts` keeps the starts a rate counts.
Because `claim_within` runs after the lock is granted, on PostgreSQL it sees every claim
committed before it (each statement of a READ COMMITTED transaction has its own snapshot).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Text,
    and_,
    case,
    cast,
    delete,
    exists,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from ..models import Status
from .common import StatementsBase, batch_json, filter_params, json_param, json_rows, param, unnest
from .dialect import DbNow, DbNowPlus, UTCDateTime, WellFormedId
from .fair import in_line, turn_of
from .steps import Direct, Query

#: How many due jobs at the head of the line a claim within limits looks at: jobs held back
#: by a cap or a rate are passed over, so jobs of other owners and keys behind them start.
LINE_WINDOW = 500

#: How many waiting jobs one round of `enter_line` puts in the line.
ENTRY_BATCH = 1000


def limit_key_of(c: Any) -> ColumnElement[str]:
    """The limit key of a job: its ``limit_key``, else its kind."""
    return func.coalesce(c.limit_key, c.kind)


class Limiting(StatementsBase):
    """Limits rows, and the claim within them."""

    # -- rows in force --------------------------------------------------------------------

    def _in_force(self) -> ColumnElement[bool]:
        lc = self.limits.c
        paused = and_(
            lc.paused_at.isnot(None),
            or_(lc.paused_until.is_(None), lc.paused_until > DbNow()),
        )
        return and_(
            # Not IN: an expanding list would be rendered anew at every claim.
            or_(lc.scope == literal_column("'queue'"), lc.scope == literal_column("'key'")),
            or_(
                lc.max_running.isnot(None),
                lc.max_running_per_owner.isnot(None),
                lc.rate.isnot(None),
                paused,
            ),
        )

    def no_limits_in_force(self) -> ColumnElement[bool]:
        """The guard of the plain claim: true while no limits row is in force."""
        return ~exists(select(literal(1)).select_from(self.limits).where(self._in_force()))

    def limits_in_force(self) -> Query:
        """Whether any limits row is in force (one row: ``in_force``)."""

        def build() -> Any:
            return select((~self.no_limits_in_force()).label("in_force"))

        return Query(self.once("limits_in_force", build), None)

    def lock_limits(self) -> Query:
        """The rows in force with the database clock, locked in one order on PostgreSQL (a
        concurrent claim within limits waits here; SQLite's write lock already serialises
        claims)."""

        def build() -> Any:
            lc = self.limits.c
            stmt = (
                select(
                    lc.scope,
                    lc.name,
                    lc.max_running,
                    lc.max_running_per_owner,
                    lc.rate,
                    lc.per_seconds,
                    lc.paused_at,
                    lc.paused_until,
                    self._as_text(lc.starts),
                    DbNow().label("now"),
                )
                .where(self._in_force())
                .order_by(lc.scope, lc.name)
            )
            return stmt.with_for_update() if self.dialect == "postgresql" else stmt

        return Query(self.once("lock_limits", build), None)

    # -- the claim within limits -------------------------------------------------------------

    #: The columns of a gate: one limits row in force, as `claim_within` reads it.
    GATE_COLUMNS = (
        ("scope", Text()),
        ("name", Text()),
        ("cap", Integer()),
        ("per_owner", Integer()),
        ("budget", Integer()),
        ("paused", Integer()),
    )

    def claim_within(
        self,
        gates: Sequence[Mapping[str, Any]],
        worker_id: str,
        *,
        limit: int,
        lease: float,
        queues: Sequence[str] | None,
        kinds: Sequence[str] | None,
    ) -> Direct:
        """Claim up to ``limit`` due jobs that fit within ``gates``.

        ``gates`` are the rows in force as `{scope, name, cap, per_owner, budget, paused}`:
        ``budget`` is the starts a rate still allows now (None: no rate), ``paused`` 1 or 0.
        The first `LINE_WINDOW` due jobs of the line (paused queues and keys left out) are
        ranked per queue, key and owner; a job is taken when its owner is within its caps
        and, among those, its queue and key are within theirs (running jobs counted from
        the table: processing with a lease not yet expired), in the line's order.
        """
        qs = None if queues is None else tuple(queues)
        ks = None if kinds is None else tuple(kinds)
        stmt = self.once(("claim_within", qs, ks), lambda: self._claim_within(qs, ks))
        rows = [tuple(g[name] for name, _ in self.GATE_COLUMNS) for g in gates]
        if self.dialect == "postgresql":
            gate_params: dict[str, Any] = {
                f"jq_gate_{name}s": [r[i] for r in rows]
                for i, (name, _) in enumerate(self.GATE_COLUMNS)
            }
        else:
            gate_params = {"jq_batch": batch_json(rows)}
        params = {
            "jq_worker_id": worker_id,
            "jq_limit": limit,
            "jq_lease": lease,
            "jq_window": LINE_WINDOW,
            **gate_params,
        }
        return Direct(stmt, params | filter_params(qs, ks), self.returned())

    def _gates(self) -> Any:
        if self.dialect == "postgresql":
            return unnest(
                [(name, f"gate_{name}s", type_) for name, type_ in self.GATE_COLUMNS], "gates"
            )
        return json_rows(self.GATE_COLUMNS, "gates")

    def _claim_within(self, queues: Sequence[str] | None, kinds: Sequence[str] | None) -> Any:
        c = self.t.c
        now = DbNow()
        gates = select(self._gates()).cte("gates")
        g = gates.c
        key = limit_key_of(c)
        owner = func.coalesce(c.owner_id, literal(""))  # '' is no owner's id (a check says so)
        filters: list[ColumnElement[bool]] = []
        if queues is not None:
            filters.append(c.queue.in_([param(f"queue_{i}", Text()) for i in range(len(queues))]))
        if kinds is not None:
            filters.append(c.kind.in_([param(f"kind_{i}", Text()) for i in range(len(kinds))]))
        paused = exists(
            select(literal(1))
            .select_from(gates)
            .where(
                g.paused == 1,
                or_(
                    and_(g.scope == "queue", g.name == c.queue),
                    and_(g.scope == "key", g.name == key),
                ),
            )
        )
        line = (
            select(
                c.id,
                c.queue,
                key.label("lkey"),
                owner.label("owner"),
                c.priority,
                c.turn,
            )
            .where(in_line(self.t), c.run_at <= now, self.before_deadline(), ~paused, *filters)
            .order_by(c.priority.desc(), c.turn, c.id)
            .limit(param("window", Integer()))
            .cte("line")
        )
        running = (
            select(c.queue, key.label("lkey"), owner.label("owner"))
            .where(c.status == Status.PROCESSING.value, c.lease_expires_at >= now)
            .cte("running")
        )
        r = running.c
        ln = line.c
        order = (ln.priority.desc(), ln.turn, ln.id)

        # The running jobs counted once per group, not once per job of the window: their
        # number grows with the fleet, and claims within limits take turns.
        def counted(name: str, *by: Any) -> Any:
            return select(*by, func.count().label("n")).group_by(*by).cte(name)

        run_q = counted("running_per_queue", r.queue)
        run_qo = counted("running_per_queue_owner", r.queue, r.owner)
        run_k = counted("running_per_key", r.lkey)
        run_ko = counted("running_per_key_owner", r.lkey, r.owner)

        def n(run: Any) -> Any:
            return func.coalesce(run.c.n, literal(0, Integer()))

        qg = gates.alias("queue_gate")
        kg = gates.alias("key_gate")
        infinity = literal(1_000_000_000, Integer())

        def room(gate: Any, column: str, running_now: Any) -> Any:
            return func.coalesce(gate.c[column] - running_now, infinity)

        ranked_owner = (
            select(
                ln.id,
                ln.queue,
                ln.lkey,
                ln.owner,
                ln.priority,
                ln.turn,
                func.row_number()
                .over(partition_by=(ln.queue, ln.owner), order_by=order)
                .label("rqo"),
                func.row_number()
                .over(partition_by=(ln.lkey, ln.owner), order_by=order)
                .label("rko"),
            )
            .select_from(line)
            .cte("ranked_owner")
        )
        ro = ranked_owner.c
        qg1, kg1 = gates.alias("queue_gate_1"), gates.alias("key_gate_1")
        owners_fit = (
            select(ro.id, ro.queue, ro.lkey, ro.priority, ro.turn)
            .select_from(
                ranked_owner.outerjoin(qg1, and_(qg1.c.scope == "queue", qg1.c.name == ro.queue))
                .outerjoin(kg1, and_(kg1.c.scope == "key", kg1.c.name == ro.lkey))
                .outerjoin(run_qo, and_(run_qo.c.queue == ro.queue, run_qo.c.owner == ro.owner))
                .outerjoin(run_ko, and_(run_ko.c.lkey == ro.lkey, run_ko.c.owner == ro.owner))
            )
            .where(
                ro.rqo <= room(qg1, "per_owner", n(run_qo)),
                ro.rko <= room(kg1, "per_owner", n(run_ko)),
            )
            .cte("owners_fit")
        )
        of = owners_fit.c
        fit_order = (of.priority.desc(), of.turn, of.id)
        ranked = (
            select(
                of.id,
                of.queue,
                of.lkey,
                of.priority,
                of.turn,
                func.row_number().over(partition_by=of.queue, order_by=fit_order).label("rq"),
                func.row_number().over(partition_by=of.lkey, order_by=fit_order).label("rk"),
            )
            .select_from(owners_fit)
            .cte("ranked")
        )
        rk = ranked.c
        admitted = (
            select(rk.id)
            .select_from(
                ranked.outerjoin(qg, and_(qg.c.scope == "queue", qg.c.name == rk.queue))
                .outerjoin(kg, and_(kg.c.scope == "key", kg.c.name == rk.lkey))
                .outerjoin(run_q, run_q.c.queue == rk.queue)
                .outerjoin(run_k, run_k.c.lkey == rk.lkey)
            )
            .where(
                rk.rq <= room(qg, "cap", n(run_q)),
                rk.rq <= func.coalesce(qg.c.budget, infinity),
                rk.rk <= room(kg, "cap", n(run_k)),
                rk.rk <= func.coalesce(kg.c.budget, infinity),
            )
            .order_by(rk.priority.desc(), rk.turn, rk.id)
            .limit(param("limit", Integer()))
        )
        if self.dialect == "postgresql":
            # Lock what was admitted, skipping rows another claimer holds; a row claimed
            # since this statement's snapshot fails the re-checked condition and drops out.
            taken = (
                select(c.id)
                .where(
                    c.id.in_(admitted.scalar_subquery()),
                    in_line(self.t),
                    c.run_at <= now,
                    self.before_deadline(),
                )
                .with_for_update(skip_locked=True)
            )
            where = c.id.in_(taken.scalar_subquery())
        else:
            where = c.id.in_(admitted.scalar_subquery())
        return update(self.t).where(where).values(**self.claimed()).returning(*self.columns)

    def record_starts(self, scope: str, name: str, starts: str) -> Query:
        """Write the starts a rate counts (a JSON array of times)."""

        def build() -> Any:
            lc = self.limits.c
            return (
                update(self.limits)
                .where(lc.scope == param("scope", Text()), lc.name == param("name", Text()))
                .values(starts=json_param("starts", self.dialect), updated_at=DbNow())
                .returning(lc.scope)
            )

        params = {"jq_scope": scope, "jq_name": name, "jq_starts": starts}
        return Query(self.once("record_starts", build), params)

    # -- the line's entrance ----------------------------------------------------------------

    def entering(self, *, skip_locked: bool = False) -> Query:
        """The due jobs waiting outside the line (scheduled, backing off, held back,
        inserted by another client), up to `ENTRY_BATCH` of them, oldest first, with the
        turn each takes (`jobqueue.sql.fair`); jobs of a paused queue or key stay out until
        it is resumed. On PostgreSQL the rows are locked: two workers entering at once
        take turns.
        `set_turns` writes the turns: computed in one statement and written in another,
        every turn is computed from the line as it was (an UPDATE on SQLite would see its
        own earlier rows)."""

        def build() -> Any:
            c = self.t.c
            lc = self.limits.c
            now = DbNow()
            key = limit_key_of(c)
            paused = exists(
                select(literal(1))
                .select_from(self.limits)
                .where(
                    self._in_force(),
                    lc.paused_at.isnot(None),
                    or_(
                        and_(lc.scope == "queue", lc.name == c.queue),
                        and_(lc.scope == "key", lc.name == key),
                    ),
                )
            )
            due = (
                select(c.id, c.queue, c.priority, c.owner_id, c.run_at)
                .where(c.status == Status.PENDING.value, c.turn.is_(None), c.run_at <= now)
                .where(~paused)
                # A row whose id cannot be read stays out: it would fail the entrance
                # (and every claim batch after it) for every job.
                .where(WellFormedId(c.id))
                .order_by(c.run_at, c.id)
                .limit(ENTRY_BATCH)
            )
            if self.dialect == "postgresql":
                # A claim that found nothing and enters jobs itself must not skip the ones
                # the worker's timer is entering and conclude there is nothing due: it
                # waits for that short transaction, and the rows entered then fail the
                # re-checked condition and drop out. The timer (``skip_locked``) leaves
                # rows another entry holds to it instead: waiting, it would lock them too
                # (a row is locked before it is re-checked, and stays locked to the end
                # of the transaction even when the re-check drops it), and the claim that
                # follows the entry that put them in line would skip them as locked.
                due = due.with_for_update(of=self.t, skip_locked=skip_locked)
            d = due.cte("due")
            k = func.row_number().over(
                partition_by=(d.c.queue, d.c.owner_id), order_by=(d.c.run_at, d.c.id)
            )
            w = select(d.c.id, d.c.queue, d.c.priority, d.c.owner_id, k.label("k")).subquery(
                "waiting"
            )
            turn = turn_of(self.t, self.limits, w.c.queue, w.c.priority, w.c.owner_id, w.c.k)
            return select(w.c.id, turn.label("turn"))

        return Query(self.once(("entering", skip_locked), build), None)

    def set_turns(self, turns: Sequence[tuple[Any, float]]) -> Query:
        """Give jobs still waiting outside the line their turns (``(id, turn)`` pairs)."""
        if self.dialect == "postgresql":
            params: dict[str, Any] = {
                "jq_ids": [i for i, _ in turns],
                "jq_turns": [t for _, t in turns],
            }
        else:
            params = {"jq_batch": batch_json(turns)}

        def build() -> Any:
            c = self.t.c
            cols = [("job_id", c.id.type), ("turn", Float())]
            if self.dialect == "postgresql":
                batch = unnest([("job_id", "ids", c.id.type), ("turn", "turns", Float())], "b")
            else:
                batch = json_rows(cols, "b")
            return (
                update(self.t)
                .where(c.id == batch.c.job_id, c.status == Status.PENDING.value, c.turn.is_(None))
                .values(turn=batch.c.turn)
                .returning(c.id)
            )

        return Query(self.once("set_turns", build), params)

    def leave_line(self, scope: str, name: str) -> Query:
        """Take the pending jobs of a queue or key out of the line (when it is paused), so
        no claim has to pass over them; `enter_line` puts them back once it is resumed."""

        def build() -> Any:
            c = self.t.c
            target = c.queue if scope == "queue" else limit_key_of(c)
            return (
                update(self.t)
                .where(in_line(self.t), target == param("name", Text()))
                .values(turn=null())
                .returning(c.id)
            )

        return Query(self.once(("leave_line", scope), build), {"jq_name": name})

    # -- managing limits rows -----------------------------------------------------------------

    def set_limit(self, scope: str, name: str, values: Mapping[str, Any]) -> Query:
        """Create or change one limits row: ``values`` are the columns to set (None clears)."""
        columns = tuple(sorted(values))

        def build() -> Any:
            lc = self.limits.c
            insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            fields: dict[str, Any] = {col: param(col, lc[col].type) for col in columns}
            stmt = insert(self.limits).values(
                scope=param("scope", Text()), name=param("name", Text()), **fields
            )
            return stmt.on_conflict_do_update(
                index_elements=[lc.scope, lc.name],
                set_={**{col: stmt.excluded[col] for col in columns}, "updated_at": DbNow()},
            ).returning(lc.scope)

        params = {"jq_scope": scope, "jq_name": name, **{f"jq_{k}": v for k, v in values.items()}}
        return Query(self.once(("set_limit", columns), build), params)

    def pause(self, scope: str, name: str, seconds: float | None, reason: str | None) -> Query:
        """Pause a queue or key, for ``seconds`` or until resumed; a pause already running
        keeps its start, and the later of two ends wins (RETURNING the row)."""
        return self._pause(
            "after", {"jq_scope": scope, "jq_name": name, "jq_seconds": seconds}, reason
        )

    def pause_until(self, scope: str, name: str, until: datetime, reason: str | None) -> Query:
        """`pause` until ``until``, a time the database gave (a held-back job's ``run_at``)."""
        return self._pause("at", {"jq_scope": scope, "jq_name": name, "jq_until": until}, reason)

    def _pause(
        self, ends: Literal["after", "at"], params: dict[str, Any], reason: str | None
    ) -> Query:
        """The pause statement whose end is ``ends``: "after" ``jq_seconds`` (None: until
        resumed) by the statement's clock, or "at" ``jq_until``."""

        def build() -> Any:
            lc = self.limits.c
            insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
            if ends == "at":
                until: Any = param("until", UTCDateTime())
            else:
                seconds = cast(param("seconds", Float()), Float())  # typed even when NULL
                until = case((seconds.is_(None), null()), else_=DbNowPlus(seconds))
            stmt = insert(self.limits).values(
                scope=param("scope", Text()),
                name=param("name", Text()),
                paused_at=DbNow(),
                paused_until=until,
                pause_reason=param("reason", Text()),
            )
            old = self.limits.c
            running = and_(
                old.paused_at.isnot(None),
                or_(old.paused_until.is_(None), old.paused_until > DbNow()),
            )
            new_until = stmt.excluded.paused_until
            return stmt.on_conflict_do_update(
                index_elements=[lc.scope, lc.name],
                set_={
                    "paused_at": case((running, old.paused_at), else_=DbNow()),
                    "paused_until": case(
                        (
                            or_(new_until.is_(None), and_(running, old.paused_until.is_(None))),
                            null(),
                        ),
                        (and_(running, old.paused_until > new_until), old.paused_until),
                        else_=new_until,
                    ),
                    "pause_reason": stmt.excluded.pause_reason,
                    "updated_at": DbNow(),
                },
            ).returning(*self._limit_columns())

        return Query(self.once(("pause", ends), build), {**params, "jq_reason": reason})

    def resume(self, scope: str, name: str) -> Query:
        """End a pause (RETURNING the row, none when there was no row)."""

        def build() -> Any:
            lc = self.limits.c
            return (
                update(self.limits)
                .where(lc.scope == param("scope", Text()), lc.name == param("name", Text()))
                .values(paused_at=None, paused_until=None, pause_reason=None, updated_at=DbNow())
                .returning(*self._limit_columns())
            )

        return Query(self.once("resume", build), {"jq_scope": scope, "jq_name": name})

    def delete_limit(self, scope: str, name: str) -> Query:
        """Remove one limits row (RETURNING its scope)."""

        def build() -> Any:
            lc = self.limits.c
            return (
                delete(self.limits)
                .where(lc.scope == param("scope", Text()), lc.name == param("name", Text()))
                .returning(lc.scope)
            )

        return Query(self.once("delete_limit", build), {"jq_scope": scope, "jq_name": name})

    def _limit_columns(self) -> list[Any]:
        lc = self.limits.c
        paused = and_(
            lc.paused_at.isnot(None), or_(lc.paused_until.is_(None), lc.paused_until > DbNow())
        )
        return [
            lc.scope,
            lc.name,
            lc.max_running,
            lc.max_running_per_owner,
            lc.rate,
            lc.per_seconds,
            lc.weight,
            lc.paused_at,
            lc.paused_until,
            lc.pause_reason,
            case((paused, true()), else_=literal(False)).label("paused"),
            lc.updated_at,
        ]

    def list_limits(self, counts: bool = True) -> Query:
        """Every limits row, with whether its pause is running now, and (``counts``) the
        jobs of its queue or key running and pending: a count over the jobs table for
        each row, which `jobqueue limits show` wants and a listing of jobs does not."""

        def build() -> Any:
            if not counts:
                lc = self.limits.c
                return select(*self._limit_columns()).order_by(lc.scope, lc.name)
            c = self.t.c
            lc = self.limits.c
            target = case((lc.scope == "queue", c.queue), else_=limit_key_of(c))

            def jobs(status: Status) -> Any:
                return (
                    select(func.count())
                    .where(c.status == status.value, target == lc.name, lc.scope != "owner")
                    .scalar_subquery()
                )

            return select(
                *self._limit_columns(),
                jobs(Status.PROCESSING).label("running"),
                jobs(Status.PENDING).label("pending"),
            ).order_by(lc.scope, lc.name)

        return Query(self.once(("list_limits", counts), build), None)
