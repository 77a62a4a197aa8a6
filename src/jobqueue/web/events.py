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

Abandonment (opt-in, ``abandon_after``): when the last stream of a job that was not final
closes and no stream of it opens again within the grace period, ``on_abandoned`` is called
for it (the app cancels the job if no worker has started it, so nobody pays for a picture
nobody waits for). A reconnect within the grace period (an EventSource's, after a network
blip or a page reload) keeps the job. The grace timers live in this process: a server that
stops within one forgets it.
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
#: Called with (owner, job id) for a job whose watchers all left (see the module's text).
OnAbandoned = Callable[[str, str], Awaitable[object]]


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
        #: Abandonment's grace period (None: off) and what it calls (`abandon`).
        self.abandon_after: float | None = None
        self._on_abandoned: OnAbandoned | None = None
        self._watches: dict[tuple[str, str], JobWatch] = {}
        self._streams: Counter[str] = Counter()
        #: Open streams per (owner, job), and the grace period running for each job whose
        #: streams all closed (a token: a stream opening meanwhile replaces it).
        self._viewers: Counter[tuple[str, str]] = Counter()
        self._left: dict[tuple[str, str], object] = {}
        self._timers: set[asyncio.Task[None]] = set()
        #: The timers still sleeping: only those are cancelled at shutdown (one that acts
        #: is waited for: a statement is never cut off half-way).
        self._sleeping: set[asyncio.Task[None]] = set()

    def abandon(self, after: float, on_abandoned: OnAbandoned) -> None:
        """Turn abandonment on: ``on_abandoned(owner, job_id)`` for a job that was not
        final when its last stream closed, once ``after`` seconds pass without a stream
        of it opening again."""
        self.abandon_after = after
        self._on_abandoned = on_abandoned

    def opened(self, owner: str, job_id: str) -> None:
        """A stream of the job opened: it is watched (again), whatever grace period ran."""
        key = (owner, job_id)
        self._viewers[key] += 1
        self._left.pop(key, None)

    def closed(self, owner: str, job_id: str, *, final: bool) -> None:
        """A stream of the job closed; ``final``: the job it last showed was final. The
        last one of a job that was not final starts the grace period (when abandonment is
        on)."""
        key = (owner, job_id)
        self._viewers[key] -= 1
        if self._viewers[key] > 0:
            return
        del self._viewers[key]
        if final or self.abandon_after is None:
            return
        token = self._left[key] = object()
        timer = asyncio.create_task(self._grace(key, token), name="jobqueue-sse-abandon")
        self._timers.add(timer)
        self._sleeping.add(timer)
        timer.add_done_callback(self._timers.discard)
        timer.add_done_callback(self._sleeping.discard)

    async def _grace(self, key: tuple[str, str], token: object) -> None:
        assert self.abandon_after is not None and self._on_abandoned is not None
        await asyncio.sleep(self.abandon_after)
        task = asyncio.current_task()
        if task is not None:
            self._sleeping.discard(task)
        if self._left.get(key) is not token:
            return  # a stream opened meanwhile (and may have closed again: its own timer)
        del self._left[key]
        try:
            await self._on_abandoned(*key)
        except Exception:
            logger.exception("abandoning job %s failed", key[1])

    @property
    def grace_periods(self) -> int:
        """How many jobs wait out a grace period now (all their streams closed)."""
        return len(self._left)

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
        """Stop every watch and grace period (the app is shutting down)."""
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        tasks += list(self._sleeping)
        for task in tasks:
            task.cancel()
        tasks += list(self._timers - set(tasks))
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
