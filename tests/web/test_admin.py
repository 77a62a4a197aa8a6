"""The admin dashboard (jobqueue.web.admin) on SQLite and PostgreSQL.

Requests go through httpx's ASGI transport into the real app over a real database, with
the client address set as a real server would (loopback or not); `jobqueue serve --admin`
runs as a real process on a real port. The browser test is test_admin_browser.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url
from starlette.requests import Request

import jobqueue.web.admin
from jobqueue import AsyncJobQueue, ConfigurationError, PayloadError, migrate
from jobqueue.models import Status, WorkerPresence
from jobqueue.web import create_admin_app
from jobqueue.web.admin import TOKEN_COOKIE, TOKEN_HEADER, check_admin_bind
from jobqueue.web.serve import load_authenticate, serve
from tests.support.ports import free_port

LOOPBACK = ("127.0.0.1", 50000)
ZERO = {s.value: 0 for s in Status}
ELSEWHERE = ("203.0.113.9", 50000)


def client_for(
    app: Any, *, client: tuple[str, int] = LOOPBACK, host: str = "127.0.0.1:8000", **kw: Any
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=client), base_url=f"http://{host}", **kw
    )


@pytest.fixture
async def admin(aqueue: AsyncJobQueue) -> AsyncIterator[httpx.AsyncClient]:
    """A loopback client of a dashboard without a hook, holding the page's token."""
    async with client_for(create_admin_app(aqueue)) as client:
        page = await client.get("/")
        assert page.status_code == 200
        client.headers[TOKEN_HEADER] = page.cookies[TOKEN_COOKIE]
        yield client


async def fail_one(q: AsyncJobQueue, kind: str = "image", **kw: Any) -> str:
    job = await q.enqueue(kind, {"n": 1}, max_attempts=1, **kw)
    [held] = await q.claim("w1", kinds=[kind])
    assert held.id == job.id
    await q.fail(held, "the provider said no", retry=False)
    return str(job.id)


