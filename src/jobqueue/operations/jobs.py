"""What each method of the queues does to jobs, written once for the sync and the async
queue (see `jobqueue.operations.contract`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from ..backoff import full_jitter
from ..errors import InvalidTransition, JobNotFound, LeaseLost, PayloadError, PermissionDenied
from ..models import (
    MAX_ERROR,
    MAX_PROGRESS_MESSAGE,
    MAX_REMOTE_TASK_ID,
    MAX_RESULT_URL,
    MAX_TURN,
    ClaimMode,
    Completion,
    Job,
    Placement,
    Status,
    StatusStats,
    check_move,
    job_of,
)
from ..sql.enqueue import owner_ranks
from ..sql.statements import Statements
from ..sql.steps import Row, Rows
from ..validation import (
    READ_PAYLOAD_FACTOR,
    QueueLimits,
    check_cost,
    check_cost_unit,
    check_int,
    check_json,
    check_text,
    parse_job_id,
    parse_statuses,
    read_job,
    seconds_of,
    storable_text,
    stored_json,
)
from .contract import Access, Operation, Steps, operation


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].

    Full jitter spreads retries of jobs that failed together (a provider outage) so they do
    not come back as one burst.
    """
    return full_jitter(attempt, base, cap)


# -- operations ---------------------------------------------------------------------------


#: From this many jobs on, `enqueue_many` on PostgreSQL COPYs instead of INSERTing (when no
#: job has an idempotency key). COPY takes three round trips (`copy_context`, the COPY
#: command, its data) against the INSERT's one, and saves client and server time on every
#: job (docs/performance.md): from 200 jobs on that pays for the round trips to a database
#: in the same region (Supabase's included).
COPY_MIN_JOBS = 200


@operation(Access.ONE_WRITE)
def enqueue_many(
    s: Statements, rows: Sequence[dict[str, Any]], placement: Placement | None = None
) -> Steps[list[Job] | None]:
    """Insert the rows; for an idempotency key the same owner (or, for a job without one,
    an unowned job) already used in the queue, the existing job. None, having written
    nothing, when an owner of the batch has a budget: the batch is then
    `jobqueue.operations.budgets.enqueue_within_budgets`' to enqueue, in a transaction.

    An unowned job runs the one statement it always ran. An owned job's INSERT carries a
    guard (no budget for its owners, `Statements.insert_many`), so an owner without a
    budget costs no more round trips either; where a batch is not one statement (SQLite's
    batches, COPY), the budgets of its owners are read first, in the same transaction on
    SQLite (whose writers run one at a time).

    Large batches on PostgreSQL are COPYed when no job carries an idempotency key (keys need
    ON CONFLICT, which COPY has not) and the role may COPY (see `Statements.copy_context`).
    The jobs are then built here, not read back: every value is known before the write
    (ids are made here, the times come from the database clock read in the same round
    trip as the permission check), so they equal what `get` returns afterwards.
    """
    return (yield from _enqueue(s, rows, placement, guard=True))


