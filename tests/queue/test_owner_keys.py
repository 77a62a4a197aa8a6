"""Idempotency keys are scoped per queue and owner: one owner's key never reaches another's
job, and jobs without an owner share one scope per queue (SQLite and PostgreSQL, sync and
async)."""

from __future__ import annotations

from typing import Any

import pytest

from jobqueue import JobQueue, NewJob, SchemaNotInstalled, migrate
from tests.conftest import Either


async def test_two_owners_with_the_same_key_get_two_jobs(q: Either) -> None:
    alice = await q.enqueue("image", {"prompt": "a cat"}, owner_id="alice", idempotency_key="k")
    bob = await q.enqueue("image", {"prompt": "a dog"}, owner_id="bob", idempotency_key="k")
    assert alice.id != bob.id
    assert (bob.owner_id, bob.payload) == ("bob", {"prompt": "a dog"})
    # Each one's repeat finds their own job, never the other's.
    again = await q.enqueue("image", {"prompt": "other"}, owner_id="bob", idempotency_key="k")
    assert again.id == bob.id and again.payload == {"prompt": "a dog"}
    assert (await q.enqueue("image", {}, owner_id="alice", idempotency_key="k")).id == alice.id
    assert {j.id for j in await q.list()} == {alice.id, bob.id}


async def test_the_same_owner_twice_gets_one_job(q: Either) -> None:
    first = await q.enqueue("image", {"n": 1}, owner_id="alice", idempotency_key="click-1")
    second = await q.enqueue("image", {"n": 2}, owner_id="alice", idempotency_key="click-1")
    assert second == first
    other_queue = await q.enqueue(
        "image", {"n": 3}, owner_id="alice", idempotency_key="click-1", queue="fast"
    )
    assert other_queue.id != first.id
    assert len(await q.list()) == 2


async def test_jobs_without_an_owner_share_a_key_per_queue(q: Either) -> None:
    first = await q.enqueue("image", {"n": 1}, idempotency_key="nightly")
    assert (await q.enqueue("image", {"n": 2}, idempotency_key="nightly")).id == first.id
    # An owner's job with that key is not an unowned one, in either direction.
    owned = await q.enqueue("image", {"n": 3}, owner_id="alice", idempotency_key="nightly")
    assert owned.id != first.id and owned.owner_id == "alice"
    assert (await q.enqueue("image", {}, idempotency_key="nightly")).id == first.id
    elsewhere = await q.enqueue("image", {"n": 4}, idempotency_key="nightly", queue="other")
    assert elsewhere.id != first.id
    assert len(await q.list()) == 3


async def test_a_batch_matches_each_job_to_its_own_owners_key(q: Either) -> None:
    before = await q.enqueue("image", {"n": 0}, owner_id="alice", idempotency_key="k")
    batch: list[Any] = [
        NewJob(payload={"n": 1}, owner_id="bob", idempotency_key="k"),
        NewJob(payload={"n": 2}, owner_id="alice", idempotency_key="k"),
        NewJob(payload={"n": 3}, idempotency_key="k"),
        NewJob(payload={"n": 4}, owner_id="bob", idempotency_key="k"),
        NewJob(payload={"n": 5}, owner_id="carol", idempotency_key="k", queue="other"),
    ]
    bob, alice, unowned, bob_again, carol = await q.enqueue_many(batch)
    assert alice.id == before.id and alice.payload == {"n": 0}
    assert bob_again.id == bob.id and bob.owner_id == "bob" and bob.payload == {"n": 1}
    assert unowned.owner_id is None and unowned.payload == {"n": 3}
    assert carol.owner_id == "carol" and carol.queue == "other"
    assert len({before.id, bob.id, unowned.id, carol.id}) == 4
    assert len(await q.list()) == 4


@pytest.mark.parametrize("revision", ["0002", "0004"])
def test_an_older_table_says_to_migrate(db_url: str, table_name: str, revision: str) -> None:
    """This version's enqueue needs revision 0003's index, and its enqueue and claim the
    columns and limits table of 0005: before `jobqueue migrate` they say so, instead of a
    driver error about ON CONFLICT or a missing column, or "not installed"."""
    migrate(db_url, table=table_name, revision=revision)
    with JobQueue(db_url, table=table_name) as queue:
        with pytest.raises(SchemaNotInstalled, match="older than this version") as refused:
            queue.enqueue("image", {}, owner_id="alice", idempotency_key="k")
        assert "jobqueue migrate" in str(refused.value)
        with pytest.raises(SchemaNotInstalled, match="older than this version"):
            queue.claim("w")
    migrate(db_url, table=table_name)
    with JobQueue(db_url, table=table_name) as queue:
        assert queue.enqueue("image", {}, owner_id="alice", idempotency_key="k").owner_id == "alice"
