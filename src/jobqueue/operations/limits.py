"""The operations of scheduling: claims within limits, the limits rows, pauses, the line's
entrance, and a job held back by its provider (see `jobqueue.sql.limits`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from ..errors import PayloadError
from ..models import (
    MAX_ERROR,
    MAX_LIMIT,
    MAX_NAME,
    MAX_RATE_PERIOD,
    MAX_TEXT,
    ClaimMode,
    Completion,
    Job,
    Limit,
)
from ..sql.statements import Statements
from ..sql.steps import Row
from ..sql.table import LIMIT_SCOPES
from ..validation import (
    QueueLimits,
    check_int,
    check_text,
    read_job,
    seconds_of,
    storable_text,
)
from .contract import Access, Steps, operation
from .jobs import _asks_for_nothing, _check_claim, _check_fence, _claimed_jobs, complete_many


@operation(Access.TRANSACTION)
def claim_within_limits(
    s: Statements,
    worker_id: str,
    *,
    limit: int,
    lease: float,
    queues: Sequence[str] | None,
    kinds: Sequence[str] | None,
    limits: QueueLimits,
    mode: ClaimMode,
) -> Steps[list[Job]]:
    """Lock the rows in force, claim what fits, record the starts the rates count."""
    lease = _check_claim(worker_id, limit, lease)
    if _asks_for_nothing(queues, kinds):
        return []
    locked = yield s.lock_limits()
    if not locked:
        mode.limited = False
        rows = yield s.claim(worker_id, limit=limit, lease=lease, queues=queues, kinds=kinds)
        return _claimed_jobs(rows, limits)
    mode.limited = True
    now: datetime = locked[0]["now"]
    gates, recent = _gates(locked, now)
    rows = yield s.claim_within(
        gates, worker_id, limit=limit, lease=lease, queues=queues, kinds=kinds
    )
    jobs = _claimed_jobs(rows, limits)
    for (scope, name), starts in _starts_after(recent, jobs).items():
        yield s.record_starts(scope, name, starts)
    return jobs


def _gates(
    locked: Sequence[Row], now: datetime
) -> tuple[list[dict[str, Any]], dict[tuple[str, str], tuple[timedelta, list[datetime]]]]:
    """The gates `claim_within` reads, and for each rate its period and the starts within it."""
    gates = []
    recent: dict[tuple[str, str], tuple[timedelta, list[datetime]]] = {}
    for r in locked:
        until = r["paused_until"]
        paused = r["paused_at"] is not None and (until is None or until > now)
        budget = None
        if r["rate"] is not None:
            period = timedelta(seconds=r["per_seconds"])
            starts = [t for t in _times(r["starts"]) if t > now - period]
            recent[(r["scope"], r["name"])] = (period, starts)
            budget = max(0, r["rate"] - len(starts))
        gates.append(
            {
                "scope": r["scope"],
                "name": r["name"],
                "cap": r["max_running"],
                "per_owner": r["max_running_per_owner"],
                "budget": budget,
                "paused": int(paused),
            }
        )
    return gates, recent


def _times(text: Any) -> list[datetime]:
    """The starts a limits row holds (a JSON array of ISO times), unreadable ones left out:
    a row another client wrote must not stop every claim."""
    try:
        items = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return []
    out = []
    for item in items if isinstance(items, list) else []:
        try:
            out.append(datetime.fromisoformat(item))
        except (TypeError, ValueError):
            continue
    return out


def _starts_after(
    recent: Mapping[tuple[str, str], tuple[timedelta, list[datetime]]], jobs: Sequence[Job]
) -> dict[tuple[str, str], str]:
    """Each rate's starts with the claimed jobs' added, as JSON."""
    out = {}
    for (scope, name), (_, starts) in recent.items():
        mine = [
            j.started_at
            for j in jobs
            if j.started_at is not None
            and (j.queue if scope == "queue" else (j.limit_key or j.kind)) == name
        ]
        out[(scope, name)] = json.dumps([t.isoformat() for t in [*starts, *mine]])
    return out


@operation(Access.TRANSACTION)
def complete_then_claim_within(
    s: Statements,
    items: Sequence[Completion],
    limits: QueueLimits,
    worker_id: str,
    *,
    limit: int,
    lease: float,
    queues: Sequence[str] | None,
    kinds: Sequence[str] | None,
    mode: ClaimMode,
) -> Steps[tuple[set[uuid.UUID], list[Job]]]:
    """`complete_many`, then `claim_within_limits`, committed together."""
    written = yield from complete_many(s, items, limits).steps
    claimed = yield from claim_within_limits(
        s, worker_id, limit=limit, lease=lease, queues=queues, kinds=kinds, limits=limits, mode=mode
    ).steps
    return written, claimed


# -- the line's entrance -----------------------------------------------------------------------


@operation(Access.TRANSACTION)
def enter_line(s: Statements, *, skip_locked: bool = False) -> Steps[int]:
    """Put due jobs waiting outside the line into it (one batch); how many. With
    ``skip_locked`` (PostgreSQL) rows another entry is entering now are left to it."""
    turns = yield s.entering(skip_locked=skip_locked)
    if not turns:
        return 0
    rows = yield s.set_turns([(r["id"], r["turn"]) for r in turns])
    return len(rows)


# -- limits rows -------------------------------------------------------------------------------

#: The settings of a limits row, with the check of each value (None clears a setting).
SETTINGS = ("max_running", "max_running_per_owner", "rate", "per_seconds", "weight")


def _check_scope(scope: str, name: str) -> None:
    if scope not in LIMIT_SCOPES:
        raise PayloadError(
            f"scope must be one of {', '.join(LIMIT_SCOPES)}, not {scope!r}",
            hint="a queue's name, a limit key (a job's limit_key, else its kind), or an owner",
        )
    check_text(name, "name", limit=MAX_NAME if scope != "owner" else MAX_TEXT)


def check_settings(scope: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The settings checked: known names, numbers within bounds, a rate with its period."""
    unknown = set(values) - set(SETTINGS)
    if unknown:
        raise PayloadError(f"unknown limit settings: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            out[key] = None
        elif key == "weight":
            out[key] = seconds_of(value, "weight", low=0.001)
            if out[key] > 1000:
                raise PayloadError("weight must be between 0.001 and 1000")
        elif key == "per_seconds":
            out[key] = seconds_of(value, "per", low=0.001)
            if out[key] > MAX_RATE_PERIOD:
                raise PayloadError(f"per must be at most {MAX_RATE_PERIOD:.0f} seconds")
        else:
            out[key] = check_int(value, key, 1, MAX_LIMIT)
    if scope == "owner" and set(out) - {"weight"}:
        raise PayloadError(
            "an owner's limits row holds only a weight",
            hint="cap each owner's running jobs with max_running_per_owner on a queue or key",
        )
    if scope != "owner" and "weight" in out:
        raise PayloadError("a weight belongs to an owner", hint="use scope='owner'")
    if ("rate" in out) != ("per_seconds" in out) or (
        (out.get("rate") is None) != (out.get("per_seconds") is None)
    ):
        raise PayloadError(
            "a rate needs its period: give rate and per together (or clear both)",
            hint="e.g. rate=60, per=60 for at most 60 starts a minute",
        )
    return out


@operation(Access.ONE_WRITE)
def set_limit(s: Statements, scope: str, name: str, values: Mapping[str, Any]) -> Steps[Limit]:
    """Create or change a limits row; the row as it now is."""
    _check_scope(scope, name)
    checked = check_settings(scope, values)
    if checked:
        yield s.set_limit(scope, name, checked)
    return (yield from _one_limit(s, scope, name))


def _one_limit(s: Statements, scope: str, name: str) -> Steps[Limit]:
    for row in (yield s.list_limits()):
        if row["scope"] == scope and row["name"] == name:
            return Limit.from_row(row)
    return Limit.empty(scope, name)


@operation(Access.READ)
def list_limits(s: Statements, counts: bool = True) -> Steps[list[Limit]]:
    return [Limit.from_row(r) for r in (yield s.list_limits(counts))]


@operation(Access.ONE_WRITE)
def remove_limit(s: Statements, scope: str, name: str) -> Steps[bool]:
    """Delete a limits row (its pause with it); whether there was one."""
    _check_scope(scope, name)
    return bool((yield s.delete_limit(scope, name)))


@operation(Access.TRANSACTION)
def pause(
    s: Statements, scope: str, name: str, seconds: float | None, reason: str | None
) -> Steps[Limit]:
    """Pause a queue or key (for ``seconds``, else until resumed) and take its pending jobs
    out of the line; running ones finish."""
    _check_scope(scope, name)
    if scope == "owner":
        raise PayloadError("only a queue or a limit key can be paused")
    secs = None if seconds is None else seconds_of(seconds, "seconds", low=0.001)
    text = None if reason is None else storable_text(str(reason))[:MAX_ERROR]
    yield s.pause(scope, name, secs, text)
    yield s.leave_line(scope, name)
    return (yield from _one_limit(s, scope, name))


@operation(Access.ONE_WRITE)
def resume(s: Statements, scope: str, name: str) -> Steps[Limit]:
    """End a pause: its jobs enter the line again (`enter_line`, run by every worker)."""
    _check_scope(scope, name)
    yield s.resume(scope, name)
    return (yield from _one_limit(s, scope, name))


@operation(Access.TRANSACTION)
def hold_back(s: Statements, job: Job, after: float, reason: str, pause_key: bool) -> Steps[Job]:
    """A job its provider refused for now (`RetryLater`, a 429): back to ``pending`` without
    spending an attempt, out of the line for ``after`` seconds, and (``pause_key``) its
    limit key paused until the job is due again, its other jobs out of the line too, for
    every worker."""
    secs = seconds_of(after, "after", low=0.0)
    text = storable_text(str(reason))[:MAX_ERROR]
    rows = yield s.release(job.id, job.attempts, job.started_at, text, after=secs)
    held = read_job((yield from _check_fence(s, job, rows, "release")))
    if pause_key and secs > 0:
        # Until the job is due again, by the clock of the statement that held it back: the
        # key's pause and the job's wait end together however long the next statement takes.
        key = job.limit_key or job.kind
        yield s.pause_until("key", key, held.run_at, text)
        yield s.leave_line("key", key)
    return held
