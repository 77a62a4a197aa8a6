"""What each queue method does, written once for the sync and the async queue.

An operation is a generator: it validates its input, yields ``(statement, params)`` steps,
receives each step's rows, and returns the method's answer (or raises our error). It never
touches a connection. `JobQueue` drives operations with ``Connection.execute`` and
`AsyncJobQueue` with ``await AsyncConnection.execute``, each inside one transaction, so both
share every rule, every statement and every error message — the "sans-IO" style.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import Any, TypeVar

from sqlalchemy import Executable

from .backoff import full_jitter
from .bulk import CopyRows, Direct
from .errors import InvalidJobId, InvalidTransition, JobNotFound, LeaseLost, PayloadError
from .schema import (
    DEFAULT_KIND,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    JSON_COLUMNS,
    MAX_ATTEMPTS_LIMIT,
    MAX_ERROR,
    MAX_NAME,
    MAX_PRIORITY,
    MAX_PROGRESS_MESSAGE,
    MAX_REMOTE_TASK_ID,
    MAX_RESULT_URL,
    MAX_TEXT,
    Job,
    Status,
    check_move,
)
from .statements import Params, Statements

T = TypeVar("T")
Step = tuple[Executable | CopyRows | Direct, Params]
Row = Mapping[str, Any]
Rows = list[Row]
Operation = Generator[Step, Rows, T]

MAX_DELAY = timedelta(days=366)
DEFAULT_MAX_PAYLOAD_BYTES = 1_048_576
DEFAULT_LEASE = 30.0


# -- ids ----------------------------------------------------------------------------------


_uuid7_lock = threading.Lock()
_uuid7_last = (0, 0)  # (milliseconds, 74-bit counter) of the last id made here


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): 48 bits of Unix milliseconds, then random.

    Time-ordered ids keep the primary key index append-mostly, and sort like creation time.
    Ids made in this process within one millisecond stay in order too (RFC 9562's
    monotonic counter): the 74 random bits start at a random value each millisecond and
    count up within it.
    """
    global _uuid7_last
    ms = time.time_ns() // 1_000_000
    with _uuid7_lock:
        last_ms, last_counter = _uuid7_last
        if ms > last_ms:
            counter = int.from_bytes(os.urandom(10), "big") >> 7  # 73 bits: room to count
        else:  # same millisecond (or the clock stepped back): count on from the last id
            ms, counter = last_ms, last_counter + 1
            if counter >= 1 << 74:
                ms, counter = ms + 1, 0
        _uuid7_last = (ms, counter)
    rand_a, rand_b = counter >> 62, counter & ((1 << 62) - 1)
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | rand_a << 64 | 0x2 << 62 | rand_b
    return uuid.UUID(int=value)


def parse_job_id(job_id: object) -> uuid.UUID:
    """Accept a UUID, its string, or a `Job`; refuse anything else with `InvalidJobId`."""
    if isinstance(job_id, Job):
        return job_id.id
    if isinstance(job_id, uuid.UUID):
        return job_id
    if isinstance(job_id, str):
        try:
            return uuid.UUID(job_id.strip())
        except ValueError:
            pass
    raise InvalidJobId(f"{str(job_id)[:80]!r} is not a job id")


# -- validation ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what callers may store; checked before anything is written."""

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES


#: Deeper values are refused: JSON encoders and decoders recurse, so a value nested a few
#: thousand levels deep could be written and then fail to read back (or fail half-way).
MAX_JSON_DEPTH = 200


