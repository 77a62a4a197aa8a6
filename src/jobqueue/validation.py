"""Checks on what callers hand the queue, and the rules for reading what the table holds.

Everything a caller gives is checked here before anything is written, so a mistake becomes
`PayloadError` (or `InvalidJobId`) with a hint rather than a driver error half-way:
names and short texts (`check_text`), numbers (`check_int`), durations (`seconds_of`),
JSON values (`encode_json`, which also gives the one text that is stored), job ids
(`parse_job_id`) and whole new jobs (`new_job_row`). The other way round, `read_job`
reads a row into a `Job` without trusting it (a client may have written it), and
`storable_text` makes any message storable. `uuid7` makes the ids the library writes.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any

from .errors import InvalidJobId, PayloadError
from .models import (
    COST_PLACES,
    DEFAULT_MAX_PAYLOAD_BYTES,
    JSON_COLUMNS,
    MAX_ATTEMPTS_LIMIT,
    MAX_COST,
    MAX_COST_UNIT,
    MAX_DELAY,
    MAX_JSON_DEPTH,
    MAX_NAME,
    MAX_PRIORITY,
    MAX_TEXT,
    Job,
    NewJob,
    Status,
)

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


def uuid7_many(n: int) -> list[uuid.UUID]:
    """``n`` ids as ``n`` calls of `uuid7` would make them, for one batch: one reading of
    the clock and one turn of the lock, the counter run on by ``n`` (so the batch's ids are
    in order, after every id made here before and before every id made after)."""
    global _uuid7_last
    ms = time.time_ns() // 1_000_000
    with _uuid7_lock:
        last_ms, last_counter = _uuid7_last
        if ms > last_ms:
            first = int.from_bytes(os.urandom(10), "big") >> 7  # 73 bits: room to count
        else:
            ms, first = last_ms, last_counter + 1
        if first + n > 1 << 74:  # the millisecond's counter would overflow: one by one
            fallback = True
        else:
            fallback = False
            _uuid7_last = (ms, first + n - 1)
    if fallback:
        return [uuid7() for _ in range(n)]
    high = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | 0x2 << 62
    low = (1 << 62) - 1
    if _set_int is None or _set_is_safe is None:
        return [uuid.UUID(int=high | (c >> 62) << 64 | (c & low)) for c in range(first, first + n)]
    out: list[uuid.UUID] = []
    add = out.append
    new, set_int, set_is_safe, unknown = object.__new__, _set_int, _set_is_safe, _UNKNOWN
    for c in range(first, first + n):
        # `uuid.UUID(int=...)` without its argument checks (the value is in range by
        # construction): the same two slots set, as the standard library makes its own
        # ids (``UUID._from_int`` in 3.14).
        made = new(uuid.UUID)
        set_int(made, high | (c >> 62) << 64 | (c & low))
        set_is_safe(made, unknown)
        add(made)
    return out


def _slot_setter(name: str) -> Any:
    """The setter of `uuid.UUID`'s slot ``name``, or None where it has no such slot."""
    slot = vars(uuid.UUID).get(name)
    return getattr(slot, "__set__", None) if slot is not None else None


_set_int, _set_is_safe = _slot_setter("int"), _slot_setter("is_safe")
_UNKNOWN = uuid.SafeUUID.unknown


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


