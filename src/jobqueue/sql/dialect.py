"""SQL constructs whose text differs between PostgreSQL and SQLite.

Each construct is one SQLAlchemy expression with one compilation per dialect, so the
statements that use them need not know which database they run on. Where the difference
is more than such an expression, the statement builders branch on the dialect themselves,
beside the statement: batches as arrays (``unnest``) or as JSON (``json_each``), COPY,
the locking clauses of a claim, ``INSERT ... ON CONFLICT``, JSONB casts, the arithmetic
of durations in ``stats``, and the access check. Time always comes from the database
clock: workers on different hosts must agree on whether a lease has expired, and only the
database can be the referee.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Dialect, Float, Integer, Numeric, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FunctionElement, literal
from sqlalchemy.types import DateTime

from ..models import COST_PLACES, END_OF_TIME, MAX_COST, START_OF_TIME


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend.

    PostgreSQL stores ``timestamptz``. SQLite has no timestamp type: values are stored as
    UTC text in SQLAlchemy's format, which sorts correctly, and come back tagged as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass a timezone-aware datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        try:
            return value.astimezone(UTC)
        except OverflowError:  # within a day of the end (or start) of time
            return END_OF_TIME if value.year == datetime.max.year else START_OF_TIME

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        """On SQLite, which stores whatever a client wrote, a value that is not a time reads
        by where SQLite sorts it among times (and so whether the claim finds it due): text
        before ``0001-01-01`` (``-infinity``, empty text) and numbers as `START_OF_TIME`,
        other text (``infinity``) and BLOBs as `END_OF_TIME`."""
        process = super().result_processor(dialect, coltype)
        if dialect.name != "sqlite" or process is None:
            return process

        def tolerant(value: Any) -> datetime | None:
            try:
                result: datetime | None = process(value)
            except (ValueError, TypeError, OverflowError):
                return _not_a_time(value)
            return result

        return tolerant


def _not_a_time(value: object) -> datetime:
    if isinstance(value, str):
        return START_OF_TIME if value < "0001-01-01" else END_OF_TIME
    return END_OF_TIME if isinstance(value, bytes) else START_OF_TIME


def sqlite_time(value: datetime) -> str:
    """A time as SQLite stores it (`UTCDateTime`, and the clock's `SQLITE_NOW` text): UTC,
    to the microsecond, in SQLAlchemy's format, so it compares equal as text."""
    v = value.astimezone(UTC) if value.tzinfo is not None else value
    return (
        f"{v.year:04d}-{v.month:02d}-{v.day:02d} "
        f"{v.hour:02d}:{v.minute:02d}:{v.second:02d}.{v.microsecond:06d}"
    )


class SQLiteJSON(JSON):
    """JSON declared ``TEXT`` on SQLite.

    SQLite gives a column declared ``JSON`` NUMERIC affinity, which rewrites a stored
    top-level number: ``0.0`` comes back as ``0`` and ``2**70`` as a float. ``TEXT`` affinity
    keeps the JSON text exactly as written; SQLite's JSON functions read it the same.
    """

    cache_ok = True


@compiles(SQLiteJSON, "sqlite")
def _sqlite_json_ddl(type_: SQLiteJSON, compiler: Any, **kw: Any) -> str:
    return "TEXT"


def json_type() -> Any:
    return SQLiteJSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


#: A cost in its smallest stored step: SQLite keeps whole millionths.
MICROS = 10**COST_PLACES


def plain_decimal(value: Decimal) -> Decimal:
    """``value`` without trailing zeros and never in exponent form (``0.04``, ``12``)."""
    if value == value.to_integral_value():
        return value.quantize(Decimal(1))
    return value.normalize()


def to_micros(value: Decimal) -> int:
    """A checked cost (at most `COST_PLACES` places) as SQLite stores it."""
    return int(value.scaleb(COST_PLACES))


class Money(TypeDecorator[Decimal]):
    """An exact amount of money (a cost, an estimate, a budget), read as a `Decimal`.

    PostgreSQL stores ``numeric(20, 6)``. SQLite has no exact decimal type (its NUMERIC
    affinity turns ``0.1`` into a float), so it stores the amount as an integer number of
    millionths (``0.04`` is ``40000``): sums stay exact integers there. A value that is not
    an integer (a client wrote a float or text, past the check constraint) reads as None.
    """

    impl = Numeric(20, COST_PLACES)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(Numeric(20, COST_PLACES, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
        return to_micros(amount) if dialect.name == "sqlite" else amount

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        """Only `process_result_value`: every driver returns ``numeric`` as a `Decimal`
        (or SQLite's integer) already, and the fast path (`jobqueue.drivers.direct`) asks
        for processors without the column's type code, which SQLAlchemy's numeric needs."""

        def process(value: Any) -> Decimal | None:
            return self.process_result_value(value, dialect)

        return process

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            if isinstance(value, bool) or not isinstance(value, int):
                return None
            return plain_decimal(Decimal(value).scaleb(-COST_PLACES))
        return plain_decimal(Decimal(value))


class MoneyBounds(FunctionElement[bool]):
    """True when an amount is within 0 and `MAX_COST`, or NULL (a check passes); on SQLite
    also that it is stored as `Money` stores it (an integer of millionths)."""

    inherit_cache = True

    def __init__(self, column: ColumnElement[Any]) -> None:
        super().__init__(column)


@compiles(MoneyBounds, "postgresql")
def _money_bounds_pg(element: MoneyBounds, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    return f"{compiler.process(column, **kw)} BETWEEN 0 AND {MAX_COST}"


@compiles(MoneyBounds)
def _money_bounds_sqlite(element: MoneyBounds, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    value = compiler.process(column, **kw)
    return (
        f"({value} IS NULL OR typeof({value}) = 'integer' "
        f"AND {value} BETWEEN 0 AND {MAX_COST * MICROS})"
    )


SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"


class DbNow(FunctionElement[Any]):
    """The database's current UTC time."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(DbNow, "postgresql")
def _now_pg(element: DbNow, compiler: SQLCompiler, **kw: Any) -> str:
    # statement_timestamp, not now(): a long transaction must not hand out stale leases.
    # Not clock_timestamp() either: that is volatile, so the planner cannot bound an index
    # scan by it (a claim's expired-lease probe would read every held job's lease entry),
    # and it moves while one statement runs (rows written together get one time).
    return "statement_timestamp()"


@compiles(DbNow)
def _now_sqlite(element: DbNow, compiler: SQLCompiler, **kw: Any) -> str:
    return SQLITE_NOW


class DbNowPlus(FunctionElement[Any]):
    """The database's current UTC time plus a number of seconds (a bound float)."""

    type = UTCDateTime()
    inherit_cache = True

    def __init__(self, seconds: float | ColumnElement[Any]) -> None:
        arg = seconds if isinstance(seconds, ColumnElement) else literal(float(seconds), Float())
        super().__init__(arg)


@compiles(DbNowPlus, "postgresql")
def _now_plus_pg(element: DbNowPlus, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    return f"(statement_timestamp() + make_interval(secs => {compiler.process(seconds, **kw)}))"


@compiles(DbNowPlus)
def _now_plus_sqlite(element: DbNowPlus, compiler: SQLCompiler, **kw: Any) -> str:
    (seconds,) = element.clauses
    modifier = f"(printf('%+.6f seconds', {compiler.process(seconds, **kw)}))"
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', {modifier})"


class _Extreme(FunctionElement[Any]):
    """The larger (`Larger`) or smaller (`Smaller`) of two values that are never NULL. One
    call instead of a CASE that would repeat (and run twice) the subqueries an operand
    holds. ``names``: the function on PostgreSQL, and SQLite's two-argument one."""

    inherit_cache = True
    names: tuple[str, str]

    def __init__(self, a: ColumnElement[Any], b: ColumnElement[Any]) -> None:
        super().__init__(a, b)


class Larger(_Extreme):
    inherit_cache = True
    names = ("greatest", "max")


class Smaller(_Extreme):
    inherit_cache = True
    names = ("least", "min")


@compiles(Larger)
@compiles(Smaller)
def _extreme(element: _Extreme, compiler: SQLCompiler, **kw: Any) -> str:
    name = element.names[0 if compiler.dialect.name == "postgresql" else 1]
    return f"{name}({compiler.process(element.clause_expr, **kw)[1:-1]})"


class CommitUnflushed(FunctionElement[bool]):
    """True; on PostgreSQL it also lets the statement's transaction commit without waiting
    for its WAL to reach the disk (``SET LOCAL synchronous_commit = off``, run once as an
    InitPlan, so an autocommit statement can carry it without a round trip of its own).

    For writes that a crash of the database server may undo without harm: the commit is
    visible at once and reaches the disk within moments (``wal_writer_delay``), and any
    later commit that does wait for the disk flushes it first. SQLite: plain true.
    """

    inherit_cache = True
    type = Boolean()


@compiles(CommitUnflushed, "postgresql")
def _commit_unflushed_pg(element: CommitUnflushed, compiler: SQLCompiler, **kw: Any) -> str:
    return "(SELECT set_config('synchronous_commit', 'off', true)) = 'off'"


@compiles(CommitUnflushed)
def _commit_unflushed_sqlite(element: CommitUnflushed, compiler: SQLCompiler, **kw: Any) -> str:
    return "1 = 1"


class Finite(FunctionElement[bool]):
    """True when a timestamp is a real point in time, or NULL (a check constraint passes).

    PostgreSQL's ``timestamptz`` holds ``infinity`` and ``-infinity``, which no client
    library reads back as a datetime. SQLite stores text, which may be anything: a value
    is a time when SQLite's own date functions can read it.
    """

    inherit_cache = True

    def __init__(self, column: ColumnElement[Any]) -> None:
        super().__init__(column)


@compiles(Finite, "postgresql")
def _finite_pg(element: Finite, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    return f"isfinite({compiler.process(column, **kw)})"


@compiles(Finite)
def _finite_sqlite(element: Finite, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    value = compiler.process(column, **kw)
    return f"({value} IS NULL OR julianday({value}) IS NOT NULL)"


class WellFormedId(FunctionElement[bool]):
    """True when a job's id reads back as a UUID.

    PostgreSQL's ``uuid`` column holds nothing else. SQLite stores the id as text, which
    another client may fill with anything: an id that is not 32 hex digits would fail
    every read of a batch that holds it.
    """

    inherit_cache = True

    def __init__(self, column: ColumnElement[Any]) -> None:
        super().__init__(column)


@compiles(WellFormedId, "postgresql")
def _well_formed_id_pg(element: WellFormedId, compiler: SQLCompiler, **kw: Any) -> str:
    return "true"


@compiles(WellFormedId)
def _well_formed_id_sqlite(element: WellFormedId, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    value = compiler.process(column, **kw)
    return f"(length({value}) = 32 AND {value} NOT GLOB '*[^0-9a-f]*')"


class DbNowText(FunctionElement[Any]):
    """The database's current time as ISO 8601 UTC text, ``2026-11-29T07:05:48.123456+00:00``:
    the ``at`` of an ``errors`` entry, written the same on every backend (SQLite's clock
    counts milliseconds, so its last three digits are zeros)."""

    inherit_cache = True


@compiles(DbNowText, "postgresql")
def _now_text_pg(element: DbNowText, compiler: SQLCompiler, **kw: Any) -> str:
    # Not the timestamp itself: JSON would write it in the session's time zone.
    return (
        "to_char(statement_timestamp() AT TIME ZONE 'UTC',"
        " 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"
    )


@compiles(DbNowText)
def _now_text_sqlite(element: DbNowText, compiler: SQLCompiler, **kw: Any) -> str:
    return "strftime('%Y-%m-%dT%H:%M:%f000+00:00', 'now')"


class DbNowAfter(FunctionElement[Any]):
    """The database's current UTC time, or just after ``column`` (a time) when that is not
    earlier: a time later than ``column`` on every clock step and after a clock that
    went back. NULL ``column`` counts as long ago."""

    type = UTCDateTime()
    inherit_cache = True

    def __init__(self, column: ColumnElement[Any]) -> None:
        super().__init__(column)


@compiles(DbNowAfter, "postgresql")
def _now_after_pg(element: DbNowAfter, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    # GREATEST ignores NULLs; timestamptz counts in microseconds.
    return (
        f"GREATEST(statement_timestamp(),"
        f" {compiler.process(column, **kw)} + interval '1 microsecond')"
    )


@compiles(DbNowAfter)
def _now_after_sqlite(element: DbNowAfter, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    # The clock's text counts in milliseconds; max() of texts in one format is the later
    # time, and is NULL when any argument is (hence the coalesce).
    later = f"strftime('%Y-%m-%d %H:%M:%f000', {compiler.process(column, **kw)}, '+0.001 seconds')"
    return f"max({SQLITE_NOW}, coalesce({later}, ''))"


class JsonAppend(FunctionElement[Any]):
    """``array || [object]`` for a JSON array column; the object's keys and values given
    as alternating SQL expressions (values may be bound parameters)."""

    inherit_cache = True

    def __init__(self, array: ColumnElement[Any], *pairs: ColumnElement[Any]) -> None:
        super().__init__(array, *pairs)


@compiles(JsonAppend, "postgresql")
def _json_append_pg(element: JsonAppend, compiler: SQLCompiler, **kw: Any) -> str:
    array, *pairs = element.clauses
    obj = ", ".join(compiler.process(p, **kw) for p in pairs)
    return (
        f"(COALESCE({compiler.process(array, **kw)}, '[]'::jsonb) "
        f"|| jsonb_build_array(jsonb_build_object({obj})))"
    )


@compiles(JsonAppend)
def _json_append_sqlite(element: JsonAppend, compiler: SQLCompiler, **kw: Any) -> str:
    array, *pairs = element.clauses
    obj = ", ".join(compiler.process(p, **kw) for p in pairs)
    # SQLite's json_insert refuses text that is not JSON, which a client may have stored:
    # such a history (or a JSON value that is not an array) becomes the first entry of a
    # new array, as PostgreSQL's `||` does, so that a failure can always be recorded.
    old = f"COALESCE({compiler.process(array, **kw)}, '[]')"
    history = (
        f"CASE WHEN json_valid({old}) THEN CASE json_type({old}) WHEN 'array' THEN {old} "
        f"ELSE json_array(json({old})) END ELSE json_array(CAST({old} AS TEXT)) END"
    )
    return f"json_insert({history}, '$[#]', json_object({obj}))"


class NewJobId(FunctionElement[Any]):
    """Server-side id for rows that other clients insert without one.

    On PostgreSQL a UUIDv7 (time-ordered, so ids sort by creation like ours do) made from
    ``gen_random_uuid()`` with the millisecond clock laid over its first six bytes.
    """

    inherit_cache = True


@compiles(NewJobId, "postgresql")
def _new_id_pg(element: NewJobId, compiler: SQLCompiler, **kw: Any) -> str:
    return (
        "(encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing "
        "substring(int8send((extract(epoch from clock_timestamp()) * 1000)::bigint) from 3) "
        "from 1 for 6), 52, 1), 53, 1), 'hex'))::uuid"
    )


@compiles(NewJobId)
def _new_id_sqlite(element: NewJobId, compiler: SQLCompiler, **kw: Any) -> str:
    return "(lower(hex(randomblob(16))))"


class DbStartOfDay(FunctionElement[Any]):
    """The start of the database's current UTC day."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(DbStartOfDay, "postgresql")
def _start_of_day_pg(element: DbStartOfDay, compiler: SQLCompiler, **kw: Any) -> str:
    return "date_trunc('day', statement_timestamp(), 'UTC')"


@compiles(DbStartOfDay)
def _start_of_day_sqlite(element: DbStartOfDay, compiler: SQLCompiler, **kw: Any) -> str:
    return "strftime('%Y-%m-%d 00:00:00.000000', 'now')"


class MinutesAgo(FunctionElement[Any]):
    """Whole minutes between a time column and the database clock (0: this minute)."""

    type = Integer()
    inherit_cache = True

    def __init__(self, column: ColumnElement[Any]) -> None:
        super().__init__(column)


@compiles(MinutesAgo, "postgresql")
def _minutes_ago_pg(element: MinutesAgo, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    at = compiler.process(column, **kw)
    return f"CAST(floor(extract(epoch FROM (statement_timestamp() - {at})) / 60) AS integer)"


@compiles(MinutesAgo)
def _minutes_ago_sqlite(element: MinutesAgo, compiler: SQLCompiler, **kw: Any) -> str:
    (column,) = element.clauses
    at = compiler.process(column, **kw)
    return f"CAST((julianday('now') - julianday({at})) * 1440 AS INTEGER)"