def _json_shape_problem(value: Any) -> str | None:
    """Why ``value`` would not come back from a JSON column as it went in, or None.

    Non-string keys are refused because JSON turns them into strings (``{1: "a", "1": "b"}``
    would silently lose an entry); nesting is bounded (see `MAX_JSON_DEPTH`); strings must not
    hold NUL (JSON escapes it as ``\\u0000``, which PostgreSQL's jsonb refuses) or lone
    surrogates (not UTF-8).
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"is nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, str):
            if "\x00" in item or _has_lone_surrogate(item):
                return "holds a NUL character or a lone surrogate"
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"has a non-string key {str(key)[:40]!r}"
                stack.append((key, depth + 1))
                stack.append((child, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, depth + 1) for child in item)
    return None


#: ``json.dumps(value, allow_nan=False, ensure_ascii=False)`` without building an encoder
#: per call (a quarter of the encoding time of a small payload). Encoding keeps no state.
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False)


def check_json(value: Any, what: str, limits: Limits) -> str:
    """``value`` as JSON text, refused when it is not strict JSON (NaN included) or too
    large to store.

    The text is what gets stored (the statements bind it as is): the value is encoded
    once, not once to check it and again to write it.
    """
    return encode_json(value, what, limits)[0]


def encode_json(value: Any, what: str, limits: Limits) -> tuple[str, Any]:
    """`check_json`, and the value as decoded from its text (a fresh copy, as a read
    would give it).

    The common case costs one encode, one decode and one comparison instead of a walk over
    every item in Python (this runs once per job of an `enqueue_many`): when the decoded
    text equals the value, no key was turned into a string, and the text itself shows
    the rest (no escaped NUL, valid UTF-8, fewer brackets than the depth limit). Anything
    else gets the exact walk (`_json_shape_problem`), which explains what is wrong or
    accepts it (a tuple decodes to a list, for one).
    """
    try:
        encoded = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        _refuse_shape(value, what)
        raise PayloadError(f"the {what} is not JSON-serialisable: {exc}") from None
    try:
        size = len(encoded.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: the walk names it
        _refuse_shape(value, what)
        raise  # not reached: the walk finds every lone surrogate
    decoded = json.loads(encoded)
    if (
        "\\u0000" in encoded
        or encoded.count("[") + encoded.count("{") > MAX_JSON_DEPTH
        or decoded != value
    ):
        _refuse_shape(value, what)
    if size > limits.max_payload_bytes:
        raise PayloadError(
            f"the {what} is {size} bytes, over the limit of {limits.max_payload_bytes}",
            hint="store large data elsewhere (object storage) and put its URL in the payload, "
            "or raise max_payload_bytes",
        )
    return encoded, decoded


def _refuse_shape(value: Any, what: str) -> None:
    problem = _json_shape_problem(value)
    if problem is not None:
        raise PayloadError(f"the {what} {problem}")


def _jsonb_float(literal: str) -> float | int:
    """A JSON number with a fraction or exponent as PostgreSQL's jsonb gives it back: jsonb
    stores numbers as ``numeric`` and prints them without an exponent, so ``1e+16`` comes
    back as the integer ``10000000000000000``. Every other float comes back as it went."""
    if "e+" in literal:
        return int(Decimal(literal))
    return float(literal)


def stored_json(text: str, decoded: Any) -> Any:
    """The value PostgreSQL's jsonb column gives back for JSON ``text`` (as `encode_json`
    encoded it, ``decoded`` its decoding): what a job read back holds, without reading it
    back. Only numbers written with an exponent change."""
    if "e+" in text:
        return json.loads(text, parse_float=_jsonb_float)
    return decoded


# -- reading rows -------------------------------------------------------------------------


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


#: Strict JSON: ``NaN`` and ``Infinity``, which Python's decoder accepts, are refused, as on
#: the way in (`encode_json`). Built once: `json.loads` with options builds one per call.
_DECODER = json.JSONDecoder(parse_constant=_not_json)

#: A claimed payload whose text is more than this many times the queue's
#: ``max_payload_bytes`` (in characters) is not decoded: `enqueue` cannot have written
#: it. (PostgreSQL prints a number written with an exponent in full, ``1e300`` as 301
#: digits, so a payload `enqueue` accepted can read back longer than it went in, though
#: never by this much.)
READ_PAYLOAD_FACTOR = 64


def _why_not(text: object, exc: BaseException) -> str:
    if not isinstance(text, str):
        return f"it is {type(text).__name__}, not JSON text"
    if isinstance(exc, RecursionError):
        return "it is nested too deeply to read"
    if isinstance(exc, json.JSONDecodeError):
        return f"it is not JSON ({exc})"
    if "integer string conversion" in str(exc):
        return f"it holds a number of more than {sys.get_int_max_str_digits()} digits"
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def read_job(row: Mapping[str, Any], max_payload_chars: int | None = None) -> Job:
    """The `Job` of a row whose JSON columns came back as text (`Statements.columns`).

    Each row is decoded on its own, so a row no decoder can read (a client wrote it)
    becomes a job marked `Job.unreadable` instead of failing every job read with it.
    ``max_payload_chars`` refuses a longer payload without decoding it (see
    `READ_PAYLOAD_FACTOR`).
    """
    values = dict(row)
    unreadable: str | None = None
    for column in JSON_COLUMNS:
        text = values[column]
        if text is None:
            continue
        try:
            if column == "payload" and max_payload_chars is not None:
                _check_length(text, max_payload_chars)
            value = values[column] = _DECODER.decode(text)
            if column == "errors" and not isinstance(value, list):
                raise ValueError("it is not a JSON array")
        except (ValueError, TypeError, RecursionError) as exc:
            values[column] = None
            problem = f"{column} could not be decoded: {_why_not(text, exc)}"
            unreadable = problem if unreadable is None else f"{unreadable}; {problem}"
    return Job.from_values(values, unreadable)


def _check_length(text: object, limit: int) -> None:
    if isinstance(text, str) and len(text) > limit:
        raise ValueError(
            f"it is {len(text)} characters of JSON, far more than the queue's "
            f"max_payload_bytes allows ({limit // READ_PAYLOAD_FACTOR})"
        )


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def storable_text(text: str) -> str:
    """Free text (an exception's message) made storable in any text column: NUL and lone
    surrogates, which PostgreSQL and UTF-8 refuse, become visible escapes. A failure must
    always be recordable, whatever its message holds."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


def check_text(value: Any, what: str, *, limit: int = MAX_TEXT, empty: bool = False) -> None:
    """Refuse a name or short text the database could not store or index as given.

    A caller's mistake becomes `PayloadError` here, before any write, instead of a driver
    error half-way (PostgreSQL refuses NUL in text, UTF-8 refuses lone surrogates) or an
    index entry too long. Blank text is refused unless ``empty``: a blank kind or queue
    name is always a bug in the caller.
    """
    if not isinstance(value, str):
        raise PayloadError(f"{what} must be a string, not {type(value).__name__}")
    if (not empty and not value.strip()) or len(value) > limit:
        raise PayloadError(f"{what} must be 1 to {limit} characters")
    if "\x00" in value or _has_lone_surrogate(value):
        raise PayloadError(f"{what} holds a NUL character or a lone surrogate")


def check_int(value: Any, what: str, low: int, high: int) -> int:
    """``value`` when it is an int within ``[low, high]``; `PayloadError` otherwise.

    ``bool`` is refused although it is an ``int`` (``priority=True`` is a mistake), and the
    bounds keep values inside the column types on every database.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise PayloadError(f"{what} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise PayloadError(f"{what} must be between {low} and {high}, not {value}")
    return value


def seconds_of(value: float | timedelta, what: str, *, low: float = 0.0) -> float:
    """A non-negative, finite duration in seconds from a number or a timedelta."""
    secs = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(secs, bool) or not isinstance(secs, int | float) or not math.isfinite(secs):
        raise PayloadError(f"{what} must be a finite number of seconds or a timedelta")
    if secs < low or secs > MAX_DELAY.total_seconds():
        raise PayloadError(f"{what} must be between {low} seconds and {MAX_DELAY.days} days")
    return float(secs)


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job to enqueue, as the caller described it (see `JobQueue.enqueue`)."""

    kind: str = DEFAULT_KIND
    payload: Any = None
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    run_at: datetime | None = None
    delay: float | timedelta | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    owner_id: str | None = None
    idempotency_key: str | None = None

    def to_row(self, limits: Limits) -> dict[str, Any]:
        check_text(self.kind, "kind", limit=MAX_NAME)
        check_text(self.queue, "queue", limit=MAX_NAME)
        payload = {} if self.payload is None else self.payload
        payload_json, payload_value = encode_json(payload, "payload", limits)
        check_int(self.priority, "priority", -MAX_PRIORITY, MAX_PRIORITY)
        check_int(self.max_attempts, "max_attempts", 1, MAX_ATTEMPTS_LIMIT)
        if self.owner_id is not None:
            check_text(self.owner_id, "owner_id")
        if self.idempotency_key is not None:
            check_text(self.idempotency_key, "idempotency_key")
        if self.run_at is not None and self.delay is not None:
            raise PayloadError("give run_at or delay, not both")
        if self.run_at is not None and (
            not isinstance(self.run_at, datetime) or self.run_at.tzinfo is None
        ):
            raise PayloadError("run_at must be a timezone-aware datetime")
        if self.run_at is not None:
            try:
                self.run_at.astimezone(UTC)  # stored in UTC: it must exist in UTC
            except OverflowError:
                raise PayloadError("run_at is out of range once converted to UTC") from None
        delay = 0.0 if self.delay is None else seconds_of(self.delay, "delay")
        return {
            "id": uuid7(),
            "queue": self.queue,
            "kind": self.kind,
            "payload": payload_json,
            "payload_value": payload_value,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "owner_id": self.owner_id,
            "idempotency_key": self.idempotency_key,
            "run_at_value": self.run_at,
            "delay_seconds": delay,
        }


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].

    Full jitter spreads retries of jobs that failed together (a provider outage) so they do
    not come back as one burst.
    """
    return full_jitter(attempt, base, cap)


@dataclass(frozen=True, slots=True)
class StatusStats:
    """One line of the statistics: a status, its job count and mean duration."""

    status: Status
    count: int
    avg_duration_sec: float | None


# -- operations ---------------------------------------------------------------------------


#: From this many jobs on, `enqueue_many` on PostgreSQL COPYs instead of INSERTing (when no
#: job has an idempotency key). COPY takes three round trips (`copy_context`, the COPY
#: command, its data) against the INSERT's one, and saves about 35 µs of client and server
#: time per job (measured on the same host: 100 jobs 11.7 -> 8.1 ms, 1,000 jobs 88 -> 53 ms).
#: From 200 jobs on that pays for round trips of up to about 3 ms, which covers a database
#: in the same region (Supabase's included).
COPY_MIN_JOBS = 200


def enqueue_many(s: Statements, rows: Sequence[dict[str, Any]]) -> Operation[list[Job]]:
    """Insert the rows; for an idempotency key the same owner (or, for a job without one,
    an unowned job) already used in the queue, the existing job.

    Large batches on PostgreSQL are COPYed when no job carries an idempotency key (keys need
    ON CONFLICT, which COPY has not) and the role may COPY (see `Statements.copy_context`).
    The jobs are then built here, not read back: every value is known before the write
    (ids are made here, the times come from the database clock read in the same round
    trip as the permission check), so they equal what `get` returns afterwards.
    """
    if not rows:
        return []
    if (
        s.dialect == "postgresql"
        and len(rows) >= COPY_MIN_JOBS
        and all(r["idempotency_key"] is None for r in rows)
    ):
        (context,) = yield s.copy_context()
        if context["may_copy"]:
            jobs: list[Job] = []
            yield s.copy_new(_new_jobs(rows, context["now"], jobs))
            return jobs
    inserted = yield s.insert_many(rows)
    jsonb = s.dialect == "postgresql"
    written = {i["id"]: i for i in inserted}
    missing = [r for r in rows if r["id"] not in written]
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
            out.append(_new_job(r, row["created_at"], row["updated_at"], run_at, jsonb))
            continue
        found_job = existing.get((r["queue"], r["owner_id"], r["idempotency_key"] or ""))
        if found_job is None:  # the conflicting row vanished between the two statements
            raise JobNotFound(
                f"job with idempotency key {r['idempotency_key']!r} was deleted while enqueueing",
                hint="enqueue again",
            )
        out.append(found_job)
    return out


#: The ``extra`` of every job `_new_job` builds: none, and one shared empty mapping is
#: cheaper than a dict per job.
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


def _new_job(
    r: Mapping[str, Any], created_at: datetime, updated_at: datetime, run_at: datetime, jsonb: bool
) -> Job:
    """The `Job` a new row (as `NewJob.to_row` made it) is stored as, given the times the
    database chose: the same value a read of the row gives, without the read (nor the
    RETURNING of every column, which costs more than the insert itself for one job)."""
    text: str = r["payload"]
    # By position, in `Job`'s field order (a third cheaper than by keyword, per job of a
    # large batch); tests/test_enqueue_bulk.py checks the order and every value.
    return Job(
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
        created_at,  # created_at
        None,  # started_at
        None,  # completed_at
        updated_at,  # updated_at
        _NO_EXTRA,  # extra
        None,  # unreadable
    )


def _new_jobs(
    rows: Iterable[Mapping[str, Any]], now: datetime, out: list[Job]
) -> Iterator[tuple[Job, str]]:
    """Each row as the `Job` the COPY stores (appended to ``out``), with its payload text;
    ``now`` is the database clock, read just before.

    A generator on purpose: the driver sends each record as it is made, so the database
    inserts one part of the batch while Python builds the next (two cores at work).
    """
    for r in rows:
        run_at = r["run_at_value"]
        if run_at is None:
            run_at = now + timedelta(seconds=r["delay_seconds"])
        else:
            run_at = run_at.astimezone(UTC)
        job = _new_job(r, now, now, run_at, True)
        out.append(job)
        yield job, r["payload"]


def claim(
    s: Statements,
    worker_id: str,
    *,
    limit: int,
    lease: float,
    queues: Sequence[str] | None,
    kinds: Sequence[str] | None,
    limits: Limits,
) -> Operation[list[Job]]:
    """Claim up to ``limit`` due jobs. ``queues=[]`` or ``kinds=[]`` ask for none."""
    check_text(worker_id, "worker_id")
    check_int(limit, "limit", 1, 10_000)
    lease = seconds_of(lease, "lease", low=0.001)
    if _asks_for_nothing(queues, kinds):
        return []
    rows = yield s.claim(worker_id, limit=limit, lease=lease, queues=queues, kinds=kinds)
    return _claimed_jobs(rows, limits)


def _asks_for_nothing(queues: Sequence[str] | None, kinds: Sequence[str] | None) -> bool:
    """Whether a claim names no queue or no kind (None means any)."""
    return (queues is not None and len(queues) == 0) or (kinds is not None and len(kinds) == 0)


def _claimed_jobs(rows: Rows, limits: Limits) -> list[Job]:
    """Claimed rows as jobs in the order they were due (UPDATE ... RETURNING has none).

    A payload far beyond the queue's size limit is not even decoded: the worker fails
    its job rather than spend memory and time on it."""
    longest = READ_PAYLOAD_FACTOR * limits.max_payload_bytes
    jobs = [read_job(r, longest) for r in rows]
    jobs.sort(key=lambda j: (-j.priority, j.run_at, j.id))
    return jobs


def _fenced(s: Statements, job: Job, rows: Rows, action: str) -> Operation[Row]:
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
        hint="nothing was written; the job's lease expired or it was released, cancelled "
        "or reaped",
    )


def heartbeat(s: Statements, job: Job, lease: float) -> Operation[datetime]:
    lease = seconds_of(lease, "lease", low=0.001)
    rows = yield s.heartbeat(job.id, job.attempts, job.started_at, lease)
    row = yield from _fenced(s, job, rows, "extend the lease of")
    value: datetime = row["lease_expires_at"]
    return value


def heartbeat_many(
    s: Statements, worker_id: str, jobs: Sequence[Job], lease: float
) -> Operation[set[uuid.UUID]]:
    """Extend the leases of the held ``jobs``; returns the ids still held (in that attempt)."""
    check_text(worker_id, "worker_id")
    lease = seconds_of(lease, "lease", low=0.001)
    if not jobs:
        return set()
    held = [(j.id, j.attempts, j.started_at) for j in jobs]
    rows = yield s.heartbeat_many(worker_id, held, lease)
    return {r["id"] for r in rows}


def set_progress(
    s: Statements, job: Job, percent: int, message: str | None, limits: Limits
) -> Operation[None]:
    check_int(percent, "progress", 0, 100)
    if message is not None:
        check_text(message, "progress message", limit=MAX_PROGRESS_MESSAGE, empty=True)
    rows = yield s.set_progress(job.id, job.attempts, job.started_at, percent, message)
    yield from _fenced(s, job, rows, "report progress on")


def remember(s: Statements, job: Job, remote_task_id: str) -> Operation[None]:
    check_text(remote_task_id, "remote task id", limit=MAX_REMOTE_TASK_ID)
    rows = yield s.remember(job.id, job.attempts, job.started_at, remote_task_id)
    yield from _fenced(s, job, rows, "save the remote task id of")


def _check_result(result: Any, result_url: str | None, limits: Limits) -> str | None:
    """Check a result and its URL; the result as JSON text (None stays None: SQL NULL)."""
    if result_url is not None:
        check_text(result_url, "result_url", limit=MAX_RESULT_URL)
    return None if result is None else check_json(result, "result", limits)


def complete(
    s: Statements, job: Job, result: Any, result_url: str | None, limits: Limits
) -> Operation[Job]:
    result_json = _check_result(result, result_url, limits)
    rows = yield s.complete(job.id, job.attempts, job.started_at, result_json, result_url)
    return read_job((yield from _fenced(s, job, rows, "complete")))


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished job waiting in the worker's completion batch."""

    job: Job
    result: Any = None
    result_url: str | None = None


