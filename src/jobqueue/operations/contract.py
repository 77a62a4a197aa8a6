"""The contract between an operation and the queue that runs it.

An operation is written once, as a generator: it checks its input, yields steps
(`jobqueue.sql.steps`), receives each step's rows, and returns the method's answer (or
raises our error). It never touches a connection. Each one declares, with `operation`,
what it does to the database (`Access`), and the queue picks the connection from that
declaration alone (`jobqueue.queue`): a statement at a time in autocommit mode where that is
safe and saves round trips, a transaction where it is needed.

The declaration is a promise the operation keeps on every database; the contract tests
(``tests/operations/test_contract.py``) run every operation and check each against it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from dataclasses import dataclass
from enum import Enum
from typing import Generic, ParamSpec, TypeVar

from ..sql.steps import Rows, Step

T = TypeVar("T")
P = ParamSpec("P")

Steps = Generator[Step, Rows, T]
"""An operation's body: yields steps, receives their rows, returns its answer."""


class Access(Enum):
    """What an operation does to the database, and so how the queue may run it."""

    #: Only reads. SQLite begins its transaction without taking the write lock (readers
    #: never queue behind a writer); PostgreSQL runs it in autocommit mode.
    READ = "read"
    #: At most one write, and nothing it reads afterwards needs to see the database as it
    #: was before that write: each statement may commit on its own, so PostgreSQL runs it in
    #: autocommit mode (one round trip a statement, no BEGIN and COMMIT). SQLite takes the
    #: write lock up front (``BEGIN IMMEDIATE``).
    ONE_WRITE = "one write"
    #: Several writes that must commit together: a transaction on every database.
    TRANSACTION = "transaction"


@dataclass(frozen=True, slots=True)
class Operation(Generic[T]):
    """One call of an operation: its declared access, its steps to run, and its name
    (the qualified name of the operation)."""

    access: Access
    steps: Steps[T]
    name: str


#: Every declared operation, by qualified name, and its access: what the contract tests go
#: through.
DECLARED: dict[str, Access] = {}


def operation(access: Access) -> Callable[[Callable[P, Steps[T]]], Callable[P, Operation[T]]]:
    """Declare a generator function an operation with ``access``: calling it then gives an
    `Operation` that carries the declaration along with the steps."""

    def declare(body: Callable[P, Steps[T]]) -> Callable[P, Operation[T]]:
        name = f"{body.__module__}.{body.__qualname__}"

        @functools.wraps(body)
        def call(*args: P.args, **kwargs: P.kwargs) -> Operation[T]:
            return Operation(access, body(*args, **kwargs), name)

        DECLARED[name] = access
        return call

    return declare