# -- values callers give ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """Bounds a queue puts on what callers may store (``JobQueue(max_payload_bytes=...)``);
    checked before anything is written. For the web API's bounds on one request, see
    `jobqueue.web.intake.RequestLimits`."""

    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES


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
#: per call (docs/performance.md has what that saves). Encoding keeps no state.
_ENCODER = json.JSONEncoder(allow_nan=False, ensure_ascii=False)

#: The same encoding through the C encoder `_ENCODER` would build on every call (about half
#: the time per payload): no circular-reference markers, so a value that holds itself ends
#: in RecursionError, which `encode_json` refuses as it refuses any value nested too deep.
_c_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)  # untyped in typeshed
_C_ENCODE = (
    None
    if _c_make_encoder is None
    else _c_make_encoder(
        None, _ENCODER.default, encode_basestring, None, ": ", ", ", False, False, False
    )
)


def _encode(value: Any) -> str:
    if _C_ENCODE is None:
        return _ENCODER.encode(value)
    return "".join(_C_ENCODE(value, 0))


def check_json(value: Any, what: str, limits: QueueLimits) -> str:
    """``value`` as JSON text, refused when it is not strict JSON (NaN included) or too
    large to store.

    The text is what gets stored (the statements bind it as is): the value is encoded
    once, not once to check it and again to write it.
    """
    return encode_json(value, what, limits)[0]


def encode_json(value: Any, what: str, limits: QueueLimits) -> tuple[str, Any]:
    """`check_json`, and the value as decoded from its text (a fresh copy, as a read
    would give it).

    The common case costs one encode, one decode and one comparison instead of a walk over
    every item in Python (this runs once per job of an `enqueue_many`): when the decoded
    text equals the value, no key was turned into a string, and the text itself shows
    the rest (no escaped NUL, valid UTF-8, fewer brackets than the depth limit). Anything
    else gets the exact walk (`_json_shape_problem`), which explains what is wrong or
    accepts it (a tuple decodes to a list, for one).
    """
    encoded = _checked_text(value, what, limits)
    decoded = json.loads(encoded)
    if decoded != value:
        _refuse_shape(value, what)
    return encoded, decoded


def _checked_text(value: Any, what: str, limits: QueueLimits) -> str:
    """``value``'s JSON text, with every check `encode_json` makes except the comparison
    of the value with the text's decoding (which a batch makes for many values at once)."""
    try:
        encoded = _encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        _refuse_shape(value, what)
        raise PayloadError(f"the {what} is not JSON-serialisable: {exc}") from None
    if encoded.isascii():  # one byte a character (known without a scan)
        size = len(encoded)
    else:
        try:
            size = len(encoded.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: the walk names it
            _refuse_shape(value, what)
            raise  # not reached: the walk finds every lone surrogate
    if "\\u0000" in encoded or encoded.count("[") + encoded.count("{") > MAX_JSON_DEPTH:
        _refuse_shape(value, what)
    if size > limits.max_payload_bytes:
        raise PayloadError(
            f"the {what} is {size} bytes, over the limit of {limits.max_payload_bytes}",
            hint="store large data elsewhere (object storage) and put its URL in the payload, "
            "or raise max_payload_bytes",
        )
    return encoded


#: How many payloads a batch decodes in one call (`_decoded`): one JSON array of their
#: texts, so that the text held twice at once stays small.
_DECODE_CHUNK = 1_000


def _decoded(values: Sequence[Any], texts: Sequence[str], what: str) -> list[Any]:
    """The decoding of each text of ``texts`` (`encode_json`'s second half, for a batch):
    each chunk of texts decoded as one JSON array and compared with its values in one
    comparison; a value that differs from its decoding gets the exact walk, which refuses
    it or accepts it (a tuple decodes to a list)."""
    out: list[Any] = []
    for start in range(0, len(texts), _DECODE_CHUNK):
        chunk = values[start : start + _DECODE_CHUNK]
        decoded = json.loads("[" + ",".join(texts[start : start + _DECODE_CHUNK]) + "]")
        if decoded != chunk:
            for value, back in zip(chunk, decoded, strict=True):
                if back != value:
                    _refuse_shape(value, what)
        out.extend(decoded)
    return out


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
        if text == "[]":  # most jobs' ``errors``: no decoder needed
            values[column] = []
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


def check_cost(value: Any, what: str = "cost") -> Decimal | None:
    """An amount of money (a cost, an estimate, a budget) as an exact `Decimal`: a
    `Decimal`, an int, or decimal text (``"0.04"``, as DefAPI sends ``consumed``), from 0 to
    `MAX_COST`, with at most `COST_PLACES` places. A float is taken by its shortest repr
    (``0.1`` is ``Decimal("0.1")``), not its binary value. None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise PayloadError(
            f"{what} must be a decimal amount, not {type(value).__name__}",
            hint='e.g. Decimal("0.04"), "0.04" or 4',
        )
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except ArithmeticError:
        amount = Decimal("NaN")
    if not amount.is_finite() or not 0 <= amount <= MAX_COST:
        raise PayloadError(
            f"{what} must be a finite amount between 0 and {MAX_COST}, not {value!r}"
        )
    if amount.quantize(_COST_STEP) != amount:
        raise PayloadError(
            f"{what} {value!r} has more than {COST_PLACES} decimal places",
            hint=f"round it to {COST_PLACES} places (amounts are stored exactly)",
        )
    return amount


_COST_STEP = Decimal(1).scaleb(-COST_PLACES)


def check_cost_unit(value: Any, what: str = "cost_unit") -> str | None:
    """A cost's unit or currency (``USD``, ``credits``): 1 to `MAX_COST_UNIT` characters."""
    if value is None:
        return None
    check_text(value, what, limit=MAX_COST_UNIT)
    return str(value)


def new_job_row(job: NewJob, limits: QueueLimits) -> dict[str, Any]:
    """``job`` checked against ``limits`` and the library's own bounds, as the row the
    statements insert: its id made here (`uuid7`), its payload as the JSON text that is
    stored (``payload``) and as a read gives it back (``payload_value``), and its start
    as given (``run_at_value``) or as a delay from the database clock (``delay_seconds``)."""
    check_text(job.kind, "kind", limit=MAX_NAME)
    check_text(job.queue, "queue", limit=MAX_NAME)
    text, value = encode_json({} if job.payload is None else job.payload, "payload", limits)
    _check_int_fast(job.priority, "priority", -MAX_PRIORITY, MAX_PRIORITY)
    _check_int_fast(job.max_attempts, "max_attempts", 1, MAX_ATTEMPTS_LIMIT)
    if job.owner_id is not None:
        check_text(job.owner_id, "owner_id")
    if job.idempotency_key is not None:
        check_text(job.idempotency_key, "idempotency_key")
    if job.limit_key is not None:
        check_text(job.limit_key, "limit_key", limit=MAX_NAME)
    return _row(job, uuid7(), text, value, _start_of(job))


def _row(job: NewJob, id_: uuid.UUID, text: str, value: Any, delay: float) -> dict[str, Any]:
    # The deadline's own check: `_start_of` has run, so ``run_at`` and ``delay`` are sound.
    # Without a deadline, `_deadline_of`'s answer (None) without the call.
    no_deadline = job.expires_in is None and job.start_by is None
    expires = None if no_deadline else _deadline_of(job, delay)
    estimate = job.estimated_cost
    if estimate is not None:
        estimate = check_cost(estimate, "estimated_cost")
    return {
        "id": id_,
        "queue": job.queue,
        "kind": job.kind,
        "payload": text,
        "payload_value": value,
        "priority": job.priority,
        "max_attempts": job.max_attempts,
        "owner_id": job.owner_id,
        "idempotency_key": job.idempotency_key,
        "limit_key": job.limit_key,
        "run_at_value": job.run_at,
        "delay_seconds": delay,
        "start_by_value": job.start_by,
        "expires_seconds": expires,
        # Reserved (as ``reserved``) only when the owner has a budget (`jobqueue.sql.budgets`).
        "estimate": estimate,
    }


def new_job_rows(jobs: Sequence[NewJob], limits: QueueLimits) -> list[dict[str, Any]]:
    """`new_job_row` of each job, in order, with what a batch can share done once: a name
    (kind, queue, owner, limit key) is checked the first time it appears, the ids are made
    together (`uuid7_many`), and the payloads' texts are decoded and compared with their
    values a chunk at a time (`_decoded`). The first bad job raises the error it would
    raise alone."""
    seen: set[tuple[str, Any]] = set()

    def name(value: Any, what: str, limit: int) -> None:
        # Keyed by type as well: 1 and True are equal, and only a str passes the check.
        key = (what, value) if type(value) is str else None
        if key is None or key not in seen:
            check_text(value, what, limit=limit)
            seen.add((what, value))

    texts: list[str] = []
    payloads: list[Any] = []
    delays: list[float] = []
    # The kind and queue of the job before, checked: most batches have one of each, and
    # the same object passes the same checks again.
    kind_checked: Any = _UNCHECKED
    queue_checked: Any = _UNCHECKED
    for done, job in enumerate(jobs):
        try:
            kind = job.kind
            if kind is not kind_checked:
                name(kind, "kind", MAX_NAME)
                kind_checked = kind
            queue = job.queue
            if queue is not queue_checked:
                name(queue, "queue", MAX_NAME)
                queue_checked = queue
            payload = job.payload
            if payload is None:
                payload = {}
            texts.append(_checked_text(payload, "payload", limits))
            payloads.append(payload)
            # `_check_int_fast`, inline.
            priority = job.priority
            if type(priority) is not int or not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
                check_int(priority, "priority", -MAX_PRIORITY, MAX_PRIORITY)
            attempts = job.max_attempts
            if type(attempts) is not int or not 1 <= attempts <= MAX_ATTEMPTS_LIMIT:
                check_int(attempts, "max_attempts", 1, MAX_ATTEMPTS_LIMIT)
            if job.owner_id is not None:
                name(job.owner_id, "owner_id", MAX_TEXT)
            if job.idempotency_key is not None:
                check_text(job.idempotency_key, "idempotency_key")
            if job.limit_key is not None:
                name(job.limit_key, "limit_key", MAX_NAME)
            if job.run_at is None and job.delay is None:  # `_start_of`'s answer then
                delays.append(0.0)
            else:
                delays.append(_start_of(job))
        except PayloadError:
            # An earlier job whose payload does not decode to itself fails first, as it
            # would have alone.
            _decoded(payloads[:done], texts[:done], "payload")
            raise
    values = _decoded(payloads, texts, "payload")
    if len(jobs) == 1:
        return [_row(jobs[0], uuid7(), texts[0], values[0], delays[0])]
    return [
        _row(job, id_, text, value, delay)
        for job, id_, text, value, delay in zip(
            jobs, uuid7_many(len(jobs)), texts, values, delays, strict=True
        )
    ]


#: No kind or queue checked yet (`new_job_rows`).
_UNCHECKED = object()


def _check_int_fast(value: Any, what: str, low: int, high: int) -> None:
    """`check_int`, with a plain int in range passing at the cost of one comparison."""
    if type(value) is not int or not low <= value <= high:
        check_int(value, what, low, high)


def _start_of(job: NewJob) -> float:
    """Check ``job``'s ``run_at`` and ``delay``; the delay in seconds (0 without one)."""
    if job.run_at is not None and job.delay is not None:
        raise PayloadError("give run_at or delay, not both")
    if job.run_at is not None and (
        not isinstance(job.run_at, datetime) or job.run_at.tzinfo is None
    ):
        raise PayloadError("run_at must be a timezone-aware datetime")
    if job.run_at is not None:
        try:
            job.run_at.astimezone(UTC)  # stored in UTC: it must exist in UTC
        except OverflowError:
            raise PayloadError("run_at is out of range once converted to UTC") from None
    return 0.0 if job.delay is None else seconds_of(job.delay, "delay")


def _deadline_of(job: NewJob, delay: float) -> float | None:
    """Check ``job``'s start deadline; ``expires_in`` in seconds (None without one).

    A deadline at or before the job's own start (both known here: two times, or two
    durations from the enqueue) could never be met, and is refused. Any other deadline is
    judged by the database clock only: one already past when the row is written expires
    the job before any claim can take it."""
    if job.expires_in is None and job.start_by is None:
        return None
    if job.expires_in is not None and job.start_by is not None:
        raise PayloadError("give expires_in or start_by, not both")
    if job.start_by is not None:
        if not isinstance(job.start_by, datetime) or job.start_by.tzinfo is None:
            raise PayloadError("start_by must be a timezone-aware datetime")
        try:
            job.start_by.astimezone(UTC)
        except OverflowError:
            raise PayloadError("start_by is out of range once converted to UTC") from None
        if job.run_at is not None and job.start_by <= job.run_at:
            raise PayloadError(
                "start_by must be later than run_at: the job could never start in time",
                hint="give a later start_by, or an earlier run_at",
            )
        return None
    assert job.expires_in is not None
    seconds = seconds_of(job.expires_in, "expires_in", low=0.001)
    if job.run_at is None and seconds <= delay:
        raise PayloadError(
            "expires_in must be longer than delay: the job could never start in time",
            hint="give a longer expires_in, or a shorter delay",
        )
    return seconds


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
