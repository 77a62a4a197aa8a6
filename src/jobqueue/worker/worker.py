"""`Worker`: claims jobs, runs their handlers concurrently, and records what happened.

It wires the parts of the package, each doing one thing:

- its **lifecycle** (`jobqueue.worker.lifecycle`): one state, the moves between states,
  stop requests and signals;
- the **claim loop** (here) asks for as many due jobs as there are free slots
  (`jobqueue.worker.slots`) in one statement and starts a task per job; it sleeps until a
  NOTIFY, a freed slot, or the poll interval;
- the **executor** (`jobqueue.worker.executor`) runs one job's handler and turns what
  happened into an outcome; it writes nothing;
- the **completer** (`jobqueue.worker.completer`) writes every outcome: completions in
  batches (claiming replacements in the same statement when the claim loop waits),
  failures, releases on shutdown, all under one retry and give-up rule;
- **maintenance** services (`jobqueue.worker.maintenance`): heartbeats, the reaper, the
  worker's live-workers row and, on PostgreSQL, the LISTEN/NOTIFY wake-ups.

Database errors in any part are logged and retried with backoff: an outage delays jobs, it
never kills the worker. Only at start does a missing table or a refused permission stop
it, with that error, since no retry can fix those. Leases are timed by the database clock
(`jobqueue.sql.dialect.DbNow`), so workers on different hosts agree on them.

On stop (``stop()``, SIGTERM, SIGINT) the worker stops claiming, gives running jobs
``grace_period`` seconds, then cancels the rest and releases them to ``pending`` without
spending an attempt; a handler that has sent a paid request and is saving its task id is
cancelled only once the id is saved (so the next attempt resumes the task instead of
paying again). A second signal skips the grace period and that wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import timedelta

from .. import tracing
from ..backoff import Backoff
from ..drivers.listen import Listener
from ..errors import ConfigurationError, PayloadError, describe_error
from ..generators.base import IMAGE_KIND, Generator
from ..logs import log_to_file
from ..models import DEFAULT_QUEUE, Job, WorkerPresence
from ..operations import DEFAULT_LEASE, seconds_of
from ..queue import AsyncJobQueue, Held
from .completer import HOLD_IDLE, SPARE_CONNECTIONS, WRITERS, Completer
from .context import Handler, WorkerContext, generator_handler
from .executor import Executor
from .lifecycle import Lifecycle
from .maintenance import (
    Entrance,
    Expiry,
    Heartbeats,
    LeaseWatch,
    Periodic,
    Presence,
    Reaper,
    Scheduler,
    Wakeups,
)
from .observer import Observer, Observers, Tracing
from .outcome import Outcome, StopReason
from .registry import Registry
from .slots import Slot, Slots

log = logging.getLogger("jobqueue.worker")

#: The shortest positive duration a worker setting may have (as for the queue's lease).
MIN_SECONDS = 0.001

#: The longest a due job waits outside the fair-share line while slots are busy (seconds):
#: how often `Entrance` runs, unless the poll interval is shorter.
ENTRY_INTERVAL = 1.0


def default_worker_id() -> str:
    """``host:pid:random``: unique per process, and readable in ``locked_by``."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    """Runs jobs from an `AsyncJobQueue` with handlers chosen by job kind.

    ``handlers`` is a `Registry` (kinds with their options) or a mapping of job kind to
    ``async def h(job, ctx)``, a plain function (run in a thread), or a `Generator` (a
    registry with default options); ``generator`` is wired to the ``image`` kind unless
    ``handlers`` names that kind. A kind's ``timeout`` in the registry wins over
    ``job_timeout``. A handler's return value becomes the job's result: a
    `GenerationResult` (``result`` and ``result_url`` from it), a `HandlerResult`, or any
    JSON value. A handler that raises fails its attempt; the job is retried by its policy,
    except for `PayloadError` and errors with ``retryable = False``, which fail it at once.
    A handler that raises `RetryLater` spends no attempt: its job waits ``after`` seconds
    in ``pending`` and its limit key is paused for as long for every worker.
    A job whose kind has no handler fails at once with a message naming the kinds served.

    Settings (seconds unless said otherwise):

    - ``concurrency``: jobs run at once; a claim counts until its handler has ended and its
      outcome is written (an older attempt of a job claimed again counts too).
    - ``queues``: the queues to claim from (default: the queues of the kinds served, as
      registered; ``image`` from ``generator`` is in ``default``); ``kinds``: claim only
      these kinds (default: the kinds of ``handlers``, so workers of different kinds can
      share a queue without failing each other's jobs). ``all_kinds=True`` claims every
      kind instead: a job no handler serves then fails at once, visibly, rather than
      waiting for a worker that may never come (logged once per kind; each such job's
      failure is written on the job and logged at debug level).
    - ``lease``: how long a claim holds a job without news; heartbeats every third of it.
    - ``poll_interval``: how often an idle worker looks for due jobs without a NOTIFY.
    - ``listen``: LISTEN/NOTIFY on PostgreSQL; turn off behind transaction-mode poolers.
    - ``worker_id``: stored in ``locked_by``; default ``host:pid:random``. It must be
      unique among running workers: heartbeats recognise held jobs by it.
    - ``grace_period``: on a graceful stop, how long running jobs may still finish before
      they are cancelled and released to ``pending`` (no attempt spent); one saving a
      paid request's task id is cancelled once the id is saved.
    - ``job_timeout``: a handler running longer fails its attempt (retried by policy).
    - ``reap_interval``: how often expired leases are reaped (default: ``lease``).
    - ``schedules``: run the scheduler of periodic jobs (`add_schedule`, and the
      registry's `Registry.schedule`, written to the database at start) every
      ``schedule_interval``; every worker may run it, and each tick still makes one job.
      `run_until_idle` never runs it.
    - ``log_file``: deprecated; wrap the run in ``jobqueue.logs.log_to_file(path)``
      instead. Also writes the ``jobqueue`` log lines to this file while serving.
    - ``observers``: what hears of each job's start, end and outcome
      (`jobqueue.worker.observer.Observer`), such as
      `jobqueue.observability.WorkerMetrics`; ``trace`` (default True) continues each
      job's trace around its run when OpenTelemetry is installed (`jobqueue.tracing`).

    A sync handler runs on a thread of the worker's own pool (twice ``concurrency``) and
    cannot be interrupted: it should check ``ctx.cancelled.is_set()`` in long loops.
    """

    def __init__(
        self,
        queue: AsyncJobQueue,
        handlers: Registry | Mapping[str, Handler | Generator] | None = None,
        *,
        generator: Generator | None = None,
        concurrency: int = 10,
        queues: Sequence[str] | None = None,
        lease: float | timedelta = DEFAULT_LEASE,
        poll_interval: float | timedelta = 1.0,
        listen: bool = True,
        worker_id: str | None = None,
        grace_period: float | timedelta = 30.0,
        job_timeout: float | timedelta | None = None,
        reap_interval: float | timedelta | None = None,
        log_file: str | os.PathLike[str] | None = None,
        kinds: Sequence[str] | None = None,
        all_kinds: bool = False,
        schedules: bool = True,
        schedule_interval: float | timedelta = 1.0,
        observers: Sequence[Observer] = (),
        trace: bool = True,
    ) -> None:
        if not isinstance(queue, AsyncJobQueue):
            raise ConfigurationError(
                f"a Worker needs an AsyncJobQueue, not {type(queue).__name__}",
                hint="build it with jobqueue.AsyncJobQueue(url)",
            )
        self.queue = queue
        registry = handlers if isinstance(handlers, Registry) else Registry.of(handlers or {})
        if generator is not None:
            registry = registry.with_default(IMAGE_KIND, generator)
        #: The kinds this worker runs, with their options.
        self.registry = registry
        self.handlers: dict[str, Handler] = {
            kind: _as_handler(entry.handler) for kind, entry in registry.kinds.items()
        }
        if not self.handlers:
            raise ConfigurationError(
                "a worker needs at least one handler or a generator",
                hint="pass a Registry, handlers={'kind': function} or generator=MockGenerator()",
            )
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be a positive integer, not {concurrency!r}")
        self.concurrency = concurrency
        if queues is None:
            queues = registry.queues or (DEFAULT_QUEUE,)
        self.queues: tuple[str, ...] = (queues,) if isinstance(queues, str) else tuple(queues)
        if not self.queues:
            raise ConfigurationError("a worker needs at least one queue to claim from")
        if all_kinds and kinds is not None:
            raise ConfigurationError(
                "give kinds or all_kinds=True, not both",
                hint="all_kinds=True claims every kind; kinds=[...] claims only those",
            )
        #: The kinds the claim asks for; None (``all_kinds``) claims every kind.
        self.kinds: tuple[str, ...] | None = (
            None
            if all_kinds
            else tuple(self.handlers)
            if kinds is None
            else ((kinds,) if isinstance(kinds, str) else tuple(kinds))
        )
        if self.kinds is not None and not self.kinds:
            raise ConfigurationError("a worker needs at least one kind to claim")
        self.lease = _seconds(lease, "lease")
        self.poll_interval = _seconds(poll_interval, "poll_interval")
        self.grace_period = _seconds(grace_period, "grace_period", zero=True)
        self.job_timeout = None if job_timeout is None else _seconds(job_timeout, "job_timeout")
        self.reap_interval = (
            self.lease if reap_interval is None else _seconds(reap_interval, "reap_interval")
        )
        self.listen = listen
        #: Whether `run` runs the periodic jobs' scheduler, and how often it looks.
        self.schedules = schedules
        self.schedule_interval = _seconds(schedule_interval, "schedule_interval")
        self.worker_id = worker_id or default_worker_id()
        if log_file is not None:
            warnings.warn(
                "Worker(log_file=...) is deprecated: run the worker inside "
                "jobqueue.logs.log_to_file(path) instead",
                DeprecationWarning,
                stacklevel=2,
            )
        self.log_file = log_file
        #: The LISTEN/NOTIFY listener while `run` is serving on PostgreSQL with ``listen``.
        self.listener: Listener | None = None
        #: The watch that gives up jobs whose lease must have run out, while `run` serves.
        self.lease_watch: LeaseWatch | None = None
        #: Claim statements run so far (each may take many jobs).
        self.claims = 0
        #: The connection the claim loop keeps between claims (PostgreSQL; `_claim_loop`).
        self._claiming: Held | None = None
        #: When a claim last found jobs (monotonic seconds).
        self._found_at = 0.0
        self._lifecycle = Lifecycle(self.worker_id, self.grace_period)
        self._executor = Executor(
            self.handlers,
            timeouts={k: e.timeout for k, e in registry.kinds.items() if e.timeout is not None},
            job_timeout=self.job_timeout,
            # Twice `concurrency`, so threads of abandoned sync handlers leave room.
            threads=2 * concurrency,
        )
        self._observer = _observer_of(observers, trace)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots = Slots(concurrency)
        self._completer = self._new_completer()

    # -- public control ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until `stop` (or a signal, after `install_signal_handlers`)."""
        await self._serve(until_idle=False)

    async def run_until_idle(self) -> int:
        """Run jobs until none is due and none is running; return how many finished
        (completed, or failed/retried: every attempt whose outcome was written)."""
        return await self._serve(until_idle=True)

    def stop(self, *, immediate: bool = False) -> None:
        """Ask the worker to stop: gracefully, or with ``immediate`` at once (running jobs
        are cancelled and released). Safe from any thread and from signal handlers.

        Asked while the worker is not serving (its `run` task has not started yet), it
        makes the next `run` or `run_until_idle` stop as soon as it starts."""
        self._lifecycle.request_stop(immediate=immediate)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: the first stops gracefully, a second stops at once.

        Call it inside the running loop, or before `run` (it is then installed when serving
        starts). The handlers are removed when serving ends.
        """
        self._lifecycle.install_signal_handlers()

    # -- serving ---------------------------------------------------------------------------

    async def _serve(self, *, until_idle: bool) -> int:
        lifecycle = self._lifecycle
        lifecycle.begin(until_idle=until_idle)
        self._loop = asyncio.get_running_loop()
        self._slots = Slots(self.concurrency)
        self._completer = completer = self._new_completer()
        logging_to_file = (
            contextlib.nullcontext() if self.log_file is None else log_to_file(self.log_file)
        )
        with logging_to_file:
            try:
                lifecycle.serve_signals()
                presence = await self._announce()
            except BaseException:
                lifecycle.end()
                raise
            try:
                await self._serve_announced(until_idle)
            finally:
                await presence.stop()
                self._executor.close()
                self.listener = None
                lifecycle.end()
                log.info("Worker %s stopped (%d jobs finished)", self.worker_id, completer.finished)
        return completer.finished

    async def _serve_announced(self, until_idle: bool) -> None:
        """Start the services and the completer, claim until stopped (or idle), drain. The
        services stop between two statements, never in the middle of one, whatever
        happens."""
        lifecycle = self._lifecycle
        lifecycle.started()
        services: list[Periodic | Wakeups] = []
        try:
            services += self._services(until_idle)
            for service in services:
                service.start()
            self._completer.start()
            log.info(
                "Worker %s started: queues=%s, concurrency=%d, lease=%gs, kinds=%s, listen=%s",
                self.worker_id,
                ",".join(self.queues),
                self.concurrency,
                self.lease,
                "*" if self.kinds is None else ",".join(self.kinds),
                "on" if self.listener is not None else "off",
            )
            try:
                self._claiming = claiming = self.queue._holding(SPARE_CONNECTIONS + WRITERS)
                try:
                    with self.queue._on_held(claiming):
                        await self._claim_loop(claiming)
                finally:
                    if claiming is not None:
                        await claiming.let_go()
                # A stopping worker makes no new jobs either: its scheduler stops with its
                # claims, not after the drain (other workers' schedulers take the ticks).
                await asyncio.gather(*(s.stop() for s in services if isinstance(s, Scheduler)))
                await self._drain()
            except asyncio.CancelledError:
                # Cancelled from outside: hand back what we hold, as an immediate stop would.
                lifecycle.interrupted()
                with contextlib.suppress(BaseException):
                    await self._drain()
                raise
        finally:
            await asyncio.gather(*(service.stop() for service in services))
            await self._completer.cancel()

    async def _announce(self) -> Presence:
        """Check the worker may work here, write its row in the live-workers table and
        keep it fresh until `Presence.stop` (retrying while the database is unreachable).
        A missing table or a refused permission ends serving here, before any job is
        claimed, with that error."""
        me = WorkerPresence(self.worker_id, self.queues, self.kinds, self.concurrency)
        presence = Presence(self.queue, me, self.lease)
        await presence.announce(self._lifecycle.stopped)
        return presence

    def _services(self, until_idle: bool) -> list[Periodic | Wakeups]:
        self.lease_watch = LeaseWatch(self.queue, self._slots, self.lease)
        services: list[Periodic | Wakeups] = [
            Heartbeats(self.queue, self._slots, self.worker_id, self.lease),
            self.lease_watch,
            Reaper(self.queue, self.reap_interval, at_once=until_idle, observer=self._observer),
            Entrance(self.queue, min(self.poll_interval, ENTRY_INTERVAL)),
            Expiry(self.queue, min(self.poll_interval, ENTRY_INTERVAL), observer=self._observer),
        ]
        if not until_idle and self.schedules:
            declared = self.registry.schedules
            services.append(Scheduler(self.queue, self.schedule_interval, declared))
        if not until_idle and self.listen and self.queue.is_postgres:
            wakeups = Wakeups(self.queue, self.worker_id, self._on_notify)
            self.listener = wakeups.listener
            services.append(wakeups)
        return services

    def _new_completer(self) -> Completer:
        return Completer(
            self.queue,
            self._slots,
            self._lifecycle,
            worker_id=self.worker_id,
            queues=self.queues,
            kinds=self.kinds,
            lease=self.lease,
            start_job=self._start,
            count_claim=self._count_claim,
            slot_freed=self._slot_freed,
            observer=self._observer,
        )

    async def _claim_loop(self, held: Held | None) -> None:
        """Claim as many jobs as there are free slots; sleep until there may be more.

        The claims run on ``held``, a connection the loop keeps from one claim to the next
        (a pool checkout costs a pickup about as much as the claim's statement), and gives
        back while it has nothing to do for `HOLD_IDLE` seconds."""
        lifecycle, slots = self._lifecycle, self._slots
        backoff = Backoff(cap=self.poll_interval * 5)
        while lifecycle.claiming:
            # Claims count until their outcome is written, not only while their handler
            # runs: otherwise finished-but-unwritten jobs pile up beyond `concurrency` when
            # the database is slow, and a crash throws all of them away (kill -9 test).
            # They count by claim, not by job: see `Slots`.
            free = slots.free()
            if free <= 0:
                # Clear first: an Event already set returns without yielding, and this
                # loop would spin and starve the very tasks that free a slot.
                lifecycle.wake.clear()
                lifecycle.slots_taken()
                await self._sleep_until_woken(None, held)
                lifecycle.slot_wait_over()
                continue
            lifecycle.wake.clear()
            slots.reserved += free
            try:
                self.claims += 1
                jobs = await self.queue.claim(
                    self.worker_id,
                    queues=self.queues,
                    kinds=self.kinds,
                    limit=free,
                    lease=self.lease,
                    # A claim the database server's crash undoes is a job claimed again,
                    # as after our own crash; a paid request waits for a confirmation
                    # that does reach the disk (`WorkerContext.lease_confirmed`).
                    durable=False,
                )
            except Exception as exc:
                slots.reserved -= free
                delay = backoff.next()
                log.warning(
                    "claiming jobs failed (%s); retrying in %.1fs", describe_error(exc), delay
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await lifecycle.stopped.wait()
                continue
            slots.reserved -= free
            backoff.reset()
            if jobs:
                self._found_at = time.monotonic()
            for job in jobs:
                self._start(job)
            if len(jobs) >= free:
                continue  # there may be more due right now
            if lifecycle.until_idle and not jobs and self._idle():
                return
            await self._sleep_until_woken(self.poll_interval, held)

    def _idle(self) -> bool:
        return not self._slots.tasks and self._completer.idle()

    async def _sleep_until_woken(self, timeout: float | None, held: Held | None = None) -> None:
        wake = self._lifecycle.wake
        if held is not None and held.holds:
            # Keep the claims' connection while jobs keep coming; give it back to the pool
            # once no claim found any for a while (polls that find nothing do not count).
            keep = HOLD_IDLE - (time.monotonic() - self._found_at)
            if keep <= 0:
                await held.let_go()
            elif timeout is None or timeout > keep:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(keep):
                        await wake.wait()
                        return
                await held.let_go()
                timeout = None if timeout is None else timeout - keep
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await wake.wait()

    def _on_notify(self, queue_name: str | None) -> None:
        if queue_name is None or queue_name in self.queues:
            self._lifecycle.wake.set()

    def _count_claim(self) -> None:
        self.claims += 1

    def _slot_freed(self) -> None:
        # While limits are in force a finished job may free a cap (of its key, its owner)
        # as well as a slot: the claim loop looks again at once instead of at its next poll.
        if self._lifecycle.waits_for_slots or self.queue.claims_within_limits:
            self._lifecycle.wake.set()

    # -- running one job --------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        assert self._loop is not None
        slots = self._slots
        ctx = WorkerContext(self.queue, job, self.worker_id, self._loop, lease=self.lease)
        slot = Slot(job, ctx, time.monotonic())
        previous = slots.take(slot)
        if previous is not None and not previous.handler_done and previous.task is not None:
            # We claimed the job again after our own earlier attempt lost its lease (say,
            # during a database outage): that attempt is fenced off, so stop its handler.
            # Its place stays taken until the handler has ended. (An attempt whose outcome
            # is being written is let go by that write, and keeps its place until then.)
            previous.stop_handler(StopReason.LEASE_LOST)
            slots.let_go(previous)
        task = asyncio.create_task(self._execute(slot), name=f"jobqueue-job-{job.id}")
        slot.task = task
        slots.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._slots.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a job task ended unexpectedly", exc_info=task.exception())
        lifecycle = self._lifecycle
        if lifecycle.waits_for_slots:
            lifecycle.wake.set()

    async def _execute(self, slot: Slot) -> None:
        """Run one job and write its outcome; whatever happens, the worker stops holding
        it in the end."""
        try:
            try:
                if self._observer is None:
                    outcome = await self._executor.run(slot)
                else:
                    outcome = await self._observed_run(self._observer, slot)
            finally:
                self._slots.handler_ended(slot)
            await self._completer.record(slot, outcome)
        except Exception:
            # A bug of ours, not the handler's: let go of the job so that its lease runs
            # out and the reaper or another worker takes it, rather than heartbeat it forever.
            log.exception("Job %s: the worker could not record its outcome", slot.job.id)
            if not self._completer.batched(slot):
                self._slots.let_go(slot)

    async def _observed_run(self, observer: Observer, slot: Slot) -> Outcome:
        """`Executor.run` with ``observer`` told of its start and end (in this task, so
        what it makes current, a trace's span, is current for the handler)."""
        job = slot.job
        try:
            started = observer.started(job)
        except Exception:
            log.exception("Job %s: an observer failed on its start", job.id)
            return await self._executor.run(slot)
        outcome: Outcome | None = None
        try:
            outcome = await self._executor.run(slot)
            return outcome
        finally:
            try:
                observer.ran(job, started, outcome)
            except Exception:
                log.exception("Job %s: an observer failed on its end", job.id)

    # -- stopping ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Give running jobs the grace period, release the rest, flush completions."""
        lifecycle, slots, completer = self._lifecycle, self._slots, self._completer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (0.0 if lifecycle.immediate else self.grace_period)
        lifecycle.draining(self.lease)
        if slots.tasks and not lifecycle.immediate:
            log.info("waiting up to %gs for %d running jobs", self.grace_period, len(slots.tasks))
        while slots.tasks and not lifecycle.immediate and loop.time() < deadline:
            lifecycle.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await lifecycle.wake.wait()
        await self._await_paid_saves()
        unfinished = [s for s in slots.held.values() if not s.handler_done and s.task is not None]
        for slot in unfinished:
            slot.stop_handler(StopReason.STOPPING)
        if slots.tasks:
            await asyncio.wait(list(slots.tasks))
        for slot in unfinished:
            # A handler that swallowed the cancellation and returned anyway has its result
            # in the batch or being written (a writer took it from the batch: releasing it
            # meanwhile would make that write find the job pending, and lose the result),
            # and one that failed has written its failure: keep those.
            if (
                slot.completion is None
                and not completer.batched(slot)
                and slots.held.get(slot.job.id) is slot
            ):
                await completer.release(slot)
        lifecycle.close()
        await completer.finish()

    async def _await_paid_saves(self) -> None:
        """Past the grace period, a handler that sent a paid request and is saving its
        task id is not stopped until the save is written: without the id the next attempt
        pays again. The database answering ends the wait; a database out of reach ends it
        through the lease watch, which stops the handler before its lease runs out; a
        second signal (an immediate stop) ends it at once."""
        lifecycle, slots = self._lifecycle, self._slots

        def saving() -> list[tuple[asyncio.Event, asyncio.Task[None]]]:
            return [
                (s.ctx.paid_saved, s.task)
                for s in slots.held.values()
                if not s.ctx.paid_saved.is_set() and not s.handler_done and s.task is not None
            ]

        first = True
        while not lifecycle.immediate and (pending := saving()):
            if first:
                log.info("waiting for %d jobs to save a paid request's task id", len(pending))
                first = False
            lifecycle.wake.clear()  # set by a second signal, as by every ended handler
            waits = [asyncio.ensure_future(e.wait()) for e, _ in pending]
            waits.append(asyncio.ensure_future(lifecycle.wake.wait()))
            try:
                await asyncio.wait(
                    [*waits, *(t for _, t in pending)], return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for w in waits:
                    w.cancel()


def _observer_of(observers: Sequence[Observer], trace: bool) -> Observer | None:
    """What hears of the worker's jobs: None (nothing to pay for) without observers and
    without OpenTelemetry."""
    chosen: list[Observer] = []
    if trace and tracing.available():
        chosen.append(Tracing())
    chosen += observers
    if not chosen:
        return None
    if len(chosen) == 1 and isinstance(chosen[0], Tracing):
        return chosen[0]
    return Observers(chosen)


def _as_handler(handler: Handler | Generator) -> Handler:
    # The registry has checked that it is one or the other.
    if isinstance(handler, Generator):
        return generator_handler(handler)
    return handler


def _seconds(value: float | timedelta, what: str, *, zero: bool = False) -> float:
    """A worker setting in seconds, by the queue's rule (`operations.seconds_of`: a finite
    number or a timedelta, at most the longest delay), as a `ConfigurationError`: a bad
    setting is the operator's to fix, not a payload's."""
    try:
        return seconds_of(value, what, low=0.0 if zero else MIN_SECONDS)
    except PayloadError as exc:
        raise ConfigurationError(
            f"worker setting {exc.message}", hint=f"pass {what} in seconds or as a timedelta"
        ) from None


__all__ = ["Worker", "default_worker_id"]
