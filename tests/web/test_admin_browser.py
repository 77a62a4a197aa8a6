"""The admin dashboard end to end in headless Chromium: a real uvicorn server on
127.0.0.1 serving `create_admin_app` with the host's authentication hook, a real `Worker`
on the same SQLite database, and Playwright driving Debian's system ``chromium``.

An operator opens the dashboard, finds the failed job in the jobs table, opens it, retries
it and watches it complete; a browser without the admin's session is refused, and a
payload written to inject HTML shows as text. Screenshots go to test-artifacts/ (the ones
in docs/images/ are copies of them).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from jobqueue import AsyncJobQueue, Job, migrate
from jobqueue.web import create_admin_app
from jobqueue.worker import HandlerResult, Worker, WorkerContext
from tests.web.server import running_server

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
STEP_TIMEOUT = 30.0
SESSION = "operator-session-7f3a"
HOSTILE = "<img src=x onerror=window.pwned=1><script>window.pwned=2</script>"


async def render(job: Job, ctx: WorkerContext) -> HandlerResult:
    """Succeeds, except that a job marked ``flaky`` fails its first attempt."""
    await asyncio.sleep(0.05)
    if job.payload.get("flaky") and job.attempts == 1:
        raise RuntimeError("the provider timed out (first attempt)")
    return HandlerResult({"frames": job.payload.get("n", 0)}, cost=Decimal("0.04"), cost_unit="USD")


async def admin_of(request: Request) -> str | None:
    """The host's hook: its own session cookie says who is an operator."""
    return "ops" if request.cookies.get("host_session") == SESSION else None


class Dashboard:
    def __init__(self, base: str, queue: AsyncJobQueue) -> None:
        self.base = base
        self.queue = queue


@pytest.fixture
async def dashboard(jobqueue_sqlite_url: str, table_name: str) -> AsyncIterator[Dashboard]:
    migrate(jobqueue_sqlite_url, table=table_name)
    queue = AsyncJobQueue(jobqueue_sqlite_url, table=table_name)
    worker = Worker(queue, {"render": render}, poll_interval=0.1, listen=False, concurrency=4)
    task = asyncio.create_task(worker.run())
    try:
        async with running_server(create_admin_app(queue, authenticate=admin_of)) as base:
            yield Dashboard(base, queue)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await queue.close()


async def settled(queue: AsyncJobQueue, count: int) -> None:
    """Wait until ``count`` jobs are final."""
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT
    while asyncio.get_running_loop().time() < deadline:
        jobs = await queue.list(limit=100)
        if sum(j.is_final for j in jobs) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the worker did not finish the jobs")


async def test_operator_finds_a_failed_job_retries_it_and_watches_it_complete(
    dashboard: Dashboard, browser: Any
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    q = dashboard.queue
    for n in range(6):
        await q.enqueue("render", {"n": n}, owner_id=f"user-{n % 3}")
    flaky = await q.enqueue("render", {"n": 99, "flaky": True}, max_attempts=1, owner_id="user-9")
    more = [await q.enqueue("render", {"n": n, "flaky": True}, max_attempts=1) for n in (100, 101)]
    hostile = await q.enqueue("render", {"prompt": HOSTILE}, owner_id="<b>owner</b>")
    await settled(q, 10)
    assert (await q.get(flaky.id)).status.value == "failed"

    # Without the host's session: refused, page and API alike.
    stranger = await browser.new_context()
    page = await stranger.new_page()
    refused = await page.goto(dashboard.base + "/")
    assert refused is not None and refused.status == 401
    api = await page.goto(dashboard.base + "/api/overview")
    assert api is not None and api.status == 401
    await stranger.close()

    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    await context.add_cookies([{"name": "host_session", "value": SESSION, "url": dashboard.base}])
    page = await context.new_page()
    page.set_default_timeout(STEP_TIMEOUT * 1000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    await page.goto(dashboard.base + "/")
    await page.wait_for_selector("#view[data-view='overview']")
    assert await page.text_content("[data-total='failed'] .count") == "3"
    assert await page.text_content("[data-total='completed'] .count") == "7"
    assert "USD" in (await page.text_content("#cost-today") or "")
    assert await page.locator("svg.chart rect.done").count() >= 1
    assert await page.locator("svg.chart rect.fail").count() >= 1
    await page.wait_for_selector("#workers tbody tr")
    await page.screenshot(path=str(ARTIFACTS / "admin-overview.png"), full_page=True)

    # Find the failed job: the failed total leads to the jobs table filtered by status.
    await page.click("[data-total='failed']")
    await page.wait_for_selector(f"#jobs tr[data-job-id='{flaky.id}']")
    assert await page.locator("#jobs tbody tr").count() == 3
    assert await page.input_value("#filters select[name=status]") == "failed"
    await page.screenshot(path=str(ARTIFACTS / "admin-jobs-failed.png"), full_page=True)

    await page.click(f"#jobs tr[data-job-id='{flaky.id}'] a")
    await page.wait_for_selector("#view[data-view='job'][data-status='failed']")
    assert "first attempt" in (await page.text_content("#errors") or "")
    assert '"flaky": true' in (await page.text_content("#payload") or "")
    await page.screenshot(path=str(ARTIFACTS / "admin-job-failed.png"), full_page=True)

    await page.click("#retry")
    await page.wait_for_selector("#view[data-view='job'][data-status='completed']")
    assert await page.text_content("#attempts") == "attempt 2 of 2"
    assert '"frames": 99' in (await page.text_content("#result") or "")
    assert (await q.get(flaky.id)).status.value == "completed"
    await page.screenshot(path=str(ARTIFACTS / "admin-job-completed.png"), full_page=True)

    # The other two at once: select every retryable job on the page, retry them.
    await page.goto(dashboard.base + "/#/jobs?status=failed")
    await page.wait_for_selector(f"#jobs tr[data-job-id='{more[0].id}']")
    assert await page.locator("#jobs tbody tr").count() == 2
    await page.check("#select-all")
    await page.click("#retry-selected")
    await page.wait_for_selector("#notice:has-text('Retried 2 of 2 jobs')")
    await settled(q, 10)
    for job in more:
        assert (await q.get(job.id)).status.value == "completed"
    await page.reload()
    await page.wait_for_selector("#no-jobs")

    # A payload written as HTML is shown as text and runs nothing.
    await page.fill("#search-id", str(hostile.id))
    await page.click("#search button")
    await page.wait_for_selector("#payload:has-text('pwned')")  # (the CSP forbids eval)
    assert HOSTILE in (await page.text_content("#payload") or "")
    assert await page.evaluate("window.pwned") is None
    assert await page.locator("#view img, #view script, #view b").count() == 0
    assert errors == []
    await context.close()
