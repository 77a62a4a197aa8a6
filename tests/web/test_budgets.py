"""The web API and budgets: ``POST /jobs`` past the caller's budget is a 402 in the API's
error shape, and ``GET /spending`` shows the caller's budget and what is left (SQLite and
PostgreSQL, through httpx's ASGI transport into the real app); ``jobqueue serve
--estimated-cost`` as a user runs it (a real process on a real port)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from jobqueue import AsyncJobQueue, JobQueue, migrate
from jobqueue.web import create_app
from tests.support.ports import free_port


async def by_header(request: Request) -> str | None:
    return request.headers.get("x-user")


@pytest.fixture
async def priced(migrated: tuple[str, str]) -> AsyncIterator[AsyncJobQueue]:
    """A queue that expects an image to cost 1 (its estimate per kind)."""
    url, table = migrated
    q = AsyncJobQueue(url, table=table, estimated_costs={"image": "1"})
    yield q
    await q.close()


def client(app: Any, user: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver",
        headers={"X-User": user},
    )


async def test_past_the_budget_post_jobs_is_402_and_spending_shows_what_is_left(
    priced: AsyncJobQueue,
) -> None:
    await priced.set_budget("alice", 2, period="day", cost_unit="USD")
    app = create_app(priced, identify=by_header)
    async with client(app, "alice") as alice, client(app, "bob") as bob:
        for _ in range(2):
            r = await alice.post("/jobs", json={"prompt": "a fox"})
            assert r.status_code == 202, r.text
        refused = await alice.post("/jobs", json={"prompt": "one more fox"})
        assert refused.status_code == 402, refused.text
        error = refused.json()["error"]
        assert error["code"] == "budget_exceeded"
        assert "over budget" in error["message"] and "/spending" in error["hint"]
        assert refused.headers["cache-control"] == "no-store"
        assert (await bob.post("/jobs", json={"prompt": "bob has no budget"})).status_code == 202

        budget = (await alice.get("/spending")).json()["budget"]
        assert budget["amount"] == "2" and budget["period"] == "day"
        assert (budget["spent"], budget["remaining"], budget["cost_unit"]) == ("2", "0", "USD")
        assert (await bob.get("/spending")).json()["budget"] is None

        # A cancel before the start gives the reservation back.
        job_id = (await alice.get("/jobs")).json()["jobs"][0]["id"]
        assert (await alice.post(f"/jobs/{job_id}/cancel")).status_code == 200
        assert (await alice.get("/spending")).json()["budget"]["remaining"] == "1"
        assert (await alice.post("/jobs", json={"prompt": "room again"})).status_code == 202

        # A prepaid balance never starts over: its refusal does not say to wait for that.
        await priced.set_budget("bob", 0, period="balance")
        refused = await bob.post("/jobs", json={"prompt": "no balance left"})
        assert refused.status_code == 402, refused.text
        hint = refused.json()["error"]["hint"]
        assert "prepaid balance" in hint and "starts over" not in hint


def test_serve_reserves_the_estimates_it_is_given(tmp_path: Path) -> None:
    """``jobqueue serve --estimated-cost image=0.6``: the served queue reserves 0.6 per
    image, so the second job of an owner with a budget of 1 is refused with 402."""
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    migrate(url)
    with JobQueue(url) as q:
        q.set_budget("alice", 1, period="day")
    (tmp_path / "ident.py").write_text(
        "async def who(request):\n    return request.headers.get('x-user')\n"
    )
    port = free_port()
    env = {**os.environ, "JOBQUEUE_DATABASE_URL": url, "MOCK_AI": "true"}
    env["PYTHONPATH"] = str(tmp_path)
    args = ["--no-worker", "--identify", "ident:who", "--estimated-cost", "image=0.6"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobqueue", "serve", "--port", str(port), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stdout and proc.stdout.read()
            try:
                httpx.get(base + "/static/jobqueue.js", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "jobqueue serve did not answer"
                time.sleep(0.1)
        with httpx.Client(base_url=base, headers={"X-User": "alice"}) as alice:
            first = alice.post("/jobs", json={"prompt": "a fox"})
            assert first.status_code == 202, first.text
            assert alice.post("/jobs", json={"prompt": "a fox"}).status_code == 402
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            printed, _ = proc.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            printed, _ = proc.communicate()
    assert proc.returncode == 0, printed
    with JobQueue(url) as q:
        assert q.get_budget("alice").spent == Decimal("0.6")  # type: ignore[union-attr]


def test_serve_refuses_an_estimate_that_is_not_kind_equals_amount(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    migrate(url)
    env = {**os.environ, "JOBQUEUE_DATABASE_URL": url, "MOCK_AI": "true"}
    for bad in ("image", "image=-1"):
        done = subprocess.run(
            [sys.executable, "-m", "jobqueue", "serve", "--no-worker", "--estimated-cost", bad],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert "--estimated-cost" in done.stderr and "Traceback" not in done.stderr
