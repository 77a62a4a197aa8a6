"""Input checks (`jobqueue.validation`); what the queue refuses, end to end on both
databases, is in tests/queue/test_queue.py."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from jobqueue.errors import PayloadError
from jobqueue.models import Job, NewJob, job_of
from jobqueue.validation import (
    QueueLimits,
    check_json,
    new_job_row,
    new_job_rows,
    uuid7,
    uuid7_many,
)


def test_check_json_returns_the_text_that_is_stored() -> None:
    """`check_json` returns the JSON text it checked, so a payload or result is encoded once
    (the statements write that text; its round trip through every write is in
    tests/queue/test_queue.py)."""
    assert check_json({"prompt": "ein Bär", "n": [1, 2.5]}, "payload", QueueLimits()) == (
        '{"prompt": "ein Bär", "n": [1, 2.5]}'
    )


def test_a_batch_is_checked_as_its_jobs_would_be_one_by_one() -> None:
    """`new_job_rows` shares work across a batch (names checked once, payloads decoded a
    chunk at a time, ids made together) and still gives each job's row as `new_job_row`
    would, and refuses a batch with the error its first bad job raises alone."""
    limits = QueueLimits()
    jobs = [
        NewJob(kind="email", payload={"n": i, "t": (1, 2)}, owner_id="ann", priority=i % 3)
        for i in range(2_500)  # more than one decoding chunk
    ]
    rows = new_job_rows(jobs, limits)
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert uuid7() > ids[-1]
    for job, row in zip(jobs, rows, strict=True):
        alone = new_job_row(job, limits)
        assert {k: v for k, v in row.items() if k != "id"} == {
            k: v for k, v in alone.items() if k != "id"
        }
    assert rows[0]["payload_value"] == {"n": 0, "t": [1, 2]}

    # The first bad job decides the error, though a later one fails an earlier check.
    bad = [*jobs[:5], NewJob(payload={1: "a"}), NewJob(priority=True), *jobs[5:]]
    with pytest.raises(PayloadError, match="non-string key"):
        new_job_rows(bad, limits)
    bad = [*jobs[:5], NewJob(priority=True), NewJob(payload={1: "a"})]
    with pytest.raises(PayloadError, match="priority"):
        new_job_rows(bad, limits)
    for refused, match in [
        (NewJob(kind=""), "kind"),
        (NewJob(owner_id="a\x00b"), "owner_id"),
        (NewJob(payload={"x": float("nan")}), "not JSON-serialisable"),
        (NewJob(payload={"x": "a\x00"}), "NUL"),
        (NewJob(payload="x" * 2_000_000), "over the limit"),
    ]:
        with pytest.raises(PayloadError, match=match):
            new_job_rows([*jobs[:3], refused, *jobs[3:6]], limits)


def test_a_payload_that_holds_itself_is_refused() -> None:
    looped: dict[str, object] = {}
    looped["me"] = looped
    with pytest.raises(PayloadError):
        check_json(looped, "payload", QueueLimits())


def test_the_ids_of_a_batch_are_plain_uuids() -> None:
    """`uuid7_many` sets a `UUID`'s slots itself: each id is what ``UUID(int=...)`` makes
    of its value, a version 7, RFC 9562 id."""
    for made in uuid7_many(3):
        plain = uuid.UUID(int=made.int)
        assert made == plain and hash(made) == hash(plain) and str(made) == str(plain)
        assert made.is_safe is plain.is_safe is uuid.SafeUUID.unknown
        assert made.version == 7 and made.variant == uuid.RFC_4122
        assert uuid.UUID(str(made)) == made


def test_job_of_builds_what_job_builds() -> None:
    values = tuple(f"value {i}" for i in range(len(dataclasses.fields(Job))))
    built, plain = job_of(values), Job(*values)
    for f in dataclasses.fields(Job):
        assert getattr(built, f.name) == getattr(plain, f.name), f.name
    assert built == plain and repr(built) == repr(plain) and hash(built) == hash(plain)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.kind = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        job_of(values[:-1])
