"""`JobQueue` (sync) and `AsyncJobQueue` (asyncio): thin executors of the shared operations.

Each public method checks its arguments, picks an operation from `jobqueue.operations`, and
runs it (`_run`): on the caller's connection when ``connection=`` is given, so a job can be
enqueued atomically with the caller's own writes; else on a connection chosen by what the
operation declares it does (`jobqueue.operations.Access`, see `_QueueBase._plans_for`). The
steps run through a runner of the driver layer (`jobqueue.drivers.runner`): the queues
never learn which driver they have. The two classes differ only where one awaits.
"""

from __future__ import annotations

import asyncio
import builtins
import gc
import logging
import threading
import time
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from contextvars import ContextVar
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, NamedTuple, TypedDict, TypeVar, Unpack
from uuid import UUID

from sqlalchemy import URL, Connection, Engine, MetaData, Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import operations as ops
from . import tracing
from .drivers import plans
from .drivers.deadline import Timer, async_deadline, sync_deadline
from .drivers.engines import (
    DEFAULT_COMMAND_TIMEOUT,
    READ_ONLY,
    make_async_engine,
    make_engine,
    pool_capacity,
    statements_outlive_cancellation,
)
from .drivers.errors import translated_errors
from .drivers.runner import AsyncRunner, SyncRunner
from .drivers.spare import SpareConnection
from .drivers.sqlite_thread import run_transaction, runs_on_thread
from .errors import (
    ConfigurationError,
    DatabaseBusy,
    DatabaseReadOnly,
    DatabaseTimeout,
    DatabaseUnavailable,
    JobExpired,
    JobFailed,
    JobQueueError,
    PermissionDenied,
    SchemaNotInstalled,
    WaitTimeout,
    warn_renamed,
)
from .models import (
    DEFAULT_KIND,
    DEFAULT_LEASE,
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_POSITION_LIMIT,
    DEFAULT_QUEUE,
    DEFAULT_TABLE,
    Budget,
    ClaimMode,
    Completion,
    Job,
    Limit,
    LiveWorker,
    NewJob,
    Placement,
    Position,
    Status,
    StatusStats,
    WorkerPresence,
)
from .operations import Access, Operation, presence
from .operations import admin as admin_ops
from .operations import budgets as budget_ops
from .operations import limits as limit_ops
from .operations import schedules as schedule_ops
from .operations.admin import JobPage, Overview
from .operations.gauges import Backlog, Gauges, backlog, gauges
from .operations.position import PositionCache, position
from .operations.schedules import Schedule, ScheduleRound, ScheduleSpec
from .operations.waiting import NO_WORKER_AFTER, Lookout, Waiter
from .sql.presence import PresenceStatements
from .sql.schedules import ScheduleStatements
from .sql.statements import Statements
from .sql.table import jobs_table
from .validation import (
    QueueLimits,
    check_cost,
    new_job_row,
    new_job_rows,
    parse_job_id,
    seconds_of,
)

log = logging.getLogger("jobqueue.queue")

T = TypeVar("T")
S = TypeVar("S")
E = TypeVar("E", Engine, AsyncEngine)
#: What the first operation of a claim returns: its jobs, or a completion's ids and jobs.
C = TypeVar("C", builtins.list[Job], tuple[set[UUID], builtins.list[Job]])

#: The operations of one claim (`_QueueBase._claim_plan`), sent each one's result.
ClaimPlan = Generator[Operation[Any], Any, C]


def _same(jobs: builtins.list[Job]) -> builtins.list[Job]:
    return jobs


def _claimed(result: tuple[set[UUID], builtins.list[Job]]) -> builtins.list[Job]:
    return result[1]


JobRef = Job | UUID | str


class PositionKey(NamedTuple):
    """What a kept position is found by: the job, whose it is asked as, how far to count."""

    job_id: UUID
    owner_id: str | None
    limit: int


class EnqueueOptions(TypedDict, total=False):
    """Keyword options of `enqueue` (see `NewJob` for their meaning and limits)."""

    queue: str
    priority: int
    run_at: datetime | None
    delay: float | timedelta | None
    max_attempts: int
    owner_id: str | None
    idempotency_key: str | None
    limit_key: str | None
    expires_in: float | timedelta | None
    start_by: datetime | None
    estimated_cost: Decimal | int | str | None


class LimitSettings(TypedDict, total=False):
    """Keyword settings of `set_limit` (None clears one)."""

    max_running: int | None
    max_running_per_owner: int | None
    rate: int | None
    per: float | timedelta | None
    weight: float | None


def _settings(settings: LimitSettings) -> dict[str, Any]:
    out: dict[str, Any] = dict(settings)
    if "per" in out:
        out["per_seconds"] = _secs(out.pop("per"))
    return out


def _estimate(kind: str, amount: Decimal | int | str) -> Decimal:
    checked = check_cost(amount, f"the estimated cost of kind {kind!r}")
    assert checked is not None
    return checked


