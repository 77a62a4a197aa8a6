"""A worker's background duties, each a small service of one shape, never on a job's path.

- `Heartbeats` extends the leases of every held job in one statement every third of the
  lease; a claim missing from the answer was cancelled, reaped or taken over, and its
  handler is stopped. The answer is matched to the claims sent, never to what the worker
  holds under those ids by the time it comes.
- `LeaseWatch` stops the handlers of jobs whose leases must have run out because no
  heartbeat got an answer for a whole lease while the database could not be reached (the
  worker is cut off from it).
- `Reaper` returns expired leases of crashed workers to the queue (or fails them when
  their attempts are spent).
- `Expiry` moves pending jobs past their start deadline to ``expired`` (no claim takes
  them meanwhile, so this is the bookkeeping, not the guard).
- `Scheduler` runs the periodic jobs: each schedule's tick enqueues exactly one job,
  however many workers run one (the database decides which enqueues it).
- `Presence` keeps the worker's row in the live-workers table: `Presence.announce` checks
  that the worker's role may do a worker's work and writes the row (a missing table or a
  refused permission stops the worker there, with our error and its hint; other errors
  are retried with backoff until it works or the worker is asked to stop); its timer then
  refreshes the row every third of the lease and deletes the rows of workers that stopped
  beating; `Presence.stop` removes the row (a row left behind expires by itself).
- `Wakeups` (PostgreSQL) runs the LISTEN/NOTIFY `Listener`, which only wakes the claim
  loop.

The timers are `Periodic` services: `start` runs a round every ``interval`` seconds in a
task of their own; a round that fails is logged and the next one comes after a backoff;
`stop` ends the timer between two rounds and never cancels a round in the middle of a
statement (a pooled connection being checked out when its task is cancelled would be lost
to the pool), unless the round outlasts `STOP_TIMEOUT`. The timers only decide when to
ask, by this process's monotonic clock; what has expired (a lease, a live-workers row) is
judged by the database clock alone (`jobqueue.operations.presence`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from ..backoff import Backoff
from ..drivers.listen import Listener, libpq_url
from ..errors import (
    ConfigurationError,
    PayloadError,
    PermissionDenied,
    SchemaNotInstalled,
    describe_error,
)
from ..models import Job, Status, WorkerPresence
from ..operations.presence import beat_interval_of, ttl_of
from ..operations.schedules import ScheduleRound, ScheduleSpec
from ..queue import AsyncJobQueue
from ..sql.limits import ENTRY_BATCH
from ..sql.manage import EXPIRY_BATCH
from ..sql.schedules import DUE_BATCH
from .observer import Observer
from .outcome import StopReason
from .slots import Slot, Slots, matched

log = logging.getLogger("jobqueue.worker")

#: How long a stopping service may take to finish its round (and `Presence` to remove its
#: row) before it is cancelled.
STOP_TIMEOUT = 5.0

#: Errors that retrying cannot fix: the worker stops at start instead.
FATAL_AT_START = (PermissionDenied, SchemaNotInstalled, ConfigurationError, PayloadError)


class Periodic(ABC):
    """A duty run in rounds, in a task of its own from `start` to `stop`.

    The first round comes ``first`` seconds after `start` (default: ``interval``), the
    next ones ``interval`` seconds after the previous one ended. After a failed round
    (logged as ``<failure> failed``) the next comes after a growing backoff capped at the
    interval, or after the interval when ``backoff`` is False.
    """

    #: Names the task, and the log line of a failed round ("<failure> failed (...)").
    name = "timer"
    failure = "a round"

    def __init__(self, interval: float, *, first: float | None = None, backoff: bool = True):
        self.interval = interval
        self.first = interval if first is None else first
        self._backoff = Backoff(cap=interval) if backoff else None
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def round(self) -> None:
        """One round of the duty; raise to have it logged and retried."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"jobqueue-{self.name}")

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """End the timer after the round it may be running (within ``timeout`` seconds;
        a round still running then is cancelled)."""
        self._stopping.set()
        task = self._task
        if task is None:
            return
        await asyncio.wait({task}, timeout=timeout)
        if not task.done():
            log.warning("%s did not stop within %gs; cancelled", self.name, timeout)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        pause = self.first
        while True:
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pause):
                        await self._stopping.wait()
            if self._stopping.is_set():
                return
            pause = self.interval
            try:
                await self.round()
            except Exception as exc:
                if self._backoff is not None:
                    pause = self._backoff.next()
                log.warning(
                    "%s failed (%s); retrying in %.1fs", self.failure, describe_error(exc), pause
                )
                continue
            if self._backoff is not None:
                self._backoff.reset()


