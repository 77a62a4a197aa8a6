"""Property-based tests of the public API with hostile input (hypothesis).

The rule for every call: it either works — and what was stored reads back equal through
`get` — or it raises one of our documented errors (a `JobQueueError`), and in either case
nothing half-written is left behind: the table gains exactly the rows that calls said they
made. Run on SQLite and PostgreSQL with one migrated table per backend and module.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from jobqueue import (
    InvalidJobId,
    JobNotFound,
    JobQueue,
    JobQueueError,
    NewJob,
    PayloadError,
    Status,
    migrate,
)

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def jq(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JobQueue]:
    if request.param == "sqlite":
        url = f"sqlite:///{Path(tmp_path_factory.mktemp('props')) / 'props.db'}"
    else:
        url = request.getfixturevalue("jobqueue_postgres_url")
    table = f"props_{uuid.uuid4().hex[:10]}"
    migrate(url, table=table)
    q = JobQueue(url, table=table, max_payload_bytes=64 * 1024)
    yield q
    q.close()


def count(q: JobQueue) -> int:
    with q.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(q.table)).scalar_one())


def attempt(q: JobQueue, call: Callable[[], Any], *, adds: int) -> tuple[bool, Any]:
    """Run ``call``: (True, value) and ``adds`` more rows, or (False, error) and no new row."""
    before = count(q)
    try:
        value = call()
    except JobQueueError as exc:
        assert count(q) == before, f"{type(exc).__name__} left rows behind: {exc}"
        return False, exc
    assert count(q) - before in (0, adds)
    return True, value


def json_form(value: Any) -> Any:
    """What a JSON column gives back for ``value`` (tuples come back as lists)."""
    return json.loads(json.dumps(value))


def same_json(stored: Any, expected: Any, q: JobQueue) -> bool:
    """Equal as JSON. PostgreSQL's jsonb keeps numbers as ``numeric``, so a float written in
    exponent form (1e16 and up) reads back as the int of the same value: documented in
    docs/guarantees.md, and checked here as "the same number", not the same Python type."""
    if q.is_postgres and isinstance(expected, float) and isinstance(stored, int):
        return float(stored) == expected
    if isinstance(expected, dict) and isinstance(stored, dict):
        return stored.keys() == expected.keys() and all(
            same_json(stored[k], expected[k], q) for k in expected
        )
    if isinstance(expected, list) and isinstance(stored, list):
        return len(stored) == len(expected) and all(
            same_json(a, b, q) for a, b in zip(stored, expected, strict=True)
        )
    return bool(stored == expected and type(stored) is type(expected))


# -- strategies ---------------------------------------------------------------------------

ODD = ["\x00", "\ud800", "a\udfffb", "\ufeff", "\u202e", "\U0010ffff", "\U0001d54f", ""]
odd_text = st.text(
    st.characters(codec=None, exclude_categories=()),  # surrogates and NUL included
    max_size=20,
) | st.sampled_from(ODD)
clean_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=20
)
numbers = st.integers() | st.floats(allow_nan=True, allow_infinity=True)
strict_numbers = st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)


def json_values(leaf_text: st.SearchStrategy[str], nums: st.SearchStrategy[Any]) -> Any:
    leaves = st.none() | st.booleans() | nums | leaf_text
    return st.recursive(
        leaves,
        lambda kids: (
            st.lists(kids, max_size=4)
            | st.tuples(kids, kids)
            | st.dictionaries(leaf_text, kids, max_size=4)
        ),
        max_leaves=25,
    )


strict_json = json_values(clean_text, strict_numbers)
not_json = st.sampled_from(
    [
        b"bytes",
        {1, 2},
        object(),
        datetime(2024, 1, 1, tzinfo=UTC),
        Decimal("1.5"),
        1j,
        {1: "int key"},
        {1: "a", "1": "b"},  # would collapse into one key
        {None: 1},
        {(1, 2): "tuple key"},
        {"ok": [1, {2.5: "float key"}]},
        {"fn": len},
        [float("nan")],
        {"x": float("inf")},
    ]
)


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"d": value}
    return value


payloads = (
    json_values(odd_text, numbers)
    | strict_json
    | not_json
    | st.integers(1, 3000).map(nested)
    | st.integers(0, 200_000).map(lambda n: {"blob": "x" * n})
)


# -- enqueue ------------------------------------------------------------------------------


@SETTINGS
@given(payload=payloads)
def test_any_payload_is_stored_exactly_or_refused(jq: JobQueue, payload: Any) -> None:
    ok, value = attempt(jq, lambda: jq.enqueue("image", payload), adds=1)
    if not ok:
        assert isinstance(value, PayloadError)
        return
    expected = {} if payload is None else json_form(payload)
    assert same_json(value.payload, expected, jq)
    assert same_json(jq.get(value.id).payload, expected, jq)


@SETTINGS
@given(payload=strict_json)
@example(payload=0.0)  # SQLite's NUMERIC affinity turned it into 0 (a JSON column)
@example(payload=2**70)  # ... and this into a float
def test_strict_json_payloads_are_always_accepted(jq: JobQueue, payload: Any) -> None:
    assume(len(json.dumps(payload)) < 60_000)
    ok, job = attempt(jq, lambda: jq.enqueue("image", payload), adds=1)
    assert ok, job
    assert same_json(jq.get(job.id).payload, {} if payload is None else json_form(payload), jq)


@SETTINGS
@given(depth=st.integers(1, 5000))
def test_deep_nesting_round_trips_or_is_refused(jq: JobQueue, depth: int) -> None:
    ok, job = attempt(jq, lambda: jq.enqueue("image", nested(depth)), adds=1)
    if ok:
        assert jq.get(job.id).payload == nested(depth)
        assert [j.id for j in jq.list(limit=1)] == [job.id]
    else:
        assert isinstance(job, PayloadError)


texts = odd_text | clean_text | st.text(min_size=190, max_size=300) | st.just("   ")


@SETTINGS
@given(
    kind=texts,
    queue=texts,
    owner=st.none() | texts,
    key=st.none() | texts,
    priority=st.integers() | st.floats() | st.booleans() | st.none(),
    max_attempts=st.integers(-5, 2000) | st.just(True),
)
def test_job_fields_are_stored_exactly_or_refused(
    jq: JobQueue,
    kind: Any,
    queue: Any,
    owner: Any,
    key: Any,
    priority: Any,
    max_attempts: Any,
) -> None:
    before = count(jq)
    ok, job = attempt(
        jq,
        lambda: jq.enqueue(
            kind,
            {"p": 1},
            queue=queue,
            owner_id=owner,
            idempotency_key=key,
            priority=priority,
            max_attempts=max_attempts,
        ),
        adds=1,
    )
    if not ok:
        assert isinstance(job, PayloadError)
        return
    got = jq.get(job.id)
    if count(jq) == before:
        # An earlier example used this idempotency key in this queue for this owner (or
        # without one): its job comes back, never another owner's.
        assert key is not None
        assert (got.queue, got.owner_id, got.idempotency_key) == (queue, owner, key)
        return
    assert (got.kind, got.queue, got.owner_id, got.idempotency_key) == (kind, queue, owner, key)
    assert (got.priority, got.max_attempts) == (priority, max_attempts)
    assert got.status is Status.PENDING


timezones = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))])


@example(delay=None, run_at=datetime.min.replace(tzinfo=timezone(timedelta(hours=14))))
@example(delay=None, run_at=datetime.max.replace(tzinfo=timezone(timedelta(hours=-12))))
@example(delay=timedelta.max, run_at=None)
@example(delay=float("nan"), run_at=None)
@SETTINGS
@given(
    delay=st.none()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(10**12), 10**12)
    | st.timedeltas()
    | st.just("5"),
    run_at=st.none() | st.datetimes() | st.datetimes(timezones=timezones),
)
def test_delays_and_run_at_are_honoured_or_refused(jq: JobQueue, delay: Any, run_at: Any) -> None:
    ok, job = attempt(jq, lambda: jq.enqueue("image", {}, delay=delay, run_at=run_at), adds=1)
    if not ok:
        assert isinstance(job, PayloadError)
        return
    got = jq.get(job.id)
    if run_at is not None:
        assert got.run_at == run_at
    elif delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        assert math.isfinite(seconds) and seconds >= 0
        assert got.run_at >= got.created_at + timedelta(seconds=seconds) - timedelta(seconds=1)


@SETTINGS
@given(key=clean_text | odd_text, queue=st.sampled_from(["default", "other"]))
def test_an_idempotency_key_makes_at_most_one_job(jq: JobQueue, key: str, queue: str) -> None:
    ok, first = attempt(
        jq, lambda: jq.enqueue("image", {"n": 1}, idempotency_key=key, queue=queue), adds=1
    )
    again_ok, again = attempt(
        jq, lambda: jq.enqueue("image", {"n": 2}, idempotency_key=key, queue=queue), adds=0
    )
    assert ok == again_ok
    if ok:
        assert again.id == first.id and jq.get(first.id).payload == first.payload


@SETTINGS
@given(
    batch=st.lists(
        st.fixed_dictionaries(
            {"payload": strict_json | not_json, "priority": st.integers(-5, 5) | st.just(10**9)}
        ),
        max_size=6,
    )
)
def test_a_batch_is_stored_whole_or_not_at_all(jq: JobQueue, batch: list[dict[str, Any]]) -> None:
    jobs = [NewJob(**item) for item in batch]
    ok, stored = attempt(jq, lambda: jq.enqueue_many(jobs), adds=len(jobs))
    if ok:
        for job, item in zip(stored, batch, strict=True):
            expected = {} if item["payload"] is None else json_form(item["payload"])
            assert same_json(jq.get(job.id).payload, expected, jq)


# -- ids ----------------------------------------------------------------------------------

ids = (
    st.uuids().map(str)
    | st.uuids()
    | odd_text
    | st.text(alphabet="0123456789abcdef-{}", max_size=40)
    | st.integers()
    | st.none()
    | st.binary(max_size=16)
    | st.just("urn:uuid:" + str(uuid.uuid4()))
)


@SETTINGS
@given(job_id=ids)
def test_unknown_and_malformed_ids_are_not_found(jq: JobQueue, job_id: Any) -> None:
    for call in (jq.get, jq.cancel, jq.retry):
        ok, err = attempt(jq, lambda c=call: c(job_id), adds=0)  # type: ignore[misc]
        assert not ok
        assert isinstance(err, JobNotFound)
        if not isinstance(job_id, uuid.UUID | str) or not _parses(job_id):
            assert isinstance(err, InvalidJobId)


def _parses(value: str | uuid.UUID) -> bool:
    try:
        uuid.UUID(str(value).strip())
    except ValueError:
        return False
    return True


# -- a worker's calls -------------------------------------------------------------------


@SETTINGS
@given(
    worker=texts,
    limit=st.integers(-3, 20_000),
    lease=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**9),
)
def test_claim_arguments_are_checked(jq: JobQueue, worker: Any, limit: int, lease: Any) -> None:
    jq.enqueue("image", {}, queue="claims")
    ok, claimed = attempt(
        jq, lambda: jq.claim(worker, queues=["claims"], limit=limit, lease=lease), adds=0
    )
    if ok:
        for job in claimed:
            assert job.locked_by == worker and job.status is Status.PROCESSING
            jq.complete(job)
    else:
        assert isinstance(claimed, PayloadError)


@SETTINGS
@given(
    error=odd_text | clean_text | st.integers(9_000, 12_000).map(lambda n: "é\x00" * n),
    percent=st.integers(-10, 110),
    message=st.none() | odd_text,
    result=strict_json | not_json,
    result_url=st.none() | odd_text,
)
def test_a_held_job_takes_any_error_progress_and_result(
    jq: JobQueue, error: str, percent: int, message: Any, result: Any, result_url: Any
) -> None:
    jq.enqueue("image", {}, queue="held", max_attempts=5)
    (job,) = jq.claim("w", queues=["held"])
    ok, _ = attempt(jq, lambda: jq.set_progress(job, percent, message), adds=0)
    if ok:
        got = jq.get(job.id)
        assert (got.progress, got.progress_message) == (percent, message)
    # A failure's text comes from arbitrary exceptions: it must always be recordable.
    ok, failed = attempt(jq, lambda: jq.fail(job, error, retry_in=0), adds=0)
    assert ok, failed
    assert failed.status is Status.PENDING and failed.errors[-1]["error"] == failed.error
    assert failed.error and len(failed.error) <= 10_000
    (job,) = jq.claim("w", queues=["held"])
    ok, done = attempt(jq, lambda: jq.complete(job, result, result_url=result_url), adds=0)
    if not ok:
        assert isinstance(done, PayloadError)
        jq.complete(job)
        return
    got = jq.get(job.id)
    assert got.status is Status.COMPLETED and got.result_url == result_url
    assert same_json(got.result, None if result is None else json_form(result), jq)


@SETTINGS
@given(exc_text=odd_text)
def test_an_exception_with_any_text_fails_its_job(jq: JobQueue, exc_text: str) -> None:
    jq.enqueue("image", {}, queue="raise")
    (job,) = jq.claim("w", queues=["raise"])
    failed = jq.fail(job, RuntimeError(exc_text), retry=False)
    assert failed.status is Status.FAILED and failed.error.startswith("RuntimeError")
