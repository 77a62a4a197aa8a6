"""The HTTP job API (jobqueue.web) on SQLite and PostgreSQL.

Requests go through httpx's ASGI transport into the real app over a real database; the
event-stream tests use a real uvicorn server on 127.0.0.1, since a stream is only a stream
over a socket. Callers are told apart by an ``X-User`` header through the ``identify`` hook,
as a host application would do with its session.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from jobqueue import AsyncJobQueue, ConfigurationError, GenerationError, Job
from jobqueue.web import create_app
from jobqueue.web.app import worker_stop_timeout
from jobqueue.web.views import PUBLIC_ERRORS
from jobqueue.worker import Worker
from tests.web_server import running_server

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


async def by_header(request: Request) -> str | None:
    return request.headers.get("x-user")


def client_for(app: Any, user: str | None = "alice") -> httpx.AsyncClient:
    headers = {"X-User": user} if user else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers=headers
    )


@pytest.fixture
def app(aqueue: AsyncJobQueue) -> Any:
    return create_app(aqueue, identify=by_header, max_upload_bytes=2048, max_prompt_chars=500)


@pytest.fixture
async def alice(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app, "alice") as client:
        yield client


@pytest.fixture
async def bob(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app, "bob") as client:
        yield client


@pytest.fixture
def count_jobs(raw_sql: Callable[..., list[Any]], table_name: str) -> Callable[[], int]:
    def count() -> int:
        return int(raw_sql(f"SELECT count(*) FROM {table_name}")[0][0])

    return count


async def test_create_answers_202_at_once_and_get_shows_the_job(
    alice: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    r = await alice.post("/jobs", json={"prompt": "a lego castle", "options": {"n": 1}})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "pending"
    assert body["prompt"] == "a lego castle"
    assert r.headers["location"].endswith(f"/jobs/{body['id']}")
    stored = await aqueue.get(body["id"])
    assert stored.owner_id == "alice"
    assert stored.payload == {"prompt": "a lego castle", "options": {"n": 1}}

    got = await alice.get(f"/jobs/{body['id']}")
    assert got.status_code == 200
    shown = got.json()
    assert shown["id"] == body["id"]
    assert shown["progress"] == 0
    assert shown["created_at"] and shown["completed_at"] is None
    assert "owner_id" not in shown and "locked_by" not in shown
    assert got.headers["cache-control"] == "no-store"


async def test_get_shows_progress_result_and_placeholder_for_mock_urls(
    alice: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    job_id = (await alice.post("/jobs", json={"prompt": "a fox"})).json()["id"]
    [held] = await aqueue.claim("w1")
    await aqueue.set_progress(held, 40, "rendering")
    shown = (await alice.get(f"/jobs/{job_id}")).json()
    assert (shown["status"], shown["progress"], shown["progress_message"]) == (
        "processing",
        40,
        "rendering",
    )
    url = "https://mock.jobqueue.invalid/images/abc123.png"
    await aqueue.complete(held, {"images": [url]}, url)
    shown = (await alice.get(f"/jobs/{job_id}")).json()
    assert shown["status"] == "completed"
    assert shown["result_url"] == url and shown["images"] == [url]
    assert shown["preview_url"] == "/mock-images/abc123.svg"
    svg = await alice.get(shown["preview_url"])
    assert svg.status_code == 200
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<svg") and 'width="512"' in svg.text


async def test_real_result_urls_are_shown_as_they_are(
    alice: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    job_id = (await alice.post("/jobs", json={"prompt": "a fox"})).json()["id"]
    [held] = await aqueue.claim("w1")
    url = "https://cdn.example.com/out/1.png"
    await aqueue.complete(held, {"images": [url]}, url)
    shown = (await alice.get(f"/jobs/{job_id}")).json()
    assert shown["preview_url"] == url


async def test_list_shows_own_jobs_newest_first_with_limit(alice: httpx.AsyncClient) -> None:
    ids = []
    for i in range(3):
        ids.append((await alice.post("/jobs", json={"prompt": f"p{i}"})).json()["id"])
    listed = (await alice.get("/jobs")).json()["jobs"]
    assert [j["id"] for j in listed] == ids[::-1]
    limited = (await alice.get("/jobs", params={"limit": 2})).json()["jobs"]
    assert [j["id"] for j in limited] == ids[:0:-1]
    for bad in ("0", "101", "x"):
        r = await alice.get("/jobs", params={"limit": bad})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_parameter"


async def test_cancel_moves_a_pending_job_to_cancelled_and_refuses_a_final_one(
    alice: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    job_id = (await alice.post("/jobs", json={"prompt": "x"})).json()["id"]
    r = await alice.post(f"/jobs/{job_id}/cancel")
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert (await aqueue.get(job_id)).status == "cancelled"
    again = await alice.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "invalid_transition"


async def test_idempotency_key_gives_the_same_job(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, count_jobs: Callable[[], int]
) -> None:
    key = {"Idempotency-Key": "order-42"}
    first = await alice.post("/jobs", json={"prompt": "cat"}, headers=key)
    second = await alice.post("/jobs", json={"prompt": "cat"}, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert count_jobs() == 1
    # The same key for a different request is a client bug: refused, nothing new stored.
    other = await alice.post("/jobs", json={"prompt": "dog"}, headers=key)
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert count_jobs() == 1
    # Keys are per owner: bob's "order-42" is his own job, and alice's stays hidden.
    bobs = await bob.post("/jobs", json={"prompt": "cat"}, headers=key)
    assert bobs.status_code == 202
    assert bobs.json()["id"] != first.json()["id"]
    assert count_jobs() == 2
    bad = await alice.post("/jobs", json={"prompt": "cat"}, headers={"Idempotency-Key": "a b"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_idempotency_key"
    assert count_jobs() == 2


async def test_another_owner_cannot_see_cancel_or_list_a_job(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    job_id = (await alice.post("/jobs", json={"prompt": "secret"})).json()["id"]
    missing = await bob.get(f"/jobs/{uuid.uuid4()}")
    assert missing.status_code == 404
    for response in (
        await bob.get(f"/jobs/{job_id}"),
        await bob.post(f"/jobs/{job_id}/cancel"),
        await bob.get(f"/jobs/{job_id}/events"),
    ):
        assert response.status_code == 404
        # Exactly the answer for a job that does not exist: nothing to learn.
        assert response.json() == missing.json()
    assert (await bob.get("/jobs")).json() == {"jobs": []}
    assert (await aqueue.get(job_id)).status == "pending"
    assert (await alice.get(f"/jobs/{job_id}")).status_code == 200
    # Once final, cancelling is a 409 for its owner, but still a plain 404 for anyone else.
    assert (await alice.post(f"/jobs/{job_id}/cancel")).status_code == 200
    assert (await alice.post(f"/jobs/{job_id}/cancel")).status_code == 409
    late = await bob.post(f"/jobs/{job_id}/cancel")
    assert late.status_code == 404 and late.json() == missing.json()


async def test_no_identity_is_401(app: Any, count_jobs: Callable[[], int]) -> None:
    async with client_for(app, None) as anonymous:
        r = await anonymous.post("/jobs", json={"prompt": "x"})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthenticated"
        assert (await anonymous.get("/jobs")).status_code == 401
    assert count_jobs() == 0


def _multipart(fields: dict[str, Any], files: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"data": fields, "files": files or {}}


class Chunks:
    """A body sent in chunks with no Content-Length (re-iterable, for parametrised tests)."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = parts

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            yield part


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("unknown field", {"json": {"prompt": "x", "priority": 9}}, 422, "unknown_field"),
    ("missing prompt", {"json": {"model": "m"}}, 422, "missing_prompt"),
    ("empty prompt", {"json": {"prompt": "   "}}, 422, "missing_prompt"),
    ("prompt of wrong type", {"json": {"prompt": 5}}, 422, "invalid_field"),
    ("prompt too long", {"json": {"prompt": "x" * 501}}, 422, "invalid_field"),
    ("images not a list", {"json": {"prompt": "x", "images": "u"}}, 422, "invalid_field"),
    ("image not a URL", {"json": {"prompt": "x", "images": ["file:///etc/passwd"]}}, 422,
     "invalid_field"),
    ("options not an object", {"json": {"prompt": "x", "options": [1]}}, 422, "invalid_field"),
    ("body not an object", {"json": ["prompt"]}, 400, "invalid_json"),
    ("broken JSON", {"content": b"{", "headers": {"content-type": "application/json"}}, 400,
     "invalid_json"),
    ("oversize JSON body", {"json": {"prompt": "x", "options": {"pad": "y" * 100_000}}}, 413,
     "payload_too_large"),
    ("oversize body without Content-Length",
     {"content": Chunks(b'{"prompt": "x", "pad": "', *[b"y" * 8192] * 20, b'"}'),
      "headers": {"content-type": "application/json"}}, 413, "payload_too_large"),
    ("oversize upload", _multipart({"prompt": "x"}, {"image": ("a.png", PNG + b"0" * 3000)}),
     413, "payload_too_large"),
    ("upload not an image", _multipart({"prompt": "x"}, {"image": ("a.png", b"hello")}), 415,
     "unsupported_image"),
    ("unknown form field", _multipart({"prompt": "x", "queue": "vip"}, {"image": ("a.png", PNG)}),
     422, "unknown_field"),
    ("form without prompt", _multipart({"model": "m"}, {"image": ("a.png", PNG)}), 422,
     "missing_prompt"),
    ("wrong content type", {"content": b"prompt=x",
     "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415,
     "unsupported_media_type"),
    ("no content type", {"content": b"prompt"}, 415, "unsupported_media_type"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [pytest.param(kw, st, code, id=name) for name, kw, st, code in BAD_REQUESTS],
)
async def test_bad_create_requests_are_refused_and_enqueue_nothing(
    alice: httpx.AsyncClient,
    count_jobs: Callable[[], int],
    request_kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    r = await alice.post("/jobs", **request_kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert count_jobs() == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/jobs/not-a-uuid"),
        ("POST", "/jobs/not-a-uuid/cancel"),
        ("GET", "/jobs/not-a-uuid/events"),
        ("GET", "/jobs/12345678-1234-1234-1234-12345678901"),
    ],
)
async def test_malformed_job_ids_are_400(
    alice: httpx.AsyncClient, method: str, path: str, count_jobs: Callable[[], int]
) -> None:
    r = await alice.request(method, path)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_job_id"
    assert count_jobs() == 0


async def test_unknown_paths_and_methods_answer_json(alice: httpx.AsyncClient) -> None:
    r = await alice.delete("/jobs")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = await alice.get("/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


async def test_multipart_upload_stores_the_image_as_a_data_url(
    alice: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    r = await alice.post(
        "/jobs",
        data={"prompt": "make it lego", "options": json.dumps({"n": 2})},
        files={"image": ("photo.bin", PNG, "application/octet-stream")},
    )
    assert r.status_code == 202, r.text
    job = await aqueue.get(r.json()["id"])
    assert job.payload["prompt"] == "make it lego"
    assert job.payload["options"] == {"n": 2}
    # The MIME type comes from the bytes, not from what the client claimed.
    assert job.payload["images"] == ["data:image/png;base64," + base64.b64encode(PNG).decode()]
    # An empty file input (what a browser sends when no file is chosen) is no image.
    r = await alice.post("/jobs", data={"prompt": "no image"}, files={"image": ("", b"")})
    assert r.status_code == 202, r.text
    assert "images" not in (await aqueue.get(r.json()["id"])).payload


async def test_demo_mode_gives_each_browser_its_own_anonymous_owner(
    aqueue: AsyncJobQueue,
) -> None:
    app = create_app(aqueue)
    async with client_for(app, None) as first, client_for(app, None) as second:
        r = await first.post("/jobs", json={"prompt": "mine"})
        assert r.status_code == 202
        cookie = r.headers["set-cookie"]
        assert "jobqueue_owner=" in cookie
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
        job_id = r.json()["id"]
        owner = (await aqueue.get(job_id)).owner_id
        assert owner is not None and owner.startswith("anonymous:")
        # The cookie is kept by the client: later requests are the same owner, no new cookie.
        mine = await first.get(f"/jobs/{job_id}")
        assert mine.status_code == 200 and "set-cookie" not in mine.headers
        assert (await second.get(f"/jobs/{job_id}")).status_code == 404
        assert (await second.get("/jobs")).json() == {"jobs": []}
        # A forged cookie value is not an owner id: it gets a fresh one.
        forged = await second.get("/jobs", headers={"Cookie": "jobqueue_owner=alice"})
        assert "set-cookie" in forged.headers


async def test_demo_page_and_client_module_are_served(aqueue: AsyncJobQueue) -> None:
    app = create_app(aqueue, poll_interval_ms=750)
    async with client_for(app, None) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert 'data-poll-interval="750"' in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        js = await client.get("/static/jobqueue.js")
        assert js.status_code == 200
        assert "javascript" in js.headers["content-type"]
        assert "export async function generateImageAsync" in js.text
        assert (await client.get("/static/demo.js")).status_code == 200


def test_an_upload_limit_that_cannot_fit_the_payload_is_refused(aqueue: AsyncJobQueue) -> None:
    with pytest.raises(ConfigurationError, match="max_upload_bytes"):
        create_app(aqueue, max_upload_bytes=aqueue.limits.max_payload_bytes)


# -- the event stream, over a real socket --------------------------------------------------


async def read_events(client: httpx.AsyncClient, url: str) -> AsyncIterator[dict[str, Any]]:
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])


async def test_event_stream_pushes_each_change_until_final(aqueue: AsyncJobQueue) -> None:
    app = create_app(aqueue, identify=by_header, events_poll_interval=0.05)
    async with (
        running_server(app) as base,
        httpx.AsyncClient(base_url=base, headers={"X-User": "alice"}, timeout=30) as client,
    ):
        job_id = (await client.post("/jobs", json={"prompt": "stream me"})).json()["id"]
        seen: list[tuple[str, int]] = []
        events = read_events(client, f"/jobs/{job_id}/events")
        first = await anext(events)
        seen.append((first["status"], first["progress"]))
        # Each move happens only after the stream reported the previous one.
        [held] = await aqueue.claim("w1")
        steps = [lambda: aqueue.set_progress(held, 50, "half"), lambda: aqueue.complete(held)]
        async for event in events:
            seen.append((event["status"], event["progress"]))
            if steps:
                await steps.pop(0)()
        assert seen == [("pending", 0), ("processing", 0), ("processing", 50), ("completed", 100)]


async def test_event_stream_follows_a_job_run_by_a_worker(aqueue: AsyncJobQueue) -> None:
    from jobqueue.generators.mock import MockGenerator
    from jobqueue.worker import Worker

    worker = Worker(aqueue, generator=MockGenerator(delay=0.6, steps=3), poll_interval=0.1)
    app = create_app(aqueue, identify=by_header, worker=worker, events_poll_interval=0.05)
    async with (
        running_server(app) as base,
        httpx.AsyncClient(base_url=base, headers={"X-User": "alice"}, timeout=60) as client,
    ):
        job_id = (await client.post("/jobs", json={"prompt": "worker run"})).json()["id"]
        events = [e async for e in read_events(client, f"/jobs/{job_id}/events")]
    statuses = [e["status"] for e in events]
    assert statuses[-1] == "completed"
    assert "processing" in statuses
    assert events[-1]["preview_url"].endswith(".svg")
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and len(set(progress)) > 2


async def test_mounted_under_a_prefix_in_a_host_app(aqueue: AsyncJobQueue) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    def from_session(request: Request) -> str | None:
        # Stands in for the host's own session lookup (a plain function works too).
        token = request.headers.get("authorization", "")
        return {"Bearer t-ann": "user-1"}.get(token)

    host = Starlette(routes=[Mount("/api/images", app=create_app(aqueue, identify=from_session))])
    async with client_for(host, None) as client:
        headers = {"Authorization": "Bearer t-ann"}
        r = await client.post("/api/images/jobs", json={"prompt": "x"}, headers=headers)
        assert r.status_code == 202
        job_id = r.json()["id"]
        assert r.headers["location"] == f"http://testserver/api/images/jobs/{job_id}"
        assert (await client.get(f"/api/images/jobs/{job_id}", headers=headers)).status_code == 200
        assert (await client.get(f"/api/images/jobs/{job_id}")).status_code == 401
        assert (await client.get("/api/images/static/jobqueue.js")).status_code == 200
        page = await client.get("/api/images", follow_redirects=True)
        assert page.status_code == 200 and 'src="static/demo.js"' in page.text
        assert (await aqueue.get(job_id)).owner_id == "user-1"
        [held] = await aqueue.claim("w1")
        await aqueue.complete(held, None, "https://mock.jobqueue.invalid/images/m1.png")
        shown = (await client.get(f"/api/images/jobs/{job_id}", headers=headers)).json()
        assert shown["preview_url"] == "/api/images/mock-images/m1.svg"
        assert (await client.get(shown["preview_url"])).status_code == 200


async def test_event_stream_sends_keep_alives_while_idle_and_ends_on_cancel(
    aqueue: AsyncJobQueue,
) -> None:
    app = create_app(aqueue, identify=by_header, events_poll_interval=0.05, heartbeat_interval=0.2)
    async with (
        running_server(app) as base,
        httpx.AsyncClient(base_url=base, headers={"X-User": "alice"}, timeout=30) as client,
    ):
        job_id = (await client.post("/jobs", json={"prompt": "idle"})).json()["id"]
        lines: list[str] = []
        async with client.stream("GET", f"/jobs/{job_id}/events") as response:
            assert response.headers["cache-control"] == "no-store"
            async for line in response.aiter_lines():
                lines.append(line)
                if line == ": keep-alive" and lines.count(line) == 2:
                    await client.post(f"/jobs/{job_id}/cancel")
        assert lines[0] == "retry: 3000"
        data_at = [i for i, x in enumerate(lines) if x.startswith("data: ")]
        statuses = [json.loads(lines[i][6:])["status"] for i in data_at]
        assert statuses == ["pending", "cancelled"]
        # Keep-alives came while nothing changed, between the two snapshots; the stream
        # ended by itself after the final one.
        alive_at = [i for i, x in enumerate(lines) if x == ": keep-alive"]
        assert len(alive_at) >= 2
        assert all(data_at[0] < i < data_at[1] for i in alive_at)


async def test_a_failed_job_shows_the_owner_a_code_not_internal_error_text(
    alice: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    """The stored error is for operators; the owner sees the generator's message only."""
    refused = (await alice.post("/jobs", json={"prompt": "refuse me"})).json()["id"]
    broken = (await alice.post("/jobs", json={"prompt": "break"})).json()["id"]

    async def handler(job: Job, ctx: Any) -> dict[str, Any]:
        if job.payload["prompt"] == "refuse me":
            raise GenerationError("the provider refused this prompt", retryable=False)
        raise RuntimeError("could not reach 10.1.2.3:5432 as jobqueue_worker")

    worker = Worker(aqueue, handlers={"image": handler}, listen=False, poll_interval=0.05)
    await worker.run_until_idle()

    shown = (await alice.get(f"/jobs/{refused}")).json()
    assert shown["status"] == "failed"
    assert (shown["error_code"], shown["error"]) == (
        "generation_failed",
        "the provider refused this prompt",
    )
    stored = await aqueue.get(broken)
    assert stored.error and "10.1.2.3" in stored.error  # operators still see everything
    shown = (await alice.get(f"/jobs/{broken}")).json()
    assert shown["error_code"] == "internal_error"
    assert "10.1.2.3" not in json.dumps(shown) and "RuntimeError" not in json.dumps(shown)
    assert shown["error"] == PUBLIC_ERRORS["internal_error"]


async def test_a_lost_lease_does_not_show_the_worker_id(
    alice: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    job_id = (await alice.post("/jobs", json={"prompt": "a fox"})).json()["id"]
    await aqueue.claim("render-host-7:4242:secret", lease=0.001)
    await asyncio.sleep(0.05)
    await aqueue.reap()
    stored = await aqueue.get(job_id)
    assert stored.error and "render-host-7" in stored.error
    shown = (await alice.get(f"/jobs/{job_id}")).json()
    assert shown["error_code"] == "worker_lost"
    assert "render-host-7" not in json.dumps(shown)
    assert shown["error"] == PUBLIC_ERRORS["worker_lost"]


def test_shutdown_waits_longer_than_the_workers_own_drain(aqueue: AsyncJobQueue) -> None:
    """The app must not cancel its worker while it may still release jobs or write results."""

    async def handler(job: Job, ctx: Any) -> None:
        return None

    for grace, lease in ((30.0, 30.0), (120.0, 5.0), (0.0, 60.0)):
        worker = Worker(aqueue, handlers={"image": handler}, grace_period=grace, lease=lease)
        assert worker_stop_timeout(worker) > grace + lease
