"""The worker: claims jobs, runs their handlers concurrently, and records what happened.

One asyncio process holds these parts, each doing one thing:

- the **claim loop** asks for as many due jobs as it has free slots (one statement per
  batch) and starts a task per job; it sleeps until a NOTIFY, a freed slot, or the poll
  interval;
- one **heartbeat** timer extends the leases of every job it holds in one statement every
  third of the lease; a job missing from the answer was cancelled, reaped or taken by
  another worker, and its handler is stopped;
- the **completion batcher** collects finished jobs for a few milliseconds and completes
  them in one fenced statement; a job fenced off is logged, never re-written;
- the **reaper** timer returns expired leases of crashed workers to the queue;
- the **listener** (PostgreSQL) only wakes the claim loop;
- the **presence** service (`jobqueue.worker_presence`) keeps the worker's row in the
  live-workers table, on its own timer.

Database errors in any part are logged and retried with backoff: an outage delays jobs, it
never kills the worker. Only at start does a missing table or a refused permission stop
it, with that error, since no retry can fix those. Time for leases comes from the database
(see `jobqueue.queue`).

On stop (``stop()``, SIGTERM, SIGINT) the worker stops claiming, gives running jobs
``grace_period`` seconds, then cancels the rest and releases them to ``pending`` without
spending an attempt; a second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import os
import random
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeAlias, TypeVar
from uuid import UUID

from .backoff import Backoff
from .database import describe_error, redact
from .errors import ConfigurationError, InvalidTransition, JobNotFound, LeaseLost, PayloadError
from .generators.base import IMAGE_KIND, GenerationRequest, GenerationResult, Generator
from .listener import Listener, libpq_url
from .operations import DEFAULT_LEASE, Completion, seconds_of
from .presence import WorkerPresence
from .queue import AsyncJobQueue
from .registry import Registry
from .schema import DEFAULT_QUEUE, Job, Status
from .worker_presence import PresenceService

log = logging.getLogger("jobqueue.worker")

T = TypeVar("T")

Handler: TypeAlias = Callable[[Job, "WorkerContext"], Any]
"""``async def h(job, ctx)`` or a plain function (run in a thread); see `Worker`."""

#: Completions are collected for this long (or until `COMPLETION_BATCH` are waiting) and
#: then written in one statement.
COMPLETION_WINDOW = 0.005
COMPLETION_BATCH = 500
#: Completion batches written at once (each on its own pooled connection), and the
#: smallest share of a batch worth a writer of its own (smaller batches go whole: the
#: next one overlaps them anyway, and each batch is a statement and a commit).
WRITERS = 2
SPLIT_AT = 4

#: The shortest positive duration a worker setting may have (as for the queue's lease).
MIN_SECONDS = 0.001

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


@dataclass(frozen=True, slots=True)
class HandlerResult:
    """What a handler returns to set both ``result`` (JSON) and ``result_url``."""

    result: Any = None
    result_url: str | None = None


class WorkerContext:
    """What a running handler may do to its job: the `JobContext` of a generator.

    ``cancelled`` is set when the worker stops the handler (the job was cancelled, its lease
    was lost, or the worker is shutting down). Async handlers are cancelled anyway; a sync
    handler running in a thread cannot be, so it should check ``cancelled.is_set()``.
    """

    def __init__(
        self,
        queue: AsyncJobQueue,
        job: Job,
        worker_id: str,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.queue = queue
        self.job = job
        self.worker_id = worker_id
        self.cancelled = asyncio.Event()
        self._loop = loop
        self._task_id = job.remote_task_id

    async def report_progress(self, percent: int, message: str | None = None) -> None:
        """Write progress (0-100) and a message on the job; `LeaseLost` if no longer ours.

        A write the database refuses or loses (a hiccup) is logged as a warning and the
        handler goes on: progress is news for whoever watches, and the attempt's work is
        worth more than one missed update. An invalid ``percent`` still raises."""
        try:
            await self.queue.set_progress(self.job, percent, message)
        except (LeaseLost, JobNotFound, PayloadError):
            raise
        except Exception as exc:
            log.warning(
                "Job %s: progress %s%% not recorded (%s); the job goes on",
                self.job.id,
                percent,
                describe_error(exc),
            )

    async def remember(self, task_id: str) -> None:
        """Save the provider's task id on the job, so a later attempt resumes it."""
        await self.queue.remember_task(self.job, task_id)
        self._task_id = task_id

    def remembered(self) -> str | None:
        """The task id saved by this or an earlier attempt of the job, if any."""
        return self._task_id

    def run_in_loop(self, awaitable: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the worker's event loop from a sync handler's thread and
        return its result, e.g. ``ctx.run_in_loop(ctx.report_progress(50))``."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            awaitable.close()
            raise RuntimeError("run_in_loop is for sync handlers; async handlers await directly")
        return asyncio.run_coroutine_threadsafe(awaitable, self._loop).result()


@dataclass(eq=False)
class _Slot:
    """A job this worker holds, from its claim until its outcome is written."""

    job: Job
    ctx: WorkerContext
    started: float
    task: asyncio.Task[None] | None = None
    handler_done: bool = False
    #: Why the worker cancelled the handler: "cancelled", "lease lost" or "stopping".
    stopped_because: str | None = None
    completion: Completion | None = field(default=None, repr=False)


def _is_async(handler: Handler) -> bool:
    call = getattr(handler, "__call__", None)  # noqa: B004 - callable objects too
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


def generator_handler(generator: Generator) -> Handler:
    """A handler that runs ``generator`` on the job's payload (a `GenerationRequest`)."""

    async def run_generation(job: Job, ctx: WorkerContext) -> GenerationResult:
        request = GenerationRequest.from_payload(job.payload)
        return await generator.generate(request, ctx)

    run_generation.__qualname__ = f"generator_handler({generator.name!r})"
    return run_generation


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
    A job whose kind has no handler fails at once with a message naming the kinds served.

    Settings (seconds unless said otherwise):

    - ``concurrency``: jobs run at once; a job counts until its outcome is written.
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
      they are cancelled and released to ``pending`` (no attempt spent).
    - ``job_timeout``: a handler running longer fails its attempt (retried by policy).
    - ``reap_interval``: how often expired leases are reaped (default: ``lease``).
    - ``log_file``: also write the ``jobqueue`` log lines to this file.

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
            kind: self._as_handler(kind, entry.handler) for kind, entry in registry.kinds.items()
        }
        self._timeouts = {k: e.timeout for k, e in registry.kinds.items() if e.timeout is not None}
        #: Kinds without a handler whose first job was logged (the next ones are not).
        self._unserved_seen: set[str] = set()
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
        self.worker_id = worker_id or default_worker_id()
        self.log_file = log_file
        #: The LISTEN/NOTIFY listener while `run` is serving on PostgreSQL with ``listen``.
        self.listener: Listener | None = None
        #: Claim statements run so far (each may take many jobs).
        self.claims = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serving = False
        self._early_stop: str | None = None
        self._signals_wanted = False
        self._signals_installed: list[signal.Signals] = []
        self._signals_before: dict[signal.Signals, Any] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._reset()

    # -- configuration helpers --------------------------------------------------------------

    @staticmethod
    def _as_handler(kind: str, handler: Handler | Generator) -> Handler:
        # The registry has checked that it is one or the other.
        if isinstance(handler, Generator):
            return generator_handler(handler)
        return handler

    def _reset(self) -> None:
        """Fresh state for one `run` / `run_until_idle`."""
        self._held: dict[UUID, _Slot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch: list[_Slot] = []
        #: Tasks writing completion batches.
        self._writers: set[asyncio.Task[None]] = set()
        #: Slots that claims in flight may fill beyond the slots they release: all of a
        #: claim loop's, and what a batch's claim takes beyond the batch's own slots.
        self._reserved = 0
        self._closing = False
        self._stopping = False
        self._stop_now = False
        self._write_deadline: float | None = None
        self._finished = 0
        self._until_idle = False
        self._waiting_for_slot = False

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
        loop = self._loop
        if not self._serving or loop is None or loop.is_closed():
            # Not serving yet (e.g. the task running `run` has not started): the next
            # `run` / `run_until_idle` stops as soon as it starts.
            self._early_stop = "immediate" if immediate else (self._early_stop or "graceful")
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._request_stop(immediate)
        else:
            loop.call_soon_threadsafe(self._request_stop, immediate)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: the first stops gracefully, a second stops at once.

        Call it inside the running loop, or before `run` (it is then installed when serving
        starts). The handlers are removed when serving ends.
        """
        self._signals_wanted = True
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._serving:
            self._install_signals(loop)

    # -- serving ---------------------------------------------------------------------------

    async def _serve(self, *, until_idle: bool) -> int:
        if self._serving:
            raise RuntimeError("this worker is already running")
        self._serving = True
        self._reset()
        self._until_idle = until_idle
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._batch_ready = asyncio.Event()
        if self._early_stop is not None:
            self._request_stop(self._early_stop == "immediate")
            self._early_stop = None
        file_handler = self._open_log_file()
        if self._signals_wanted:
            self._install_signals(loop)
        presence = await self._announce(loop, file_handler)
        background: list[asyncio.Task[None]] = [
            asyncio.create_task(self._heartbeat_loop(), name="jobqueue-heartbeat"),
        ]
        background.append(
            asyncio.create_task(self._reaper_loop(at_once=until_idle), name="jobqueue-reaper")
        )
        if not until_idle and self.listen and self.queue.is_postgres:
            self.listener = Listener(
                libpq_url(self.queue.engine.url),
                self.queue.table.name,
                self._on_notify,
                application_name=f"jobqueue-listener {self.worker_id}",
            )
            background.append(asyncio.create_task(self.listener.run(), name="jobqueue-listen"))
        batcher = asyncio.create_task(self._batcher(), name="jobqueue-completer")
        listening = self.listener is not None
        log.info(
            "Worker %s started: queues=%s, concurrency=%d, lease=%gs, kinds=%s, listen=%s",
            self.worker_id,
            ",".join(self.queues),
            self.concurrency,
            self.lease,
            "*" if self.kinds is None else ",".join(self.kinds),
            "on" if listening else "off",
        )
        try:
            await self._claim_loop()
            await self._drain(batcher)
        except asyncio.CancelledError:
            # Cancelled from outside: hand back what we hold, as an immediate stop would.
            self._stopping = self._stop_now = True
            with contextlib.suppress(BaseException):
                await self._drain(batcher)
            raise
        finally:
            for task in [*background, batcher]:
                task.cancel()
            await asyncio.gather(*background, batcher, return_exceptions=True)
            await presence.stop()
            self._remove_signals(loop)
            if self._executor is not None:
                # Threads of abandoned sync handlers are left to finish on their own.
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
            self.listener = None
            self._serving = False
            log.info("Worker %s stopped (%d jobs finished)", self.worker_id, self._finished)
            if file_handler is not None:
                logging.getLogger("jobqueue").removeHandler(file_handler)
                file_handler.close()
        return self._finished

    async def _announce(
        self, loop: asyncio.AbstractEventLoop, file_handler: logging.Handler | None
    ) -> PresenceService:
        """Check the worker may work here, write its row in the live-workers table and
        keep it fresh until `PresenceService.stop` (retrying while the database is
        unreachable). A missing table or a refused permission ends serving here, before
        any job is claimed, with that error."""
        me = WorkerPresence(self.worker_id, self.queues, self.kinds, self.concurrency)
        presence = PresenceService(self.queue, me, self.lease)
        try:
            await presence.start(self._stopped)
        except BaseException:
            self._remove_signals(loop)
            self._serving = False
            if file_handler is not None:
                logging.getLogger("jobqueue").removeHandler(file_handler)
                file_handler.close()
            raise
        return presence

    async def _claim_loop(self) -> None:
        """Claim as many jobs as there are free slots; sleep until there may be more."""
        backoff = Backoff(cap=self.poll_interval * 5)
        while not self._stopping:
            # Held jobs count until their outcome is written, not only while their handler
            # runs: otherwise finished-but-unwritten jobs pile up beyond `concurrency` when
            # the database is slow, and a crash throws all of them away (kill -9 test).
            free = self._free_slots()
            if free <= 0:
                # Clear first: an Event already set returns without yielding, and this
                # loop would spin and starve the very tasks that free a slot.
                self._wake.clear()
                self._waiting_for_slot = True
                await self._sleep_until_woken(None)
                self._waiting_for_slot = False
                continue
            self._wake.clear()
            self._reserved += free
            try:
                self.claims += 1
                jobs = await self.queue.claim(
                    self.worker_id,
                    queues=self.queues,
                    kinds=self.kinds,
                    limit=free,
                    lease=self.lease,
                )
            except Exception as exc:
                self._reserved -= free
                delay = backoff.next()
                log.warning(
                    "claiming jobs failed (%s); retrying in %.1fs", describe_error(exc), delay
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopped.wait()
                continue
            self._reserved -= free
            backoff.reset()
            for job in jobs:
                self._start(job)
            if len(jobs) >= free:
                continue  # there may be more due right now
            if self._until_idle and not jobs and self._idle():
                return
            await self._sleep_until_woken(self.poll_interval)

    def _idle(self) -> bool:
        return not self._tasks and not self._batch and not self._writers

    async def _sleep_until_woken(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    def _on_notify(self, queue_name: str | None) -> None:
        if queue_name is None or queue_name in self.queues:
            self._wake.set()

    def _request_stop(self, immediate: bool) -> None:
        if immediate and not self._stop_now:
            log.warning("Worker %s stopping now: running jobs are released", self.worker_id)
        elif not self._stopping:
            log.info(
                "Worker %s stopping: no new jobs; running jobs get %gs to finish",
                self.worker_id,
                self.grace_period,
            )
        self._stopping = True
        self._stop_now = self._stop_now or immediate
        self._wake.set()
        self._stopped.set()

    # -- running one job --------------------------------------------------------------------

    def _start(self, job: Job) -> None:
        assert self._loop is not None
        slot = _Slot(
            job, WorkerContext(self.queue, job, self.worker_id, self._loop), time.monotonic()
        )
        previous = self._held.get(job.id)
        if previous is not None and not previous.handler_done and previous.task is not None:
            # We claimed the job again after our own earlier attempt lost its lease (say,
            # during a database outage): that attempt is fenced off, so stop its handler.
            previous.stopped_because = "lease lost"
            previous.ctx.cancelled.set()
            previous.task.cancel()
        self._held[job.id] = slot
        task = asyncio.create_task(self._execute(slot), name=f"jobqueue-job-{job.id}")
        slot.task = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _let_go(self, slot: _Slot) -> None:
        """Stop holding (and heartbeating) a job, unless a newer attempt of it took its place."""
        if self._held.get(slot.job.id) is slot:
            del self._held[slot.job.id]

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a job task ended unexpectedly", exc_info=task.exception())
        if self._waiting_for_slot or self._until_idle or self._stopping:
            self._wake.set()

    async def _execute(self, slot: _Slot) -> None:
        """Run one job; whatever happens, the worker stops holding it in the end."""
        try:
            await self._run_job(slot)
        except Exception:
            # A bug of ours, not the handler's: let go of the job so that its lease runs
            # out and the reaper or another worker takes it, rather than heartbeat it forever.
            log.exception("Job %s: the worker could not record its outcome", slot.job.id)
            if slot not in self._batch:
                self._let_go(slot)

    async def _run_job(self, slot: _Slot) -> None:
        job = slot.job
        # A job of a kind without a handler is logged once per kind (`_seen_unserved`).
        quiet = job.kind not in self.handlers and self._seen_unserved(job)
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "Job %s status: processing (kind %s, attempt %d of %d)",
            job.id,
            job.kind,
            job.attempts,
            job.max_attempts,
        )
        if job.unreadable is not None:
            # A client stored what no decoder reads: no attempt can ever do better.
            slot.handler_done = True
            await self._record_failure(slot, job.unreadable, False)
            return
        handler = self.handlers.get(job.kind)
        if handler is None:
            slot.handler_done = True
            known = ", ".join(sorted(self.handlers))
            message = f"no handler for job kind {job.kind!r} (this worker runs: {known})"
            await self._record_failure(slot, message, False, quiet=quiet)
            return
        timeout = self._timeouts.get(job.kind, self.job_timeout)
        try:
            async with asyncio.timeout(timeout) as deadline:
                value = await self._call(handler, job, slot.ctx)
        except asyncio.CancelledError:
            slot.handler_done = True
            if slot.stopped_because is None:
                raise
            return  # whoever stopped the handler deals with the job
        except TimeoutError as exc:
            slot.handler_done = True
            if deadline.expired():
                slot.ctx.cancelled.set()  # a sync handler's thread cannot be cancelled
                message = f"JobTimeout: the handler ran longer than {timeout:g}s"
                await self._record_failure(slot, message, None)
            else:
                await self._record_failure(slot, exc, None)
            return
        except (Exception, SystemExit) as exc:  # sys.exit() in a handler ends its job only
            slot.handler_done = True
            await self._record_failure(slot, exc, None)
            return
        slot.handler_done = True
        slot.completion = _completion_of(job, value)
        self._batch.append(slot)
        self._batch_ready.set()

    def _seen_unserved(self, job: Job) -> bool:
        """Whether a job of this kind without a handler was met before; the first one of
        each kind is logged with what to do, so a flood of strays is one warning, not one
        line per job (each job's failure is still written on the job)."""
        if job.kind in self._unserved_seen:
            return True
        self._unserved_seen.add(job.kind)
        log.warning(
            "No handler for jobs of kind %r in this worker (it runs: %s): each one fails at "
            "once, logged once per kind. Register the kind (a Registry; jobqueue worker --app), "
            "or claim only the kinds served (no all_kinds) to leave them to other workers",
            job.kind,
            ", ".join(sorted(self.handlers)),
        )
        return False

    async def _call(self, handler: Handler, job: Job, ctx: WorkerContext) -> Any:
        if _is_async(handler):
            return await handler(job, ctx)
        if self._executor is None:
            # Our own threads: a sync handler that hangs past its timeout cannot be killed,
            # and must not use up asyncio's small default pool that the rest of the
            # process shares. Twice `concurrency`, so abandoned threads leave room.
            self._executor = ThreadPoolExecutor(
                max_workers=2 * self.concurrency, thread_name_prefix="jobqueue-handler"
            )
        call = functools.partial(contextvars.copy_context().run, handler, job, ctx)
        value = await asyncio.get_running_loop().run_in_executor(self._executor, call)
        if inspect.isawaitable(value):  # a plain function that returned a coroutine
            value = await value
        return value

    # -- writing outcomes -------------------------------------------------------------------

    def _give_up(self) -> bool:
        """Whether a failing write should stop retrying (only ever while shutting down)."""
        if self._stop_now:
            return True
        return self._write_deadline is not None and time.monotonic() > self._write_deadline

    async def _record_failure(
        self, slot: _Slot, error: BaseException | str, retry: bool | None, *, quiet: bool = False
    ) -> None:
        """Write a failed attempt: retried by the job's policy unless ``retry`` is False.
        ``quiet`` logs the outcome at debug level (the reason was logged already)."""
        job = slot.job
        if isinstance(error, BaseException):
            if isinstance(error, PayloadError) or getattr(error, "retryable", True) is False:
                retry = False
            reason = describe_error(error)
        else:
            reason = redact(error)
        backoff = Backoff()
        while True:
            try:
                after = await self.queue.fail(job, reason, retry=retry)
            except (LeaseLost, JobNotFound, InvalidTransition) as exc:
                log.warning("Job %s: its failure was not recorded: %s", job.id, exc)
                break
            except Exception as exc:
                if self._give_up():
                    log.error(
                        "Job %s: giving up recording its failure: %s", job.id, describe_error(exc)
                    )
                    break
                delay = backoff.next()
                log.warning(
                    "Job %s: recording its failure failed (%s); retrying in %.1fs",
                    job.id,
                    describe_error(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            self._finished += 1
            if after.status is Status.PENDING:
                wait = max(0.0, (after.run_at - after.updated_at).total_seconds())
                log.warning(
                    "Job %s: attempt %d of %d failed: %s; will retry in %.1f s (attempt %d of %d)",
                    job.id,
                    job.attempts,
                    job.max_attempts,
                    reason,
                    wait,
                    after.attempts + 1,
                    after.max_attempts,
                )
            else:
                level = logging.DEBUG if quiet else logging.ERROR
                log.log(level, "Job %s status: failed: %s", job.id, reason)
            break
        self._let_go(slot)

    async def _batcher(self) -> None:
        """Write finished jobs in batches: wait a few ms for company, then one statement.

        No wait when no handler is still running: no company can come, and the held slots
        (which count until their outcome is written) are what the claim loop waits for.
        Up to `WRITERS` batches are written at once, each on its own connection, so one
        batch's commit (a WAL flush) overlaps the next batch's statement; a batch is split
        between the free writers rather than wait for one.
        """
        while True:
            await self._batch_ready.wait()
            if (
                not self._closing
                and len(self._batch) < COMPLETION_BATCH
                and any(not slot.handler_done for slot in self._held.values())
            ):
                await asyncio.sleep(COMPLETION_WINDOW)
            self._batch_ready.clear()
            while self._batch and len(self._writers) < WRITERS:
                idle = WRITERS - len(self._writers)
                size = len(self._batch)
                if size >= SPLIT_AT * idle:
                    size = -(-size // idle)
                size = min(COMPLETION_BATCH, size)
                items, self._batch[:size] = self._batch[:size], []
                writer = asyncio.create_task(self._write(items), name="jobqueue-completer")
                self._writers.add(writer)
                writer.add_done_callback(self._writer_done)
            if self._closing and not self._batch and not self._writers:
                return
            if self._writers and (self._batch or self._closing):
                # Every writer is busy (or closing waits for them): go on when one is done.
                await asyncio.wait(set(self._writers), return_when=asyncio.FIRST_COMPLETED)
                self._batch_ready.set()

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        self._writers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a completion writer ended unexpectedly", exc_info=task.exception())
        if self._until_idle or self._stopping or self._waiting_for_slot:
            self._wake.set()

    async def _write(self, items: list[_Slot]) -> None:
        """Write one batch's completions, retrying database errors (with backoff) until
        written or, while stopping, until the write deadline."""
        backoff = Backoff()
        while True:
            completions = [s.completion for s in items if s.completion is not None]
            claimed: list[Job] = []
            # Claim only while the claim loop waits for slots (more may be due now), never
            # while stopping; the batch's own slots are free once it is written.
            waiting = self._waiting_for_slot and not self._stopping
            free = self._free_slots(items) if waiting else 0
            beyond = max(0, free - len(items))
            self._reserved += beyond
            try:
                if free > 0:
                    # The claim loop waits for these very slots: take their next jobs in
                    # the same statement (one commit for both, see complete_and_claim).
                    self.claims += 1
                    written, claimed = await self.queue.complete_and_claim(
                        completions,
                        self.worker_id,
                        queues=self.queues,
                        kinds=self.kinds,
                        limit=free,
                        lease=self.lease,
                    )
                else:
                    written = await self.queue.complete_many(completions)
            except PayloadError:
                # Some result cannot be stored: complete one by one so only it fails.
                await self._complete_each(items)
                return
            except Exception as exc:
                if self._give_up():
                    for slot in items:
                        self._let_go(slot)
                    log.error(
                        "giving up completing %d jobs (%s); the reaper will return them",
                        len(items),
                        describe_error(exc),
                    )
                    return
                delay = backoff.next()
                log.warning(
                    "completing %d jobs failed (%s); retrying in %.1fs",
                    len(items),
                    describe_error(exc),
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            finally:
                self._reserved -= beyond
            for slot in items:
                self._completed(slot, slot.job.id in written)
            for job in claimed:
                self._start(job)
            return

    def _free_slots(self, releasing: Sequence[_Slot] = ()) -> int:
        """Slots a claim may fill now: ``concurrency`` less the jobs held (running, or
        finished and not yet written: they count until written) and less what claims in
        flight may add. A batch being written claims with it, so its own slots
        (``releasing``) count as free: they are released in the same commit. Their tasks
        may not have left ``_tasks`` yet (done callbacks run later)."""
        tasks = len(self._tasks)
        if releasing:
            tasks = len(self._tasks - {slot.task for slot in releasing})
        busy = max(tasks, len(self._held) - len(releasing))
        return self.concurrency - busy - self._reserved

    async def _complete_each(self, items: Sequence[_Slot]) -> None:
        for slot in items:
            c = slot.completion
            assert c is not None
            try:
                await self.queue.complete(c.job, c.result, c.result_url)
            except PayloadError as exc:
                await self._record_failure(slot, exc, False)
            except (LeaseLost, JobNotFound, InvalidTransition):
                self._completed(slot, False)
            except Exception:
                self._batch.append(slot)  # a database error: the batch retries it
                self._batch_ready.set()
            else:
                self._completed(slot, True)

    def _completed(self, slot: _Slot, written: bool) -> None:
        self._let_go(slot)
        if written:
            self._finished += 1
            log.info(
                "Job %s status: completed in %.1fs", slot.job.id, time.monotonic() - slot.started
            )
        else:
            log.warning(
                "Job %s: LeaseLost: its result was not written; the job was cancelled, "
                "reaped or claimed by another worker after its lease expired",
                slot.job.id,
            )

    # -- timers -----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Extend every held lease in one statement every third of the lease."""
        interval = self.lease / 3
        backoff = Backoff(cap=interval)
        pause = interval
        while True:
            await asyncio.sleep(pause)
            pause = interval
            ids = list(self._held)
            if not ids:
                continue
            try:
                held = [self._held[job_id].job for job_id in ids]
                alive = await self.queue.heartbeat_many(self.worker_id, held, lease=self.lease)
            except Exception as exc:
                pause = backoff.next()
                log.warning("heartbeat failed (%s); retrying in %.1fs", describe_error(exc), pause)
                continue
            backoff.reset()
            for job_id in ids:
                slot = self._held.get(job_id)
                if job_id not in alive and slot is not None:
                    await self._lost(slot)

    async def _lost(self, slot: _Slot) -> None:
        """A held job's heartbeat matched nothing: find out why and stop its handler."""
        job = slot.job
        try:
            now: Job | None = await self.queue.get(job.id)
        except Exception:
            now = None
        if now is not None and now.status is Status.CANCELLED:
            reason = "cancelled"
            log.info("Job %s status: cancelled", job.id)
        else:
            reason = "lease lost"
            state = "gone" if now is None else f"{now.status}, held by {now.locked_by or 'nobody'}"
            log.warning("Job %s: LeaseLost: the job is now %s; stopping its handler", job.id, state)
        if slot.handler_done or slot.task is None:
            return  # its completion (if any) is fenced off by the batch write
        slot.stopped_because = reason
        slot.ctx.cancelled.set()
        slot.task.cancel()
        self._let_go(slot)

    async def _reaper_loop(self, *, at_once: bool = False) -> None:
        """Return jobs of crashed workers (expired leases) to the queue, or fail them when
        their attempts are spent (the claim leaves those alone)."""
        if not at_once:
            # Start at a random point so that workers started together do not reap together.
            await asyncio.sleep(random.uniform(0.5, 1.0) * self.reap_interval)
        while True:
            try:
                reaped = await self.queue.reap()
            except Exception as exc:
                log.warning("reaping expired leases failed (%s)", describe_error(exc))
            else:
                for job_id, status in reaped:
                    log.warning("Job %s: lease expired; moved back to %s", job_id, status)
            await asyncio.sleep(self.reap_interval)

    # -- stopping ---------------------------------------------------------------------------

    async def _drain(self, batcher: asyncio.Task[None]) -> None:
        """Give running jobs the grace period, release the rest, flush completions."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (0.0 if self._stop_now else self.grace_period)
        self._write_deadline = time.monotonic() + self.grace_period + self.lease
        if self._tasks and not self._stop_now:
            log.info("waiting up to %gs for %d running jobs", self.grace_period, len(self._tasks))
        while self._tasks and not self._stop_now and loop.time() < deadline:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
        unfinished = [s for s in self._held.values() if not s.handler_done and s.task is not None]
        for slot in unfinished:
            slot.stopped_because = "stopping"
            slot.ctx.cancelled.set()
            assert slot.task is not None
            slot.task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for slot in unfinished:
            # A handler that swallowed the cancellation and returned anyway has its result
            # in the batch, and one that failed has written its failure: keep those.
            if slot not in self._batch and self._held.get(slot.job.id) is slot:
                await self._release(slot)
        self._closing = True
        self._batch_ready.set()
        if not batcher.done():
            await batcher

    async def _release(self, slot: _Slot) -> None:
        job = slot.job
        try:
            await self.queue.release(job, "released: the worker stopped before the job finished")
        except (LeaseLost, JobNotFound, InvalidTransition) as exc:
            log.warning("Job %s: not released: %s", job.id, exc)
        except Exception as exc:
            log.error(
                "Job %s: release failed (%s); it returns to the queue when its lease expires",
                job.id,
                describe_error(exc),
            )
        else:
            log.info("Job %s status: pending (released: the worker stopped)", job.id)
        self._let_go(slot)

    # -- signals and logging ----------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            log.warning("%s again: stopping at once", name)
            self._request_stop(True)
        else:
            log.info("%s: stopping gracefully; send it again to stop at once", name)
            self._request_stop(False)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("signal handlers can only be installed in the main thread")
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            if sig in self._signals_installed:
                continue
            self._signals_before[sig] = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self._on_signal, int(sig))
            except NotImplementedError:  # Windows event loops
                signal.signal(sig, lambda n, _f: loop.call_soon_threadsafe(self._on_signal, n))
            self._signals_installed.append(sig)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in self._signals_installed:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
            # The handler from before serving (the host's, or the CLI's for a Ctrl-C
            # during cleanup), not Python's default: asyncio would put that one back.
            before = self._signals_before.pop(sig, None)
            signal.signal(sig, signal.SIG_DFL if before is None else before)
        self._signals_installed = []

    def _open_log_file(self) -> logging.Handler | None:
        if self.log_file is None:
            return None
        handler = logging.FileHandler(self.log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.INFO)
        package_logger = logging.getLogger("jobqueue")
        if package_logger.getEffectiveLevel() > logging.INFO:
            package_logger.setLevel(logging.INFO)
        package_logger.addHandler(handler)
        return handler


def _completion_of(job: Job, value: Any) -> Completion:
    if isinstance(value, GenerationResult):
        return Completion(job, value.to_result(), value.url)
    if isinstance(value, HandlerResult):
        return Completion(job, value.result, value.result_url)
    return Completion(job, value)


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


__all__ = [
    "Handler",
    "HandlerResult",
    "Worker",
    "WorkerContext",
    "default_worker_id",
    "generator_handler",
]