def _completion_rows(items: Sequence[Completion], limits: Limits) -> list[dict[str, Any]]:
    return [
        {
            "id": i.job.id,
            "attempt": i.job.attempts,
            "started": i.job.started_at,
            "result": _check_result(i.result, i.result_url, limits),
            "result_url": i.result_url,
        }
        for i in items
    ]


def complete_many(
    s: Statements, items: Sequence[Completion], limits: Limits
) -> Operation[set[uuid.UUID]]:
    """Complete a batch; returns the ids written. The others were fenced off."""
    if not items:
        return set()
    rows = yield s.complete_many(_completion_rows(items, limits))
    return {r["id"] for r in rows}


def complete_and_claim(
    s: Statements,
    items: Sequence[Completion],
    limits: Limits,
    worker_id: str,
    *,
    limit: int,
    lease: float,
    queues: Sequence[str] | None,
    kinds: Sequence[str] | None,
) -> Operation[tuple[set[uuid.UUID], list[Job]]]:
    """Complete a batch and claim up to ``limit`` jobs atomically: the ids written (the
    others were fenced off) and the jobs claimed. One statement on PostgreSQL; on SQLite
    the two statements of `complete_many` and `claim` in the caller's one transaction."""
    check_text(worker_id, "worker_id")
    check_int(limit, "limit", 1, 10_000)
    lease = seconds_of(lease, "lease", low=0.001)
    if _asks_for_nothing(queues, kinds):
        return (yield from complete_many(s, items, limits)), []
    batch = _completion_rows(items, limits)
    both = s.complete_and_claim(
        batch, worker_id, limit=limit, lease=lease, queues=queues, kinds=kinds
    )
    if both is None:
        written = {r["id"] for r in (yield s.complete_many(batch))} if batch else set()
        rows = yield s.claim(worker_id, limit=limit, lease=lease, queues=queues, kinds=kinds)
    else:
        rows = yield both
        # One row at least (the LEFT JOIN); one of them lists the ids written.
        found = [r["jq_completed"] for r in rows if r["jq_completed"] is not None]
        written = set(found[0]) if found else set()
        rows = [
            {k: v for k, v in r.items() if k != "jq_completed"} for r in rows if r["id"] is not None
        ]
    return written, _claimed_jobs(rows, limits)


