"""The web API and budgets: ``POST /jobs`` past the caller's budget is a 402 in the API's
error shape, and ``GET /spending`` shows the caller's budget and what is left (SQLite and
PostgreSQL, through httpx's ASGI transport into the real app)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from jobqueue import AsyncJobQueue
from jobqueue.web import create_app


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