def _enqueue(
    s: Statements,
    rows: Sequence[dict[str, Any]],
    placement: Placement | None,
    *,
    guard: bool,
) -> Steps[list[Job] | None]:
    """`enqueue_many`'s body; ``guard`` False: no look at the budgets (its caller has
    reserved what they need), and no COPY (which does not write ``reserved``)."""
    if not rows:
        return []
    placed = True
    if placement is not None:
        if placement.placed is None:
            (may,) = yield s.may_place()
            placement.budgets = bool(may["may_budget"])
            placement.placed = bool(may["may_place"])
        placed = placement.placed
    if not placed and any(r["limit_key"] is not None for r in rows):
        raise PermissionDenied(
            "this role may not choose a job's limit key",
            hint="enqueue without limit_key (the kind is the key), or as the worker role",
        )
    # A role that may not read the budgets (Supabase users: they are the operator's, and
    # so is placing jobs) is not held to them (docs/costs.md).
    held_to_budgets = placement is None or placement.budgets
    owners = _owners(rows) if guard and placed and held_to_budgets else []
    copying = (
        guard  # else the caller reserves, and COPY does not write ``reserved``
        and placed  # else the role has column grants only, and COPY needs them all
        and s.dialect == "postgresql"
        and len(rows) >= COPY_MIN_JOBS
        and all(r["idempotency_key"] is None for r in rows)
    )
    if owners and (copying or (s.dialect != "postgresql" and len(rows) > 1)):
        # Not one statement: read the budgets first.
        if (yield s.budgeted(owners)):
            return None
        owners = []
    if copying:
        groups = list(dict.fromkeys((r["queue"], r["priority"], r["owner_id"]) for r in rows))
        context = yield s.copy_context(groups)
        if context[0]["may_copy"]:
            jobs: list[Job] = []
            places = {(g["queue"], g["priority"], g["owner_id"]): g for g in context}
            traced = rows[0].get("trace_context") is not None
            yield s.copy_new(_new_jobs(rows, context[0]["now"], places, jobs), traced=traced)
            return jobs
    guarded = bool(owners)
    inserted = yield s.insert_many(rows, placed=placed, guard=guarded)
    jsonb = s.dialect == "postgresql"
    written = {i["id"]: i for i in inserted}
    missing = [r for r in rows if r["id"] not in written]
    if guarded and missing and any(r["idempotency_key"] is None for r in missing):
        return None  # only the guard keeps a row without a key out
    # A key is unique per queue and owner (the index's scope), so the job found for a row is
    # always its own owner's: never another's.
    existing: dict[tuple[str, str | None, str], Job] = {}
    for scope in {(r["queue"], r["owner_id"]) for r in missing}:
        keys = [r["idempotency_key"] for r in missing if (r["queue"], r["owner_id"]) == scope]
        for found in (yield s.by_idempotency_keys(*scope, keys)):
            job = read_job(found)
            existing[(job.queue, job.owner_id, job.idempotency_key or "")] = job
    out: list[Job] = []
    for r in rows:
        row = written.get(r["id"])
        if row is not None:
            run_at = row["run_at"]
            turn = row.get("turn")
            job = _new_job(r, row["created_at"], row["updated_at"], run_at, turn, jsonb)
            out.append(job if "start_by" not in row else replace(job, start_by=row["start_by"]))
            continue
        found_job = existing.get((r["queue"], r["owner_id"], r["idempotency_key"] or ""))
        if found_job is None and guarded:
            return None  # kept out by the guard (or its key's job has gone since)
        if found_job is None:  # the conflicting row vanished between the two statements
            raise JobNotFound(
                f"job with idempotency key {r['idempotency_key']!r} was deleted while enqueueing",
                hint="enqueue again",
            )
        out.append(found_job)
    return out


