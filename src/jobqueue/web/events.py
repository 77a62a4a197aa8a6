"""Server-Sent Events: one job's changes pushed to the client until it is final.

Every open stream of the same job (and owner) shares one `JobWatch`: a single task reads
the job from the store once per interval (one indexed primary-key read) and hands each
change to all of that job's streams, so a hundred tabs on one job cost the database what
one does. A change is what `AsyncJobQueue.wait` calls one (`operations.Waiter`): the
status, progress or attempt moved; or the job's place in the line (`Snapshot.key`). A
(re)connecting client always gets the current snapshot first (read when its stream
opens), so an EventSource that reconnects after a network blip misses nothing. Comment
lines keep idle proxies from closing a stream while a job waits in line.

The number of open streams per owner is bounded (`Watchers.reserve`), so one caller
cannot hold an unbounded number of connections and tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ..errors import DatabaseUnavailable, JobNotFound
from ..models import Job, Position
from ..operations.waiting import Waiter

logger = logging.getLogger(__name__)

#: Tells EventSource how long to wait before reconnecting (milliseconds).
RECONNECT_MS = 3000

#: An estimate moving by less than this many seconds is no news to a stream.
ETA_STEP = 5.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a stream shows of a job: the job, and where it stands (None: not known)."""

    job: Job
    position: Position | None = None

    def key(self) -> Hashable:
        """What makes a snapshot news: the job's status, progress or attempt, how many
        jobs are ahead of it, or its estimated finish moving by `ETA_STEP` seconds."""
        j, p = self.job, self.position
        place = None
        if p is not None:
            eta = None if p.finish_in is None else round(p.finish_in / ETA_STEP)
            place = (p.ahead, p.more, eta)
        return (j.status, j.progress, j.progress_message, j.attempts, place)


class Seen:
    """Remembers the last snapshot a reader was given, and says whether one is news."""

    def __init__(self) -> None:
        self._key: Hashable = object()

    def changed(self, snapshot: Snapshot) -> bool:
        key = snapshot.key()
        news = key != self._key
        self._key = key
        return news


Load = Callable[[], Awaitable[Snapshot]]


def sse_message(data: Any, *, event: str | None = None) -> str:
    lines = [] if event is None else [f"event: {event}"]
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


class Subscription:
    """One stream's view of a `JobWatch`: the latest snapshot and whether it ended."""

    def __init__(self, first: Snapshot) -> None:
        self.latest: Snapshot = first
        self.gone = False  # the job disappeared (pruned) while watched
        self.broken = False  # the watch stopped on an unexpected error
        self.news = asyncio.Event()
        self.news.set()  # the first snapshot is news

    def publish(self, snapshot: Snapshot) -> None:
        self.latest = snapshot
        self.news.set()

    def end(self, *, gone: bool) -> None:
        self.gone = gone
        self.broken = not gone
        self.news.set()


class JobWatch:
    """One polling task for one job, fanning its changes out to every subscription."""

    def __init__(self, load: Load, interval: float, on_exit: Callable[[JobWatch], None]) -> None:
        self.load = load
        self.interval = interval
        self.subscriptions: set[Subscription] = set()
        self._on_exit = on_exit
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="jobqueue-sse-watch")

    async def _run(self) -> None:
        waiter = Waiter(self.interval, None)
        seen = Seen()
        try:
            while True:
                await asyncio.sleep(waiter.interval)
                # Checked after the sleep, before the read: a watch whose streams all
                # closed stops without another query (and is never cancelled mid-query).
                if not self.subscriptions:
                    return
                try:
                    snapshot = await self.load()
                except JobNotFound:  # pruned while we watched
                    for sub in self.subscriptions:
                        sub.end(gone=True)
                    return
                except DatabaseUnavailable:
                    continue  # try again next interval; the streams keep their heartbeats
                if seen.changed(snapshot):
                    for sub in self.subscriptions:
                        sub.publish(snapshot)
                if snapshot.job.is_final:
                    return
        except Exception:
            logger.exception("the event stream's watch of a job failed")
            for sub in self.subscriptions:
                sub.end(gone=False)
        finally:
            self._on_exit(self)


class Watchers:
    """The app's open event streams: one `JobWatch` per (owner, job), streams per owner."""

    def __init__(self, *, poll_interval: float, max_streams_per_owner: int) -> None:
        self.poll_interval = poll_interval
        self.max_streams_per_owner = max_streams_per_owner
        self._watches: dict[tuple[str, str], JobWatch] = {}
        self._streams: Counter[str] = Counter()

    def reserve(self, owner: str) -> bool:
        """Count one more open stream for ``owner``; False when it already has the most."""
        if self._streams[owner] >= self.max_streams_per_owner:
            return False
        self._streams[owner] += 1
        return True

    def release(self, owner: str) -> None:
        self._streams[owner] -= 1
        if self._streams[owner] <= 0:
            del self._streams[owner]

    def open_streams(self, owner: str) -> int:
        return self._streams[owner]

    def subscribe(self, owner: str, job_id: str, first: Snapshot, load: Load) -> Subscription:
        """Join the job's watch (starting one if none runs) with ``first`` as the snapshot."""
        sub = Subscription(first)
        key = (owner, job_id)
        watch = self._watches.get(key)
        if watch is None:
            watch = JobWatch(load, self.poll_interval, lambda w: self._forget(key, w))
            self._watches[key] = watch
            watch.start()
        watch.subscriptions.add(sub)
        return sub

    def unsubscribe(self, owner: str, job_id: str, sub: Subscription) -> None:
        watch = self._watches.get((owner, job_id))
        if watch is not None:
            watch.subscriptions.discard(sub)

    def _forget(self, key: tuple[str, str], watch: JobWatch) -> None:
        if self._watches.get(key) is watch:
            del self._watches[key]

    @property
    def watching(self) -> int:
        """How many jobs are being watched (one polling task each)."""
        return len(self._watches)

    async def close(self) -> None:
        """Stop every watch (the app is shutting down)."""
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def job_events(
    sub: Subscription,
    view: Callable[[Snapshot], dict[str, Any]],
    *,
    heartbeat_interval: float,
    gone: dict[str, Any],
) -> AsyncIterator[str]:
    """Yield SSE frames for one subscription: a snapshot per change, ending after the final
    status (or a ``gone`` event when the job was pruned)."""
    yield f"retry: {RECONNECT_MS}\n\n"
    seen = Seen()
    quiet_since = time.monotonic()
    while True:
        left = heartbeat_interval - (time.monotonic() - quiet_since)
        try:
            await asyncio.wait_for(sub.news.wait(), timeout=max(left, 0.0))
        except TimeoutError:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
            continue
        sub.news.clear()
        if sub.gone:
            yield sse_message(gone, event="gone")
            return
        if sub.broken:
            return  # the client reconnects after RECONNECT_MS and gets a fresh watch
        snapshot = sub.latest
        if seen.changed(snapshot):
            yield sse_message(view(snapshot))
            quiet_since = time.monotonic()
            if snapshot.job.is_final:
                return