class Heartbeats(Periodic):
    """Extends the leases of the jobs in ``slots`` every third of ``lease``, in one
    statement; stops the handler of a job that is no longer this worker's."""

    name = "heartbeat"
    failure = "heartbeat"

    def __init__(self, queue: AsyncJobQueue, slots: Slots, worker_id: str, lease: float):
        super().__init__(lease / 3)
        self.queue = queue
        self.slots = slots
        self.worker_id = worker_id
        self.lease = lease

    async def round(self) -> None:
        held = self.slots.held
        sent = list(held.values())
        if not sent:
            return
        alive = await self.queue.heartbeat_many(
            self.worker_id, [slot.job for slot in sent], lease=self.lease
        )
        answered = time.monotonic()
        kept = matched(sent, alive)
        for slot in kept:
            slot.ctx.confirm(answered)
        for slot in sent:
            # Each answer is about the claim sent. One this worker no longer holds (its
            # outcome was written, or the worker claimed the job again meanwhile and
            # stopped it then) is no news, and the job's new claim is none of its business.
            if slot not in kept and held.get(slot.job.id) is slot:
                await self._lost(slot)

    async def _lost(self, slot: Slot) -> None:
        """A held job's heartbeat matched nothing: find out why and stop its handler."""
        job = slot.job
        now: Job | None = None
        if not slot.handler_done:
            try:
                now = await self.queue.get(job.id)
            except Exception:
                now = None
        if slot.handler_done or slot.task is None:
            # Its outcome is being written, fenced: that write says whether the claim was
            # still ours (a heartbeat crossing the job's own completion is not a lost lease).
            log.debug("Job %s: its heartbeat missed while its outcome is written", job.id)
            return
        if self.slots.held.get(job.id) is not slot:
            return  # claimed again while we looked: that claim stopped this attempt
        if now is not None and now.status is Status.CANCELLED:
            reason = StopReason.CANCELLED
            log.info("Job %s status: cancelled", job.id)
        else:
            reason = StopReason.LEASE_LOST
            state = "gone" if now is None else f"{now.status}, held by {now.locked_by or 'nobody'}"
            log.warning(
                "Job %s: LeaseLost: attempt %d is over, the job is now %s; stopping its handler",
                job.id,
                job.attempts,
                state,
            )
        slot.stop_handler(reason)
        self.slots.let_go(slot)


class LeaseWatch(Periodic):
    """Gives up, locally, the jobs whose leases must have run out while the database could
    not be reached: a running handler whose claim the database has not confirmed (the
    claim's answer, then each heartbeat answer: `WorkerContext.confirmed`) for a whole
    ``lease`` by this process's monotonic clock, with an operation of the worker failing as
    unreachable since (`AsyncJobQueue.unreachable_at`: a lost connection, a refused one, or
    no answer within the queue's ``command_timeout``), is stopped (`StopReason.CUT_OFF`),
    and the worker stops holding the job.

    That is what a worker cut off from the database (a partition, a silent network) does
    on its own: by then another worker may have claimed the job, and its handler must not
    go on (polling, paying a provider) for an outcome that will be refused. Its late
    writes are fenced anyway; this ends the work itself. It waits for the lease to have
    run out for sure rather than stop a handler whose heartbeat may still land: a paid
    request needs its lease confirmed first (`WorkerContext.lease_confirmed`), which a
    cut-off worker cannot have, so a handler that outlives its lease this way never pays.
    A database that answers slowly (a heartbeat waiting on a lock, SQLite's write lock
    under load) or refuses (its ``lock_timeout`` ran out: `DatabaseBusy`; read-only:
    `DatabaseReadOnly`; neither counts as unreachable, and either clears an earlier
    unreachable) is waited for instead:
    once it answers, the heartbeat extends the lease of every job nobody took over, and
    their work goes on. Looks every tenth of a lease (at most a second), independently of
    the heartbeat's rounds, which may themselves be waiting on the network."""

    name = "lease-watch"
    failure = "watching leases"

    def __init__(self, queue: AsyncJobQueue, slots: Slots, lease: float) -> None:
        super().__init__(min(1.0, lease / 10), backoff=False)
        self.queue = queue
        self.slots = slots
        self.lease = lease
        #: Handlers stopped because their lease must have run out.
        self.given_up = 0

    async def round(self) -> None:
        unreachable_at = self.queue.unreachable_at
        if unreachable_at is None:
            return
        now = time.monotonic()
        for slot in list(self.slots.held.values()):
            confirmed = slot.ctx.confirmed
            if (
                slot.handler_done
                or slot.task is None
                or unreachable_at < confirmed
                or now - confirmed < self.lease
            ):
                continue
            self.given_up += 1
            log.warning(
                "Job %s: LeaseLost: no heartbeat answered for %.1fs (lease %gs) and the "
                "database cannot be reached, so its lease has run out and another worker "
                "may hold it now; stopping its handler (attempt %d)",
                slot.job.id,
                now - confirmed,
                self.lease,
                slot.job.attempts,
            )
            slot.stop_handler(StopReason.CUT_OFF)
            self.slots.let_go(slot)