def _owners(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The owners of a batch, each once, in order."""
    if len(rows) == 1:
        owner = rows[0]["owner_id"]
        return [] if owner is None else [owner]
    return list(dict.fromkeys(r["owner_id"] for r in rows if r["owner_id"] is not None))


#: The ``extra`` of every job `_new_job` builds: none, and one shared empty mapping is
#: cheaper than a dict per job.
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


def _new_job(
    r: Mapping[str, Any],
    created_at: datetime,
    updated_at: datetime,
    run_at: datetime,
    turn: float | None,
    jsonb: bool,
) -> Job:
    """The `Job` a new row (as `NewJob.to_row` made it) is stored as, given the times the
    database chose: the same value a read of the row gives, without the read (nor the
    RETURNING of every column, which costs more than the insert itself for one job)."""
    text: str = r["payload"]
    # By position, in `Job`'s field order, through `job_of` (cheaper than by keyword, and
    # than ``Job(...)``, for every job of a large batch, docs/performance.md);
    # tests/queue/test_enqueue_bulk.py checks every value.
    return job_of(
        (
            r["id"],  # id
            r["queue"],  # queue
            r["kind"],  # kind
            Status.PENDING,  # status
            stored_json(text, r["payload_value"]) if jsonb else r["payload_value"],  # payload
            None,  # result
            None,  # result_url
            None,  # error
            [],  # errors
            0,  # progress
            None,  # progress_message
            r["priority"],  # priority
            0,  # attempts
            r["max_attempts"],  # max_attempts
            run_at,  # run_at
            None,  # locked_by
            None,  # lease_expires_at
            None,  # remote_task_id
            r["owner_id"],  # owner_id
            r["idempotency_key"],  # idempotency_key
            turn,  # turn
            r["limit_key"],  # limit_key
            created_at,  # created_at
            None,  # started_at
            None,  # completed_at
            updated_at,  # updated_at
            None,  # cost
            None,  # cost_unit
            r.get("reserved"),  # reserved
            r.get("start_by_value"),  # start_by: as given (one from expires_in is the database's)
            r.get("trace_context"),  # trace_context
            _NO_EXTRA,  # extra
            None,  # unreadable
        )
    )


def _new_jobs(
    rows: Sequence[Mapping[str, Any]],
    now: datetime,
    places: Mapping[tuple[str, int, str | None], Mapping[str, Any]],
    out: list[Job],
) -> Iterator[tuple[Job, str]]:
    """Each row as the `Job` the COPY stores (appended to ``out``), with its payload text;
    ``now`` is the database clock, read just before, and ``places`` where each queue,
    priority and owner's jobs enter the line (`Statements.copy_context`): a job due now
    takes its owner's next turn, as the INSERT gives it (`jobqueue.sql.fair`).

    A generator on purpose: the driver sends each record as it is made, so the database
    inserts one part of the batch while Python builds the next (two cores at work).
    """
    for r, rank in zip(rows, owner_ranks(rows), strict=True):
        run_at = r["run_at_value"]
        if run_at is None:
            delay = r["delay_seconds"]
            # Due now: the clock reading itself, one object the COPY formats once.
            run_at = now + timedelta(seconds=delay) if delay else now
        else:
            run_at = run_at.astimezone(UTC)
        turn = None
        if run_at <= now:
            place = places[(r["queue"], r["priority"], r["owner_id"])]
            # Within the table's bound, as `jobqueue.sql.fair.turn_of` keeps it.
            turn = min(place["base"] + (rank - 1) * place["step"], MAX_TURN)
        job = _new_job(r, now, now, run_at, turn, True)
        expires, start_by = r.get("expires_seconds"), r.get("start_by_value")
        if expires is not None:
            job = replace(job, start_by=now + timedelta(seconds=expires))
        elif start_by is not None:
            job = replace(job, start_by=start_by.astimezone(UTC))
        out.append(job)
        yield job, r["payload"]


@operation(Access.ONE_WRITE)
def claim(
    s: Statements,
    worker_id: str,
    *,
    limit: int,
    lease: float,
    queues: Sequence[str] | None,
    kinds: Sequence[str] | None,
    limits: QueueLimits,
    mode: ClaimMode | None = None,
    durable: bool = True,
) -> Steps[list[Job]]:
    """Claim up to ``limit`` due jobs. ``queues=[]`` or ``kinds=[]`` ask for none;
    ``durable=False``: commit without waiting for the disk (`Claiming.claim`).

    The plain claim, which takes nothing while a limits row is in force: when it takes
    nothing, ``mode`` learns whether one is, so the next claim obeys it
    (`jobqueue.operations.limits.claim_within_limits`)."""
    lease = _check_claim(worker_id, limit, lease)
    if _asks_for_nothing(queues, kinds):
        return []
    rows = yield s.claim(
        worker_id, limit=limit, lease=lease, queues=queues, kinds=kinds, durable=durable
    )
    if not rows and mode is not None:
        yield from _learn_mode(s, mode)
    return _claimed_jobs(rows, limits)


def _learn_mode(s: Statements, mode: ClaimMode) -> Steps[None]:
    (found,) = yield s.limits_in_force()
    mode.limited = bool(found["in_force"])


def _check_claim(worker_id: str, limit: int, lease: float) -> float:
    """Check a claim's worker, limit and lease; the lease in seconds."""
    check_text(worker_id, "worker_id")
    check_int(limit, "limit", 1, 10_000)
    return seconds_of(lease, "lease", low=0.001)


def _asks_for_nothing(queues: Sequence[str] | None, kinds: Sequence[str] | None) -> bool:
    """Whether a claim names no queue or no kind (None means any)."""
    return (queues is not None and len(queues) == 0) or (kinds is not None and len(kinds) == 0)


def _claimed_jobs(rows: Rows, limits: QueueLimits) -> list[Job]:
    """Claimed rows as jobs in the order they were due (UPDATE ... RETURNING has none).

    A payload far beyond the queue's size limit is not even decoded: the worker fails
    its job rather than spend memory and time on it."""
    longest = READ_PAYLOAD_FACTOR * limits.max_payload_bytes
    jobs = [read_job(r, longest) for r in rows]
    jobs.sort(key=lambda j: (-j.priority, j.turn or 0.0, j.id))
    return jobs


def _check_fence(s: Statements, job: Job, rows: Rows, action: str) -> Steps[Row]:
    """The single row a fenced write returned, or `LeaseLost` explaining why there is none."""
    if rows:
        return rows[0]
    state = yield s.fence_state(job.id)
    if not state:
        raise JobNotFound(f"cannot {action} job {job.id}: it no longer exists")
    now = state[0]
    again = ""
    if now["attempts"] == job.attempts and now["started_at"] != job.started_at:
        again = " (a later claim: this one was released)"
    raise LeaseLost(
        f"cannot {action} job {job.id} (attempt {job.attempts}): it is now {now['status']}, "
        f"attempt {now['attempts']}{again}, held by {now['locked_by'] or 'nobody'}",
        hint="nothing was written; the job's lease expired or it was released, cancelled or reaped",
    )


@operation(Access.ONE_WRITE)
def heartbeat(s: Statements, job: Job, lease: float) -> Steps[datetime]:
    lease = seconds_of(lease, "lease", low=0.001)
    rows = yield s.heartbeat(job.id, job.attempts, job.started_at, lease)
    row = yield from _check_fence(s, job, rows, "extend the lease of")
    value: datetime = row["lease_expires_at"]
    return value


@operation(Access.ONE_WRITE)
def heartbeat_many(
    s: Statements, worker_id: str, jobs: Sequence[Job], lease: float
) -> Steps[set[uuid.UUID]]:
    """Extend the leases of the held ``jobs``; returns the ids still held (in that attempt)."""
    check_text(worker_id, "worker_id")
    lease = seconds_of(lease, "lease", low=0.001)
    if not jobs:
        return set()
    held = [(j.id, j.attempts, j.started_at) for j in jobs]
    rows = yield s.heartbeat_many(worker_id, held, lease)
    return {r["id"] for r in rows}


@operation(Access.ONE_WRITE)
def set_progress(
    s: Statements, job: Job, percent: int, message: str | None, limits: QueueLimits
) -> Steps[None]:
    check_int(percent, "progress", 0, 100)
    if message is not None:
        check_text(message, "progress message", limit=MAX_PROGRESS_MESSAGE, empty=True)
    rows = yield s.set_progress(job.id, job.attempts, job.started_at, percent, message)
    yield from _check_fence(s, job, rows, "report progress on")


@operation(Access.ONE_WRITE)
def save_remote_task_id(s: Statements, job: Job, remote_task_id: str) -> Steps[None]:
    check_text(remote_task_id, "remote task id", limit=MAX_REMOTE_TASK_ID)
    rows = yield s.save_remote_task_id(job.id, job.attempts, job.started_at, remote_task_id)
    yield from _check_fence(s, job, rows, "save the remote task id of")


def _check_result(result: Any, result_url: str | None, limits: QueueLimits) -> str | None:
    """Check a result and its URL; the result as JSON text (None stays None: SQL NULL)."""
    if result_url is not None:
        check_text(result_url, "result_url", limit=MAX_RESULT_URL)
    return None if result is None else check_json(result, "result", limits)


def _check_spent(cost: Any, unit: Any) -> tuple[Decimal | None, str | None]:
    """An attempt's reported cost and unit, checked (a unit without a cost is dropped)."""
    amount = check_cost(cost)
    return amount, None if amount is None else check_cost_unit(unit)


@operation(Access.ONE_WRITE)
def complete(
    s: Statements,
    job: Job,
    result: Any,
    result_url: str | None,
    limits: QueueLimits,
    cost: Any = None,
    cost_unit: str | None = None,
) -> Steps[Job]:
    result_json = _check_result(result, result_url, limits)
    amount, unit = _check_spent(cost, cost_unit)
    rows = yield s.complete(
        job.id, job.attempts, job.started_at, result_json, result_url, amount, unit
    )
    return read_job((yield from _check_fence(s, job, rows, "complete")))


def _completion_rows(items: Sequence[Completion], limits: QueueLimits) -> list[dict[str, Any]]:
    rows = []
    for i in items:
        amount, unit = _check_spent(i.cost, i.cost_unit)
        rows.append(
            {
                "id": i.job.id,
                "attempt": i.job.attempts,
                "started": i.job.started_at,
                "result": _check_result(i.result, i.result_url, limits),
                "result_url": i.result_url,
                "cost": amount,
                "cost_unit": unit,
            }
        )
    return rows


@operation(Access.ONE_WRITE)
def complete_many(
    s: Statements, items: Sequence[Completion], limits: QueueLimits
) -> Steps[set[uuid.UUID]]:
    """Complete a batch; returns the ids written. The others were fenced off."""
    if not items:
        return set()
    rows = yield s.complete_many(_completion_rows(items, limits))
    return {r["id"] for r in rows}


def complete_and_claim(
    s: Statements,
    items: Sequence[Completion],
    limits: QueueLimits,
    worker_id: str,
    *,
    limit: int,
    lease: float,
    queues: Sequence[str] | None,
    kinds: Sequence[str] | None,
    mode: ClaimMode | None = None,
) -> Operation[tuple[set[uuid.UUID], list[Job]]]:
    """Complete a batch and claim up to ``limit`` jobs atomically: the ids written (the
    others were fenced off) and the jobs claimed. One statement on PostgreSQL; on SQLite
    the two statements of `complete_many` and `claim`, in one transaction."""
    both = _complete_and_claim_at_once if s.dialect == "postgresql" else _complete_then_claim
    return both(
        s, items, limits, worker_id, limit=limit, lease=lease, queues=queues, kinds=kinds, mode=mode
    )


@operation(Access.ONE_WRITE)
def _complete_and_claim_at_once(
    s: Statements,
    items: Sequence[Completion],
    limits: QueueLimits,
    worker_id: str,
    *,
    limit: int,
    lease: float,
    queues: Sequence[str] | None,
    kinds: Sequence[str] | None,
    mode: ClaimMode | None = None,
) -> Steps[tuple[set[uuid.UUID], list[Job]]]:
    """`complete_and_claim` as one statement (PostgreSQL)."""
    lease = _check_claim(worker_id, limit, lease)
    if _asks_for_nothing(queues, kinds):
        return (yield from complete_many(s, items, limits).steps), []
    step = s.complete_and_claim(
        _completion_rows(items, limits),
        worker_id,
        limit=limit,
        lease=lease,
        queues=queues,
        kinds=kinds,
    )
    if step is None:
        raise ValueError(f"complete_and_claim is one statement on PostgreSQL, not {s.dialect}")
    rows = yield step
    # One row at least (the LEFT JOIN); one of them lists the ids written.
    found = [r["jq_completed"] for r in rows if r["jq_completed"] is not None]
    written = set(found[0]) if found else set()
    rows = [_without_completed(r) for r in rows if r["id"] is not None]
    if not rows and mode is not None:
        yield from _learn_mode(s, mode)
    return written, _claimed_jobs(rows, limits)


def _without_completed(row: Row) -> Row:
    """A claimed job's row without the written ids' column: the row itself when the
    runner gave a dict (it is ours to change), else a copy."""
    if isinstance(row, dict):
        row.pop("jq_completed", None)
        return row
    return {k: v for k, v in row.items() if k != "jq_completed"}


@operation(Access.TRANSACTION)
def _complete_then_claim(
    s: Statements,
    items: Sequence[Completion],
    limits: QueueLimits,
    worker_id: str,
    *,
    limit: int,
    lease: float,
    queues: Sequence[str] | None,
    kinds: Sequence[str] | None,
    mode: ClaimMode | None = None,
) -> Steps[tuple[set[uuid.UUID], list[Job]]]:
    """`complete_and_claim` as `complete_many` and `claim`, committed together (SQLite)."""
    lease = _check_claim(worker_id, limit, lease)
    written = yield from complete_many(s, items, limits).steps
    if _asks_for_nothing(queues, kinds):
        return written, []
    rows = yield s.claim(worker_id, limit=limit, lease=lease, queues=queues, kinds=kinds)
    if not rows and mode is not None:
        yield from _learn_mode(s, mode)
    return written, _claimed_jobs(rows, limits)


@operation(Access.ONE_WRITE)
def fail(
    s: Statements,
    job: Job,
    error: str,
    *,
    retry: bool | None,
    retry_in: float | timedelta | None,
    backoff: tuple[float, float],
    cost: Any = None,
    cost_unit: str | None = None,
) -> Steps[Job]:
    """Record a failed attempt. ``retry=None`` retries while attempts remain, ``False`` never,
    ``True`` even when they are spent (one more attempt). ``cost``: what the attempt cost
    anyway (a provider that charged for a task that then failed), added to the job's."""
    message = storable_text(str(error))[:MAX_ERROR] or "failed without a message"
    if retry is None:
        retry = job.attempts < job.max_attempts
    delay: float | None = None
    if retry:
        delay = (
            seconds_of(retry_in, "retry_in")
            if retry_in is not None
            else backoff_delay(job.attempts, *backoff)
        )
    amount, unit = _check_spent(cost, cost_unit)
    rows = yield s.fail(job.id, job.attempts, job.started_at, message, delay, amount, unit)
    return read_job((yield from _check_fence(s, job, rows, "fail")))


@operation(Access.ONE_WRITE)
def release(s: Statements, job: Job, reason: str) -> Steps[Job]:
    reason = storable_text(str(reason))[:MAX_ERROR]
    rows = yield s.release(job.id, job.attempts, job.started_at, reason)
    return read_job((yield from _check_fence(s, job, rows, "release")))


def _explain_move(s: Statements, job_id: uuid.UUID, target: Status) -> Steps[Job]:
    """After a move matched no row: `JobNotFound`, or `InvalidTransition` naming the status."""
    rows = yield s.get(job_id)
    if not rows:
        raise JobNotFound(f"no job {job_id}")
    job = read_job(rows[0])
    check_move(job.status, target, job.id)
    # Allowed by the table of moves but refused by the statement's own condition.
    raise InvalidTransition(f"job {job_id} is {job.status} and cannot move to {target} now")


@operation(Access.ONE_WRITE)
def cancel(s: Statements, job_id: object, owner_id: str | None = None) -> Steps[Job]:
    jid = parse_job_id(job_id)
    rows = yield s.cancel(jid, owner_id)
    if rows:
        return read_job(rows[0])
    if owner_id is not None:
        found = yield s.get(jid, owner_id)
        if not found:
            raise JobNotFound(f"no job {jid}")
    return (yield from _explain_move(s, jid, Status.CANCELLED))


@operation(Access.ONE_WRITE)
def cancel_if_pending(
    s: Statements, job_id: object, owner_id: str | None = None
) -> Steps[Job | None]:
    """Cancel the job only while no claim has taken it: the cancelled job, or None when it
    has started, is final, or is not there (or not ``owner_id``'s). One statement, so a
    claim in between cannot be overtaken: a job that started keeps running."""
    jid = parse_job_id(job_id)
    rows = yield s.cancel(jid, owner_id, pending_only=True)
    return read_job(rows[0]) if rows else None


@operation(Access.ONE_WRITE)
def retry(s: Statements, job_id: object) -> Steps[Job]:
    jid = parse_job_id(job_id)
    rows = yield s.retry(jid)
    if rows:
        return read_job(rows[0])
    current = yield s.get(jid)
    if current and read_job(current[0]).status is Status.PROCESSING:
        raise InvalidTransition(f"job {jid} is running; only failed or cancelled jobs retry")
    return (yield from _explain_move(s, jid, Status.PENDING))


@operation(Access.READ)
def get(s: Statements, job_id: object, owner_id: str | None = None) -> Steps[Job]:
    jid = parse_job_id(job_id)
    rows = yield s.get(jid, owner_id)
    if not rows:
        raise JobNotFound(f"no job {jid}")
    return read_job(rows[0])


@operation(Access.READ)
def list_jobs(
    s: Statements,
    *,
    owner_id: str | None,
    status: Status | str | Iterable[Status | str] | None,
    queue: str | None,
    kind: str | None,
    since: datetime | timedelta | None,
    limit: int,
) -> Steps[list[Job]]:
    check_int(limit, "limit", 1, 10_000)
    statuses = None if status is None else parse_statuses(status)
    since_at: datetime | float | None
    if since is None or isinstance(since, timedelta):
        since_at = None if since is None else seconds_of(since, "since")
    elif isinstance(since, datetime) and since.tzinfo is not None:
        since_at = since
    else:
        raise PayloadError(
            "since must be a timezone-aware datetime or a timedelta",
            hint="e.g. datetime.now(UTC) - timedelta(hours=1), or timedelta(hours=1)",
        )
    rows = yield s.list(
        owner_id=owner_id,
        statuses=statuses,
        queue=queue,
        kind=kind,
        since=since_at,
        limit=limit,
    )
    return [read_job(r) for r in rows]


@operation(Access.READ)
def stats(
    s: Statements,
    since: timedelta | float,
    by: str | None = None,
    owner_id: str | None = None,
) -> Steps[list[StatusStats]]:
    """Per status (and ``by`` ``"kind"`` or ``"owner"``) and cost unit: jobs, mean
    duration, cost and how many cost money; ``owner_id`` keeps one owner's jobs."""
    secs = seconds_of(since, "since")
    if by is not None and by not in s.STATS_BY:
        raise PayloadError(
            f"stats can be grouped by {' or '.join(s.STATS_BY)}, not {by!r}",
            hint="by='owner' for each owner's spending, by='kind' for each kind's",
        )
    if owner_id is not None:
        check_text(owner_id, "owner_id")
    rows = yield s.stats(secs, by, owner_id)
    return [
        StatusStats(
            Status(r["status"]),
            int(r["count"]),
            None if r["avg_duration_sec"] is None else float(r["avg_duration_sec"]),
            kind=r.get("grouped") if by == "kind" else None,
            owner_id=r.get("grouped") if by == "owner" else owner_id,
            cost=r["cost"] if r["cost"] is not None else Decimal(0),
            cost_unit=r["cost_unit"],
            charged=int(r["charged"] or 0),
        )
        for r in rows
    ]


@operation(Access.ONE_WRITE)
def reap(s: Statements) -> Steps[list[tuple[uuid.UUID, Status]]]:
    rows = yield s.reap()
    return [(r["id"], Status(r["status"])) for r in rows]


@operation(Access.ONE_WRITE)
def expire(s: Statements) -> Steps[list[Job]]:
    """Move up to `jobqueue.sql.manage.EXPIRY_BATCH` pending jobs past their start deadline
    to ``expired`` (by the database clock); the jobs moved. No claim takes such a job
    meanwhile (`Statements.before_deadline`), so it never reaches a handler either way."""
    rows = yield s.expire()
    expired = [read_job(r) for r in rows]
    yield from release_expired(s, expired)
    return expired


def release_expired(s: Statements, expired: Sequence[Job]) -> Steps[None]:
    """Give back what the ``expired`` jobs held but never used: the one place for it, run
    in the expiry's own operation, right after its write.

    Nothing needs a write of its own: a budget's reservation counts only while its job is
    pending or running (`jobqueue.sql.budgets`), so the move to ``expired`` released it,
    as a cancel before the start and a failure that cost nothing do."""
    yield from ()


@operation(Access.ONE_WRITE)
def prune(
    s: Statements, older_than: timedelta | float, statuses: Iterable[Status | str] | None
) -> Steps[int]:
    secs = seconds_of(older_than, "older_than")
    chosen = parse_statuses(statuses) if statuses is not None else list(Status)
    final = [x for x in chosen if x.is_final]
    if not final:
        raise PayloadError(
            "prune removes finished jobs only: completed, failed, cancelled or expired"
        )
    rows = yield s.prune(secs, final)
    return len(rows)
