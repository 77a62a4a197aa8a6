"""The HTTP job API (jobqueue.web) on SQLite and PostgreSQL.

Requests go through httpx's ASGI transport into the real app over a real database; the
event-stream tests use a real uvicorn server on 127.0.0.1, since a stream is only a stream
over a socket. Callers are told apart by an ``X-User`` header through the ``identify`` hook,
as a host application would do with its session.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
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
from tests.web.server import running_server

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
    # Malformed in ways that used to raise inside the app (500 and a traceback):
    ("JSON nested 10,000 deep", {"content": b'{"prompt": "x", "options": {"a": ' + b"[" * 10_000
     + b"]" * 10_000 + b"}}", "headers": {"content-type": "application/json"}}, 400,
     "invalid_json"),
    ("JSON nested past the queue's depth", {"content": b'{"prompt": "x", "options": {"a": '
     + b"[" * 300 + b"]" * 300 + b"}}", "headers": {"content-type": "application/json"}}, 400,
     "invalid_json"),
    ("JSON integer of 5000 digits", {"content": b'{"prompt": "x", "options": {"n": '
     + b"9" * 5000 + b"}}", "headers": {"content-type": "application/json"}}, 400,
     "invalid_json"),
    ("JSON float of 5000 digits", {"content": b'{"prompt": "x", "options": {"n": 0.'
     + b"1" * 5000 + b"}}", "headers": {"content-type": "application/json"}}, 400,
     "invalid_json"),
    ("form options with a 5000-digit integer", _multipart(
        {"prompt": "x", "options": '{"n": ' + "9" * 5000 + "}"}, {"image": ("", b"")}), 400,
     "invalid_json"),
    ("form options nested 10,000 deep", _multipart(
        {"prompt": "x", "options": '{"a": ' + "[" * 10_000 + "]" * 10_000 + "}"},
        {"image": ("", b"")}), 400, "invalid_json"),
    ("form options not JSON", _multipart({"prompt": "x", "options": "{n: 1"},
     {"image": ("", b"")}), 400, "invalid_json"),
    ("Content-Length that str.isdigit takes", {"content": b'{"prompt": "x"}',
     "headers": {"content-type": "application/json", "content-length": "\u00b2".encode("latin-1")}},
     None, None),
    ("NaN in JSON", {"content": b'{"prompt": "x", "options": {"n": NaN}}',
     "headers": {"content-type": "application/json"}}, 422, "option_not_allowed"),
    # What callers may ask the provider for (the default allow-list):
    ("model not allowed", {"json": {"prompt": "x", "model": "dall-e-3"}}, 422,
     "model_not_allowed"),
    ("option not allowed", {"json": {"prompt": "x", "options": {"steps": 500}}}, 422,
     "option_not_allowed"),
    ("too many images", {"json": {"prompt": "x", "options": {"n": 100}}}, 422,
     "option_not_allowed"),
    ("a size too large", {"json": {"prompt": "x", "options": {"image_size": "4K"}}}, 422,
     "option_not_allowed"),
    ("true for a count", {"json": {"prompt": "x", "options": {"n": True}}}, 422,
     "option_not_allowed"),
    ("form model not allowed", _multipart({"prompt": "x", "model": "dall-e-3"},
     {"image": ("", b"")}), 422, "model_not_allowed"),
    ("form option not allowed", _multipart({"prompt": "x", "options": '{"quality": "ultra"}'},
     {"image": ("", b"")}), 422, "option_not_allowed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [pytest.param(kw, st, code, id=name) for name, kw, st, code in BAD_REQUESTS],
)
async def test_bad_create_requests_are_refused_and_enqueue_nothing(
    alice: httpx.AsyncClient,
    count_jobs: Callable[[], int],
    caplog: pytest.LogCaptureFixture,
    request_kwargs: dict[str, Any],
    status: int | None,
    code: str | None,
) -> None:
    caplog.set_level(logging.WARNING)
    r = await alice.post("/jobs", **request_kwargs)
    if status is None:  # a header the app does not rely on: anything but a failure
        assert r.status_code < 500, r.text
    else:
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == code
        assert isinstance(error["message"], str) and error["message"]
        assert count_jobs() == 0
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "limit", ["\u00b2", "\u0663", "\uff15", "+5", " 5", "5 ", "1e1", "0x5", "", "5" * 5000, "-0"]
)
async def test_malformed_query_parameters_are_400(
    alice: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, limit: str
) -> None:
    """``limit=²`` passed ``str.isdigit`` and then failed in ``int()``: a 500 and a traceback."""
    caplog.set_level(logging.WARNING)
    r = await alice.get("/jobs", params={"limit": limit})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_parameter"
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


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
        # A path (the client resolves it), never built from the client's Host header.
        assert r.headers["location"] == f"/api/images/jobs/{job_id}"
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


# -- the demo owner cookie -------------------------------------------------------------------


async def test_a_malformed_neighbouring_cookie_does_not_hide_the_owner_cookie(
    aqueue: AsyncJobQueue,
) -> None:
    """``SimpleCookie`` drops the whole header at the first cookie it dislikes (a space in
    another site's value); the browser would then lose its jobs to a fresh owner."""
    app = create_app(aqueue)
    async with client_for(app, None) as browser:
        created = await browser.post("/jobs", json={"prompt": "mine"})
        job_id = created.json()["id"]
        owner = browser.cookies["jobqueue_owner"]
        browser.cookies.clear()
        for header in (
            f"tracker=a b; jobqueue_owner={owner}",
            f'prefs="unterminated; jobqueue_owner={owner}',
            f"bad,name=1; jobqueue_owner={owner}; other=x",
            f"jobqueue_owner={owner}; ö=1",
        ):
            cookie = header.encode("utf-8")  # as a browser sends it
            r = await browser.get(f"/jobs/{job_id}", headers={"Cookie": cookie})
            assert r.status_code == 200, (header, r.text)
            assert "set-cookie" not in r.headers


async def test_the_owner_cookie_is_never_set_on_cacheable_responses(aqueue: AsyncJobQueue) -> None:
    app = create_app(aqueue)
    for path in ("/static/jobqueue.js", "/static/demo.css", "/mock-images/abc123.svg"):
        async with client_for(app, None) as fresh:
            r = await fresh.get(path)
            assert r.status_code == 200
            assert "set-cookie" not in r.headers, path
    # The page and the API set it, and no cache may keep those answers.
    for method, path in (("GET", "/"), ("GET", "/jobs"), ("POST", "/jobs")):
        async with client_for(app, None) as fresh:
            kwargs: dict[str, Any] = {"json": {"prompt": "x"}} if method == "POST" else {}
            r = await fresh.request(method, path, **kwargs)
            assert r.status_code in (200, 202)
            assert "jobqueue_owner=" in r.headers["set-cookie"], path
            assert "no-store" in r.headers["cache-control"], path


async def test_demo_404_says_why_without_telling_whether_the_job_exists(
    aqueue: AsyncJobQueue,
) -> None:
    """A curl user who did not keep the cookie gets a 404 that names the likely cause."""
    app = create_app(aqueue)
    async with client_for(app, None) as curl:
        job_id = (await curl.post("/jobs", json={"prompt": "mine"})).json()["id"]
        curl.cookies.clear()  # curl without -c/-b
        theirs = await curl.get(f"/jobs/{job_id}")
        missing = await curl.get(f"/jobs/{uuid.uuid4()}")
        assert theirs.status_code == missing.status_code == 404
        error = theirs.json()["error"]
        assert "belongs to another owner, or you sent no owner cookie" in error["message"]
        assert "-b" in error["hint"] and "jobqueue_owner" in error["hint"]
        assert theirs.json() == missing.json()
        cancel = await curl.post(f"/jobs/{job_id}/cancel")
        assert cancel.status_code == 404 and cancel.json() == missing.json()
    assert (await aqueue.get(job_id)).status == "pending"


# -- other sites, sniffing, Location ---------------------------------------------------------


async def test_cross_site_posts_with_cookies_are_refused(
    aqueue: AsyncJobQueue, count_jobs: Callable[[], int]
) -> None:
    app = create_app(aqueue)
    async with client_for(app, None) as browser:
        job_id = (await browser.post("/jobs", json={"prompt": "mine"})).json()["id"]
        assert "jobqueue_owner" in browser.cookies
        refused = [
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": "http://other.testserver"},
            {"Origin": "https://evil.example"},
            {"Origin": "null"},
        ]
        for headers in refused:
            r = await browser.post("/jobs", json={"prompt": "forged"}, headers=headers)
            assert r.status_code == 403, headers
            assert r.json()["error"]["code"] == "cross_site_request"
            assert "set-cookie" not in r.headers
            r = await browser.post(f"/jobs/{job_id}/cancel", headers=headers)
            assert r.status_code == 403
        assert count_jobs() == 1
        assert (await aqueue.get(job_id)).status == "pending"
        allowed = [
            {"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
            {"Origin": "http://testserver"},
            {},  # not a browser: curl sends neither header
        ]
        for headers in allowed:
            r = await browser.post("/jobs", json={"prompt": "mine"}, headers=headers)
            assert r.status_code == 202, (headers, r.text)
        # Reads are not checked, and a cross-site POST without cookies has no one to act for.
    async with client_for(app, None) as stranger:
        cross = {"Sec-Fetch-Site": "cross-site"}
        r = await stranger.post("/jobs", json={"prompt": "x"}, headers=cross)
        assert r.status_code == 202


async def test_the_host_decides_which_origins_may_post(aqueue: AsyncJobQueue) -> None:
    cross = {
        "Cookie": "session=s1",
        "Sec-Fetch-Site": "cross-site",
        "Origin": "https://spa.example",
    }
    checked = create_app(aqueue, identify=by_header)
    trusting = create_app(aqueue, identify=by_header, trusted_origins=["https://SPA.example:443"])
    unchecked = create_app(aqueue, identify=by_header, check_origin=False)
    based = create_app(aqueue, identify=by_header, base_url="https://jobs.example/api")
    async with client_for(checked) as c:
        assert (await c.post("/jobs", json={"prompt": "x"}, headers=cross)).status_code == 403
        # Token auth (no cookie) cannot be forged by another site: not checked.
        token_only = {k: v for k, v in cross.items() if k != "Cookie"}
        assert (await c.post("/jobs", json={"prompt": "x"}, headers=token_only)).status_code == 202
    async with client_for(trusting) as c:
        assert (await c.post("/jobs", json={"prompt": "x"}, headers=cross)).status_code == 202
    async with client_for(unchecked) as c:
        assert (await c.post("/jobs", json={"prompt": "x"}, headers=cross)).status_code == 202
    async with client_for(based) as c:
        own = {"Cookie": "session=s1", "Origin": "https://jobs.example"}
        assert (await c.post("/jobs", json={"prompt": "x"}, headers=own)).status_code == 202
        # With base_url set, the Host a request names does not make an origin its own.
        spoof = {"Cookie": "session=s1", "Origin": "http://testserver"}
        assert (await c.post("/jobs", json={"prompt": "x"}, headers=spoof)).status_code == 403
    with pytest.raises(ConfigurationError):
        create_app(aqueue, identify=by_header, trusted_origins=["spa.example"])
    with pytest.raises(ConfigurationError):
        create_app(aqueue, identify=by_header, base_url="/relative")


async def test_every_response_says_nosniff(aqueue: AsyncJobQueue) -> None:
    def broken(request: Request) -> str | None:
        if request.headers.get("x-break"):
            raise RuntimeError("the host's session store is down")
        return "alice"

    app = create_app(aqueue, identify=broken)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://testserver",
    ) as client:
        job_id = (await client.post("/jobs", json={"prompt": "x"})).json()["id"]
        answers = [
            await client.get("/"),
            await client.get("/jobs"),
            await client.get(f"/jobs/{job_id}"),
            await client.get("/static/jobqueue.js"),
            await client.get("/mock-images/abc.svg"),
            await client.get("/nope"),
            await client.delete("/jobs"),
            await client.post("/jobs", content=b"{"),
            await client.get("/jobs", headers={"x-break": "1"}),
        ]
        assert [r.status_code for r in answers] == [200, 200, 200, 200, 200, 404, 405, 415, 500]
        for r in answers:
            assert r.headers.get("x-content-type-options") == "nosniff", r.request.url


async def test_location_comes_from_the_base_url_never_the_host_header(
    aqueue: AsyncJobQueue,
) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    evil = {"Host": "evil.example"}
    plain = create_app(aqueue, identify=by_header)
    async with client_for(plain) as client:
        r = await client.post("/jobs", json={"prompt": "x"}, headers=evil)
        assert r.headers["location"] == f"/jobs/{r.json()['id']}"
    based = create_app(aqueue, identify=by_header, base_url="https://public.example/api/images/")
    host = Starlette(routes=[Mount("/api/images", app=based)])
    async with client_for(host) as client:
        r = await client.post("/api/images/jobs", json={"prompt": "x"}, headers=evil)
        assert r.status_code == 202
        job_id = r.json()["id"]
        assert r.headers["location"] == f"https://public.example/api/images/jobs/{job_id}"


# -- what callers may spend --------------------------------------------------------------------


async def test_the_host_sets_what_may_be_passed_to_the_provider(
    aqueue: AsyncJobQueue, count_jobs: Callable[[], int]
) -> None:
    from jobqueue.web import Allowed

    default = create_app(aqueue, identify=by_header)
    async with client_for(default) as client:
        options = {"aspect_ratio": "16:9", "n": 2}
        ok = {"prompt": "x", "model": "google/nano-banana", "options": options}
        assert (await client.post("/jobs", json=ok)).status_code == 202
        r = await client.post("/jobs", json={"prompt": "x", "model": "dall-e-3"})
        assert "google/nano-banana" in r.json()["error"]["hint"]  # names what is allowed
        r = await client.post("/jobs", json={"prompt": "x", "options": {"n": 9}})
        assert r.json()["error"]["hint"] == "n takes an integer from 1 to 4"
    custom = create_app(
        aqueue,
        identify=by_header,
        allowed=Allowed(models={"house-model"}, options={"seed": range(0, 1000), "hd": [False]}),
    )
    async with client_for(custom) as client:
        good = {"prompt": "x", "model": "house-model", "options": {"seed": 7, "hd": False}}
        assert (await client.post("/jobs", json=good)).status_code == 202
        for bad in (
            {"prompt": "x", "model": "google/nano-banana"},
            {"prompt": "x", "options": {"n": 1}},
            {"prompt": "x", "options": {"seed": 1000}},
            {"prompt": "x", "options": {"hd": True}},
            {"prompt": "x", "options": {"hd": 0}},
        ):
            r = await client.post("/jobs", json=bad)
            assert r.status_code == 422, bad
            assert r.json()["error"]["code"] in ("model_not_allowed", "option_not_allowed")
    anything = create_app(aqueue, identify=by_header, allowed=Allowed.anything())
    async with client_for(anything) as client:
        r = await client.post("/jobs", json={"prompt": "x", "model": "m", "options": {"k": [1]}})
        assert r.status_code == 202
    assert count_jobs() == 3
    with pytest.raises(ConfigurationError):
        Allowed(models="google/nano-banana")
    with pytest.raises(ConfigurationError):
        Allowed(options={"n": 4})  # type: ignore[dict-item]


async def test_new_jobs_are_rate_limited_per_owner(
    aqueue: AsyncJobQueue, count_jobs: Callable[[], int]
) -> None:
    from jobqueue.web import DEMO_RATE_LIMIT, RateLimit

    # Demo mode: on by default.
    demo = create_app(aqueue)
    async with client_for(demo, None) as browser, client_for(demo, None) as other:
        for _ in range(DEMO_RATE_LIMIT.jobs):
            assert (await browser.post("/jobs", json={"prompt": "x"})).status_code == 202
        r = await browser.post("/jobs", json={"prompt": "one too many"})
        assert r.status_code == 429
        assert r.json()["error"]["code"] == "rate_limited"
        assert "10 jobs per 60 s" in r.json()["error"]["message"]
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert count_jobs() == DEMO_RATE_LIMIT.jobs
        # Reads are not limited; another browser has its own allowance.
        assert (await browser.get("/jobs")).status_code == 200
        assert (await other.get("/")).status_code == 200  # the page gives it its cookie
        assert (await other.post("/jobs", json={"prompt": "x"})).status_code == 202
    # Dropping the cookie is no way around it: cookie-less callers count by address.
    fresh_demo = create_app(aqueue)
    statuses = []
    for _ in range(DEMO_RATE_LIMIT.jobs + 1):
        async with client_for(fresh_demo, None) as cookieless:
            statuses.append((await cookieless.post("/jobs", json={"prompt": "x"})).status_code)
    assert statuses == [202] * DEMO_RATE_LIMIT.jobs + [429]

    # With an identify hook: off unless the host sets one.
    hosted = create_app(aqueue, identify=by_header)
    async with client_for(hosted) as client:
        for _ in range(DEMO_RATE_LIMIT.jobs + 2):
            assert (await client.post("/jobs", json={"prompt": "x"})).status_code == 202
    limited = create_app(aqueue, identify=by_header, rate_limit=RateLimit(jobs=2, per=0.6))
    async with client_for(limited, "carol") as carol:
        assert (await carol.post("/jobs", json={"prompt": "x"})).status_code == 202
        assert (await carol.post("/jobs", json={"prompt": "x"})).status_code == 202
        assert (await carol.post("/jobs", json={"prompt": "x"})).status_code == 429
        await asyncio.sleep(0.4)  # one job back every 0.3 s
        assert (await carol.post("/jobs", json={"prompt": "x"})).status_code == 202
    off = create_app(aqueue, rate_limit=False)
    async with client_for(off, None) as browser:
        for _ in range(DEMO_RATE_LIMIT.jobs + 2):
            assert (await browser.post("/jobs", json={"prompt": "x"})).status_code == 202
    for bad in ((0, 60.0), (3, 0.0), (True, 1.0)):
        with pytest.raises(ConfigurationError):
            RateLimit(*bad)  # type: ignore[arg-type]


# -- event streams share their polling ------------------------------------------------------


class StatementCounter:
    """Counts the statements that read ``table`` (real statements, as the driver gets them).

    On SQLite, from the sqlite3 connection's own trace of what it runs: most statements
    run on the aiosqlite connection's thread, past SQLAlchemy's events."""

    def __init__(self, queue: AsyncJobQueue, table: str) -> None:
        from sqlalchemy import event

        self.engine = queue.engine.sync_engine
        self.table = table
        self.count = 0
        self.active = True
        self._event = event
        self._listens = (
            ("checkout", self._trace)
            if self.engine.dialect.name == "sqlite"
            else ("before_cursor_execute", self._seen)
        )
        event.listen(self.engine, *self._listens)

    def _seen(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self._ran(statement)

    def _ran(self, statement: str) -> None:
        if self.active and statement.lstrip().upper().startswith("SELECT"):
            self.count += self.table in statement

    def _trace(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        from sqlalchemy.util import await_only

        # On the connection's thread, where sqlite3 lets it be set.
        await_only(record.driver_connection.set_trace_callback(self._ran))

    def close(self) -> None:
        self.active = False
        self._event.remove(self.engine, *self._listens)


async def open_stream(
    client: httpx.AsyncClient, url: str, stack: contextlib.AsyncExitStack
) -> AsyncIterator[dict[str, Any]]:
    response = await stack.enter_async_context(client.stream("GET", url))
    assert response.status_code == 200, await response.aread()

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                yield json.loads(line[6:])

    return events()


async def test_many_streams_on_one_job_cost_one_read_per_interval(
    aqueue: AsyncJobQueue, table_name: str
) -> None:
    interval, streams = 0.1, 12
    app = create_app(
        aqueue, identify=by_header, events_poll_interval=interval, max_streams_per_owner=streams
    )
    counter = StatementCounter(aqueue, table_name)
    try:
        async with (
            running_server(app) as base,
            httpx.AsyncClient(base_url=base, headers={"X-User": "alice"}, timeout=30) as client,
            contextlib.AsyncExitStack() as stack,
        ):
            job_id = (await client.post("/jobs", json={"prompt": "watched"})).json()["id"]
            followers = [
                await open_stream(client, f"/jobs/{job_id}/events", stack) for _ in range(streams)
            ]
            for events in followers:
                assert (await anext(events))["status"] == "pending"
            before = counter.count
            await asyncio.sleep(20 * interval)
            reads = counter.count - before
            print(f"{streams} streams, {reads} reads in {20 * interval:g} s")
            # One shared watch: about one read per interval (timers on a busy machine
            # may fire late, never more often), and the job's position computed again once
            # its kept answer is older than max_age (its few statements, at most once in
            # these 2 s); one watch per stream would be 12 times that.
            position_reads = 5
            assert 5 <= reads <= 22 + position_reads, reads
            # ...and every stream still gets every change.
            [held] = await aqueue.claim("w1")
            await aqueue.complete(held)
            for events in followers:
                statuses = [e["status"] async for e in events]
                assert statuses[-1] == "completed"
    finally:
        counter.close()


async def stream_answer(client: httpx.AsyncClient, url: str) -> tuple[int, Any, httpx.Headers]:
    """Status, body (unless it is a stream) and headers of a GET, without waiting for an
    accepted stream to end."""
    async with client.stream("GET", url) as response:
        if response.status_code == 200:
            return 200, None, response.headers
        return response.status_code, json.loads(await response.aread()), response.headers


async def test_open_streams_per_owner_are_bounded(aqueue: AsyncJobQueue) -> None:
    app = create_app(aqueue, identify=by_header, events_poll_interval=0.05, max_streams_per_owner=2)
    async with (
        running_server(app) as base,
        httpx.AsyncClient(base_url=base, headers={"X-User": "alice"}, timeout=30) as alice,
        httpx.AsyncClient(base_url=base, headers={"X-User": "bob"}, timeout=30) as bob,
        contextlib.AsyncExitStack() as stack,
    ):
        ids = [(await alice.post("/jobs", json={"prompt": f"p{i}"})).json()["id"] for i in range(3)]
        bobs = (await bob.post("/jobs", json={"prompt": "b"})).json()["id"]
        first = await open_stream(alice, f"/jobs/{ids[0]}/events", stack)
        await anext(first)
        async with contextlib.AsyncExitStack() as second_stack:
            second = await open_stream(alice, f"/jobs/{ids[1]}/events", second_stack)
            await anext(second)
            status, body, headers = await stream_answer(alice, f"/jobs/{ids[2]}/events")
            assert status == 429
            assert body["error"]["code"] == "too_many_streams"
            assert "at most 2" in body["error"]["message"]
            assert headers["retry-after"] == "3"
            # Same job, same answer: the bound counts streams, not jobs.
            assert (await stream_answer(alice, f"/jobs/{ids[0]}/events"))[0] == 429
            # Another owner is not affected; polling is not affected.
            theirs = await open_stream(bob, f"/jobs/{bobs}/events", stack)
            assert (await anext(theirs))["id"] == bobs
            assert (await alice.get(f"/jobs/{ids[2]}")).status_code == 200
        # A closed stream gives its slot back (once the server sees the disconnect).
        for _ in range(200):
            async with alice.stream("GET", f"/jobs/{ids[2]}/events") as again:
                if again.status_code == 200:
                    break
            await asyncio.sleep(0.05)
        assert again.status_code == 200
        # A 404 takes no slot: alice has one stream open, so one more fits after these.
        for _ in range(3):
            assert (await alice.get(f"/jobs/{uuid.uuid4()}/events")).status_code == 404
        async with alice.stream("GET", f"/jobs/{ids[1]}/events") as last:
            assert last.status_code == 200


# -- where a job stands in the line ---------------------------------------------------------


async def made_history(aqueue: AsyncJobQueue, raw_sql: Callable[..., list[Any]]) -> None:
    """Two completed image runs of 10 s each, and a live worker running two at once."""
    from jobqueue import Completion
    from jobqueue.models import WorkerPresence

    for _ in range(2):
        await aqueue.enqueue("image", {}, queue="history")
    done = await aqueue.claim("w-history", limit=2, queues=["history"])
    await aqueue.complete_many([Completion(j) for j in done])
    if aqueue.is_postgres:
        later = "started_at + interval '10 seconds'"
    else:
        later = "strftime('%Y-%m-%d %H:%M:%f000', started_at, '+10 seconds')"
    raw_sql(f"UPDATE {aqueue.table.name} SET completed_at = {later} WHERE queue = 'history'")
    await aqueue.worker_beat(WorkerPresence("w1", ("default",), None, 2), ttl=60)


async def test_get_shows_the_place_in_line_and_the_eta(
    alice: httpx.AsyncClient, aqueue: AsyncJobQueue, raw_sql: Callable[..., list[Any]]
) -> None:
    ids = [(await alice.post("/jobs", json={"prompt": f"p{i}"})).json()["id"] for i in range(3)]
    unknown = (await alice.get(f"/jobs/{ids[2]}")).json()
    assert (unknown["position"], unknown["position_more"], unknown["eta_seconds"]) == (
        2,
        False,
        None,
    )
    assert unknown["position_text"] == "3rd in line · no worker serves it"
    await made_history(aqueue, raw_sql)
    aqueue.positions.max_age = 0  # no kept answer from before the history
    body = (await alice.get(f"/jobs/{ids[2]}")).json()
    assert (body["position"], body["start_eta_seconds"], body["eta_seconds"]) == (2, 10, 20)
    assert body["position_text"] == "3rd in line · about 20 s"
    await alice.post(f"/jobs/{ids[2]}/cancel")
    final = (await alice.get(f"/jobs/{ids[2]}")).json()
    assert (final["position"], final["eta_seconds"], final["position_text"]) == (None, None, None)
    # The list and the answers of POST and cancel leave the position out (not computed).
    assert "position" not in (await alice.get("/jobs")).json()["jobs"][0]


async def test_event_stream_sends_the_line_moving(
    aqueue: AsyncJobQueue, raw_sql: Callable[..., list[Any]]
) -> None:
    """A job ahead leaving the line is news to a stream, though the job itself did not
    change."""
    await made_history(aqueue, raw_sql)
    aqueue.positions.max_age = 0
    app = create_app(aqueue, identify=by_header, events_poll_interval=0.05)
    async with (
        running_server(app) as base,
        httpx.AsyncClient(base_url=base, headers={"X-User": "alice"}, timeout=30) as client,
    ):
        ids = [
            (await client.post("/jobs", json={"prompt": f"p{i}"})).json()["id"] for i in range(3)
        ]
        events = read_events(client, f"/jobs/{ids[2]}/events")
        first = await anext(events)
        assert (first["status"], first["position"], first["eta_seconds"]) == ("pending", 2, 20)
        await client.post(f"/jobs/{ids[0]}/cancel")
        moved = await anext(events)
        assert (moved["status"], moved["position"], moved["eta_seconds"]) == ("pending", 1, 10)
        await client.post(f"/jobs/{ids[2]}/cancel")
        last = await anext(events)
        assert (last["status"], last["position"]) == ("cancelled", None)


async def test_spending_shows_only_the_callers_own_costs(
    app: Any, alice: httpx.AsyncClient, bob: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    """``GET /spending``: what the caller's jobs cost per unit over the period, summed
    exactly, and how many of them failed or were cancelled after they had cost money; never
    another caller's."""
    ids = {}
    for user, client in (("alice", alice), ("bob", bob)):
        r = await client.post("/jobs", json={"prompt": f"{user}'s fox"})
        assert r.status_code == 202, r.text
        ids[user] = r.json()["id"]
    second = (await alice.post("/jobs", json={"prompt": "another"})).json()["id"]
    held = {str(j.id): j for j in await aqueue.claim("w", limit=3)}
    await aqueue.complete(held[ids["alice"]], {"ok": 1}, cost="0.1", cost_unit="USD")
    await aqueue.fail(held[second], "provider said no", retry=False, cost="0.2", cost_unit="USD")
    await aqueue.complete(held[ids["bob"]], {"ok": 1}, cost="5", cost_unit="USD")

    r = await alice.get("/spending")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["days"] == 30
    assert body["spent"] == [{"cost": "0.3", "cost_unit": "USD"}]  # 0.1 + 0.2, exact
    assert body["paid_not_delivered"] == 1
    assert sorted(line["status"] for line in body["statuses"]) == ["completed", "failed"]
    assert (await bob.get("/spending?days=7")).json()["spent"] == [
        {"cost": "5", "cost_unit": "USD"}
    ]
    bad = await alice.get("/spending?days=0")
    assert bad.status_code == 400 and "days" in bad.text
