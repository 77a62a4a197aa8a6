"""The steps an operation yields: what to run, never how.

An operation (`jobqueue.operations`) yields one step at a time and receives its rows. Three
kinds of step exist, each a class of its own:

- `Query`: a SQLAlchemy statement and its parameters, run as SQLAlchemy runs any statement;
- `Direct`: a query on the hot path (one job's INSERT, a claim, a completion batch) that the
  driver layer may run on the driver connection itself, past SQLAlchemy's per-execution
  work (`jobqueue.drivers.direct`); it carries its result columns' types for that;
- `CopyRows`: rows to COPY into a table (PostgreSQL), which SQLAlchemy cannot run at all
  (`jobqueue.drivers.copy`).

Whoever runs steps implements `Runner`: one method per kind of step. A step hands itself to
the method for its kind (`run`), so the executor in `jobqueue.queue` runs any step with one
call, without asking which kind it is, and a new kind of step is a new class plus a new
method that every runner must then implement (mypy checks it).

Nothing here opens a connection or knows a driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from sqlalchemy import Executable
from sqlalchemy.types import TypeEngine

Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
"""One parameter set, a list of them (executemany), or none."""

Row = Mapping[str, Any]
Rows = list[Row]

R_co = TypeVar("R_co", covariant=True)
R = TypeVar("R")


class Runner(Protocol[R_co]):
    """Runs each kind of step on one connection: ``R_co`` is the rows (a sync runner) or an
    awaitable of them (an async one). `jobqueue.drivers` implements it."""

    def query(self, step: Query) -> R_co: ...

    def direct(self, step: Direct) -> R_co: ...

    def copy(self, step: CopyRows) -> R_co: ...


@dataclass(frozen=True, slots=True)
class Query:
    """A SQLAlchemy statement and the parameters to run it with."""

    statement: Executable
    params: Params

    @property
    def writes(self) -> bool:
        """Whether running it may change rows (INSERT, UPDATE, DELETE, with or without
        RETURNING)."""
        return bool(getattr(self.statement, "is_dml", False))

    def run(self, runner: Runner[R]) -> R:
        return runner.query(self)


@dataclass(frozen=True, slots=True)
class Direct(Query):
    """A hot query: the driver layer may run it on the driver connection directly, where
    nothing else can observe the difference (the queue's own connection in autocommit
    mode); anywhere else it runs as a `Query`. ``params`` is one parameter set, and
    ``returning`` names the result columns and their types, for SQLAlchemy's own result
    processing of each value.

    ``generic``: PostgreSQL's plan of the statement for any parameter values reads the
    same indexes as a plan made for given ones (``tests/sql/test_explain.py`` checks it),
    so the driver layer may have the server keep that plan instead of planning every
    execution (`jobqueue.drivers.plans`)."""

    params: Mapping[str, Any]
    returning: Mapping[str, TypeEngine[Any]]
    generic: bool = False

    def run(self, runner: Runner[R]) -> R:
        return runner.direct(self)


@dataclass(frozen=True, slots=True)
class CopyRows:
    """COPY ``records`` (tuples in ``columns`` order) into a table: a write.

    ``records`` may be lazy: it is read once, while the rows are sent. ``types`` are the
    columns' SQLAlchemy types (the driver layer formats values by them).
    """

    schema: str | None
    table: str
    columns: tuple[str, ...]
    types: tuple[TypeEngine[Any], ...]
    records: Iterable[tuple[Any, ...]]

    writes = True

    @property
    def sql(self) -> str:
        name = f'"{self.schema}"."{self.table}"' if self.schema else f'"{self.table}"'
        return f"COPY {name} ({', '.join(self.columns)}) FROM STDIN"

    def run(self, runner: Runner[R]) -> R:
        return runner.copy(self)


Step = Query | CopyRows
"""Any step (a `Direct` is a `Query`)."""