def fail(
    s: Statements,
    job: Job,
    error: str,
    *,
    retry: bool | None,
    retry_in: float | timedelta | None,
    backoff: tuple[float, float],
) -> Operation[Job]:
    """Record a failed attempt. ``retry=None`` retries while attempts remain, ``False`` never,
    ``True`` even when they are spent (one more attempt)."""
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
    rows = yield s.fail(job.id, job.attempts, job.started_at, message, delay)
    return read_job((yield from _fenced(s, job, rows, "fail")))


def release(s: Statements, job: Job, reason: str) -> Operation[Job]:
    reason = storable_text(str(reason))[:MAX_ERROR]
    rows = yield s.release(job.id, job.attempts, job.started_at, reason)
    return read_job((yield from _fenced(s, job, rows, "release")))


def _explain_move(s: Statements, job_id: uuid.UUID, target: Status) -> Operation[Job]:
    """After a move matched no row: `JobNotFound`, or `InvalidTransition` naming the status."""
    rows = yield s.get(job_id)
    if not rows:
        raise JobNotFound(f"no job {job_id}")
    job = read_job(rows[0])
    check_move(job.status, target, job.id)
    # Allowed by the table of moves but refused by the statement's own condition.
    raise InvalidTransition(f"job {job_id} is {job.status} and cannot move to {target} now")


