"""The web API and start deadlines: ``POST /jobs`` takes one, ``GET /jobs/{id}`` and the
event stream report an expired job, and (opt-in) a pending job whose event streams all
closed is cancelled after a grace period. Streams run over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from jobqueue import AsyncJobQueue, ConfigurationError, Status
from jobqueue.web import create_app
from tests.web.server import running_server
from tests.web.test_api import by_header, client_for, read_events

GRACE = 0.5


async def test_create_takes_a_deadline_and_get_and_the_stream_report_the_expiry(
    aqueue: AsyncJobQueue,
) -> None:
    app = create_app(aqueue, identify=by_header, events_poll_interval=0.05)
    async with (
        running_server(app) as base,
        httpx.AsyncClient(base_url=base, headers={"X-User": "alice"}, timeout=30) as client,
    ):
        created = await client.post("/jobs", json={"prompt": "soon", "expires_in": 0.3})
        assert created.status_code == 202
        shown = created.json()
        assert shown["start_by"] is not None and shown["status"] == "pending"
        job_id = shown["id"]
        events = read_events(client, f"/jobs/{job_id}/events")
        first = await anext(events)
        assert (first["status"], first["error_code"]) == ("pending", None)
        await asyncio.sleep(0.4)
        assert await aqueue.claim("w") == []  # past its deadline: no claim takes it
        await aqueue.expire()
        last = [e async for e in events][-1]  # the stream ends after the final status
        assert (last["status"], last["error_code"], last["final"]) == ("expired", "expired", True)
        assert "deadline" in last["error"]
        got = (await client.get(f"/jobs/{job_id}")).json()
        assert (got["status"], got["error_code"]) == ("expired", "expired")
        listed = (await client.get("/jobs?status=expired")).json()["jobs"]
        assert [j["id"] for j in listed] == [job_id]


async def test_create_takes_start_by_from_json_and_forms(aqueue: AsyncJobQueue) -> None:
    at = datetime.now(UTC) + timedelta(minutes=10)
    async with client_for(create_app(aqueue, identify=by_header)) as client:
        by_json = await client.post("/jobs", json={"prompt": "x", "start_by": at.isoformat()})
        assert by_json.status_code == 202, by_json.text
        assert datetime.fromisoformat(by_json.json()["start_by"]) == at
        form = {"prompt": (None, "y"), "expires_in": (None, "60")}
        by_form = await client.post("/jobs", files=form)
        assert by_form.status_code == 202, by_form.text
        job = await aqueue.get(by_form.json()["id"])
        assert job.start_by is not None
        assert job.start_by - job.created_at == pytest.approx(
            timedelta(seconds=60), abs=timedelta(seconds=1)
        )
        plain = await client.post("/jobs", json={"prompt": "z"})
        assert plain.json()["start_by"] is None


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"expires_in": "soon"}, 422, "invalid_field"),
        ({"expires_in": True}, 422, "invalid_field"),
        ({"expires_in": 0}, 422, "invalid_request"),
        ({"expires_in": 400 * 86400}, 422, "invalid_request"),
        ({"start_by": "tomorrow"}, 422, "invalid_field"),
        ({"start_by": "2030-01-01T00:00:00"}, 422, "invalid_field"),  # no offset
        ({"start_by": 5}, 422, "invalid_field"),
        ({"expires_in": 5, "start_by": "2030-01-01T00:00:00Z"}, 422, "invalid_request"),
    ],
)
async def test_a_bad_deadline_is_refused_and_enqueues_nothing(
    aqueue: AsyncJobQueue, body: dict[str, Any], status: int, code: str
) -> None:
    async with client_for(create_app(aqueue, identify=by_header)) as client:
        answer = await client.post("/jobs", json={"prompt": "x", **body})
        assert (answer.status_code, answer.json()["error"]["code"]) == (status, code)
    assert await aqueue.list() == []


# -- cancelling what nobody waits for -------------------------------------------------------


@asynccontextmanager
async def served(aqueue: AsyncJobQueue, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(aqueue, identify=by_header, events_poll_interval=0.05, **options)
    async with (
        running_server(app) as base,
        httpx.AsyncClient(base_url=base, headers={"X-User": "alice"}, timeout=30) as client,
    ):
        yield client


async def watch_briefly(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """Open the job's event stream, read its first snapshot, and close the connection."""
    async with client.stream("GET", f"/jobs/{job_id}/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                return json.loads(line[6:])  # type: ignore[no-any-return]
    raise AssertionError("the stream sent no snapshot")


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def status_of(aqueue: AsyncJobQueue, job_id: str) -> Status:
    return (await aqueue.get(job_id)).status


async def test_a_pending_job_whose_last_watcher_left_is_cancelled_after_the_grace(
    aqueue: AsyncJobQueue,
) -> None:
    async with served(aqueue, cancel_abandoned_after=GRACE) as client:
        job_id = (await client.post("/jobs", json={"prompt": "left"})).json()["id"]
        assert (await watch_briefly(client, job_id))["status"] == "pending"
        left_at = time.monotonic()
        await asyncio.sleep(GRACE / 2)
        assert await status_of(aqueue, job_id) is Status.PENDING  # still within the grace

        async def cancelled() -> bool:
            return await status_of(aqueue, job_id) is Status.CANCELLED

        await until(cancelled)
        assert time.monotonic() - left_at >= GRACE
        assert await aqueue.claim("w") == []  # never reaches a worker


async def test_a_reconnect_within_the_grace_keeps_the_job(aqueue: AsyncJobQueue) -> None:
    async with served(aqueue, cancel_abandoned_after=GRACE) as client:
        job_id = (await client.post("/jobs", json={"prompt": "blip"})).json()["id"]
        await watch_briefly(client, job_id)
        await asyncio.sleep(GRACE / 3)
        # The page reloads: a new stream opens within the grace period and stays.
        async with client.stream("GET", f"/jobs/{job_id}/events") as response:
            lines = response.aiter_lines()
            while not (await anext(lines)).startswith("data: "):
                pass
            await asyncio.sleep(GRACE * 2)
            assert await status_of(aqueue, job_id) is Status.PENDING
            # A second watcher leaving is not the last one leaving.
            await watch_briefly(client, job_id)
            await asyncio.sleep(GRACE * 2)
            assert await status_of(aqueue, job_id) is Status.PENDING

        async def cancelled() -> bool:
            return await status_of(aqueue, job_id) is Status.CANCELLED

        await until(cancelled)  # now the last one left


async def test_a_started_job_runs_on_and_the_setting_is_off_by_default(
    aqueue: AsyncJobQueue,
) -> None:
    async with served(aqueue, cancel_abandoned_after=GRACE) as client:
        job_id = (await client.post("/jobs", json={"prompt": "running"})).json()["id"]
        await watch_briefly(client, job_id)
        (held,) = await aqueue.claim("w")  # a worker starts it within the grace period
        await asyncio.sleep(GRACE * 3)
        assert await status_of(aqueue, job_id) is Status.PROCESSING
        await aqueue.complete(held)
    async with served(aqueue) as client:
        job_id = (await client.post("/jobs", json={"prompt": "kept"})).json()["id"]
        await watch_briefly(client, job_id)
        await asyncio.sleep(GRACE * 3)
        assert await status_of(aqueue, job_id) is Status.PENDING


def test_the_grace_period_is_checked(aqueue: AsyncJobQueue) -> None:
    for bad in (-1, True, "30", float("nan"), 10**9):
        with pytest.raises(ConfigurationError, match="cancel_abandoned_after"):
            create_app(aqueue, identify=by_header, cancel_abandoned_after=bad)  # type: ignore[arg-type]
