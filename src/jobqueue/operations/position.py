"""A job's place in the line and its expected wait (`JobQueue.position`), written once for
both queues, with the bounded reads of `jobqueue.sql.position`.

How many jobs are ahead follows the claim's own order: the pending jobs in the line of the
queues that the job's live workers serve, by priority, then turn, then id. The wait is a
model, said as one: the live workers that serve the job run ``capacity`` jobs at once;
every job takes its kind's typical run time (the median of its latest completed runs);
the running jobs hold their slots for what is left of that time; the jobs ahead take the
next free slots in order (`start_estimate`). Nothing to go by (no completed run, no live
worker, too many jobs ahead to count) gives None, never a guess.

The count can grow while a job waits: fair share puts the next job of an owner who has
none waiting near the front (`jobqueue.sql.fair`), and jobs enter the line when due.

`PositionCache` keeps each answer a few seconds, so that many clients polling the same job
cost the database one computation per job per few seconds.
"""

from __future__ import annotations

import heapq
import statistics
import time
from collections.abc import Hashable, Sequence
from datetime import datetime

from ..errors import JobNotFound
from ..models import (
    DEFAULT_POSITION_LIMIT,
    RUN_TIME_SAMPLES,
    LiveWorker,
    Position,
    Status,
)
from ..sql.presence import PresenceStatements
from ..sql.statements import Statements
from ..validation import check_int, parse_job_id, seconds_of
from .contract import Access, Steps, operation
from .presence import read_live

#: How long `PositionCache` keeps an answer, in seconds, unless told otherwise.
POSITION_MAX_AGE = 3.0
#: How many answers it keeps at most (the oldest go first).
POSITION_CACHE_SIZE = 10_000
#: The most jobs a position counts ahead of a job, whatever the caller asks.
MAX_POSITION_LIMIT = 100_000


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (later - earlier).total_seconds()


def typical_run_time(runs: Sequence[tuple[datetime | None, datetime | None]]) -> float | None:
    """The median of the runs' durations (start, end), in seconds; None without any."""
    durations = [d for s, e in runs if (d := _seconds(e, s)) is not None and d >= 0]
    return statistics.median(durations) if durations else None


def start_estimate(
    ahead: int, capacity: int, run_time: float, running: Sequence[float]
) -> float | None:
    """Seconds until a job with ``ahead`` jobs before it starts, when ``capacity`` slots
    run jobs that each take ``run_time`` seconds, and the jobs in ``running`` have run
    for those many seconds each. None without a slot.

    The slots free when their running job ends (the soonest-ending ones, when more jobs
    run than there are slots); each job ahead takes the slot that frees first.
    """
    if capacity <= 0:
        return None
    busy = sorted(max(run_time - elapsed, 0.0) for elapsed in running)[:capacity]
    slots = [0.0] * (capacity - len(busy)) + busy
    heapq.heapify(slots)
    for _ in range(ahead):
        heapq.heapreplace(slots, slots[0] + run_time)
    return slots[0]


def serving(workers: Sequence[LiveWorker], queue: str, kind: str) -> tuple[tuple[str, ...], int]:
    """The queues the workers that serve ``(queue, kind)`` claim from (``queue`` first; a
    claim takes their jobs in one line), and how many jobs those workers run at once."""
    mine = [w for w in workers if w.serves(queue, kind)]
    others = sorted({q for w in mine for q in w.queues} - {queue})
    return (queue, *others), sum(w.concurrency for w in mine)


@operation(Access.READ)
def position(
    s: Statements,
    ps: PresenceStatements | None,
    job_id: object,
    owner_id: str | None = None,
    limit: int = DEFAULT_POSITION_LIMIT,
) -> Steps[Position]:
    """Where the job stands (`Position`); with ``owner_id``, `JobNotFound` unless it is
    theirs. ``ps`` None: the live workers are not read (this caller may not), and the
    capacity is unknown. Counts at most ``limit`` jobs ahead."""
    jid = parse_job_id(job_id)
    check_int(limit, "limit", 1, MAX_POSITION_LIMIT)
    rows = yield s.position_job(jid, owner_id)
    if not rows:
        raise JobNotFound(f"no job {jid}")
    job = rows[0]
    status, now = Status(job["status"]), job["now"]
    if status.is_final:
        return Position(jid, status, None, measured_at=now)
    capacity: int | None = None
    queues: tuple[str, ...] = (job["queue"],)
    if ps is not None:
        workers = read_live((yield ps.live()))
        queues, capacity = serving(workers, job["queue"], job["kind"])
    runs = yield s.recent_runs(job["kind"], RUN_TIME_SAMPLES)
    run_time = typical_run_time([(r["started_at"], r["completed_at"]) for r in runs])
    if status is Status.PROCESSING:
        elapsed = _seconds(now, job["started_at"])
        left = None if run_time is None or elapsed is None else run_time - max(elapsed, 0.0)
        finish = left if left is not None and left >= 0 else None
        return Position(
            jid, status, 0, finish_in=finish, run_time=run_time, capacity=capacity, measured_at=now
        )
    if job["turn"] is None:  # waits for a time, or for a worker to put it in line
        due = max(_seconds(job["run_at"], now) or 0.0, 0.0)
        return Position(
            jid,
            status,
            None,
            enters_line_in=due,
            run_time=run_time,
            capacity=capacity,
            measured_at=now,
        )
    counted = yield s.jobs_ahead(queues, job["priority"], job["turn"], jid, limit + 1)
    ahead = int(counted[0]["ahead"])
    more = ahead > limit
    start = None
    if not more and capacity and run_time is not None:
        held = yield s.running_in(queues, limit)
        running = [max(_seconds(r["now"], r["started_at"]) or 0.0, 0.0) for r in held]
        start = start_estimate(ahead, capacity, run_time, running)
    return Position(
        jid,
        status,
        min(ahead, limit),
        more=more,
        start_in=start,
        finish_in=None if start is None or run_time is None else start + run_time,
        run_time=run_time,
        capacity=capacity,
        measured_at=now,
    )


class PositionCache:
    """Positions by key (job, owner, limit), each kept for ``max_age`` seconds (by this
    process's monotonic clock), at most ``size`` of them. Shared by the sync and async
    queues; it does no I/O and never blocks."""

    def __init__(self, max_age: float = POSITION_MAX_AGE, size: int = POSITION_CACHE_SIZE) -> None:
        self.max_age = seconds_of(max_age, "max_age")
        self.size = check_int(size, "size", 1, 10_000_000)
        self._kept: dict[Hashable, tuple[float, Position]] = {}

    def get(self, key: Hashable, max_age: float | None = None) -> Position | None:
        """The position kept for ``key`` if it is at most ``max_age`` (default: the
        cache's) seconds old."""
        found = self._kept.get(key)
        if found is None:
            return None
        age = time.monotonic() - found[0]
        if age > (self.max_age if max_age is None else max_age):
            return None
        return found[1]

    def put(self, key: Hashable, value: Position) -> None:
        self._kept.pop(key, None)
        if len(self._kept) >= self.size:  # the oldest entry (dicts keep insertion order)
            del self._kept[next(iter(self._kept))]
        self._kept[key] = (time.monotonic(), value)