def cancel(s: Statements, job_id: object, owner_id: str | None = None) -> Operation[Job]:
    jid = parse_job_id(job_id)
    rows = yield s.cancel(jid, owner_id)
    if rows:
        return read_job(rows[0])
    if owner_id is not None:
        found = yield s.get(jid, owner_id)
        if not found:
            raise JobNotFound(f"no job {jid}")
    return (yield from _explain_move(s, jid, Status.CANCELLED))


def retry(s: Statements, job_id: object) -> Operation[Job]:
    jid = parse_job_id(job_id)
    rows = yield s.retry(jid)
    if rows:
        return read_job(rows[0])
    current = yield s.get(jid)
    if current and read_job(current[0]).status is Status.PROCESSING:
        raise InvalidTransition(f"job {jid} is running; only failed or cancelled jobs retry")
    return (yield from _explain_move(s, jid, Status.PENDING))


def parse_statuses(status: Status | str | Iterable[Status | str]) -> list[Status]:
    """One status or several (names or `Status`), checked: `PayloadError` names the valid ones
    instead of the bare ``ValueError`` an unknown name would raise."""
    items = [status] if isinstance(status, str) else list(status)
    try:
        return [Status(x) for x in items]
    except ValueError:
        raise PayloadError(
            f"unknown status in {[str(x) for x in items]!r}"[:300],
            hint="statuses are " + ", ".join(s.value for s in Status),
        ) from None


