"""The rules of a wait, shared by the sync and the async `wait` loops (and the web page's
event stream), which do the reading and the sleeping: `Waiter` says when to look again and
whether a snapshot is news, `Lookout` when to look at the live workers and what to say when
none serves the job.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from ..models import Job, LiveWorker
from ..validation import seconds_of

#: How long a wait lets a job sit (not final) before it looks whether any live worker
#: serves the job's queue, and how often it looks again after that.
NO_WORKER_AFTER = 15.0


class Waiter:
    """The polling rule of `wait`, shared by the sync and async loops.

    Remembers what the caller last saw and says whether a new snapshot is news.
    """

    def __init__(self, interval: float, timeout: float | None) -> None:
        self.interval = seconds_of(interval, "interval", low=0.01)
        self.timeout = None if timeout is None else seconds_of(timeout, "timeout")
        self.deadline = None if self.timeout is None else time.monotonic() + self.timeout
        self._seen: tuple[Any, ...] | None = None

    def changed(self, job: Job) -> bool:
        key = (job.status, job.progress, job.progress_message, job.attempts)
        news = key != self._seen
        self._seen = key
        return news

    def next_sleep(self) -> float | None:
        """Seconds until the next look, or None when the time is up."""
        if self.deadline is None:
            return self.interval
        left = self.deadline - time.monotonic()
        return None if left <= 0 else min(self.interval, left)


def no_worker_message(job: Job, workers: Sequence[LiveWorker]) -> str | None:
    """What to tell someone waiting for ``job`` when no live worker serves it, or None."""
    if job.is_final or any(w.serves(job.queue, job.kind) for w in workers):
        return None
    start = f"start one: `jobqueue worker --queue {job.queue}`"
    in_queue = [w for w in workers if w.serves(job.queue)]
    if in_queue:
        kinds = sorted({k for w in in_queue for k in (w.kinds or ())})
        detail = (
            f"the live workers of queue {job.queue!r} run kinds {', '.join(kinds)}, "
            f"not {job.kind!r}"
        )
        start = f"start a worker that runs kind {job.kind!r} in queue {job.queue!r}"
    elif workers:
        queues = sorted({q for w in workers for q in w.queues})
        detail = f"{len(workers)} live worker(s) serve other queues: {', '.join(queues)}"
    else:
        detail = "no worker has sent a heartbeat lately"
    return (
        f"job {job.id} is {job.status.value} and no live worker serves its queue "
        f"{job.queue!r} ({detail}); {start}"
    )


class Lookout:
    """When a wait looks for live workers, and what it says: shared by the sync and async
    `wait` loops, which do the reading.

    It looks ``after`` seconds into the wait, then every ``after`` seconds while the job is
    not final, and speaks once each time the job goes from served to unserved. ``after``
    None turns it off; so does a table this caller may not read (`give_up`).
    """

    def __init__(self, after: float | None) -> None:
        self.after = None if after is None else seconds_of(after, "no_worker_after", low=0.001)
        self._next = None if self.after is None else time.monotonic() + self.after
        self._unserved = False

    def due(self, job: Job) -> bool:
        """Whether to read the live workers now."""
        if self._next is None or self.after is None or job.is_final:
            return False
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.after
        return True

    def news(self, job: Job, workers: Sequence[LiveWorker]) -> str | None:
        """The message to give now, or None (served, or already said)."""
        message = no_worker_message(job, workers)
        said = self._unserved
        self._unserved = message is not None
        return None if said else message

    def give_up(self) -> None:
        """Look no more (the table is missing or hidden from this caller)."""
        self._next = None
