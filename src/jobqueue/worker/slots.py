"""The jobs a worker holds: one `Slot` per job from its claim until its outcome is written,
and the one rule for how many more jobs a claim may take (`Slots.free`)."""

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
    """A job this worker holds, from its claim until its outcome is written."""

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

    def stop_handler(self, reason: StopReason) -> None:
        """Stop the running handler: ``ctx.cancelled`` for a sync one, task cancellation
        for an async one."""
        assert self.task is not None
        self.stopped_because = reason
        self.ctx.cancelled.set()
        self.task.cancel()


class Slots:
    """The jobs held (``held``, by id), the tasks running them (``tasks``), and the slots
    claims in flight may still fill (``reserved``) — for one run."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.held: dict[UUID, Slot] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        #: Slots that claims in flight may fill beyond the slots they release: all of a
        #: claim loop's, and what a batch's claim takes beyond the batch's own slots.
        self.reserved = 0

    def free(self, releasing: Sequence[Slot] = ()) -> int:
        """Slots a claim may fill now: ``concurrency`` less the jobs held (running, or
        finished and not yet written: they count until written) and less what claims in
        flight may add. A batch being written claims with it, so its own slots
        (``releasing``) count as free: they are released in the same commit. Their tasks
        may not have left ``tasks`` yet (done callbacks run later)."""
        tasks = len(self.tasks)
        if releasing:
            tasks = len(self.tasks - {slot.task for slot in releasing})
        busy = max(tasks, len(self.held) - len(releasing))
        return self.concurrency - busy - self.reserved

    def let_go(self, slot: Slot) -> None:
        """Stop holding (and heartbeating) a job, unless a newer attempt of it took its place."""
        if self.held.get(slot.job.id) is slot:
            del self.held[slot.job.id]

    def handlers_running(self) -> bool:
        """Whether a held job's handler is still running."""
        return any(not slot.handler_done for slot in self.held.values())


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