def get(s: Statements, job_id: object, owner_id: str | None = None) -> Operation[Job]:
    jid = parse_job_id(job_id)
    rows = yield s.get(jid, owner_id)
    if not rows:
        raise JobNotFound(f"no job {jid}")
    return read_job(rows[0])


def list_jobs(
    s: Statements,
    *,
    owner_id: str | None,
    status: Status | str | Iterable[Status | str] | None,
    queue: str | None,
    kind: str | None,
    since: datetime | timedelta | None,
    limit: int,
) -> Operation[list[Job]]:
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


def stats(s: Statements, since: timedelta | float) -> Operation[list[StatusStats]]:
    secs = seconds_of(since, "since")
    rows = yield s.stats(secs)
    return [
        StatusStats(
            Status(r["status"]),
            int(r["count"]),
            None if r["avg_duration_sec"] is None else float(r["avg_duration_sec"]),
        )
        for r in rows
    ]


def reap(s: Statements) -> Operation[list[tuple[uuid.UUID, Status]]]:
    rows = yield s.reap()
    return [(r["id"], Status(r["status"])) for r in rows]


def prune(
    s: Statements, older_than: timedelta | float, statuses: Iterable[Status | str] | None
) -> Operation[int]:
    secs = seconds_of(older_than, "older_than")
    chosen = parse_statuses(statuses) if statuses is not None else list(Status)
    final = [x for x in chosen if x.is_final]
    if not final:
        raise PayloadError("prune removes finished jobs only: completed, failed or cancelled")
    rows = yield s.prune(secs, final)
    return len(rows)


# -- waiting ------------------------------------------------------------------------------


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