def _secs(value: float | timedelta | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _secs_required(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else value


class _Plan(NamedTuple, Generic[E]):
    """Where an operation runs: on ``engine``, in a transaction or statement by statement
    in autocommit mode."""

    engine: E
    transaction: bool


class Held:
    """A connection of an `AsyncJobQueue`'s own that one task keeps from one operation to
    the next (`AsyncJobQueue._holding`), and the engine it is from."""

    __slots__ = ("conn", "engine", "queue", "task")

    def __init__(self, queue: AsyncJobQueue) -> None:
        self.queue = queue
        self.conn: AsyncConnection | None = None
        self.engine: AsyncEngine | None = None
        #: The task using it now (`AsyncJobQueue._on_held`).
        self.task: asyncio.Task[Any] | None = None

    @property
    def holds(self) -> bool:
        """Whether it keeps a connection now."""
        return self.conn is not None

    async def let_go(self) -> None:
        """Give the connection back to the pool."""
        if self.conn is not None:
            conn, self.conn = self.conn, None
            await conn.close()


#: The `Held` connection the operations of the current task run on (`_on_held`).
_HELD: ContextVar[Held | None] = ContextVar("jobqueue_held", default=None)


#: The enqueue's "span" while no trace is going on.
_UNTRACED: AbstractContextManager[None] = nullcontext()

#: From this many jobs on, `enqueue_many` pauses the cyclic garbage collector (`_gc_paused`).
GC_PAUSE_MIN_JOBS = 1_000

_gc_lock = threading.Lock()
_gc_pausers = 0  # batches running with the collector paused by `_gc_paused`
_gc_resume = False  # whether the collector was on when the first of them paused it


@contextmanager
def _gc_paused(jobs: int) -> Iterator[None]:
    """The cyclic garbage collector paused while a batch of ``jobs`` jobs (at least
    `GC_PAUSE_MIN_JOBS`) is checked, built and written, and resumed after (on error too)
    unless it was off before.

    A large batch makes a few objects per job that live until it returns (its rows, ids,
    payloads and `Job` objects); as they pile up the collector runs again and again,
    each full run over every object of the process, and finds nothing to free (these
    objects hold no cycles): docs/performance.md has what that costs. Reference counting
    frees memory as always meanwhile; cycles made elsewhere in the process wait until
    the collector resumes. Batches that overlap (threads, tasks) resume it when the last
    of them ends.
    """
    global _gc_pausers, _gc_resume
    if jobs < GC_PAUSE_MIN_JOBS:
        yield
        return
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_resume:
                gc.enable()


class _QueueBase(Generic[E]):
    """Configuration and argument handling shared by both queues."""

    engine: E

    def __init__(
        self,
        engine: E,
        *,
        table: str = DEFAULT_TABLE,
        schema: str | None = None,
        lease: float = DEFAULT_LEASE,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        retry_backoff: tuple[float, float] = (5.0, 600.0),
        estimated_costs: Mapping[str, Decimal | int | str] | None = None,
        command_timeout: float | None = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        self.engine = engine
        self.table: Table = jobs_table(table, schema, MetaData())
        self.table_name = f"{schema}.{table}" if schema else table
        self.dialect = engine.dialect.name
        self.statements = Statements(self.table, self.dialect)
        self.worker_statements = PresenceStatements(self.table, self.dialect)
        self.schedule_statements = ScheduleStatements(self.table, self.dialect)
        self._plans: dict[Access, _Plan[E]] = self._plans_for(engine)
        self.lease = seconds_of(lease, "lease", low=0.001)
        self.limits = QueueLimits(max_payload_bytes=max_payload_bytes)
        self.retry_backoff = retry_backoff
        #: What a job of each kind is expected to cost when its caller gives no
        #: ``estimated_cost``: reserved against its owner's budget (`set_budget`).
        self.estimated_costs: dict[str, Decimal] = {
            kind: _estimate(kind, amount) for kind, amount in (estimated_costs or {}).items()
        }
        #: The longest one operation on a connection of the queue's own may go without an
        #: answer from PostgreSQL (seconds; None: no bound): `DatabaseTimeout` after it.
        self.command_timeout = (
            None
            if command_timeout is None or not self.is_postgres
            else seconds_of(command_timeout, "command_timeout", low=0.001)
        )
        #: When an operation last failed because the database could not be reached
        #: (`DatabaseUnavailable`, a `DatabaseTimeout` included), by this process's
        #: monotonic clock; None if none has, or if the database has answered since with
        #: a refusal (`DatabaseBusy`, `DatabaseReadOnly`: reachable, only not writing
        #: now). A worker's lease watch reads it.
        self.unreachable_at: float | None = None
        self._claim_mode = ClaimMode()
        self._placement = Placement()
        #: Recent answers of `position`, a few seconds each (`PositionCache`).
        self.positions = PositionCache()
        # False once the live workers proved unreadable for this caller: positions are
        # then computed without them (no capacity, so no estimate).
        self._workers_readable = True

    def _plans_for(self, engine: E) -> dict[Access, _Plan[E]]:
        """Where each kind of operation runs (the one place that decides it).

        On PostgreSQL an operation that makes at most one write needs no transaction:
        outside a caller's transaction it runs in autocommit mode, one round trip per
        statement instead of BEGIN, statement, COMMIT, and its hot statements may take the
        driver's fast path (`jobqueue.drivers.direct`). It runs on an autocommit view of
        ``engine``: one pool, and the engine's events see the queue's statements (all but
        the fast path's). An engine of its own in autocommit mode would cost a little less
        per operation but would hide them (docs/performance.md has the measurements). SQLite keeps a
        transaction for everything (no round trips to save there): ``BEGIN IMMEDIATE`` for
        writers, so they queue for the lock instead of failing half-way, and a deferred
        ``BEGIN`` for readers (`READ_ONLY`), which never wait for the lock. Its hot
        statements take the fast path inside those transactions, and on aiosqlite the
        whole transaction runs on the connection's thread
        (`jobqueue.drivers.sqlite_thread`), so that the write lock is not held across turns
        of the event loop.
        """
        if self.is_postgres:
            autocommit: E = engine.execution_options(isolation_level="AUTOCOMMIT")
            return {
                Access.READ: _Plan(autocommit, transaction=False),
                Access.ONE_WRITE: _Plan(autocommit, transaction=False),
                Access.TRANSACTION: _Plan(engine, transaction=True),
            }
        reader: E = engine.execution_options(**{READ_ONLY: True})
        return {
            Access.READ: _Plan(reader, transaction=True),
            Access.ONE_WRITE: _Plan(engine, transaction=True),
            Access.TRANSACTION: _Plan(engine, transaction=True),
        }

    @property
    def claims_within_limits(self) -> bool:
        """Whether this queue's claims last found limits in force (`set_limit`, `pause`)."""
        return self._claim_mode.limited

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    def _lease(self, lease: float | None) -> float:
        """The caller's lease, or the queue's default when none is given (0 is not "none":
        the operation refuses it)."""
        return self.lease if lease is None else lease

    @contextmanager
    def _batch_rows(
        self, jobs: Iterable[NewJob | Mapping[str, Any]]
    ) -> Iterator[list[dict[str, Any]]]:
        """The checked rows of an `enqueue_many` batch, for the write inside the block: the
        collector paused for a large batch (`_gc_paused`), the enqueue's trace span open."""
        new = [j if isinstance(j, NewJob) else NewJob(**j) for j in jobs]
        with _gc_paused(len(new)):
            rows = new_job_rows(new, self.limits)
            with self._traced(rows):
                yield rows

    def _enqueue_rows(
        self, kind: str, payload: Any, options: EnqueueOptions
    ) -> list[dict[str, Any]]:
        return [new_job_row(NewJob(kind=kind, payload=payload, **options), self.limits)]

    def _within_budgets(self, rows: list[dict[str, Any]]) -> Operation[list[Job]]:
        """The enqueue of a batch an owner of which has a budget (`enqueue_many` answered
        None): reserve, or refuse with `BudgetExceeded`."""
        return budget_ops.enqueue_within_budgets(
            self.statements, rows, self._placement, self.estimated_costs
        )

    @staticmethod
    def _traced(rows: list[dict[str, Any]]) -> AbstractContextManager[None]:
        """The enqueue's span, its trace stored with the new jobs (`jobqueue.tracing`);
        nothing at all while no trace is going on."""
        return tracing.enqueue_span(rows) if tracing.active() else _UNTRACED

    def _claim_op(
        self,
        worker_id: str,
        queues: Sequence[str] | str | None,
        kinds: Sequence[str] | None,
        limit: int,
        lease: float | None,
        durable: bool = True,
    ) -> Operation[list[Job]]:
        qs = [queues] if isinstance(queues, str) else queues
        args = (self.statements, worker_id)
        common: dict[str, Any] = {
            "limit": limit,
            "lease": self._lease(lease),
            "queues": qs,
            "kinds": kinds,
            "limits": self.limits,
            "mode": self._claim_mode,
        }
        if self._claim_mode.limited:
            # Limits record each start for their rates: always durable.
            return limit_ops.claim_within_limits(*args, **common)
        return ops.claim(*args, **common, durable=durable)

    def _claim_plan(
        self,
        first: Operation[C],
        jobs_of: Callable[[C], builtins.list[Job]],
        worker_id: str,
        queues: Sequence[str] | str | None,
        kinds: Sequence[str] | None,
        limit: int,
        lease: float | None,
        durable: bool = True,
    ) -> ClaimPlan[C]:
        """The operations of a claim, run one after the other by `_run_plan`: ``first``
        (a claim, or a completion with a claim), and, when it took no job, an entry of the
        due jobs waiting outside the fair-share line (a retried job, a row another client
        inserted: `_entry_op`) and a second claim.

        The second claim runs whether or not this entry put jobs in the line: the worker's
        `Entrance` timer (or another worker) may have entered them between the first claim
        and this entry, and on PostgreSQL this entry may have waited for such an entry in
        progress and then found its jobs in the line already. A claim that gave up would
        leave those jobs for the next poll, and `run_until_idle` stop with them pending. It
        also obeys the limits the first claim may just have learnt are in force. A claim
        that took something returns at once: the `Entrance` timer puts waiting jobs in the
        line within a second."""
        result: C = yield first
        jobs = jobs_of(result)
        if not jobs:
            yield self._entry_op()
            more: builtins.list[Job] = yield self._claim_op(
                worker_id, queues, kinds, limit, lease, durable
            )
            jobs.extend(more)
        return result

    def _entry_op(self) -> Operation[int]:
        return limit_ops.enter_line(self.statements)

    def _complete_and_claim_op(
        self,
        items: Sequence[Completion],
        worker_id: str,
        queues: Sequence[str] | str | None,
        kinds: Sequence[str] | None,
        limit: int,
        lease: float | None,
    ) -> Operation[tuple[set[UUID], builtins.list[Job]]]:
        both = (
            limit_ops.complete_then_claim_within
            if self._claim_mode.limited
            else ops.complete_and_claim
        )
        return both(
            self.statements,
            items,
            self.limits,
            worker_id,
            limit=limit,
            lease=self._lease(lease),
            queues=[queues] if isinstance(queues, str) else queues,
            kinds=kinds,
            mode=self._claim_mode,
        )

    def _fail_op(
        self,
        job: Job,
        error: BaseException | str,
        retry: bool | None,
        retry_in: Any,
        cost: Any = None,
        cost_unit: str | None = None,
    ) -> Operation[Job]:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return ops.fail(
            self.statements,
            job,
            message,
            retry=retry,
            retry_in=retry_in,
            backoff=self.retry_backoff,
            cost=cost,
            cost_unit=cost_unit,
        )

    def _position_key(self, job_id: JobRef, owner_id: str | None, limit: int) -> PositionKey:
        return PositionKey(parse_job_id(job_id), owner_id, limit)

    def _position_op(self, key: PositionKey) -> Operation[Position]:
        workers = self.worker_statements if self._workers_readable else None
        return position(self.statements, workers, key.job_id, key.owner_id, key.limit)

    def _position_without_workers(self, exc: JobQueueError) -> bool:
        """Whether to compute positions without the live workers from now on: the read
        failed as it does when this caller may not read their table (or it is missing)."""
        if not self._workers_readable or not isinstance(exc, PermissionDenied | SchemaNotInstalled):
            return False
        log.debug("positions without the live workers: %s", exc)
        self._workers_readable = False
        return True

    @staticmethod
    def _final(job: Job) -> Job:
        if job.status is Status.COMPLETED:
            return job
        raise JobFailed.of(job)

    @staticmethod
    def _waited(job: Job) -> Job:
        """The end of a wait: the final job, or `JobExpired` for an expired one (it never
        ran: a caller reading only the status would take it for done)."""
        if job.status is Status.EXPIRED:
            raise JobExpired.of(job)
        return job

    @staticmethod
    def _timed_out(job_id: object, waiter: Waiter) -> WaitTimeout:
        return WaitTimeout(
            f"job {job_id} did not finish within {waiter.timeout:g} s", job_id=job_id
        )

    @contextmanager
    def _presence_errors(self) -> Iterator[None]:
        """Name the live-workers table when it is the one missing (a database migrated by
        an older jobqueue), rather than say the jobs table is not installed."""
        try:
            yield
        except SchemaNotInstalled as exc:
            name = self.worker_statements.t.name
            if name.lower() not in exc.message.lower():
                raise
            raise SchemaNotInstalled(
                f"the live-workers table {name!r} is not installed: the database is at an "
                "older revision than this jobqueue"
            ) from exc

    @staticmethod
    def _unreadable_workers(lookout: Lookout, exc: JobQueueError) -> None:
        """The live workers could not be read: a wait goes on without them. A table this
        caller may not read, or one not migrated yet, will not change during the wait."""
        if isinstance(exc, PermissionDenied | SchemaNotInstalled):
            lookout.give_up()
        log.debug("cannot read the live workers: %s", exc)

    @staticmethod
    def _no_worker_news(
        message: str | None, on_no_worker: Callable[[str], object] | None
    ) -> object:
        """Pass a no-live-worker message on: to ``on_no_worker``, else as a warning."""
        if message is None:
            return None
        if on_no_worker is None:
            log.warning("%s", message)
            return None
        return on_no_worker(message)


def _drive(conn: Connection, op: Operation[T], *, own: bool = False, autocommit: bool = False) -> T:
    """Run ``op`` on ``conn``: each step it yields, run by the driver layer, then its rows
    sent back, until it returns. ``own``: ``conn`` is the queue's own (not a caller's),
    in autocommit mode with ``autocommit``, else in a transaction the queue began."""
    runner = SyncRunner(conn, own=own, autocommit=autocommit)
    return _pump(op.steps, lambda step: step.run(runner))


def _pump(gen: Generator[S, Any, T], run: Callable[[S], Any]) -> T:
    """Run what ``gen`` yields with ``run``, sending each result back, until it returns."""
    try:
        item = next(gen)
        while True:
            item = gen.send(run(item))
    except StopIteration as done:
        value: T = done.value
        return value


async def _pump_async(gen: Generator[S, Any, T], run: Callable[[S], Awaitable[Any]]) -> T:
    """`_pump` with a ``run`` that is awaited."""
    try:
        item = next(gen)
        while True:
            item = gen.send(await run(item))
    except StopIteration as done:
        value: T = done.value
        return value


async def _drive_async(
    conn: AsyncConnection, op: Operation[T], *, own: bool = False, autocommit: bool = False
) -> T:
    """`_drive` on an async connection."""
    runner = AsyncRunner(conn, own=own, autocommit=autocommit)
    return await _pump_async(op.steps, lambda step: step.run(runner))


def _raise_if_timed_out(timer: Timer | None, exc: Exception) -> None:
    """`DatabaseTimeout` in place of ``exc`` when the operation's deadline broke its
    connection (`jobqueue.drivers.deadline`)."""
    if timer is not None and timer.fired:
        raise DatabaseTimeout(
            f"the database did not answer within {timer.seconds:g} s (command_timeout); "
            "the connection was dropped"
        ) from exc


async def _finished_before_cancelled(work: Coroutine[Any, Any, T]) -> T:
    """Await ``work`` in a task of its own that cancelling the caller does not cancel: the
    caller's cancellation (however many times it is cancelled) waits until ``work`` has
    finished and returned its connection, then propagates. What ``work`` wrote may stay
    written, as when a statement in flight on PostgreSQL commits before its cancel arrives.

    For drivers whose statements outlive a cancelled await
    (`jobqueue.drivers.engines.statements_outlive_cancellation`): cancelled in the middle
    of a statement, their connection would be closed while the statement still holds it,
    and its transaction would keep the database's write lock from every other connection.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with suppress(asyncio.CancelledError):
                await asyncio.wait((task,))
        raise


def _no_lock_timeout_for_given(url: object, lock_timeout: float | None, kind: type) -> None:
    """Refuse ``lock_timeout`` with an engine the caller made: it is set up already."""
    if lock_timeout is not None and isinstance(url, kind):
        raise ConfigurationError(
            "lock_timeout applies to an engine the queue makes, not to one passed in",
            hint="make the engine with jobqueue.drivers.engines.make_engine(url, lock_timeout=...)",
        )


class JobQueue(_QueueBase[Engine]):
    """A job queue over a synchronous SQLAlchemy engine.

    ``url`` may be a URL string, an `Engine`, or None for ``JOBQUEUE_DATABASE_URL`` (default:
    a SQLite file ``jobqueue.db`` in the working directory). ``config``: ``table`` and
    ``schema`` (where the jobs live), ``lease`` (seconds a claim holds a job, default 30),
    ``max_payload_bytes``, ``retry_backoff`` (base and cap in seconds, default (5, 600)),
    ``command_timeout`` (PostgreSQL: the longest one operation waits for the database's
    answer, default 30 s, None for no bound; then `DatabaseTimeout`, docs/operations.md) and
    ``lock_timeout`` (seconds a statement waits for a lock before it fails with
    `DatabaseBusy`; default ``JOBQUEUE_LOCK_TIMEOUT``, else 5 on PostgreSQL and 60 on
    SQLite; it applies to the engine the queue makes, so not with an `Engine` passed in:
    give it to `make_engine` instead).
    """

    def __init__(
        self,
        url: str | URL | Engine | None = None,
        *,
        lock_timeout: float | None = None,
        **config: Any,
    ) -> None:
        self._owns_engine = not isinstance(url, Engine)
        _no_lock_timeout_for_given(url, lock_timeout, Engine)
        super().__init__(make_engine(url, lock_timeout=lock_timeout), **config)
        #: The connection the last autocommit operation ran on, kept while calls follow
        #: each other (`jobqueue.drivers.spare`).
        self._spare = SpareConnection()

    def _run_plan(self, plan: Generator[Operation[Any], Any, T]) -> T:
        """Run a plan's operations one after the other, each as `_run` runs it."""
        return _pump(plan, self._run)

    def _run(self, op: Operation[T], connection: Connection | None = None) -> T:
        try:
            return self._run_translated(op, connection)
        except (DatabaseBusy, DatabaseReadOnly):
            self.unreachable_at = None  # an answer: the database can be reached
            raise
        except DatabaseUnavailable:
            self.unreachable_at = time.monotonic()
            raise

    def _run_translated(self, op: Operation[T], connection: Connection | None) -> T:
        with translated_errors(self.table_name):
            if connection is not None:
                return _drive(connection, op)
            plan = self._plans[op.access]
            if not plan.transaction:
                return self._run_autocommit(op, plan.engine)
            if self.command_timeout is None:
                with plan.engine.begin() as conn:
                    return _drive(conn, op, own=True)
            with plan.engine.connect() as conn, sync_deadline(conn, self.command_timeout) as timer:
                try:
                    with conn.begin():  # the commit inside the deadline too
                        return _drive(conn, op, own=True)
                except Exception as exc:
                    _raise_if_timed_out(timer, exc)
                    raise

    def _run_autocommit(self, op: Operation[T], engine: Engine) -> T:
        """Run ``op`` statement by statement in autocommit mode on the spare connection
        (`jobqueue.drivers.spare`), kept for the next operation after a success; an error
        gives it back to the pool, as closing any connection does."""
        conn = self._spare.take(engine)
        try:
            with sync_deadline(conn, self.command_timeout) as timer:
                try:
                    result = _drive(conn, op, own=True, autocommit=True)
                except Exception as exc:
                    _raise_if_timed_out(timer, exc)
                    raise
        except BaseException:
            conn.close()
            raise
        self._spare.keep(conn, engine)
        return result

    def close(self) -> None:
        """Give back the connection kept from the last operation, and dispose of the engine
        when this queue made it (from a URL, or None); an `Engine` passed in stays the
        caller's to dispose of. ``with JobQueue(...) as queue:`` closes it at the end of the
        block.
        """
        self._spare.let_go()
        if self._owns_engine:
            self.engine.dispose()

    def __enter__(self) -> JobQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producers ---------------------------------------------------------------------------

    def enqueue(
        self,
        kind: str = DEFAULT_KIND,
        payload: Any = None,
        *,
        connection: Connection | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> Job:
        """Create a job and return it (with its id) at once.

        With ``connection=``, the insert joins that connection's transaction: the job
        exists only if the caller commits. A repeated ``idempotency_key`` in the same queue,
        for the same ``owner_id`` (or again without one), returns the existing job instead
        of making a second one; another owner's job is never returned.
        """
        rows = self._enqueue_rows(kind, payload, options)
        with self._traced(rows):
            return self._enqueue(rows, connection)[0]

    def enqueue_many(
        self,
        jobs: Iterable[NewJob | Mapping[str, Any]],
        *,
        connection: Connection | None = None,
    ) -> builtins.list[Job]:
        """Enqueue a batch, all or nothing, and return its jobs in order.

        One write: on PostgreSQL one INSERT of array parameters, or a COPY for a batch of
        `jobqueue.operations.COPY_MIN_JOBS` jobs or more that carry no idempotency key; on SQLite
        multi-row INSERTs in one transaction. ``connection=`` and idempotency keys work as for
        `enqueue`. While a batch of `jobqueue.queue.GC_PAUSE_MIN_JOBS` (1,000) jobs or more is
        checked and written, Python's cyclic garbage collector is paused (`gc.disable`), and
        resumed after.
        """
        with self._batch_rows(jobs) as rows:
            return self._enqueue(rows, connection)

    def _enqueue(
        self, rows: builtins.list[dict[str, Any]], connection: Connection | None
    ) -> builtins.list[Job]:
        jobs = self._run(ops.enqueue_many(self.statements, rows, self._placement), connection)
        if jobs is None:  # an owner has a budget
            jobs = self._run(self._within_budgets(rows), connection)
        return jobs

    # -- budgets -----------------------------------------------------------------------------

    def set_budget(
        self,
        owner_id: str,
        amount: Decimal | int | str,
        *,
        period: str = "month",
        cost_unit: str | None = None,
    ) -> Budget:
        """Give ``owner_id`` a budget of ``amount`` per ``period``: ``"day"`` or ``"month"``
        (calendar, UTC, by the database clock) or ``"balance"`` (prepaid, never starts
        over), replacing any it had. From then on its enqueues reserve each job's estimated
        cost and are refused with `BudgetExceeded` past it. ``cost_unit``: only costs in it
        count (None: every cost). Returns the budget with what already counts."""
        return self._run(
            budget_ops.set_budget(self.statements, owner_id, amount, period, cost_unit)
        )

    def get_budget(self, owner_id: str) -> Budget | None:
        """``owner_id``'s budget with what counts against it now (`Budget.spent`,
        `Budget.remaining`), or None when it has none."""
        return self._run(budget_ops.get_budget(self.statements, owner_id))

    def list_budgets(self) -> builtins.list[Budget]:
        """Every owner's budget, with what counts against it now, by owner."""
        return self._run(budget_ops.list_budgets(self.statements))

    def remove_budget(self, owner_id: str) -> bool:
        """Delete ``owner_id``'s budget (its enqueues are no longer limited); whether it
        had one."""
        return self._run(budget_ops.remove_budget(self.statements, owner_id))

    # -- scheduling --------------------------------------------------------------------------

    def set_limit(
        self, name: str, *, scope: str = "key", **settings: Unpack[LimitSettings]
    ) -> Limit:
        """Create or change the limits of a queue, a limit key or an owner, enforced by every
        worker: ``max_running`` (jobs running at once, fleet-wide), ``max_running_per_owner``
        (the same, per owner), ``rate`` starts per ``per`` seconds (the two go together), and
        for an owner its ``weight`` in the fair share. A limit key is a job's ``limit_key``,
        else its kind. Only the settings given change; None clears one. Returns the row."""
        return self._run(limit_ops.set_limit(self.statements, scope, name, _settings(settings)))

    def list_limits(self, *, counts: bool = True) -> builtins.list[Limit]:
        """Every limits row, with (``counts``) the jobs of its queue or key running and
        pending now; without them it reads the limits table alone."""
        return self._run(limit_ops.list_limits(self.statements, counts))

    def remove_limit(self, name: str, *, scope: str = "key") -> bool:
        """Delete a limits row (its pause with it); whether there was one."""
        return self._run(limit_ops.remove_limit(self.statements, scope, name))

    def pause(
        self,
        name: str,
        *,
        scope: str = "queue",
        duration: float | timedelta | None = None,
        reason: str | None = None,
    ) -> Limit:
        """Pause a queue (or, ``scope="key"``, a limit key) for every worker: for
        ``duration``, else until `resume`. Its pending jobs wait; running ones finish."""
        return self._run(limit_ops.pause(self.statements, scope, name, _secs(duration), reason))

    def resume(self, name: str, *, scope: str = "queue") -> Limit:
        """End a pause; its jobs enter the line again within a worker's next entry round."""
        return self._run(limit_ops.resume(self.statements, scope, name))

    def enter_line(self, *, skip_locked: bool = False) -> int:
        """Put due jobs that wait outside the line (scheduled, backing off, held back, rows
        inserted by other clients) into it, one batch; how many. Workers run it on a timer,
        with ``skip_locked``: rows another entry is entering now are left to it (PostgreSQL)."""
        return self._run(limit_ops.enter_line(self.statements, skip_locked=skip_locked))

    def retry_later(
        self, job: Job, after: float | timedelta, reason: str, *, pause_key: bool = True
    ) -> Job:
        """Give a held job back without spending an attempt, to start again after
        ``after``; with ``pause_key`` its limit key is paused until then (the job's new
        ``run_at``) for every worker (what a worker does on `RetryLater` or a provider's
        429). `LeaseLost` if it is no longer held."""
        return self._run(
            limit_ops.hold_back(self.statements, job, _secs_required(after), reason, pause_key)
        )

    # -- periodic jobs (see jobqueue.operations.schedules) -------------------------------------

    def add_schedule(
        self,
        name: str,
        *,
        kind: str,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
        queue: str = DEFAULT_QUEUE,
        payload: Any = None,
        priority: int = 0,
        missed: str = "once",
        enabled: bool = True,
    ) -> Schedule:
        """Create the schedule ``name``, or replace its definition: a job of ``kind`` (in
        ``queue``, with ``payload`` and ``priority``) at each tick of ``cron`` (a cron
        expression read in ``timezone``; needs the ``cron`` extra) or ``every`` seconds.
        Every worker's scheduler watches it, and each tick makes exactly one job. Ticks
        missed while no worker ran: ``missed="once"`` enqueues one job for the latest,
        ``"skip"`` none. Its next tick is the first after now, or kept when only the job's
        values change. Returns the schedule as stored."""
        spec = schedule_ops.define_schedule(
            name,
            kind=kind,
            cron=cron,
            every=every,
            timezone=timezone,
            queue=queue,
            payload=payload,
            priority=priority,
            missed=missed,
            enabled=enabled,
            limits=self.limits,
        )
        return self._run(schedule_ops.add_schedule(self.schedule_statements, spec))

    def list_schedules(self) -> builtins.list[Schedule]:
        """Every schedule, by name, with its next and last tick."""
        return self._run(schedule_ops.list_schedules(self.schedule_statements))

    def remove_schedule(self, name: str) -> bool:
        """Delete a schedule; whether there was one. The jobs it made stay."""
        return self._run(schedule_ops.remove_schedule(self.schedule_statements, name))

    def pause_schedule(self, name: str) -> bool:
        """Stop a schedule making jobs, keeping its definition; whether there was one. A
        worker whose registry declares it leaves it paused."""
        return self._run(schedule_ops.set_schedule_enabled(self.schedule_statements, name, False))

    def resume_schedule(self, name: str) -> bool:
        """Let a paused schedule make jobs again; whether there was one. Ticks missed while
        it was paused follow its ``missed`` policy (one job for the latest, or none)."""
        return self._run(schedule_ops.set_schedule_enabled(self.schedule_statements, name, True))

    def declare_schedules(self, specs: Sequence[ScheduleSpec]) -> int:
        """`add_schedule` for each definition (`jobqueue.operations.schedules.define_schedule`),
        in one transaction: what a worker does with its registry's schedules at start."""
        return self._run(schedule_ops.declare_schedules(self.schedule_statements, specs))

    def run_schedules(self) -> ScheduleRound:
        """One scheduler round: enqueue a job for each schedule whose tick has come (by the
        database clock) and move it on to its next tick, exactly once however many callers
        run it at the same time. Workers run it on a timer."""
        if not self._run(schedule_ops.any_due(self.schedule_statements)):
            return ScheduleRound()
        return self._run(
            schedule_ops.run_schedules(
                self.schedule_statements, self.statements, self.limits, self._placement
            )
        )

    # -- workers -----------------------------------------------------------------------------

    def claim(
        self,
        worker_id: str,
        *,
        queues: Sequence[str] | str | None = (DEFAULT_QUEUE,),
        kinds: Sequence[str] | None = None,
        limit: int = 1,
        lease: float | None = None,
        durable: bool = True,
    ) -> builtins.list[Job]:
        """Atomically take up to ``limit`` due jobs for ``worker_id``, highest priority first;
        ``queues=None`` means every queue, ``kinds=None`` every kind. Each job is held for
        ``lease`` seconds (default: the queue's) unless heartbeats extend it. While limits
        are in force (`set_limit`, `pause`), it takes only jobs within them.

        ``durable=False`` (PostgreSQL) returns without waiting for the claim to reach the
        disk: a crash of the database server a moment later may undo the claim, and the
        job is then claimed again, as after a crash of the worker. Use it only when nothing
        costly follows before a write that waits for the disk (which flushes the claim
        too): the worker's claims use it, and confirm their lease before a paid request.
        """
        first = self._claim_op(worker_id, queues, kinds, limit, lease, durable)
        return self._run_plan(
            self._claim_plan(first, _same, worker_id, queues, kinds, limit, lease, durable)
        )

    def heartbeat(self, job: Job, *, lease: float | None = None) -> datetime:
        """Extend the lease of a held job; `LeaseLost` if it is no longer ours."""
        return self._run(ops.heartbeat(self.statements, job, self._lease(lease)))

    def heartbeat_many(
        self, worker_id: str, jobs: Sequence[Job], *, lease: float | None = None
    ) -> set[UUID]:
        """Extend the leases of the ``jobs`` ``worker_id`` holds, fenced by each job's
        attempt; returns the ids still held."""
        return self._run(ops.heartbeat_many(self.statements, worker_id, jobs, self._lease(lease)))

    def set_progress(self, job: Job, percent: int, message: str | None = None) -> None:
        """Record progress (0-100) on a held job; `LeaseLost` if it is no longer ours."""
        self._run(ops.set_progress(self.statements, job, percent, message, self.limits))

    def save_remote_task_id(self, job: Job, remote_task_id: str) -> None:
        """Save a provider-side task id on a held job (its ``remote_task_id``), so a later
        attempt can resume the task instead of submitting it again; `LeaseLost` if the job
        is no longer ours."""
        self._run(ops.save_remote_task_id(self.statements, job, remote_task_id))

    def remember_task(self, job: Job, remote_task_id: str) -> None:
        """Deprecated: `save_remote_task_id`."""
        warn_renamed("JobQueue.remember_task()", "save_remote_task_id()")
        self.save_remote_task_id(job, remote_task_id)

    def complete(
        self,
        job: Job,
        result: Any = None,
        result_url: str | None = None,
        *,
        cost: Decimal | int | str | None = None,
        cost_unit: str | None = None,
    ) -> Job:
        """Finish a held job with its result; `LeaseLost` if it is no longer ours.
        ``cost`` (an exact amount in ``cost_unit``) is what the attempt cost: it is added
        to the job's ``cost``."""
        return self._run(
            ops.complete(self.statements, job, result, result_url, self.limits, cost, cost_unit)
        )

    def complete_many(self, items: Sequence[Completion]) -> set[UUID]:
        """Complete many held jobs in one statement; returns the ids that were written."""
        return self._run(ops.complete_many(self.statements, items, self.limits))

    def complete_and_claim(
        self,
        items: Sequence[Completion],
        worker_id: str,
        *,
        queues: Sequence[str] | str | None = (DEFAULT_QUEUE,),
        kinds: Sequence[str] | None = None,
        limit: int = 1,
        lease: float | None = None,
    ) -> tuple[set[UUID], builtins.list[Job]]:
        """`complete_many` and `claim` as one atomic step (one statement and one commit on
        PostgreSQL): the ids written, and the jobs claimed. A worker loop that frees a slot
        only once its job's outcome is written takes the next jobs in the same round trip."""
        first = self._complete_and_claim_op(items, worker_id, queues, kinds, limit, lease)
        return self._run_plan(
            self._claim_plan(first, _claimed, worker_id, queues, kinds, limit, lease)
        )

    def fail(
        self,
        job: Job,
        error: BaseException | str,
        *,
        retry: bool | None = None,
        retry_in: float | timedelta | None = None,
        cost: Decimal | int | str | None = None,
        cost_unit: str | None = None,
    ) -> Job:
        """Record a failure: a retry with backoff while attempts remain, else ``failed``.
        ``cost``: what the attempt cost even so (a provider that charged for a task that
        then failed), added to the job's ``cost``."""
        return self._run(self._fail_op(job, error, retry, retry_in, cost, cost_unit))

    def release(self, job: Job, reason: str = "released by worker") -> Job:
        """Hand a held job back to ``pending`` at once, without spending an attempt."""
        return self._run(ops.release(self.statements, job, reason))

    def reap(self) -> builtins.list[tuple[UUID, Status]]:
        """Return expired leases to ``pending`` (``failed`` when out of attempts)."""
        return self._run(ops.reap(self.statements))

    def expire(self) -> builtins.list[Job]:
        """Move pending jobs past their start deadline (``start_by``, by the database clock)
        to ``expired``, one batch; the jobs moved. Workers run it on a timer; no claim takes
        such a job meanwhile."""
        return self._run(ops.expire(self.statements))

    # -- live workers (see jobqueue.presence) --------------------------------------------------

    def live_workers(self) -> builtins.list[LiveWorker]:
        """The workers whose heartbeat is recent (by the database clock), oldest first."""
        with self._presence_errors():
            return self._run(presence.live_workers(self.worker_statements))

    def worker_beat(self, me: WorkerPresence, *, ttl: float) -> None:
        """Write ``me``'s row in the live-workers table (insert or refresh): it counts as
        live for ``ttl`` seconds. `Worker` does this at start and on a timer."""
        with self._presence_errors():
            self._run(presence.beat(self.worker_statements, me, ttl))

    def worker_gone(self, worker_id: str) -> bool:
        """Remove a worker's row (a clean stop); whether there was one."""
        with self._presence_errors():
            return self._run(presence.gone(self.worker_statements, worker_id))

    def sweep_workers(self) -> builtins.list[str]:
        """Delete the rows of workers whose heartbeat stopped; their ids."""
        with self._presence_errors():
            return self._run(presence.sweep(self.worker_statements))

    def check_worker_access(self) -> None:
        """`SchemaNotInstalled` or `PermissionDenied` (with the grant or policy to add) when
        a worker connecting like this queue could not do its work; else nothing."""
        self._run(presence.check_access(self.worker_statements))

    # -- anyone ------------------------------------------------------------------------------

    def get(self, job_id: JobRef, *, owner_id: str | None = None) -> Job:
        """The job as it is now; with ``owner_id``, `JobNotFound` unless it is theirs."""
        return self._run(ops.get(self.statements, job_id, owner_id))

    def cancel(self, job_id: JobRef, *, owner_id: str | None = None) -> Job:
        """Cancel a pending or running job (a running handler is stopped by its worker)."""
        return self._run(ops.cancel(self.statements, job_id, owner_id))

    def cancel_if_pending(self, job_id: JobRef, *, owner_id: str | None = None) -> Job | None:
        """Cancel the job only while no worker has started it: the cancelled job, or None
        when it has started, is final or is not found (for ``owner_id``). What the web app
        does for a job whose last watcher left (``create_app(cancel_abandoned_after=...)``)."""
        return self._run(ops.cancel_if_pending(self.statements, job_id, owner_id))

    def retry(self, job_id: JobRef) -> Job:
        """Queue a ``failed``, ``cancelled`` or ``expired`` job again with one more attempt.
        A start deadline still ahead stays; one that has passed is dropped (an expired
        job runs without one)."""
        return self._run(ops.retry(self.statements, job_id))

    def retry_many(self, job_ids: Sequence[JobRef]) -> builtins.list[Job]:
        """`retry` each of ``job_ids`` (at most 100) that is failed, cancelled or expired, in
        one statement; the jobs retried (the others are left as they are)."""
        return self._run(admin_ops.retry_many(self.statements, job_ids))

    def overview(self) -> Overview:
        """The admin dashboard's overview: jobs per queue and status, the last hour's
        completions and failures per minute, today's cost (three grouped reads)."""
        return self._run(admin_ops.overview(self.statements))

    def job_page(
        self,
        *,
        status: Status | str | Iterable[Status | str] | None = None,
        queue: str | None = None,
        kind: str | None = None,
        owner_id: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        after: tuple[datetime, object] | None = None,
        limit: int = 50,
    ) -> JobPage:
        """A page of the jobs table, newest first, at most ``limit`` (100) jobs without
        their payloads and results, filtered by ``status`` (one or several), ``queue``,
        ``kind``, ``owner_id`` and creation time (from ``created_from`` up to, not
        including, ``created_to``). The next page starts ``after`` this one's
        `JobPage.after` (by keyset, so a deep page costs what the first does)."""
        return self._run(
            admin_ops.job_page(
                self.statements,
                status=status,
                queue=queue,
                kind=kind,
                owner_id=owner_id,
                created_from=created_from,
                created_to=created_to,
                after=after,
                limit=limit,
            )
        )

    def position(
        self,
        job_id: JobRef,
        *,
        owner_id: str | None = None,
        limit: int = DEFAULT_POSITION_LIMIT,
        max_age: float | None = None,
    ) -> Position:
        """Where the job stands: how many jobs are ahead of it in the line, and when it
        is expected to start and finish (`Position`; ``position.describe()`` says it in
        words, e.g. ``3rd in line · about 40 s``). With ``owner_id``, `JobNotFound`
        unless the job is theirs.

        Jobs ahead are counted in the order the workers claim them (priority, then the
        fair-share turn, then id), across the queues of the live workers that serve the
        job, at most ``limit`` of them (``position.more`` says there are more). The
        estimates come from the median run time of the kind's latest completed runs and
        the concurrency of those live workers; they are None when nothing can be
        estimated. Every time is by the database clock.

        An answer is kept for ``max_age`` seconds (default 3, the queue's
        ``positions.max_age``), so that polling it often costs the database one
        computation per job per few seconds; 0 computes it afresh.
        """
        key = self._position_key(job_id, owner_id, limit)
        found = self.positions.get(key, max_age)
        if found is None:
            try:
                found = self._run(self._position_op(key))
            except JobQueueError as exc:
                if not self._position_without_workers(exc):
                    raise
                found = self._run(self._position_op(key))
            self.positions.put(key, found)
        return found

    def list(
        self,
        *,
        owner_id: str | None = None,
        status: Status | str | Iterable[Status | str] | None = None,
        queue: str | None = None,
        kind: str | None = None,
        since: datetime | timedelta | None = None,
        limit: int = 50,
    ) -> builtins.list[Job]:
        """Jobs newest first, at most ``limit``, filtered by ``owner_id``, ``status`` (one or
        several), ``queue``, ``kind`` and ``since`` (a time, or how far back from now)."""
        return self._run(
            ops.list_jobs(
                self.statements,
                owner_id=owner_id,
                status=status,
                queue=queue,
                kind=kind,
                since=since,
                limit=limit,
            )
        )

    def stats(
        self,
        since: timedelta | float = timedelta(days=1),
        *,
        by: str | None = None,
        owner_id: str | None = None,
    ) -> builtins.list[StatusStats]:
        """Per status of the jobs created within ``since``: their count, mean duration, and
        what they cost (`StatusStats`: ``cost`` summed per ``cost_unit``, and ``charged``,
        how many cost money: for ``failed`` and ``cancelled`` lines, what was paid for and
        not delivered). ``by="kind"`` or ``by="owner"`` splits each status's line by kind
        or owner; ``owner_id`` counts that owner's jobs only (a user's own spending)."""
        return self._run(ops.stats(self.statements, since, by, owner_id))

    def gauges(self) -> Gauges:
        """The fleet as the database sees it now, for metrics: jobs waiting and running per
        queue, the oldest due job's wait, stuck jobs, paused queues and keys, the spend of
        the jobs created today (`jobqueue.operations.gauges.Gauges`). Two grouped reads,
        whatever the number of jobs."""
        return self._run(gauges(self.statements))

    def backlog(self) -> Backlog:
        """The jobs waiting and running per queue now (`jobqueue.operations.gauges.Backlog`:
        how many, the oldest due job's wait, how many have waited over a minute since due,
        stuck jobs), by the database clock: one grouped read of the jobs table and one of the
        clock, what `gauges` says of the jobs without the limits and costs it reads too."""
        return self._run(backlog(self.statements))

    def prune(
        self,
        older_than: timedelta | float = timedelta(days=7),
        statuses: Iterable[Status | str] | None = None,
    ) -> int:
        """Delete finished jobs that finished before ``older_than`` ago; returns the count."""
        return self._run(ops.prune(self.statements, older_than, statuses))

    def wait(
        self,
        job_id: JobRef,
        *,
        interval: float = 3.0,
        timeout: float | None = None,
        on_change: Callable[[Job], object] | None = None,
        no_worker_after: float | None = NO_WORKER_AFTER,
        on_no_worker: Callable[[str], object] | None = None,
    ) -> Job:
        """Poll until the job is final and return it (completed, failed or cancelled), or
        raise `JobExpired` when it expired: it was not started by its start deadline and
        never ran (the error's ``job_id`` names it; `get` reads it).

        ``on_change`` is called with each new status or progress. `WaitTimeout` when
        ``timeout`` passes first; the job itself keeps running.

        A job that is still not final after ``no_worker_after`` seconds (and again every
        ``no_worker_after`` seconds) makes the wait look at the live workers: when none
        serves the job's queue and kind, it says so once, with what to start —
        ``on_no_worker(message)``, or a warning on the ``jobqueue.queue`` logger. None
        turns the look off.
        """
        waiter = Waiter(interval, timeout)
        lookout = Lookout(no_worker_after)
        while True:
            job = self.get(job_id)
            if on_change is not None and waiter.changed(job):
                on_change(job)
            if job.is_final:
                return self._waited(job)
            if lookout.due(job):
                try:
                    workers = self.live_workers()
                except JobQueueError as exc:
                    self._unreadable_workers(lookout, exc)
                else:
                    self._no_worker_news(lookout.news(job, workers), on_no_worker)
            pause = waiter.next_sleep()
            if pause is None:
                raise self._timed_out(job.id, waiter)
            time.sleep(pause)

    def wait_result(self, job_id: JobRef, **kwargs: Any) -> Job:
        """`wait`, then `JobFailed` unless the job completed."""
        return self._final(self.wait(job_id, **kwargs))


class AsyncJobQueue(_QueueBase[AsyncEngine]):
    """A job queue over an asyncio SQLAlchemy engine: the twin of `JobQueue`, with the same
    arguments and methods, awaited.

    ``url`` may be a URL string, an `AsyncEngine`, or None for ``JOBQUEUE_DATABASE_URL``
    (default: a SQLite file ``jobqueue.db`` in the working directory). A plain URL gets an
    async driver: aiosqlite for SQLite, psycopg 3 for PostgreSQL
    (``postgresql+asyncpg://`` picks asyncpg). ``config``: ``table`` and ``schema`` (where
    the jobs live), ``lease`` (seconds a claim holds a job, default 30),
    ``max_payload_bytes``, ``retry_backoff`` (base and cap in seconds, default (5, 600)),
    ``command_timeout`` and ``lock_timeout`` (as for `JobQueue`: default
    ``JOBQUEUE_LOCK_TIMEOUT``; with an `AsyncEngine` passed in, give it to
    `make_async_engine` instead).
    """

    def __init__(
        self,
        url: str | URL | AsyncEngine | None = None,
        *,
        lock_timeout: float | None = None,
        **config: Any,
    ) -> None:
        self._owns_engine = not isinstance(url, AsyncEngine)
        _no_lock_timeout_for_given(url, lock_timeout, AsyncEngine)
        super().__init__(make_async_engine(url, lock_timeout=lock_timeout), **config)
        self._on_thread = runs_on_thread(self.engine.dialect)
        #: The connection the last autocommit operation ran on, kept for the next one
        #: until the event loop next turns with it idle (`_run_spare`).
        self._spare = Held(self)
        self._spare_loop: asyncio.AbstractEventLoop | None = None
        self._spare_busy = False
        self._spare_due = False
        #: The closes of spare connections given back (`_give_back_spare`), awaited by `close`.
        self._giving_back: set[asyncio.Task[None]] = set()
        # Where a cancelled statement runs on regardless, an operation on the queue's own
        # connection finishes before its cancellation goes on (`_finished_before_cancelled`).
        self._finish_when_cancelled = statements_outlive_cancellation(self.engine)

    def _holding(self, spare: int) -> Held | None:
        """A connection of the queue's own to keep from one operation to the next, for one
        task at a time (a worker's completion writer, which writes hundreds of batches a
        second): a connection taken from the pool and given back for each operation costs,
        with its switch into autocommit mode and back, a good part of what the statement
        itself costs the client. The operations a task runs inside `_on_held` use it.

        Only on PostgreSQL, and only while the pool keeps ``spare`` connections for the
        rest (a kept connection is not in the pool for anyone else); None otherwise. Only
        the operations run statement by statement in autocommit mode use it; an error in
        one gives it back to the pool, as does `Held.let_go`.
        """
        capacity = pool_capacity(self.engine)
        if not self.is_postgres or (capacity is not None and capacity < spare + 1):
            return None
        return Held(self)

    @contextmanager
    def _on_held(self, held: Held | None) -> Iterator[None]:
        """Run the current task's operations on this queue on ``held`` (None: as usual)."""
        if held is None:
            yield
            return
        held.task = asyncio.current_task()
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)
            held.task = None

    async def _run_plan(self, plan: Generator[Operation[Any], Any, T]) -> T:
        """Run a plan's operations one after the other, each as `_run` runs it."""
        return await _pump_async(plan, self._run)

    async def _run(self, op: Operation[T], connection: AsyncConnection | None = None) -> T:
        try:
            with translated_errors(self.table_name):
                if connection is not None:
                    return await _drive_async(connection, op)
                if self._finish_when_cancelled:
                    return await _finished_before_cancelled(self._run_own(op))
                return await self._run_own(op)
        except (DatabaseBusy, DatabaseReadOnly):
            self.unreachable_at = None  # an answer: the database can be reached
            raise
        except DatabaseUnavailable:
            self.unreachable_at = time.monotonic()
            raise

    async def _run_own(self, op: Operation[T]) -> T:
        """Run ``op`` on a connection of the queue's own, chosen by its plan."""
        plan = self._plans[op.access]
        held = _HELD.get()
        if (
            held is not None
            and held.queue is self
            and not plan.transaction
            and held.task is asyncio.current_task()  # not a task started inside `_on_held`
        ):
            return await self._run_held(op, plan.engine, held)
        if not plan.transaction and not self._spare_busy:
            return await self._run_spare(op, plan.engine)
        conn = await self._checkout(plan.engine)
        try:
            result = await self._on_connection(conn, op, plan.transaction)
        except BaseException as exc:
            # SQLAlchemy's own exit: a close that a cancellation cannot cut short.
            await conn.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        # After a success the connection is idle (in autocommit, or its transaction
        # committed), so closing it never waits on the network and cannot be abandoned
        # half-way: the plain close spares the task and two event-loop turns that
        # SQLAlchemy's exit spends on that guarantee.
        await conn.close()
        return result

    async def _on_connection(self, conn: AsyncConnection, op: Operation[T], transaction: bool) -> T:
        """Run ``op`` on ``conn``, in a transaction of its own or in autocommit mode, within
        the operation's deadline (a transaction's commit included)."""
        if transaction and self._on_thread:
            return await run_transaction(conn, op.steps)
        with async_deadline(conn, self.command_timeout) as timer:
            try:
                if not transaction:
                    return await _drive_async(conn, op, own=True, autocommit=True)
                async with conn.begin():
                    return await _drive_async(conn, op, own=True)
            except Exception as exc:
                _raise_if_timed_out(timer, exc)
                raise

    async def _checkout(self, engine: AsyncEngine) -> AsyncConnection:
        """A connection from ``engine``'s pool, in a task that cancelling the caller does
        not cut short: cancelled in the middle of SQLAlchemy's checkout (which sets the
        connection up on the network), the connection would be out of the pool with no
        one to give it back, left to the garbage collector. The caller's cancellation goes
        on at once; the connection, once checked out, goes back in a task of its own."""
        checkout = asyncio.ensure_future(engine.connect().start())
        try:
            return await asyncio.shield(checkout)
        except asyncio.CancelledError:

            def give_back(done: asyncio.Future[AsyncConnection]) -> None:
                if not done.cancelled() and done.exception() is None:
                    self._close_later(done.result(), again=True)

            checkout.add_done_callback(give_back)
            raise

    async def _run_spare(self, op: Operation[T], engine: AsyncEngine) -> T:
        """`_run_own` in autocommit mode on the queue's spare connection: the one the last
        such operation ran on, if it is still kept, else one taken from the pool.

        A connection taken from the pool and given back for each operation costs the
        client more than the statement (SQLAlchemy's checkout and return, with the switch
        into autocommit mode and back): a task that runs operation after operation (an
        application enqueueing in a loop) keeps one instead. It is kept only until the
        event loop next turns with no operation on it, when a callback gives it back to
        the pool: the loop turns at the first await of the next operation's statement,
        so consecutive operations keep it, and an idle application holds no connection
        out of the pool. One operation at a time runs on it; concurrent ones take
        connections from the pool as before.
        """
        loop = asyncio.get_running_loop()
        spare = self._spare
        if self._spare_loop is not loop:
            # Kept on a loop that has gone (a closed `asyncio.run`): not usable here.
            spare.conn = None
            self._spare_loop = loop
        self._spare_busy = True
        try:
            result = await self._run_held(op, engine, spare)
        finally:
            self._spare_busy = False
        if spare.conn is not None and not self._spare_due:
            self._spare_due = True
            loop.call_soon(self._give_back_spare)
        return result

    def _give_back_spare(self) -> None:
        """Give the spare connection back to the pool unless an operation runs on it: the
        event loop turned, so no operation followed the last one at once."""
        self._spare_due = False
        spare = self._spare
        if self._spare_busy or spare.conn is None:
            return
        conn, spare.conn = spare.conn, None
        self._close_later(conn, again=True)

    def _close_later(self, conn: AsyncConnection, *, again: bool) -> None:
        """Close ``conn`` (give it back to the pool) in a task of its own that `close` awaits:
        the spare connection once the loop turns, or one checked out for a call that was
        cancelled meanwhile. ``asyncio.run`` ending just after the last operation cancels
        that task before it starts: it is then started once ``again``, which the loop still
        runs (closing an idle connection in autocommit mode never waits on the network), so
        the connection is not left out of the pool for the garbage collector."""
        task = asyncio.get_running_loop().create_task(conn.close())
        self._giving_back.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._giving_back.discard(task)
            if again and task.cancelled() and not conn.closed:
                self._close_later(conn, again=False)

        task.add_done_callback(done)

    async def _run_held(self, op: Operation[T], engine: AsyncEngine, held: Held) -> T:
        """`_run_own` in autocommit mode on the connection ``held`` keeps (taken from
        ``engine``'s pool when it keeps none)."""
        conn = held.conn
        if conn is None or held.engine is not engine:
            await held.let_go()
            conn = held.conn = await self._checkout(engine)
            held.engine = engine
            plans.keep(conn)
        try:
            return await self._on_connection(conn, op, transaction=False)
        except BaseException as exc:
            # Whatever went wrong (a lost connection, a cancellation half-way through a
            # statement, a refusal), the connection goes back as `_run_own` would return it.
            held.conn = None
            await conn.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    async def close(self) -> None:
        """Give back the connection kept from the last operation, and dispose of the engine
        when this queue made it (from a URL, or None); an `AsyncEngine` passed in stays the
        caller's to dispose of. ``async with AsyncJobQueue(...) as queue:`` closes it at the
        end of the block.
        """
        if self._spare_loop is asyncio.get_running_loop():
            await self._spare.let_go()
        self._spare.conn = None
        if self._giving_back:
            await asyncio.gather(*self._giving_back, return_exceptions=True)
        if self._owns_engine:
            await self.engine.dispose()

    async def __aenter__(self) -> AsyncJobQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def enqueue(
        self,
        kind: str = DEFAULT_KIND,
        payload: Any = None,
        *,
        connection: AsyncConnection | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> Job:
        """Create a job and return it (with its id) at once.

        With ``connection=`` (an `AsyncConnection`), the insert joins that connection's
        transaction: the job exists only if the caller commits. A repeated ``idempotency_key`` in
        the same queue, for the same ``owner_id`` (or again without one), returns the existing job
        instead of making a second one; another owner's job is never returned.
        """
        rows = self._enqueue_rows(kind, payload, options)
        with self._traced(rows):
            return (await self._enqueue(rows, connection))[0]

    async def enqueue_many(
        self,
        jobs: Iterable[NewJob | Mapping[str, Any]],
        *,
        connection: AsyncConnection | None = None,
    ) -> builtins.list[Job]:
        """Enqueue a batch, all or nothing, and return its jobs in order.

        One write: on PostgreSQL one INSERT of array parameters, or a COPY for a batch of
        `jobqueue.operations.COPY_MIN_JOBS` jobs or more that carry no idempotency key; on SQLite
        multi-row INSERTs in one transaction. ``connection=`` and idempotency keys work as for
        `enqueue`. While a batch of `jobqueue.queue.GC_PAUSE_MIN_JOBS` (1,000) jobs or more is
        checked and written, Python's cyclic garbage collector is paused (`gc.disable`), and
        resumed after.
        """
        with self._batch_rows(jobs) as rows:
            return await self._enqueue(rows, connection)

    async def _enqueue(
        self, rows: builtins.list[dict[str, Any]], connection: AsyncConnection | None
    ) -> builtins.list[Job]:
        jobs = await self._run(ops.enqueue_many(self.statements, rows, self._placement), connection)
        if jobs is None:  # an owner has a budget
            jobs = await self._run(self._within_budgets(rows), connection)
        return jobs

    # -- budgets -----------------------------------------------------------------------------

    async def set_budget(
        self,
        owner_id: str,
        amount: Decimal | int | str,
        *,
        period: str = "month",
        cost_unit: str | None = None,
    ) -> Budget:
        """Give ``owner_id`` a budget of ``amount`` per ``period``: ``"day"`` or ``"month"``
        (calendar, UTC, by the database clock) or ``"balance"`` (prepaid, never starts
        over), replacing any it had. From then on its enqueues reserve each job's estimated
        cost and are refused with `BudgetExceeded` past it. ``cost_unit``: only costs in it
        count (None: every cost). Returns the budget with what already counts."""
        return await self._run(
            budget_ops.set_budget(self.statements, owner_id, amount, period, cost_unit)
        )

    async def get_budget(self, owner_id: str) -> Budget | None:
        """``owner_id``'s budget with what counts against it now (`Budget.spent`,
        `Budget.remaining`), or None when it has none."""
        return await self._run(budget_ops.get_budget(self.statements, owner_id))

    async def list_budgets(self) -> builtins.list[Budget]:
        """Every owner's budget, with what counts against it now, by owner."""
        return await self._run(budget_ops.list_budgets(self.statements))

    async def remove_budget(self, owner_id: str) -> bool:
        """Delete ``owner_id``'s budget (its enqueues are no longer limited); whether it
        had one."""
        return await self._run(budget_ops.remove_budget(self.statements, owner_id))

    # -- scheduling --------------------------------------------------------------------------

    async def set_limit(
        self, name: str, *, scope: str = "key", **settings: Unpack[LimitSettings]
    ) -> Limit:
        """Create or change the limits of a queue, a limit key or an owner, enforced by every
        worker: ``max_running`` (jobs running at once, fleet-wide), ``max_running_per_owner``
        (the same, per owner), ``rate`` starts per ``per`` seconds (the two go together), and
        for an owner its ``weight`` in the fair share. A limit key is a job's ``limit_key``,
        else its kind. Only the settings given change; None clears one. Returns the row."""
        return await self._run(
            limit_ops.set_limit(self.statements, scope, name, _settings(settings))
        )

    async def list_limits(self, *, counts: bool = True) -> builtins.list[Limit]:
        """Every limits row, with (``counts``) the jobs of its queue or key running and
        pending now; without them it reads the limits table alone."""
        return await self._run(limit_ops.list_limits(self.statements, counts))

    async def remove_limit(self, name: str, *, scope: str = "key") -> bool:
        """Delete a limits row (its pause with it); whether there was one."""
        return await self._run(limit_ops.remove_limit(self.statements, scope, name))

    async def pause(
        self,
        name: str,
        *,
        scope: str = "queue",
        duration: float | timedelta | None = None,
        reason: str | None = None,
    ) -> Limit:
        """Pause a queue (or, ``scope="key"``, a limit key) for every worker: for
        ``duration``, else until `resume`. Its pending jobs wait; running ones finish."""
        return await self._run(
            limit_ops.pause(self.statements, scope, name, _secs(duration), reason)
        )

    async def resume(self, name: str, *, scope: str = "queue") -> Limit:
        """End a pause; its jobs enter the line again within a worker's next entry round."""
        return await self._run(limit_ops.resume(self.statements, scope, name))

    async def enter_line(self, *, skip_locked: bool = False) -> int:
        """Put due jobs that wait outside the line (scheduled, backing off, held back, rows
        inserted by other clients) into it, one batch; how many. Workers run it on a timer,
        with ``skip_locked``: rows another entry is entering now are left to it (PostgreSQL)."""
        return await self._run(limit_ops.enter_line(self.statements, skip_locked=skip_locked))

    async def retry_later(
        self, job: Job, after: float | timedelta, reason: str, *, pause_key: bool = True
    ) -> Job:
        """Give a held job back without spending an attempt, to start again after
        ``after``; with ``pause_key`` its limit key is paused until then (the job's new
        ``run_at``) for every worker (what a worker does on `RetryLater` or a provider's
        429). `LeaseLost` if it is no longer held."""
        return await self._run(
            limit_ops.hold_back(self.statements, job, _secs_required(after), reason, pause_key)
        )

    # -- periodic jobs (see jobqueue.operations.schedules) -------------------------------------

    async def add_schedule(
        self,
        name: str,
        *,
        kind: str,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
        queue: str = DEFAULT_QUEUE,
        payload: Any = None,
        priority: int = 0,
        missed: str = "once",
        enabled: bool = True,
    ) -> Schedule:
        """Create the schedule ``name``, or replace its definition: a job of ``kind`` (in
        ``queue``, with ``payload`` and ``priority``) at each tick of ``cron`` (a cron
        expression read in ``timezone``; needs the ``cron`` extra) or ``every`` seconds.
        Every worker's scheduler watches it, and each tick makes exactly one job. Ticks
        missed while no worker ran: ``missed="once"`` enqueues one job for the latest,
        ``"skip"`` none. Its next tick is the first after now, or kept when only the job's
        values change. Returns the schedule as stored."""
        spec = schedule_ops.define_schedule(
            name,
            kind=kind,
            cron=cron,
            every=every,
            timezone=timezone,
            queue=queue,
            payload=payload,
            priority=priority,
            missed=missed,
            enabled=enabled,
            limits=self.limits,
        )
        return await self._run(schedule_ops.add_schedule(self.schedule_statements, spec))

    async def list_schedules(self) -> builtins.list[Schedule]:
        """Every schedule, by name, with its next and last tick."""
        return await self._run(schedule_ops.list_schedules(self.schedule_statements))

    async def remove_schedule(self, name: str) -> bool:
        """Delete a schedule; whether there was one. The jobs it made stay."""
        return await self._run(schedule_ops.remove_schedule(self.schedule_statements, name))

    async def pause_schedule(self, name: str) -> bool:
        """Stop a schedule making jobs, keeping its definition; whether there was one. A
        worker whose registry declares it leaves it paused."""
        return await self._run(
            schedule_ops.set_schedule_enabled(self.schedule_statements, name, False)
        )

    async def resume_schedule(self, name: str) -> bool:
        """Let a paused schedule make jobs again; whether there was one. Ticks missed while
        it was paused follow its ``missed`` policy (one job for the latest, or none)."""
        return await self._run(
            schedule_ops.set_schedule_enabled(self.schedule_statements, name, True)
        )

    async def declare_schedules(self, specs: Sequence[ScheduleSpec]) -> int:
        """`add_schedule` for each definition (`jobqueue.operations.schedules.define_schedule`),
        in one transaction: what a worker does with its registry's schedules at start."""
        return await self._run(schedule_ops.declare_schedules(self.schedule_statements, specs))

    async def run_schedules(self) -> ScheduleRound:
        """One scheduler round: enqueue a job for each schedule whose tick has come (by the
        database clock) and move it on to its next tick, exactly once however many callers
        run it at the same time. Workers run it on a timer."""
        if not await self._run(schedule_ops.any_due(self.schedule_statements)):
            return ScheduleRound()
        return await self._run(
            schedule_ops.run_schedules(
                self.schedule_statements, self.statements, self.limits, self._placement
            )
        )

    async def claim(
        self,
        worker_id: str,
        *,
        queues: Sequence[str] | str | None = (DEFAULT_QUEUE,),
        kinds: Sequence[str] | None = None,
        limit: int = 1,
        lease: float | None = None,
        durable: bool = True,
    ) -> builtins.list[Job]:
        """Atomically take up to ``limit`` due jobs for ``worker_id``, highest priority first;
        ``queues=None`` means every queue, ``kinds=None`` every kind. Each job is held for
        ``lease`` seconds (default: the queue's) unless heartbeats extend it. While limits
        are in force (`set_limit`, `pause`), it takes only jobs within them.

        ``durable=False`` (PostgreSQL) returns without waiting for the claim to reach the
        disk: a crash of the database server a moment later may undo the claim, and the
        job is then claimed again, as after a crash of the worker. Use it only when nothing
        costly follows before a write that waits for the disk (which flushes the claim
        too): the worker's claims use it, and confirm their lease before a paid request.
        """
        first = self._claim_op(worker_id, queues, kinds, limit, lease, durable)
        return await self._run_plan(
            self._claim_plan(first, _same, worker_id, queues, kinds, limit, lease, durable)
        )

    async def heartbeat(self, job: Job, *, lease: float | None = None) -> datetime:
        """Extend the lease of a held job; `LeaseLost` if it is no longer ours."""
        return await self._run(ops.heartbeat(self.statements, job, self._lease(lease)))

    async def heartbeat_many(
        self, worker_id: str, jobs: Sequence[Job], *, lease: float | None = None
    ) -> set[UUID]:
        """Extend the leases of the ``jobs`` ``worker_id`` holds, fenced by each job's
        attempt; returns the ids still held.
        """
        return await self._run(
            ops.heartbeat_many(self.statements, worker_id, jobs, self._lease(lease))
        )

    async def set_progress(self, job: Job, percent: int, message: str | None = None) -> None:
        """Record progress (0-100) on a held job; `LeaseLost` if it is no longer ours."""
        await self._run(ops.set_progress(self.statements, job, percent, message, self.limits))

    async def save_remote_task_id(self, job: Job, remote_task_id: str) -> None:
        """Save a provider-side task id on a held job (its ``remote_task_id``), so a later
        attempt can resume the task instead of submitting it again; `LeaseLost` if the job
        is no longer ours.
        """
        await self._run(ops.save_remote_task_id(self.statements, job, remote_task_id))

    async def remember_task(self, job: Job, remote_task_id: str) -> None:
        """Deprecated: `save_remote_task_id`."""
        warn_renamed("AsyncJobQueue.remember_task()", "save_remote_task_id()")
        await self.save_remote_task_id(job, remote_task_id)

    async def complete(
        self,
        job: Job,
        result: Any = None,
        result_url: str | None = None,
        *,
        cost: Decimal | int | str | None = None,
        cost_unit: str | None = None,
    ) -> Job:
        """Finish a held job with its result; `LeaseLost` if it is no longer ours.
        ``cost`` (an exact amount in ``cost_unit``) is what the attempt cost: it is added
        to the job's ``cost``."""
        return await self._run(
            ops.complete(self.statements, job, result, result_url, self.limits, cost, cost_unit)
        )

    async def complete_many(self, items: Sequence[Completion]) -> set[UUID]:
        """Complete many held jobs in one statement; returns the ids that were written."""
        return await self._run(ops.complete_many(self.statements, items, self.limits))

    async def complete_and_claim(
        self,
        items: Sequence[Completion],
        worker_id: str,
        *,
        queues: Sequence[str] | str | None = (DEFAULT_QUEUE,),
        kinds: Sequence[str] | None = None,
        limit: int = 1,
        lease: float | None = None,
    ) -> tuple[set[UUID], builtins.list[Job]]:
        """`complete_many` and `claim` as one atomic step (one statement and one commit on
        PostgreSQL): the ids written, and the jobs claimed. A worker loop that frees a slot
        only once its job's outcome is written takes the next jobs in the same round trip.
        """
        first = self._complete_and_claim_op(items, worker_id, queues, kinds, limit, lease)
        return await self._run_plan(
            self._claim_plan(first, _claimed, worker_id, queues, kinds, limit, lease)
        )

    async def fail(
        self,
        job: Job,
        error: BaseException | str,
        *,
        retry: bool | None = None,
        retry_in: float | timedelta | None = None,
        cost: Decimal | int | str | None = None,
        cost_unit: str | None = None,
    ) -> Job:
        """Record a failure: a retry with backoff while attempts remain, else ``failed``.
        ``cost``: what the attempt cost even so (a provider that charged for a task that
        then failed), added to the job's ``cost``."""
        return await self._run(self._fail_op(job, error, retry, retry_in, cost, cost_unit))

    async def release(self, job: Job, reason: str = "released by worker") -> Job:
        """Hand a held job back to ``pending`` at once, without spending an attempt."""
        return await self._run(ops.release(self.statements, job, reason))

    async def reap(self) -> builtins.list[tuple[UUID, Status]]:
        """Return expired leases to ``pending`` (``failed`` when out of attempts)."""
        return await self._run(ops.reap(self.statements))

    async def expire(self) -> builtins.list[Job]:
        """Move pending jobs past their start deadline (``start_by``, by the database clock)
        to ``expired``, one batch; the jobs moved. Workers run it on a timer; no claim takes
        such a job meanwhile."""
        return await self._run(ops.expire(self.statements))

    async def live_workers(self) -> builtins.list[LiveWorker]:
        """The workers whose heartbeat is recent (by the database clock), oldest first."""
        with self._presence_errors():
            return await self._run(presence.live_workers(self.worker_statements))

    async def worker_beat(self, me: WorkerPresence, *, ttl: float) -> None:
        """Write ``me``'s row in the live-workers table (insert or refresh): it counts as
        live for ``ttl`` seconds. `Worker` does this at start and on a timer.
        """
        with self._presence_errors():
            await self._run(presence.beat(self.worker_statements, me, ttl))

    async def worker_gone(self, worker_id: str) -> bool:
        """Remove a worker's row (a clean stop); whether there was one."""
        with self._presence_errors():
            return await self._run(presence.gone(self.worker_statements, worker_id))

    async def sweep_workers(self) -> builtins.list[str]:
        """Delete the rows of workers whose heartbeat stopped; their ids."""
        with self._presence_errors():
            return await self._run(presence.sweep(self.worker_statements))

    async def check_worker_access(self) -> None:
        """`SchemaNotInstalled` or `PermissionDenied` (with the grant or policy to add) when
        a worker connecting like this queue could not do its work; else nothing.
        """
        await self._run(presence.check_access(self.worker_statements))

    async def get(self, job_id: JobRef, *, owner_id: str | None = None) -> Job:
        """The job as it is now; with ``owner_id``, `JobNotFound` unless it is theirs."""
        return await self._run(ops.get(self.statements, job_id, owner_id))

    async def cancel(self, job_id: JobRef, *, owner_id: str | None = None) -> Job:
        """Cancel a pending or running job (a running handler is stopped by its worker)."""
        return await self._run(ops.cancel(self.statements, job_id, owner_id))

    async def cancel_if_pending(self, job_id: JobRef, *, owner_id: str | None = None) -> Job | None:
        """Cancel the job only while no worker has started it: the cancelled job, or None
        when it has started, is final or is not found (for ``owner_id``). What the web app
        does for a job whose last watcher left (``create_app(cancel_abandoned_after=...)``)."""
        return await self._run(ops.cancel_if_pending(self.statements, job_id, owner_id))

    async def retry(self, job_id: JobRef) -> Job:
        """Queue a ``failed``, ``cancelled`` or ``expired`` job again with one more attempt.
        A start deadline still ahead stays; one that has passed is dropped (an expired
        job runs without one)."""
        return await self._run(ops.retry(self.statements, job_id))

    async def retry_many(self, job_ids: Sequence[JobRef]) -> builtins.list[Job]:
        """`retry` each of ``job_ids`` (at most 100) that is failed, cancelled or expired, in
        one statement; the jobs retried (the others are left as they are)."""
        return await self._run(admin_ops.retry_many(self.statements, job_ids))

    async def overview(self) -> Overview:
        """The admin dashboard's overview: jobs per queue and status, the last hour's
        completions and failures per minute, today's cost (three grouped reads)."""
        return await self._run(admin_ops.overview(self.statements))

    async def job_page(
        self,
        *,
        status: Status | str | Iterable[Status | str] | None = None,
        queue: str | None = None,
        kind: str | None = None,
        owner_id: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        after: tuple[datetime, object] | None = None,
        limit: int = 50,
    ) -> JobPage:
        """A page of the jobs table, newest first, at most ``limit`` (100) jobs without
        their payloads and results, filtered by ``status`` (one or several), ``queue``,
        ``kind``, ``owner_id`` and creation time (from ``created_from`` up to, not
        including, ``created_to``). The next page starts ``after`` this one's
        `JobPage.after` (by keyset, so a deep page costs what the first does)."""
        return await self._run(
            admin_ops.job_page(
                self.statements,
                status=status,
                queue=queue,
                kind=kind,
                owner_id=owner_id,
                created_from=created_from,
                created_to=created_to,
                after=after,
                limit=limit,
            )
        )

    async def position(
        self,
        job_id: JobRef,
        *,
        owner_id: str | None = None,
        limit: int = DEFAULT_POSITION_LIMIT,
        max_age: float | None = None,
    ) -> Position:
        """Where the job stands: how many jobs are ahead of it in the line, and when it
        is expected to start and finish (`Position`; ``position.describe()`` says it in
        words, e.g. ``3rd in line · about 40 s``). With ``owner_id``, `JobNotFound`
        unless the job is theirs.

        Jobs ahead are counted in the order the workers claim them (priority, then the
        fair-share turn, then id), across the queues of the live workers that serve the
        job, at most ``limit`` of them (``position.more`` says there are more). The
        estimates come from the median run time of the kind's latest completed runs and
        the concurrency of those live workers; they are None when nothing can be
        estimated. Every time is by the database clock.

        An answer is kept for ``max_age`` seconds (default 3, the queue's
        ``positions.max_age``), so that polling it often costs the database one
        computation per job per few seconds; 0 computes it afresh.
        """
        key = self._position_key(job_id, owner_id, limit)
        found = self.positions.get(key, max_age)
        if found is None:
            try:
                found = await self._run(self._position_op(key))
            except JobQueueError as exc:
                if not self._position_without_workers(exc):
                    raise
                found = await self._run(self._position_op(key))
            self.positions.put(key, found)
        return found

    async def list(
        self,
        *,
        owner_id: str | None = None,
        status: Status | str | Iterable[Status | str] | None = None,
        queue: str | None = None,
        kind: str | None = None,
        since: datetime | timedelta | None = None,
        limit: int = 50,
    ) -> builtins.list[Job]:
        """Jobs newest first, at most ``limit``, filtered by ``owner_id``, ``status`` (one or
        several), ``queue``, ``kind`` and ``since`` (a time, or how far back from now)."""
        return await self._run(
            ops.list_jobs(
                self.statements,
                owner_id=owner_id,
                status=status,
                queue=queue,
                kind=kind,
                since=since,
                limit=limit,
            )
        )

    async def stats(
        self,
        since: timedelta | float = timedelta(days=1),
        *,
        by: str | None = None,
        owner_id: str | None = None,
    ) -> builtins.list[StatusStats]:
        """Per status of the jobs created within ``since``: their count, mean duration, and
        what they cost (`StatusStats`: ``cost`` summed per ``cost_unit``, and ``charged``,
        how many cost money: for ``failed`` and ``cancelled`` lines, what was paid for and
        not delivered). ``by="kind"`` or ``by="owner"`` splits each status's line by kind
        or owner; ``owner_id`` counts that owner's jobs only (a user's own spending)."""
        return await self._run(ops.stats(self.statements, since, by, owner_id))

    async def gauges(self) -> Gauges:
        """The fleet as the database sees it now, for metrics (see `JobQueue.gauges`)."""
        return await self._run(gauges(self.statements))

    async def backlog(self) -> Backlog:
        """The jobs waiting and running per queue now (see `JobQueue.backlog`)."""
        return await self._run(backlog(self.statements))

    async def prune(
        self,
        older_than: timedelta | float = timedelta(days=7),
        statuses: Iterable[Status | str] | None = None,
    ) -> int:
        """Delete finished jobs that finished before ``older_than`` ago; returns the count."""
        return await self._run(ops.prune(self.statements, older_than, statuses))

    async def wait(
        self,
        job_id: JobRef,
        *,
        interval: float = 3.0,
        timeout: float | None = None,
        on_change: Callable[[Job], object] | None = None,
        no_worker_after: float | None = NO_WORKER_AFTER,
        on_no_worker: Callable[[str], object] | None = None,
    ) -> Job:
        """Poll until the job is final and return it (completed, failed or cancelled), or
        raise `JobExpired` when it expired: it was not started by its start deadline and
        never ran (the error's ``job_id`` names it; `get` reads it).

        ``on_change`` is called with each new status or progress. `WaitTimeout` when
        ``timeout`` passes first; the job itself keeps running.

        A job that is still not final after ``no_worker_after`` seconds (and again every
        ``no_worker_after`` seconds) makes the wait look at the live workers: when none
        serves the job's queue and kind, it says so once, with what to start —
        ``on_no_worker(message)``, or a warning on the ``jobqueue.queue`` logger. None
        turns the look off.

        ``on_change`` and ``on_no_worker`` may be plain functions or coroutine functions:
        what they return is awaited when it is awaitable.
        """
        waiter = Waiter(interval, timeout)
        lookout = Lookout(no_worker_after)
        while True:
            job = await self.get(job_id)
            if on_change is not None and waiter.changed(job):
                outcome = on_change(job)
                if isinstance(outcome, Awaitable):
                    await outcome
            if job.is_final:
                return self._waited(job)
            if lookout.due(job):
                try:
                    workers = await self.live_workers()
                except JobQueueError as exc:
                    self._unreadable_workers(lookout, exc)
                else:
                    said = self._no_worker_news(lookout.news(job, workers), on_no_worker)
                    if isinstance(said, Awaitable):
                        await said
            pause = waiter.next_sleep()
            if pause is None:
                raise self._timed_out(job.id, waiter)
            await asyncio.sleep(pause)

    async def wait_result(self, job_id: JobRef, **kwargs: Any) -> Job:
        """`wait`, then `JobFailed` unless the job completed."""
        return self._final(await self.wait(job_id, **kwargs))
