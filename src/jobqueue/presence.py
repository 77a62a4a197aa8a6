"""Worker presence: the operations on the live-workers table, and what a waiting caller
concludes from it.

The operations are written once for both queues, as in `jobqueue.operations`: generators
that yield statements from `jobqueue.presence_sql` and receive their rows.

- `beat` writes a worker's row (at start and on its timer), `gone` removes it on a clean
  stop, `sweep` deletes the rows of workers that stopped beating, `live_workers` reads
  the live ones, and `check_access` stops a worker at start when its role may not do
  what a worker does (instead of retrying a refused claim for ever).
- `Lookout` is the rule a wait follows: after `NO_WORKER_AFTER` seconds on a job that is
  not final, look whether a live worker serves its queue and kind, and say so once when
  none does.

Liveness is judged by the database clock alone: a row is live until its ``expires_at``,
which each beat moves to `LIVE_LEASES` leases after the beat.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import PayloadError, PermissionDenied, SchemaNotInstalled
from .operations import Operation, check_int, check_text, seconds_of
from .presence_sql import NEEDS, PresenceStatements
from .schema import Job

#: A worker beats every third of its lease (as it heartbeats its jobs) and counts as live
#: for this many leases after its last beat: five beats in a row may be missed (a database
#: hiccup, a busy event loop) before it is taken for gone.
LIVE_LEASES = 2.0
BEATS_PER_LEASE = 3

#: How long a wait lets a job sit (not final) before it looks whether any live worker
#: serves the job's queue, and how often it looks again after that.
NO_WORKER_AFTER = 15.0


@dataclass(frozen=True, slots=True)
class WorkerPresence:
    """What a worker says about itself in its row of the live-workers table."""

    worker_id: str
    queues: tuple[str, ...]
    #: None: the worker claims every kind.
    kinds: tuple[str, ...] | None
    concurrency: int
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


@dataclass(frozen=True, slots=True)
class LiveWorker:
    """A worker whose last beat is recent, as its row says (times by the database clock)."""

    worker_id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    #: None: the worker claims every kind.
    kinds: tuple[str, ...] | None
    concurrency: int
    started_at: datetime
    last_beat_at: datetime
    expires_at: datetime
    #: The database clock when the row was read.
    seen_at: datetime

    @property
    def beat_age(self) -> float:
        """Seconds since the last beat, by the database clock."""
        return max(0.0, (self.seen_at - self.last_beat_at).total_seconds())

    def serves(self, queue: str, kind: str | None = None) -> bool:
        """Whether this worker claims jobs of ``kind`` (any kind when None) in ``queue``."""
        if queue not in self.queues:
            return False
        return kind is None or self.kinds is None or kind in self.kinds

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO strings), for `jobqueue workers --json`."""
        return {
            "worker_id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "queues": list(self.queues),
            "kinds": None if self.kinds is None else list(self.kinds),
            "concurrency": self.concurrency,
            "started_at": self.started_at.isoformat(),
            "last_beat_at": self.last_beat_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "beat_age_sec": round(self.beat_age, 3),
        }


def _names(value: Any) -> tuple[str, ...]:
    """A JSON array of names as read back; anything else (a row edited by hand) is none."""
    if isinstance(value, str):  # a driver that hands JSON back as text
        try:
            value = json.loads(value)
        except ValueError:
            return ()
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return ()


def ttl_of(lease: float) -> float:
    """How long after a beat a worker with this lease counts as live."""
    return LIVE_LEASES * lease


def beat_interval_of(lease: float) -> float:
    """How often a worker with this lease beats."""
    return lease / BEATS_PER_LEASE


# -- operations -----------------------------------------------------------------------------


