"""The completer: the one writer of every outcome of a worker's jobs.

- completions are collected for a few milliseconds (`COMPLETION_WINDOW`, or until
  `COMPLETION_BATCH` wait) and written in one fenced statement; while the claim loop waits
  for a slot, the same statement claims the batch's replacements (`complete_and_claim`);
  up to `WRITERS` batches are written at once, each on its own pooled connection, which
  its writer keeps from one batch to the next while the pool can spare it;
- a failed attempt is written with the job's retry policy (or fails the job at once);
- a job held back (`RetryLater`) goes back to ``pending`` for a while without spending an
  attempt, its limit key paused for as long for every worker (`AsyncJobQueue.retry_later`);
- a job the worker stops holding on shutdown is released to ``pending``.

Every write follows the one rule of a worker's writes (`jobqueue.worker.writes`): a
refusal (the job is no longer this attempt's, or a value cannot be stored) is never
retried; any other error (the database unreachable, restarting, a lost connection) is
logged and retried with backoff until the write succeeds or, only while the worker stops,
`Lifecycle.gives_up_writes` says enough: the job is then let go, and its lease running out
returns it to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TypeVar
from uuid import UUID

from ..errors import PayloadError
from ..models import Job, Status
from ..operations import Completion
from ..queue import AsyncJobQueue, Held
from .lifecycle import Lifecycle
from .observer import Event, Observer
from .outcome import Failed, HeldBack, Outcome
from .slots import Slot, Slots, matched
from .writes import REFUSED, GaveUp, persist

log = logging.getLogger("jobqueue.worker")

T = TypeVar("T")

#: Completions are collected for this long (or until `COMPLETION_BATCH` are waiting) and
#: then written in one statement.
COMPLETION_WINDOW = 0.005
COMPLETION_BATCH = 500
#: Completion batches written at once (each on its own pooled connection), and the
#: smallest share of a batch worth a writer of its own (smaller batches go whole: the
#: next one overlaps them anyway, and each batch is a statement and a commit).
WRITERS = 2
SPLIT_AT = 4
#: Each writer keeps its connection between batches (`AsyncJobQueue._holding`) while the
#: pool keeps this many for the rest of the worker (claims, heartbeats, handlers' writes);
#: a writer idle this long (seconds) gives it back.
SPARE_CONNECTIONS = 3
HOLD_IDLE = 1.0

RELEASE_REASON = "released: the worker stopped before the job finished"
HAND_BACK_REASON = "released: claimed by a worker with no free place for it, or stopping"


class Completer:
    """Writes the outcomes of the jobs in ``slots`` for one run of a worker.

    ``start_job`` starts a job claimed with a batch's completions; ``count_claim`` counts
    each claim statement (`Worker.claims`); ``slot_freed`` is called when a batch is
    written (the claim loop or the drain may be waiting for it); ``observer`` hears of
    each outcome written.
    """

    def __init__(
        self,
        queue: AsyncJobQueue,
        slots: Slots,
        lifecycle: Lifecycle,
        *,
        worker_id: str,
        queues: tuple[str, ...],
        kinds: tuple[str, ...] | None,
        lease: float,
        start_job: Callable[[Job], None],
        count_claim: Callable[[], None],
        slot_freed: Callable[[], None],
        observer: Observer | None = None,
    ) -> None:
        self.queue = queue
        self.slots = slots
        self.lifecycle = lifecycle
        self.worker_id = worker_id
        self.queues = queues
        self.kinds = kinds
        self.lease = lease
        self._start_job = start_job
        self._count_claim = count_claim
        self._slot_freed = slot_freed
        self.observer = observer
        #: Attempts whose outcome was written (completed, failed, retried or held back).
        self.finished = 0
        self._batch: list[Slot] = []
        self._ready = asyncio.Event()
        #: Tasks writing completion batches.
        self._writers: set[asyncio.Task[None]] = set()
        self._batcher: asyncio.Task[None] | None = None
        #: The connections the writers keep between batches, and those no writer uses now
        #: (none where the pool cannot spare them).
        self._held: list[Held] = []
        self._idle_held: list[Held] = []

    # -- the run ----------------------------------------------------------------------------

    def start(self) -> None:
        held = [self.queue._holding(SPARE_CONNECTIONS + WRITERS - 1) for _ in range(WRITERS)]
        self._held = [h for h in held if h is not None]
        self._idle_held = list(self._held)
        self._batcher = asyncio.create_task(self._batch_loop(), name="jobqueue-completer")

    async def finish(self) -> None:
        """Write what is left and return once written (the lifecycle is closing)."""
        self._ready.set()
        if self._batcher is not None and not self._batcher.done():
            await self._batcher
        await self._let_go_idle()

    async def cancel(self) -> None:
        """End the batch loop if it still runs (a run cut short)."""
        if self._batcher is not None:
            self._batcher.cancel()
            await asyncio.gather(self._batcher, return_exceptions=True)
        # A writer still running gives its connection back when it ends (`_writer_done`).
        await self._let_go_idle()
        self._held = []

    async def _let_go_idle(self) -> None:
        """Give the connections no writer uses back to the pool."""
        for held in self._idle_held:
            with contextlib.suppress(Exception):
                await held.let_go()

    def idle(self) -> bool:
        """Nothing waits to be written and nothing is being written."""
        return not self._batch and not self._writers

    def batched(self, slot: Slot) -> bool:
        """Whether ``slot``'s completion waits in the batch."""
        return slot in self._batch

    # -- outcomes ---------------------------------------------------------------------------

    async def record(self, slot: Slot, outcome: Outcome) -> None:
        """Write ``outcome`` of ``slot``'s job: a completion joins the next batch, a
        failure or a hold-back is written now, a stop writes nothing (whoever stopped the
        handler deals with the job)."""
        if isinstance(outcome, Completion):
            slot.completion = outcome
            self._batch.append(slot)
            self._ready.set()
        elif isinstance(outcome, Failed):
            await self.fail(slot, outcome)
        elif isinstance(outcome, HeldBack):
            await self.hold_back(slot, outcome)

    async def fail(self, slot: Slot, failed: Failed) -> None:
        """Write a failed attempt: retried by the job's policy unless ``failed.retry`` is
        False; the job is let go whatever happens."""
        job = slot.job
        write = functools.partial(
            self.queue.fail,
            job,
            failed.reason,
            retry=failed.retry,
            cost=failed.cost,
            cost_unit=failed.cost_unit,
        )
        try:
            after = await self._persist(
                write, f"Job {job.id}: ", "recording its failure", "the reaper will return it"
            )
        except REFUSED as exc:
            log.warning("Job %s: its failure was not recorded: %s", job.id, exc)
        except GaveUp:
            pass
        else:
            self.finished += 1
            if self.observer is not None:
                retried = after.status is Status.PENDING
                self.observer.finished(job, Event.RETRIED if retried else Event.FAILED)
            if after.status is Status.PENDING:
                wait = max(0.0, (after.run_at - after.updated_at).total_seconds())
                log.warning(
                    "Job %s: attempt %d of %d failed: %s; will retry in %.1f s (attempt %d of %d)",
                    job.id,
                    job.attempts,
                    job.max_attempts,
                    failed.reason,
                    wait,
                    after.attempts + 1,
                    after.max_attempts,
                )
            else:
                level = logging.DEBUG if failed.quiet else logging.ERROR
                log.log(level, "Job %s status: failed: %s", job.id, failed.reason)
        self.slots.let_go(slot)

    async def hold_back(self, slot: Slot, held: HeldBack) -> None:
        """Give a job whose handler said "not now" back to ``pending`` for ``held.after``
        seconds without spending its attempt, and pause its limit key for as long for every
        worker; the job is let go whatever happens."""
        job = slot.job
        write = functools.partial(self.queue.retry_later, job, held.after, held.reason)
        try:
            await self._persist(
                write,
                f"Job {job.id}: ",
                "holding it back",
                "it returns to the queue when its lease expires",
            )
        except REFUSED as exc:
            log.warning("Job %s: not held back: %s", job.id, exc)
        except GaveUp:
            pass
        else:
            self.finished += 1
            if self.observer is not None:
                self.observer.finished(job, Event.HELD_BACK)
            log.warning(
                "Job %s status: pending (held back %.1f s, attempt %d given back%s): %s",
                job.id,
                held.after,
                job.attempts,
                f"; limit key {job.limit_key or job.kind!r} paused as long" if held.after else "",
                held.reason,
            )
        self.slots.let_go(slot)

    async def release(self, slot: Slot) -> None:
        """Hand a job whose handler was stopped for shutdown back to ``pending`` (its
        attempt given back); the job is let go whatever happens."""
        job = slot.job
        write = functools.partial(self.queue.release, job, RELEASE_REASON)
        try:
            await self._persist(
                write,
                f"Job {job.id}: ",
                "releasing it",
                "it returns to the queue when its lease expires",
            )
        except REFUSED as exc:
            log.warning("Job %s: not released: %s", job.id, exc)
        except GaveUp:
            pass
        else:
            if self.observer is not None:
                self.observer.finished(job, Event.RELEASED)
            log.info("Job %s status: pending (released: the worker stopped)", job.id)
        self.slots.let_go(slot)

    async def _hand_back(self, job: Job) -> None:
        """Give a job claimed beyond the free places back to ``pending`` unrun (its
        attempt given back)."""
        write = functools.partial(self.queue.release, job, HAND_BACK_REASON)
        try:
            await self._persist(
                write,
                f"Job {job.id}: ",
                "handing it back",
                "it returns to the queue when its lease expires",
            )
        except (*REFUSED, GaveUp) as exc:
            log.warning("Job %s: not handed back: %s", job.id, exc)
        else:
            log.warning(
                "Job %s: claimed with no free place, or as the worker stopped; handed back unrun",
                job.id,
            )

    # -- the one retry rule -----------------------------------------------------------------

    async def _persist(
        self, write: Callable[[], Awaitable[T]], subject: str, what: str, consequence: str
    ) -> T:
        """``await write()`` by the one rule (`writes.persist`), given up only as
        `Lifecycle.gives_up_writes` says (while stopping)."""
        return await persist(
            write,
            gives_up=self.lifecycle.gives_up_writes,
            subject=subject,
            what=what,
            consequence=consequence,
        )

    # -- completions in batches -------------------------------------------------------------

    async def _batch_loop(self) -> None:
        """Write finished jobs in batches: wait a few ms for company, then one statement.

        No wait when no handler is still running: no company can come, and the held slots
        (which count until their outcome is written) are what the claim loop waits for.
        Up to `WRITERS` batches are written at once, each on its own connection, so one
        batch's commit (a WAL flush) overlaps the next batch's statement; a batch is split
        between the free writers rather than wait for one.
        """
        lifecycle = self.lifecycle
        while True:
            if not self._writers and any(h.holds for h in self._idle_held):
                # Keep the writers' connections while batches follow each other; give them
                # back when none came for a while.
                try:
                    async with asyncio.timeout(HOLD_IDLE):
                        await self._ready.wait()
                except TimeoutError:
                    await self._let_go_idle()
                    continue
            else:
                await self._ready.wait()
            if (
                not lifecycle.closing
                and len(self._batch) < COMPLETION_BATCH
                and self.slots.handlers_running()
            ):
                await asyncio.sleep(COMPLETION_WINDOW)
            self._ready.clear()
            while self._batch and len(self._writers) < WRITERS:
                idle = WRITERS - len(self._writers)
                size = len(self._batch)
                if size >= SPLIT_AT * idle:
                    size = -(-size // idle)
                size = min(COMPLETION_BATCH, size)
                items, self._batch[:size] = self._batch[:size], []
                held = self._idle_held.pop() if self._idle_held else None
                writer = asyncio.create_task(self._write(items, held), name="jobqueue-completer")
                self._writers.add(writer)
                writer.add_done_callback(functools.partial(self._writer_done, held))
            if lifecycle.closing and not self._batch and not self._writers:
                return
            if self._writers and (self._batch or lifecycle.closing):
                # Every writer is busy (or closing waits for them): go on when one is done.
                await asyncio.wait(set(self._writers), return_when=asyncio.FIRST_COMPLETED)
                self._ready.set()

    def _writer_done(self, held: Held | None, task: asyncio.Task[None]) -> None:
        self._writers.discard(task)
        if held is not None:
            if held in self._held:
                self._idle_held.append(held)
            else:  # the run was cut short while it wrote
                let_go = asyncio.ensure_future(held.let_go())
                let_go.add_done_callback(_ignore_outcome)
        if not task.cancelled() and task.exception() is not None:
            log.error("a completion writer ended unexpectedly", exc_info=task.exception())
        self._slot_freed()

    async def _write(self, items: list[Slot], held: Held | None) -> None:
        """Write one batch's completions (on the connection ``held`` keeps, if any), and
        claim with them while the claim loop waits for slots."""
        try:
            written, claimed = await self._persist(
                functools.partial(self._complete_batch, items, held),
                "",
                f"completing {len(items)} jobs",
                "the reaper will return them",
            )
        except REFUSED:
            # Some result cannot be stored: complete one by one so only it fails.
            await self._complete_each(items)
            return
        except GaveUp:
            for slot in items:
                self.slots.let_go(slot)
            return
        # Matched to the claims written: a batch may hold a stale attempt of a job next to
        # its retry (the worker claimed it again after a stall), and only one was written.
        done = matched(items, written)
        for slot in items:
            self._completed(slot, slot in done)
        # The claim was sized by the places free when it was sent; it can never bring more
        # than are free now, but should it, the extras go back at once rather than run. All
        # go back when the worker began to stop while it was sent: the drain has counted
        # the handlers it waits for, and a job started now would outlive the run.
        room = max(0, self.slots.free()) if self.lifecycle.claiming else 0
        for job in claimed[:room]:
            self._start_job(job)
        for job in claimed[room:]:
            await self._hand_back(job)

    async def _complete_batch(
        self, items: Sequence[Slot], held: Held | None
    ) -> tuple[set[UUID], list[Job]]:
        """One attempt at writing a batch: the ids written, and the jobs claimed with it."""
        completions = [s.completion for s in items if s.completion is not None]
        # Claim only while the claim loop waits for slots (more may be due now), never
        # while stopping; the batch's own slots are free once it is written.
        free = self.slots.free(items) if self.lifecycle.full else 0
        # Only the places the batch's claims still take are its own to fill: an item may
        # have been let go already (an attempt stopped when its job was claimed again).
        beyond = max(0, free - self.slots.own(items))
        self.slots.reserved += beyond
        queue = self.queue
        try:
            if free > 0:
                # The claim loop waits for these very slots: take their next jobs in the
                # same statement (one commit for both, see complete_and_claim).
                self._count_claim()
                with queue._on_held(held):
                    return await queue.complete_and_claim(
                        completions,
                        self.worker_id,
                        queues=self.queues,
                        kinds=self.kinds,
                        limit=free,
                        lease=self.lease,
                    )
            with queue._on_held(held):
                return await queue.complete_many(completions), []
        finally:
            self.slots.reserved -= beyond

    async def _complete_each(self, items: Sequence[Slot]) -> None:
        for slot in items:
            c = slot.completion
            assert c is not None
            write = functools.partial(
                self.queue.complete,
                c.job,
                c.result,
                c.result_url,
                cost=c.cost,
                cost_unit=c.cost_unit,
            )
            try:
                await self._persist(
                    write,
                    f"Job {c.job.id}: ",
                    "completing it",
                    "the reaper will return it",
                )
            except PayloadError as exc:
                # The result cannot be stored; what the attempt cost is kept all the same.
                failed = Failed.of(exc, False)
                await self.fail(slot, replace(failed, cost=c.cost, cost_unit=c.cost_unit))
            except REFUSED:
                self._completed(slot, False)
            except GaveUp:
                self.slots.let_go(slot)
            else:
                self._completed(slot, True)

    def _completed(self, slot: Slot, written: bool) -> None:
        self.slots.let_go(slot)
        if written:
            self.finished += 1
            if self.observer is not None:
                self.observer.finished(slot.job, Event.COMPLETED)
            log.info(
                "Job %s status: completed in %.1fs", slot.job.id, time.monotonic() - slot.started
            )
        else:
            log.warning(
                "Job %s: LeaseLost: the result of attempt %d was not written; the job was "
                "cancelled, reaped or claimed again after its lease expired",
                slot.job.id,
                slot.job.attempts,
            )


def _ignore_outcome(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


__all__ = [
    "COMPLETION_BATCH",
    "COMPLETION_WINDOW",
    "REFUSED",
    "SPLIT_AT",
    "WRITERS",
    "Completer",
    "GaveUp",
]
