"""Worker presence: the operations on the live-workers table, written once for both
queues like the job operations (`jobqueue.operations.jobs`), with statements from
`jobqueue.sql.presence`.

`beat` writes a worker's row (at start and on its timer), `gone` removes it on a clean
stop, `sweep` deletes the rows of workers that stopped beating, `live_workers` reads the
live ones, and `check_access` stops a worker at start when its role may not do what a
worker does (instead of retrying a refused claim for ever). What a wait concludes from
the live workers is `jobqueue.operations.waiting.Lookout`.

Liveness is judged by the database clock alone: a row is live until its ``expires_at``,
which each beat moves to `LIVE_LEASES` leases after the beat.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import PayloadError, PermissionDenied, SchemaNotInstalled
from ..models import LiveWorker, WorkerPresence
from ..sql.presence import NEEDS, PresenceStatements
from ..sql.steps import Rows
from ..validation import check_int, check_text, seconds_of
from .contract import Access, Steps, operation

#: A worker beats every third of its lease (as it heartbeats its jobs) and counts as live
#: for this many leases after its last beat: five beats in a row may be missed (a database
#: hiccup, a busy event loop) before it is taken for gone.
LIVE_LEASES = 2.0
BEATS_PER_LEASE = 3


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


@operation(Access.ONE_WRITE)
def beat(s: PresenceStatements, me: WorkerPresence, ttl: float) -> Steps[None]:
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


@operation(Access.ONE_WRITE)
def gone(s: PresenceStatements, worker_id: str) -> Steps[bool]:
    """Remove the worker's row; whether there was one."""
    check_text(worker_id, "worker_id")
    rows = yield s.gone(worker_id)
    return bool(rows)


@operation(Access.ONE_WRITE)
def sweep(s: PresenceStatements) -> Steps[list[str]]:
    """Delete the rows of workers that stopped beating; their ids."""
    rows = yield s.sweep()
    return [str(r["worker_id"]) for r in rows]


@operation(Access.READ)
def live_workers(s: PresenceStatements) -> Steps[list[LiveWorker]]:
    """The live workers, oldest first."""
    rows = yield s.live()
    return read_live(rows)


def read_live(rows: Rows) -> list[LiveWorker]:
    """The rows of `PresenceStatements.live` as `LiveWorker` records."""
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


@operation(Access.READ)
def check_access(s: PresenceStatements) -> Steps[None]:
    """Stop with our error when the tables are missing or this role may not do what a
    worker does to them (`NEEDS`), by grants or by row-level security.

    A role without UPDATE on the jobs table, or one that row-level security gives no
    policy for, would otherwise see every claim refused or, worse, match no row at all
    and wait for ever on a full queue.
    """
    rows = yield s.access()
    found = {r["what"]: r for r in rows}
    jobs, workers = s.jobs.name, s.t.name
    names = {"jobs": jobs, "workers": workers, "limits": s.limits_name}
    if not found["jobs"]["present"]:
        raise SchemaNotInstalled(f"the jobs table {jobs!r} is not installed")
    for what, title in (("workers", "live-workers"), ("limits", "limits")):
        if not found[what]["present"]:
            raise SchemaNotInstalled(
                f"the {title} table {names[what]!r} is missing: the database is at an older "
                "revision than this jobqueue"
            )
    for what, needed in NEEDS.items():
        row = found[what]
        role = row["role"]
        table = names[what]
        missing = [p for p in needed if not row[f"may_{p.lower()}"]]
        if missing:
            raise PermissionDenied(
                f"the role {role!r} may not {', '.join(missing)} on {table}, which a worker needs",
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
