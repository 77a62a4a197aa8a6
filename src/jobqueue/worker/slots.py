"""The jobs a worker holds: one `Slot` per claim, taking one of the worker's ``concurrency``
places from the claim until its handler has ended and its outcome is written, and the one
rule for how many more jobs a claim may take (`Slots.free`).

Places are counted by claim, not by job id: after a stall the worker may claim its own
expired job again while the older attempt still runs or waits for its (fenced) outcome to
be written, and both take a place until they are over."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from ..models import START_OF_TIME, Job
from ..operations import Completion
from .context import WorkerContext
from .outcome import StopReason


@dataclass(eq=False)
class Slot:
    """One claim of a job by this worker, from the claim until its outcome is written."""

    job: Job
    ctx: WorkerContext
    #: When the worker started it (monotonic seconds), for the "completed in" log line.
    started: float
    task: asyncio.Task[None] | None = None
    handler_done: bool = False
    #: Why the worker stopped the handler, if it did.
    stopped_because: StopReason | None = None
    #: The handler's result while it waits in the completion batch.
    completion: Completion | None = field(default=None, repr=False)
    #: The worker no longer holds this claim (its outcome was written or given up, or it
    #: was stopped and the job is someone else's business now).
    let_go: bool = False

    def stop_handler(self, reason: StopReason) -> None:
        """Stop the running handler: ``ctx.cancelled`` for a sync one, task cancellation
        for an async one."""
        assert self.task is not None
        self.stopped_because = reason
        self.ctx.stopped_because = reason
        self.ctx.cancelled.set()
        self.task.cancel()


class Slots:
    """The places of one run: the claims taking one (``taken``), the latest claim of each
    job held (``held``, by id: what heartbeats extend), the tasks running them
    (``tasks``), and the places claims in flight may still fill (``reserved``)."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        #: The latest claim of each job the worker holds, by job id.
        self.held: dict[UUID, Slot] = {}
        #: Every claim taking a place: from its start until its handler has ended and it
        #: was let go. An older attempt of a job claimed again stays here until then.
        self.taken: set[Slot] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        #: Places that claims in flight may fill beyond the places they release: all of a
        #: claim loop's, and what a batch's claim takes beyond the batch's own places.
        self.reserved = 0

    def take(self, slot: Slot) -> Slot | None:
        """Count ``slot``'s claim in a place and hold it as its job's latest claim; return
        the claim of the same job it takes over from, if the worker still held one."""
        previous = self.held.get(slot.job.id)
        self.held[slot.job.id] = slot
        self.taken.add(slot)
        return previous

    def free(self, releasing: Sequence[Slot] = ()) -> int:
        """Places a claim may fill now: ``concurrency`` less the claims taking a place
        (running, or finished and not yet written: they count until written) and less what
        claims in flight may add. A batch being written claims with it, so the places of
        its own claims (``releasing``) count as free: they are released in the same
        commit."""
        return self.concurrency - len(self.taken) + self.own(releasing) - self.reserved

    def own(self, slots: Sequence[Slot]) -> int:
        """How many of ``slots`` still take a place."""
        return sum(1 for slot in slots if slot in self.taken)

    def handler_ended(self, slot: Slot) -> None:
        """``slot``'s handler returned, raised or was stopped: its place is free once the
        slot is also let go."""
        slot.handler_done = True
        self._vacate(slot)

    def let_go(self, slot: Slot) -> None:
        """Stop holding (and heartbeating) a claim; its place is free once its handler has
        ended. A newer claim of the job that took its place in ``held`` stays there."""
        slot.let_go = True
        if self.held.get(slot.job.id) is slot:
            del self.held[slot.job.id]
        self._vacate(slot)

    def handlers_running(self) -> bool:
        """Whether a held job's handler is still running."""
        return any(not slot.handler_done for slot in self.held.values())

    def _vacate(self, slot: Slot) -> None:
        if slot.handler_done and slot.let_go:
            self.taken.discard(slot)


def matched(sent: Sequence[Slot], ids: Collection[UUID]) -> set[Slot]:
    """The slots of ``sent`` whose claims a fenced statement on all of them matched, from
    the ids it returned (a heartbeat, a batch of completions).

    A fenced write matches a job only in its current claim, which is the job's latest:
    each claim starts strictly later than the one before (``started_at``). So a returned
    id stands for the latest claim of that job among ``sent``, and any earlier claim of it
    there matched nothing. The answer is about the claims sent, never about whatever the
    worker holds under those ids by the time it arrives (a later claim of the same job,
    say, taken while the statement ran)."""
    latest: dict[UUID, Slot] = {}
    for slot in sent:
        job = slot.job
        if job.id in ids:
            best = latest.get(job.id)
            if best is None or _started(job) > _started(best.job):
                latest[job.id] = slot
    return set(latest.values())


def _started(job: Job) -> datetime:
    return job.started_at or START_OF_TIME


__all__ = ["Slot", "Slots", "matched"]