class Reaper(Periodic):
    """Returns jobs of crashed workers (expired leases) to the queue every ``interval``
    seconds, or fails them when their attempts are spent (the claim leaves those alone).

    The first round comes at once with ``at_once``, else at a random point of the first
    interval, so that workers started together do not reap together. A failed round is
    retried after the interval: reaping is never urgent."""

    name = "reaper"
    failure = "reaping expired leases"

    def __init__(
        self,
        queue: AsyncJobQueue,
        interval: float,
        *,
        at_once: bool = False,
        observer: Observer | None = None,
    ):
        first = 0.0 if at_once else random.uniform(0.5, 1.0) * interval
        super().__init__(interval, first=first, backoff=False)
        self.queue = queue
        self.observer = observer

    async def round(self) -> None:
        moved = await self.queue.reap()
        for job_id, status in moved:
            log.warning("Job %s: lease expired; moved back to %s", job_id, status)
        if moved and self.observer is not None:
            self.observer.reaped(moved)


class Entrance(Periodic):
    """Puts due jobs waiting outside the fair-share line into it every ``interval`` seconds
    (`AsyncJobQueue.enter_line`): retries whose backoff is over, scheduled jobs whose time
    has come, jobs held back by a provider or a pause that ended, rows another client
    inserted. Rounds follow each other at once while a round fills a whole batch. (A claim
    that comes up short does the same before it gives up, see `AsyncJobQueue.claim`: this
    timer is for due jobs while every slot is busy, so they take their turn in the line
    instead of waiting for the backlog to drain.)"""

    name = "entrance"
    failure = "putting due jobs in the line"

    def __init__(self, queue: AsyncJobQueue, interval: float):
        super().__init__(interval, first=0.0)
        self.queue = queue

    async def round(self) -> None:
        # Rows a claim's own entry holds are that claim's to enter: waiting for them
        # would lock them past it (`Statements.entering`).
        while await self.queue.enter_line(skip_locked=True) >= ENTRY_BATCH:
            pass


class Expiry(Periodic):
    """Moves pending jobs past their start deadline to ``expired`` every ``interval``
    seconds (`AsyncJobQueue.expire`), every queue's, whichever queues this worker serves:
    a deadline is the same promise wherever the job waits. Rounds follow each other at once
    while a round fills a whole batch. The first round comes at once."""

    name = "expiry"
    failure = "expiring jobs past their start deadline"

    def __init__(self, queue: AsyncJobQueue, interval: float, *, observer: Observer | None = None):
        super().__init__(interval, first=0.0)
        self.queue = queue
        self.observer = observer

    async def round(self) -> None:
        while True:
            expired = await self.queue.expire()
            for job in expired:
                log.info("Job %s status: expired (not started by its deadline)", job.id)
            if expired and self.observer is not None:
                self.observer.expired(expired)
            if len(expired) < EXPIRY_BATCH:
                return


