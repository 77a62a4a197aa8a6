"""End to end in headless Chromium: the demo page, the JS client, the API and a worker.

A real uvicorn server on 127.0.0.1 serves `create_app` with an in-process `Worker` running
the `MockGenerator` on SQLite; Playwright drives Debian's system ``chromium`` (never a
downloaded browser). The generation waits on a gate the test opens, so "reload while the
job runs" is certain rather than a race against the mock's delay.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, migrate
from jobqueue.generators.base import GenerationRequest, GenerationResult, JobContext
from jobqueue.generators.mock import MockGenerator
from jobqueue.web import create_app
from jobqueue.worker import Worker
from tests.web.server import running_server

pytestmark = pytest.mark.browser

PNG = base64.b64decode(  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
STEP_TIMEOUT = 45.0


class GatedMock:
    """The mock generator, held at the start until the test opens the gate."""

    name = "gated-mock"

    def __init__(self, inner: MockGenerator) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        self.started.set()
        await self.gate.wait()
        return await self.inner.generate(request, context)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Demo:
    def __init__(self, base: str, queue: AsyncJobQueue, generator: GatedMock) -> None:
        self.base = base
        self.queue = queue
        self.generator = generator


@pytest.fixture
async def demo(jobqueue_sqlite_url: str, table_name: str) -> AsyncIterator[Demo]:
    migrate(jobqueue_sqlite_url, table=table_name)
    queue = AsyncJobQueue(jobqueue_sqlite_url, table=table_name)
    generator = GatedMock(MockGenerator(delay=2.0, steps=4))
    worker = Worker(queue, generator=generator, poll_interval=0.2, listen=False)
    app = create_app(queue, worker=worker, poll_interval_ms=500)
    try:
        async with running_server(app) as base:
            try:
                yield Demo(base, queue, generator)
            finally:
                generator.gate.set()  # so the worker can finish and the server stop
    finally:
        await queue.close()


async def wait_for_line(lines: list[str], pattern: str, start: int = 0) -> re.Match[str]:
    """The first console line from ``start`` on matching ``pattern`` (waits for it)."""
    regex = re.compile(pattern)
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT
    while asyncio.get_running_loop().time() < deadline:
        for line in lines[start:]:
            found = regex.search(line)
            if found:
                return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no console line matched {pattern!r}; the console said: {lines}")


async def test_demo_page_generates_resumes_after_reload_and_isolates_browsers(
    demo: Demo, browser: Any, tmp_path: Path
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    context = await browser.new_context()
    page = await context.new_page()
    lines: list[str] = []
    page.on("console", lambda message: lines.append(message.text))
    page.set_default_timeout(STEP_TIMEOUT * 1000)

    await page.goto(demo.base + "/")
    await page.fill("#prompt", "a lego castle on a hill at sunset")
    upload = tmp_path / "photo.png"
    upload.write_bytes(PNG)
    await page.set_input_files("#image", str(upload))
    await page.click("text=Generate")

    created = await wait_for_line(lines, r"📋 Job created: ([0-9a-f-]{36})")
    job_id = created.group(1)
    await wait_for_line(lines, rf"⏳ Job {job_id} status: processing")
    stored = await demo.queue.get(job_id)
    assert stored.payload["images"][0].startswith("data:image/png;base64,")
    assert stored.owner_id is not None and stored.owner_id.startswith("anonymous:")

    # Reload while the generation is held at its start: the page must pick the job up again.
    await asyncio.wait_for(demo.generator.started.wait(), STEP_TIMEOUT)
    assert not (await demo.queue.get(job_id)).is_final
    after_reload = len(lines)
    await page.reload()
    await wait_for_line(lines, rf"🔁 Resuming job {job_id}", after_reload)
    await wait_for_line(lines, rf"⏳ Job {job_id} status: processing", after_reload)
    demo.generator.gate.set()
    await wait_for_line(lines, rf"⏳ Job {job_id} status: completed", after_reload)

    status = page.locator("#status")
    # Every predicate below is a function, not a bare expression: Playwright evaluates a
    # bare expression again at each poll with eval, which the page's CSP (no
    # 'unsafe-eval') refuses once the first check was false; a function is made once.
    await page.wait_for_function(
        "() => document.getElementById('status').dataset.status === 'completed'"
    )
    assert job_id in (await status.text_content() or "")
    image = page.locator("#result-image")
    await image.wait_for(state="visible")
    await page.wait_for_function(
        "() => { const i = document.getElementById('result-image');"
        " return i.complete && i.naturalWidth > 0; }"
    )
    assert await image.evaluate("i => i.naturalWidth") > 0
    assert (await image.get_attribute("src") or "").endswith(".svg")
    remembered = await page.evaluate("localStorage.getItem('jobqueue.running')")
    assert job_id not in (remembered or "")
    listed = page.locator(f'#jobs li[data-job-id="{job_id}"] .badge')
    await listed.wait_for()
    await page.wait_for_function(
        f"() => document.querySelector('#jobs li[data-job-id=\"{job_id}\"] .badge')"
        ".textContent === 'completed'"
    )
    await page.screenshot(path=str(ARTIFACTS / "demo-page.png"), full_page=True)

    # Another browser (its own anonymous owner) cannot open the job, nor list it.
    other = await browser.new_context()
    stranger = await other.new_page()
    await stranger.goto(demo.base + "/")
    answer = await stranger.evaluate(
        """async (id) => {
            const r = await fetch(`jobs/${id}`);
            const list = await (await fetch("jobs")).json();
            const { followJob } = await import("./static/jobqueue.js");
            let followed = null;
            try { await followJob(id, { logger: null }); followed = "resolved"; }
            catch (e) { followed = e.status; }
            return { status: r.status, body: await r.json(), listed: list.jobs.length, followed };
        }""",
        job_id,
    )
    assert answer["status"] == 404
    assert answer["body"]["error"]["code"] == "not_found"
    assert answer["listed"] == 0
    assert answer["followed"] == 404
    await other.close()
    await context.close()


async def test_client_module_direct_path_and_rejections(demo: Demo, browser: Any) -> None:
    demo.generator.gate.set()
    context = await browser.new_context()
    page = await context.new_page()
    lines: list[str] = []
    page.on("console", lambda message: lines.append(message.text))
    await page.goto(demo.base + "/")
    outcome = await page.evaluate(
        """async () => {
            const jq = await import("./static/jobqueue.js");
            const updates = [];
            // The direct path: one awaited call, followed over the event stream.
            const direct = await jq.generateImage("direct path", {
                onUpdate: (job) => updates.push(job.status),
            });
            // A cancelled job rejects with a JobError that carries the job.
            const created = await jq.createJob("to be cancelled");
            await jq.cancelJob(created.id);
            let rejected = null;
            try {
                await jq.followJob(created.id, { pollInterval: 100, logger: null });
            } catch (e) {
                rejected = { name: e.name, status: e.job?.status, code: e.code };
            }
            // A refused request rejects with the API's error code.
            let refused = null;
            try {
                await jq.createJob("");
            } catch (e) {
                refused = { code: e.code, status: e.status };
            }
            return { direct, updates, rejected, refused };
        }"""
    )
    direct = outcome["direct"]
    assert direct["status"] == "completed"
    assert direct["previewUrl"].startswith(demo.base + "/mock-images/")
    assert direct["url"].startswith("https://mock.jobqueue.invalid/")
    assert outcome["updates"][-1] == "completed"
    assert outcome["rejected"] == {"name": "JobError", "status": "cancelled", "code": "cancelled"}
    assert outcome["refused"] == {"code": "missing_prompt", "status": 422}
    assert (await demo.queue.get(direct["id"])).status == "completed"
    # The direct path logs no polling lines.
    assert not any(direct["id"] in line for line in lines)

    # followJob waits out network failures and 5xx answers: the first polls are dropped.
    faults = {"left": 2}

    async def flaky(route: Any) -> None:
        if route.request.method == "GET" and faults["left"] > 0:
            faults["left"] -= 1
            if faults["left"]:
                await route.abort()  # the network fails
            else:
                await route.fulfill(status=503)  # the server is restarting
        else:
            await route.continue_()

    job_id = direct["id"]
    await page.route(re.compile(rf".*/jobs/{job_id}$"), flaky)
    followed = await page.evaluate(
        """async (id) => {
            const jq = await import("./static/jobqueue.js");
            const result = await jq.followJob(id, { pollInterval: 100 });
            return result.status;
        }""",
        job_id,
    )
    assert followed == "completed"
    assert faults["left"] == 0
    assert any(f"⚠️ Job {job_id}" in line for line in lines)
    await context.close()


UNSAFE_URLS = [
    "javascript:alert(document.domain)",
    " JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "blob:http://127.0.0.1/0d1b2c3a",
]


async def test_client_and_demo_page_use_only_http_and_data_image_urls(
    jobqueue_sqlite_url: str, table_name: str, browser: Any
) -> None:
    """A provider's result URL reaches the page only if it is http(s) or data:image/;
    others are dropped with a console warning, in the client and on the demo page."""
    migrate(jobqueue_sqlite_url, table=table_name)
    queue = AsyncJobQueue(jobqueue_sqlite_url, table=table_name)
    try:
        app = create_app(queue, poll_interval_ms=200, max_streams_per_owner=1)
        async with running_server(app) as base:
            context = await browser.new_context()
            page = await context.new_page()
            warnings: list[str] = []
            page.on(
                "console",
                lambda m: warnings.append(m.text) if m.type == "warning" else None,
            )
            await page.goto(base + "/")
            [cookie] = [c for c in await context.cookies() if c["name"] == "jobqueue_owner"]
            safe = base + "/mock-images/safe1.svg"
            png = "data:image/png;base64," + base64.b64encode(PNG).decode()
            job = await queue.enqueue(
                "image", {"prompt": "hostile urls"}, owner_id="anonymous:" + cookie["value"]
            )
            [held] = await queue.claim("w1")
            await queue.complete(held, {"images": [*UNSAFE_URLS, safe, png]}, UNSAFE_URLS[0])

            got = await page.evaluate(
                """async (id) => {
                    const jq = await import("./static/jobqueue.js");
                    const result = await jq.followJob(id, { logger: null });
                    const snapshot = await jq.getJob(id);
                    const listed = (await jq.listJobs()).find((j) => j.id === id);
                    return { url: result.url, images: result.images,
                             previewUrl: result.previewUrl, snapshot, listed };
                }""",
                str(job.id),
            )
            assert got["url"] is None
            assert got["images"] == [safe, png]
            assert got["previewUrl"] == safe
            for snapshot in (got["snapshot"], got["listed"]):
                assert snapshot["result_url"] is None
                assert snapshot["images"] == [safe, png]
                assert snapshot["preview_url"] == safe
                assert snapshot["preview_urls"] == [safe, png]
            for url in UNSAFE_URLS:
                assert any(url.strip()[:20] in w for w in warnings), (url, warnings)

            # The demo page resumes the job (as after a reload) and shows only safe URLs.
            await page.evaluate(
                "(id) => localStorage.setItem('jobqueue.running', JSON.stringify([id]))",
                str(job.id),
            )
            await page.reload()
            await page.wait_for_function(
                "() => document.getElementById('status').dataset.status === 'completed'"
            )
            assert await page.get_attribute("#result-image", "src") == safe
            assert await page.get_attribute("#result-link", "href") == safe
            thumbs = page.locator(f'#jobs li[data-job-id="{job.id}"] img')
            await thumbs.wait_for()
            assert await thumbs.get_attribute("src") == safe
            hrefs = await page.evaluate(
                "[...document.querySelectorAll('[href],[src]')]"
                ".map((e) => e.getAttribute('href') ?? e.getAttribute('src'))"
            )
            assert not [
                h
                for h in hrefs
                if not h.startswith(("http", "data:image/", "static/")) and h not in ("#", "data:,")
            ], hrefs

            # A stream refused for being one too many (429): watchJob falls back to polling.
            second = await queue.enqueue(
                "image", {"prompt": "watched"}, owner_id="anonymous:" + cookie["value"]
            )
            watched = await page.evaluate_handle(
                """async (id) => {
                    const jq = await import("./static/jobqueue.js");
                    const held = new EventSource(`jobs/${id}/events`);  // takes the one slot
                    await new Promise((resolve) => { held.onmessage = resolve; });
                    window.watched = jq.watchJob(id, { pollInterval: 100 }).then(
                        (r) => r.status, (e) => `rejected ${e.code}`);
                    return true;
                }""",
                str(second.id),
            )
            assert watched
            [held] = await queue.claim("w1")
            await queue.complete(held, {"images": [safe]}, safe)
            assert await page.evaluate("window.watched") == "completed"
            await context.close()
    finally:
        await queue.close()


async def test_the_page_says_the_place_in_line_and_the_wait(
    jobqueue_sqlite_url: str, table_name: str, browser: Any
) -> None:
    """One slot, held by a job that runs for ever (the gate stays shut), two more jobs
    ahead, and runs of 10 s so far: the page's job is 3rd in line, done in about 40 s
    (what is left of the running job's 10 s, two jobs of 10 s, then its own). The status
    lines in the console say the same."""
    from jobqueue import Completion
    from tests.conftest import sql_runner

    migrate(jobqueue_sqlite_url, table=table_name)
    queue = AsyncJobQueue(jobqueue_sqlite_url, table=table_name)
    for _ in range(3):
        await queue.enqueue("image", {"prompt": "history"}, queue="history")
    done = await queue.claim("w-history", limit=3, queues=["history"])
    await queue.complete_many([Completion(j) for j in done])
    with sql_runner(jobqueue_sqlite_url) as run:
        run(
            f"UPDATE {table_name} SET completed_at = "
            "strftime('%Y-%m-%d %H:%M:%f000', started_at, '+10 seconds')"
        )
    for owner in ("a", "b", "c"):  # one runs, two wait ahead of the page's job
        await queue.enqueue("image", {"prompt": owner}, owner_id=owner)
    generator = GatedMock(MockGenerator(delay=0.1, steps=1))
    worker = Worker(queue, generator=generator, poll_interval=0.2, listen=False, concurrency=1)
    app = create_app(queue, worker=worker, poll_interval_ms=300)
    try:
        async with running_server(app) as base:
            await asyncio.wait_for(generator.started.wait(), STEP_TIMEOUT)
            context = await browser.new_context()
            page = await context.new_page()
            lines: list[str] = []
            page.on("console", lambda message: lines.append(message.text))
            page.set_default_timeout(STEP_TIMEOUT * 1000)
            await page.goto(base + "/")
            await page.fill("#prompt", "wait in line")
            await page.click("text=Generate")
            created = await wait_for_line(lines, r"📋 Job created: ([0-9a-f-]{36})")
            said = await wait_for_line(
                lines, rf"⏳ Job {created.group(1)} status: pending · 3rd in line · about (\d+) s"
            )
            assert 30 <= int(said.group(1)) <= 40
            wait = page.locator("#wait")
            await wait.wait_for(state="visible")
            shown = await wait.text_content() or ""
            assert re.fullmatch(r"3rd in line · about (3\d|40) s", shown), shown
            generator.gate.set()
            await wait_for_line(lines, rf"⏳ Job {created.group(1)} status: completed")
            await page.wait_for_function("() => document.getElementById('wait').hidden")
            await context.close()
    finally:
        generator.gate.set()
        await queue.close()


async def test_the_client_reports_a_job_that_expired(demo: Demo, browser: Any) -> None:
    """A job created with a start deadline while the queue is paused: the worker's expiry
    timer ends it ``expired``; followJob and watchJob reject with a JobError whose code says
    so, and the demo page shows the status and why (the job never reached the generator)."""
    await demo.queue.pause("default", reason="no worker free")
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(STEP_TIMEOUT * 1000)
    await page.goto(demo.base + "/")
    outcome = await page.evaluate(
        """async () => {
            const jq = await import("./static/jobqueue.js");
            const created = await jq.createJob("too late", { expiresIn: 0.5 });
            const caught = async (promise) => {
                try {
                    await promise;
                    return null;
                } catch (e) {
                    const status = e.job?.status;
                    return { name: e.name, code: e.code, status, message: e.message };
                }
            };
            const follow = { pollInterval: 100, logger: null };
            const polled = await caught(jq.followJob(created.id, follow));
            const pushed = await caught(jq.watchJob(created.id));
            return { id: created.id, startBy: created.start_by, polled, pushed };
        }"""
    )
    assert outcome["startBy"] is not None
    for seen in (outcome["polled"], outcome["pushed"]):
        assert seen["name"] == "JobError"
        assert (seen["code"], seen["status"]) == ("expired", "expired")
        assert "deadline" in seen["message"]
    assert (await demo.queue.get(outcome["id"])).status == "expired"
    assert not demo.generator.started.is_set()
    # The demo page, resuming the job, shows it expired and why.
    await page.evaluate(
        "(id) => localStorage.setItem('jobqueue.running', JSON.stringify([id]))", outcome["id"]
    )
    await page.reload()
    status = page.locator("#status")
    await status.wait_for(state="visible")
    await page.wait_for_function(
        "() => document.querySelector('#status').dataset.status === 'expired'"
    )
    assert "expired" in (await status.text_content() or "")
    assert "deadline" in (await page.locator("#error").text_content() or "")
    await context.close()