def beat(s: PresenceStatements, me: WorkerPresence, ttl: float) -> Operation[None]:
    """Insert or refresh the worker's row; it counts as live for ``ttl`` seconds."""
    check_text(me.worker_id, "worker_id")
    check_text(me.host, "host", empty=True)
    if not me.queues:
        raise PayloadError("a worker serves at least one queue")
    for name in (*me.queues, *(me.kinds or ())):
        check_text(name, "queue or kind")
    check_int(me.concurrency, "concurrency", 1, 1_000_000)
    ttl = seconds_of(ttl, "ttl", low=0.001)
    yield s.beat(
        me.worker_id,
        host=me.host,
        pid=me.pid,
        queues_json=json.dumps(list(me.queues)),
        kinds_json=None if me.kinds is None else json.dumps(list(me.kinds)),
        concurrency=me.concurrency,
        ttl=ttl,
    )


def gone(s: PresenceStatements, worker_id: str) -> Operation[bool]:
    """Remove the worker's row; whether there was one."""
    check_text(worker_id, "worker_id")
    rows = yield s.gone(worker_id)
    return bool(rows)


def sweep(s: PresenceStatements) -> Operation[list[str]]:
    """Delete the rows of workers that stopped beating; their ids."""
    rows = yield s.sweep()
    return [str(r["worker_id"]) for r in rows]


def live_workers(s: PresenceStatements) -> Operation[list[LiveWorker]]:
    """The live workers, oldest first."""
    rows = yield s.live()
    return [
        LiveWorker(
            worker_id=r["worker_id"],
            host=r["host"],
            pid=int(r["pid"]),
            queues=_names(r["queues"]),
            kinds=None if r["kinds"] is None else _names(r["kinds"]),
            concurrency=int(r["concurrency"]),
            started_at=r["started_at"],
            last_beat_at=r["last_beat_at"],
            expires_at=r["expires_at"],
            seen_at=r["seen_at"],
        )
        for r in rows
    ]


def check_access(s: PresenceStatements) -> Operation[None]:
    """Stop with our error when the tables are missing or this role may not do what a
    worker does to them (`presence_sql.NEEDS`), by grants or by row-level security.

    A role without UPDATE on the jobs table, or one that row-level security gives no
    policy for, would otherwise see every claim refused or, worse, match no row at all
    and wait for ever on a full queue.
    """
    rows = yield s.access()
    found = {r["what"]: r for r in rows}
    jobs, workers = s.jobs.name, s.t.name
    names = {"jobs": jobs, "workers": workers}
    if not found["jobs"]["present"]:
        raise SchemaNotInstalled(f"the jobs table {jobs!r} is not installed")
    if not found["workers"]["present"]:
        raise SchemaNotInstalled(
            f"the live-workers table {workers!r} is missing: the database is at an older "
            "revision than this jobqueue"
        )
    for what, needed in NEEDS.items():
        row = found[what]
        role = row["role"]
        table = names[what]
        missing = [p for p in needed if not row[f"may_{p.lower()}"]]
        if missing:
            raise PermissionDenied(
                f"the role {role!r} may not {', '.join(missing)} on {table}, "
                "which a worker needs",
                hint=f"grant it: GRANT {', '.join(needed)} ON {table} TO {role}; "
                f"or print the grants and policies: `jobqueue sql --supabase --worker-role {role}`",
            )
        if row["rls"]:
            unpolicied = [p for p in needed if not row[f"policy_{p.lower()}"]]
            if unpolicied:
                raise PermissionDenied(
                    f"row-level security on {table} gives the role {role!r} no policy to "
                    f"{', '.join(unpolicied)}, which a worker needs",
                    hint="add a policy FOR ALL TO the worker's role, or print them: "
                    f"`jobqueue sql --supabase --worker-role {role}`",
                )


# -- waiting --------------------------------------------------------------------------------


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


__all__ = [
    "LIVE_LEASES",
    "NO_WORKER_AFTER",
    "LiveWorker",
    "Lookout",
    "WorkerPresence",
    "beat",
    "check_access",
    "gone",
    "live_workers",
    "no_worker_message",
    "sweep",
]