async def test_overview_counts_throughput_cost_and_oldest_pending(
    admin: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    first = await aqueue.enqueue("image", {"n": 0})
    await aqueue.enqueue("image", {"n": 1}, queue="bulk")
    done = await aqueue.enqueue("text", {"n": 2}, queue="bulk")
    [held] = await aqueue.claim("w1", queues=["bulk"], kinds=["text"])
    assert held.id == done.id
    await aqueue.complete(held, {"ok": True}, cost=Decimal("0.25"), cost_unit="USD")
    await fail_one(aqueue, "video")

    body = (await admin.get("/api/overview")).json()
    assert body["totals"]["pending"] == 2
    assert body["totals"]["completed"] == 1 and body["totals"]["failed"] == 1
    queues = {q["queue"]: q["counts"] for q in body["queues"]}
    assert queues["bulk"] == {"pending": 1, "completed": 1}
    assert queues["default"]["pending"] == 1
    waiting = {q["queue"]: q.get("oldest_pending_age") for q in body["queues"]}
    assert all(0 <= age < 60 for age in waiting.values()), waiting
    assert sum(body["throughput"]["completed"]) == 1
    assert sum(body["throughput"]["failed"]) == 1
    assert len(body["throughput"]["completed"]) == 60
    assert body["throughput"]["completed"][-1] + body["throughput"]["completed"][-2] == 1
    assert body["cost_today"] == [{"unit": "USD", "cost": "0.25"}]
    assert datetime.fromisoformat(body["oldest_pending"]) == first.created_at
    assert 0 <= body["oldest_pending_age"] < 60
    assert body["workers"] == [] and body["limits"] == []


async def test_the_oldest_pending_job_is_the_longest_due_not_one_delayed_to_later(
    admin: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    """A job delayed to later is pending but not waiting: the overview's oldest pending
    job is the one due the longest (as the metrics' oldest pending age reads it)."""
    await aqueue.enqueue("image", {"n": 0}, delay=3600)
    body = (await admin.get("/api/overview")).json()
    assert body["totals"]["pending"] == 1
    assert body["oldest_pending"] is None and body["oldest_pending_age"] is None
    due = await aqueue.enqueue("image", {"n": 1})
    admin_app = create_admin_app(aqueue)  # a new app: the first one's overview is cached
    async with client_for(admin_app) as fresh:
        body = (await fresh.get("/api/overview")).json()
    assert datetime.fromisoformat(body["oldest_pending"]) == due.run_at
    assert 0 <= body["oldest_pending_age"] < 60


async def test_open_dashboards_share_one_overview_read_until_an_action(
    admin: httpx.AsyncClient, aqueue: AsyncJobQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overview's counts read the whole jobs table: within `OVERVIEW_MAX_AGE` every
    open dashboard gets the same read, and an action through the dashboard reads anew."""
    monkeypatch.setattr(jobqueue.web.admin, "OVERVIEW_MAX_AGE", 60.0)  # a loaded machine
    job_id = await fail_one(aqueue)
    first = (await admin.get("/api/overview")).json()
    assert first["totals"]["failed"] == 1
    await aqueue.enqueue("image", {"n": 2})  # by the app, not through the dashboard
    again = (await admin.get("/api/overview")).json()
    assert again == first  # the shared read
    assert (await admin.post(f"/api/jobs/{job_id}/retry")).status_code == 200
    after = (await admin.get("/api/overview")).json()
    assert (after["totals"]["failed"], after["totals"]["pending"]) == (0, 2)


async def test_overview_lists_paused_queues_and_live_workers(
    admin: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    await aqueue.worker_beat(WorkerPresence("w-live", ("default",), None, 4), ttl=30)
    await aqueue.pause("bulk", reason="maintenance")
    body = (await admin.get("/api/overview")).json()
    [worker] = body["workers"]
    assert (worker["worker_id"], worker["concurrency"], worker["queues"]) == (
        "w-live",
        4,
        ["default"],
    )
    [paused] = body["limits"]
    assert (paused["scope"], paused["name"], paused["paused"]) == ("queue", "bulk", True)
    assert paused["pause_reason"] == "maintenance"


async def test_jobs_table_filters_pages_by_keyset_and_finds_by_id(
    admin: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    for i in range(5):
        await aqueue.enqueue("image", {"n": i}, owner_id="ann" if i % 2 else "bo")
    failed = await fail_one(aqueue, "video", owner_id="ann")

    seen: list[str] = []
    query: dict[str, str] = {"limit": "2"}
    for _ in range(10):
        page = (await admin.get("/api/jobs", params=query)).json()
        seen += [j["id"] for j in page["jobs"]]
        if page["next"] is None:
            break
        query["after"] = page["next"]
    assert len(seen) == len(set(seen)) == 6  # every job once, newest first
    assert seen[0] == failed

    only_failed = (await admin.get("/api/jobs", params={"status": "failed"})).json()["jobs"]
    assert [j["id"] for j in only_failed] == [failed]
    assert only_failed[0]["error"] == "the provider said no"
    assert "payload" not in only_failed[0]
    anns = (await admin.get("/api/jobs", params={"owner": "ann", "kind": "image"})).json()
    assert {j["owner_id"] for j in anns["jobs"]} == {"ann"} and len(anns["jobs"]) == 2
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await admin.get("/api/jobs", params={"from": later})).json()["jobs"] == []
    assert len((await admin.get("/api/jobs", params={"to": later})).json()["jobs"]) == 6
    assert (await admin.get("/api/jobs", params={"queue": "elsewhere"})).json()["jobs"] == []

    found = (await admin.get("/api/jobs", params={"id": failed})).json()["jobs"]
    assert [j["id"] for j in found] == [failed]
    unknown = "01234567-89ab-7def-8123-456789abcdef"
    assert (await admin.get("/api/jobs", params={"id": unknown})).json()["jobs"] == []
    assert (await admin.get("/api/jobs", params={"id": "not an id"})).json()["jobs"] == []
    bad = await admin.get("/api/jobs", params={"status": "weird"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_parameter"
    assert (await admin.get("/api/jobs", params={"limit": "1000"})).status_code == 400
    assert (await admin.get("/api/jobs", params={"after": "nonsense"})).status_code == 400


async def test_job_page_shows_payload_result_errors_attempts_and_timeline(
    admin: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    job = await aqueue.enqueue("image", {"prompt": "<script>alert(1)</script>"}, max_attempts=2)
    [held] = await aqueue.claim("w1")
    await aqueue.fail(held, "first try failed", retry=True, retry_in=0)
    [held] = await aqueue.claim("w1")
    await aqueue.complete(held, {"images": ["https://cdn.example/x.png"]})

    body = (await admin.get(f"/api/jobs/{job.id}")).json()
    assert body["status"] == "completed" and body["attempts"] == 2
    assert "<script>alert(1)</script>" in body["payload"]["text"]  # data, shown as text
    assert "https://cdn.example/x.png" in body["result"]["text"]
    assert [(e["attempt"], e["error"]) for e in body["errors"]] == [(1, "first try failed")]
    timeline = body["timeline"]
    for name in ("created_at", "run_at", "started_at", "completed_at", "updated_at"):
        assert timeline[name] is not None, name
    assert (await admin.get(f"/api/jobs/{held.id}x")).status_code == 400
    missing = await admin.get("/api/jobs/01234567-89ab-7def-8123-456789abcdef")
    assert missing.status_code == 404


async def test_the_page_is_static_and_locked_down(admin: httpx.AsyncClient) -> None:
    page = await admin.get("/")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in page.text  # no inline script: the CSP would refuse it anyway
    assert page.headers["x-content-type-options"] == "nosniff"
    js = await admin.get("/static/admin.js")
    assert js.status_code == 200 and "innerHTML" not in js.text
    assert (await admin.get("/static/admin.css")).status_code == 200
    assert (await admin.get("/static/demo.js")).status_code == 404  # only the page's files


async def test_retry_one_and_many_and_cancel(
    admin: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    one = await fail_one(aqueue)
    retried = await admin.post(f"/api/jobs/{one}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "pending"
    again = await admin.post(f"/api/jobs/{one}/retry")
    assert again.status_code == 409  # pending now: nothing to retry

    failed = [await fail_one(aqueue, kind) for kind in ("a", "b", "c")]
    pending = str((await aqueue.enqueue("image", {})).id)
    answer = await admin.post("/api/jobs/retry", json={"ids": [*failed, pending]})
    assert answer.status_code == 200
    assert sorted(answer.json()["retried"]) == sorted(failed)  # the pending one is left
    for job_id in failed:
        assert (await aqueue.get(job_id)).status is Status.PENDING
    too_many = await admin.post("/api/jobs/retry", json={"ids": [pending] * 101})
    assert too_many.status_code == 400
    assert (await admin.post("/api/jobs/retry", json={"ids": "x"})).status_code == 400

    cancelled = await admin.post(f"/api/jobs/{pending}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert (await admin.post(f"/api/jobs/{pending}/cancel")).status_code == 409


async def test_pause_and_resume_a_queue_and_a_key(
    admin: httpx.AsyncClient, aqueue: AsyncJobQueue
) -> None:
    paused = await admin.post("/api/limits/pause", json={"scope": "queue", "name": "bulk"})
    assert paused.status_code == 200 and paused.json()["paused"] is True
    key = await admin.post(
        "/api/limits/pause", json={"scope": "key", "name": "video", "minutes": 5, "reason": "r"}
    )
    assert key.json()["paused_until"] is not None and key.json()["pause_reason"] == "r"
    limits = {(lim.scope, lim.name): lim.paused for lim in await aqueue.list_limits()}
    assert limits == {("queue", "bulk"): True, ("key", "video"): True}
    resumed = await admin.post("/api/limits/resume", json={"scope": "queue", "name": "bulk"})
    assert resumed.json()["paused"] is False
    bad = await admin.post("/api/limits/pause", json={"scope": "owner", "name": "ann"})
    assert bad.status_code == 400
    assert (
        await admin.post("/api/limits/pause", json={"name": "q", "minutes": -1})
    ).status_code == 400
    assert (await admin.post("/api/limits/pause", content=b"x")).status_code == 415


async def test_actions_need_the_page_token_and_refuse_other_sites(aqueue: AsyncJobQueue) -> None:
    job_id = await fail_one(aqueue)
    async with client_for(create_admin_app(aqueue)) as client:
        no_page = await client.post(f"/api/jobs/{job_id}/retry")
        assert no_page.status_code == 403
        assert no_page.json()["error"]["code"] == "admin_token_missing"
        token = (await client.get("/")).cookies[TOKEN_COOKIE]
        wrong = await client.post(f"/api/jobs/{job_id}/retry", headers={TOKEN_HEADER: "x"})
        assert wrong.status_code == 403
        cross = await client.post(
            f"/api/jobs/{job_id}/retry",
            headers={TOKEN_HEADER: token, "Sec-Fetch-Site": "cross-site"},
        )
        assert cross.status_code == 403 and cross.json()["error"]["code"] == "cross_site_request"
        assert (await aqueue.get(job_id)).status is Status.FAILED  # nothing changed
        ok = await client.post(f"/api/jobs/{job_id}/retry", headers={TOKEN_HEADER: token})
        assert ok.status_code == 200


@pytest.mark.parametrize(
    ("client", "host", "headers"),
    [
        (ELSEWHERE, "127.0.0.1:8000", {}),  # another machine
        (LOOPBACK, "evil.example:8000", {}),  # DNS rebinding: a page of another name
        (LOOPBACK, "127.0.0.1:8000", {"X-Forwarded-For": "198.51.100.7"}),  # a local proxy
    ],
)
async def test_without_a_hook_only_this_machine_is_answered(
    aqueue: AsyncJobQueue, client: tuple[str, int], host: str, headers: dict[str, str]
) -> None:
    app = create_admin_app(aqueue)
    async with client_for(app, client=client, host=host, headers=headers) as outsider:
        for path in ("/", "/api/overview", "/api/jobs", "/static/admin.js"):
            refused = await outsider.get(path)
            assert refused.status_code == 403, path
            assert refused.json()["error"]["code"] == "admin_loopback_only"
        assert (await outsider.post("/api/limits/pause", json={"name": "q"})).status_code == 403
    assert await aqueue.list_limits() == []
    async with client_for(app, host="localhost:8000") as local:
        assert (await local.get("/api/overview")).status_code == 200


async def test_an_authentication_hook_decides_who_is_an_admin(aqueue: AsyncJobQueue) -> None:
    async def admin_of(request: Request) -> str | None:
        return "root" if request.headers.get("authorization") == "Bearer sesame" else None

    app = create_admin_app(aqueue, authenticate=admin_of)
    job_id = await fail_one(aqueue)
    async with client_for(app, client=ELSEWHERE, host="admin.example.com") as stranger:
        for path in ("/", "/api/overview", f"/api/jobs/{job_id}", "/static/admin.js"):
            refused = await stranger.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["code"] == "unauthenticated"
    signed_in = {"Authorization": "Bearer sesame"}
    async with client_for(
        app, client=ELSEWHERE, host="admin.example.com", headers=signed_in
    ) as root:
        assert (await root.get("/api/overview")).status_code == 200
        token = (await root.get("/")).cookies[TOKEN_COOKIE]
        retried = await root.post(f"/api/jobs/{job_id}/retry", headers={TOKEN_HEADER: token})
        assert retried.status_code == 200


def test_without_a_hook_the_dashboard_refuses_to_listen_beyond_loopback() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_admin_bind(host, None)
    for host in ("0.0.0.0", "::", "192.0.2.10", "example.com"):
        with pytest.raises(ConfigurationError) as refused:
            check_admin_bind(host, None)
        assert "--admin-auth" in refused.value.hint
    check_admin_bind("0.0.0.0", lambda request: None)


async def test_serve_refuses_a_dashboard_without_hook_on_all_interfaces(
    aqueue: AsyncJobQueue,
) -> None:
    with pytest.raises(ConfigurationError, match="no authentication hook"):
        await serve(aqueue, host="0.0.0.0", port=free_port(), admin=True)


@pytest.mark.parametrize("path", ["no_colon", "json:nope", "no_such_module_xyz:f", "json:__doc__"])
def test_bad_admin_hooks_are_refused(path: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_authenticate(path)
    assert refused.value.message.startswith(("--admin-auth ", "the admin hook "))


async def test_retry_many_is_bounded_and_one_statement(aqueue: AsyncJobQueue) -> None:
    with pytest.raises(PayloadError):
        await aqueue.retry_many([f"01234567-89ab-7def-8123-{i:012x}" for i in range(101)])
    assert await aqueue.retry_many([]) == []


def test_jobqueue_serve_admin(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    migrate(url)
    env = {**os.environ, "JOBQUEUE_DATABASE_URL": url, "MOCK_AI": "true"}
    env.pop("DEFAPI_API_KEY", None)
    command = [sys.executable, "-m", "jobqueue", "serve", "--no-worker", "--admin"]
    refused = subprocess.run(
        [*command, "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert "no authentication hook" in refused.stderr and "--admin-auth" in refused.stderr

    port = free_port()
    proc = subprocess.Popen(  # with the in-process worker: the API's lifespan runs too
        [sys.executable, "-m", "jobqueue", "serve", "--admin", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout and proc.stdout.read()
            try:
                page = httpx.get(base + "/admin/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "jobqueue serve --admin did not answer"
                time.sleep(0.1)
        assert page.status_code == 200 and "jobqueue admin" in page.text
        assert f"{TOKEN_COOKIE}=" in page.headers["set-cookie"]
        assert "Path=/admin/" in page.headers["set-cookie"]
        moved = httpx.get(base + "/admin?x=1")
        assert moved.status_code == 308 and moved.headers["location"] == base + "/admin/?x=1"
        with httpx.Client(base_url=base) as user:  # the job API beside it, in demo mode
            assert user.post("/jobs", json={"prompt": "served"}).status_code == 202
        for _ in range(150):
            totals = httpx.get(base + "/admin/api/overview").json()["totals"]
            if totals["completed"] == 1:
                break
            time.sleep(0.2)
        assert totals["completed"] == 1, totals
    finally:
        proc.send_signal(signal.SIGINT)
        printed, _ = proc.communicate(timeout=40)
    assert proc.returncode == 0, printed
    assert f"admin http://127.0.0.1:{port}/admin/" in printed


async def test_rows_other_clients_wrote_with_odd_times_do_not_break_it(
    admin: httpx.AsyncClient, aqueue: AsyncJobQueue, migrated: tuple[str, str], raw_sql: Any
) -> None:
    """Rows from before the table's bounds (migration 0003) may hold times at infinity
    (PostgreSQL) or text that is no time (SQLite): every view reads past them."""
    url, table = migrated
    columns = "(id, payload, status, created_at, completed_at, updated_at)"
    if aqueue.is_postgres:
        raw_sql(f"ALTER TABLE {table} DROP CONSTRAINT {table}_times_check")
        for n, status, created, completed in (
            (1, "completed", "'-infinity'", "'infinity'"),
            (2, "pending", "'infinity'", "NULL"),
        ):
            raw_sql(
                f"INSERT INTO {table} {columns} VALUES ('01234567-89ab-7def-8123-00000000000{n}',"
                f" '{{}}', '{status}', {created}, {completed}, {created})"
            )
    else:
        path = make_url(url).database
        assert path is not None
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA ignore_check_constraints = ON")
            for n, status, created, completed in (
                (1, "completed", "'not a time'", "'not a time'"),
                (2, "pending", "''", "NULL"),
            ):
                conn.execute(
                    f"INSERT INTO {table} {columns} VALUES ('0123456789ab7def812300000000000{n}',"
                    f" '{{}}', '{status}', {created}, {completed}, {created})"
                )
            conn.commit()
    overview = await admin.get("/api/overview")
    assert overview.status_code == 200, overview.text
    assert overview.json()["totals"] == {**ZERO, "completed": 1, "pending": 1}
    listed = await admin.get("/api/jobs")
    assert listed.status_code == 200 and len(listed.json()["jobs"]) == 2
    for job in listed.json()["jobs"]:
        assert (await admin.get(f"/api/jobs/{job['id']}")).status_code == 200
    first = (await admin.get("/api/jobs", params={"limit": "1"})).json()
    rest = await admin.get("/api/jobs", params={"limit": "1", "after": first["next"]})
    assert rest.status_code == 200
    assert [j["id"] for j in rest.json()["jobs"]] != [j["id"] for j in first["jobs"]]