class Scheduler(Periodic):
    """Runs the periodic jobs (`AsyncJobQueue.run_schedules`) every ``interval`` seconds:
    each schedule whose tick has come gets one job, however many workers' schedulers run
    (the database decides which one enqueues it). The first round comes at once, and
    first writes ``declared`` (the worker's registry's schedules) to the schedules table.
    Rounds follow each other at once while a round fills a whole batch."""

    name = "scheduler"
    failure = "running the schedules"

    def __init__(
        self, queue: AsyncJobQueue, interval: float, declared: Sequence[ScheduleSpec] = ()
    ):
        super().__init__(interval, first=0.0)
        self.queue = queue
        self.declared = list(declared)
        self._told: set[str] = set()

    async def round(self) -> None:
        try:
            if self.declared:
                await self.queue.declare_schedules(self.declared)
                log.info("Schedules declared: %s", ", ".join(spec.name for spec in self.declared))
                self.declared = []
            while True:
                done = await self.queue.run_schedules()
                self._report(done)
                if done.due < DUE_BATCH:
                    return
        except SchemaNotInstalled as exc:
            # A database not migrated to the schedules yet: said once, not every second.
            if "schema" not in self._told:
                self._told.add("schema")
                log.warning("Schedules are not run: %s (%s)", exc.message, exc.hint)

    def _report(self, done: ScheduleRound) -> None:
        for job in done.enqueued:
            log.info("Job %s enqueued by its schedule (%s)", job.id, job.idempotency_key)
        for name in done.skipped:
            log.info("Schedule %s: skipped missed ticks", name)
        for name, why in done.broken.items():
            if name not in self._told:
                self._told.add(name)
                log.warning("Schedule %s cannot run: %s", name, why)


class Presence(Periodic):
    """Keeps ``me``'s row in the live-workers table of ``queue``, timed by ``lease``: a beat
    every third of it, live for `presence.LIVE_LEASES` leases after each beat, and a sweep
    of stale rows every time to live."""

    name = "presence"
    failure = "worker heartbeat"

    def __init__(self, queue: AsyncJobQueue, me: WorkerPresence, lease: float) -> None:
        super().__init__(beat_interval_of(lease))
        self.queue = queue
        self.me = me
        self.ttl = ttl_of(lease)
        #: Whether the row was written (so a stop removes it).
        self.announced = False
        self._next_sweep = 0.0

    async def announce(self, stopping: asyncio.Event) -> bool:
        """Check access, write the row and start the timer: True once written, False when
        ``stopping`` is set first. Raises the errors in `FATAL_AT_START`."""
        backoff = Backoff()
        while not stopping.is_set():
            try:
                await self.queue.check_worker_access()
                await self.queue.worker_beat(self.me, ttl=self.ttl)
            except FATAL_AT_START:
                raise
            except Exception as exc:
                delay = backoff.next()
                log.warning(
                    "Worker %s cannot start yet (%s); retrying in %.1fs",
                    self.me.worker_id,
                    describe_error(exc),
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stopping.wait()
                continue
            self.announced = True
            await self.sweep()
            self._next_sweep = time.monotonic() + self.ttl
            self.start()
            return True
        return False

    async def round(self) -> None:
        await self.queue.worker_beat(self.me, ttl=self.ttl)
        self.announced = True
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + self.ttl
            await self.sweep()

    async def sweep(self) -> None:
        """Delete the rows of workers that stopped beating (logged, never raised)."""
        try:
            swept = await self.queue.sweep_workers()
        except Exception as exc:
            log.warning("removing stale workers failed (%s)", describe_error(exc))
            return
        for worker_id in swept:
            log.info("Worker %s sent no heartbeat lately: removed from the live workers", worker_id)

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the timer and remove the row, both within ``timeout`` seconds; a row left
        behind expires by itself."""
        deadline = asyncio.get_running_loop().time() + timeout
        await super().stop(timeout)
        try:
            async with asyncio.timeout_at(deadline):
                if self.announced:
                    self.announced = False
                    await self.queue.worker_gone(self.me.worker_id)
        except Exception as exc:
            log.warning(
                "Worker %s: its live-workers row was not removed (%s); it expires in %gs",
                self.me.worker_id,
                describe_error(exc),
                self.ttl,
            )


class Wakeups:
    """LISTEN/NOTIFY on PostgreSQL (`listener`): ``on_notify`` gets each notification's
    queue name, and None after each (re)connection. The listener reconnects by itself; it
    holds a connection of its own, outside the pool, which `stop` closes by cancelling it."""

    name = "listener"

    def __init__(
        self, queue: AsyncJobQueue, worker_id: str, on_notify: Callable[[str | None], None]
    ) -> None:
        self.listener = Listener(
            libpq_url(queue.engine.url),
            queue.table.name,
            on_notify,
            application_name=f"jobqueue-listener {worker_id}",
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.listener.run(), name="jobqueue-listen")

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


__all__ = [
    "FATAL_AT_START",
    "STOP_TIMEOUT",
    "Expiry",
    "Heartbeats",
    "LeaseWatch",
    "Periodic",
    "Presence",
    "Reaper",
    "Scheduler",
    "Wakeups",
]
