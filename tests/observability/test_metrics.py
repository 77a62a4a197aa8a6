"""Prometheus metrics (jobqueue.observability) on SQLite and PostgreSQL: a real worker runs
real jobs (completed, retried, failed for good, expired, a lease that ran out), and the
metrics are read as Prometheus reads them: over HTTP on loopback (`Metrics.serve`, what
``jobqueue worker --metrics-port`` runs) and through the web app's ``/metrics`` route,
parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from jobqueue import AsyncJobQueue, ConfigurationError, Job, JobQueue
from jobqueue.observability import Metrics
from jobqueue.observability.metrics import MAX_LABEL_VALUES
from jobqueue.operations.gauges import OVERDUE_AFTER
from jobqueue.web import create_app
from jobqueue.worker import HandlerResult, Worker, WorkerContext
from jobqueue.worker.observer import Event
from tests.support.ports import free_port

OWNER = "owner-4f2a-secret"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found: dict[Any, float], metric: str, **labels: str) -> float:
    return found.get((metric, tuple(sorted(labels.items()))), 0.0)


@contextmanager
def counting_statements(queue: JobQueue) -> Iterator[list[str]]:
    """The SQL statements run through ``queue``'s engine while the block runs."""
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = queue.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)


async def run_jobs(jq: AsyncJobQueue, metrics: Metrics) -> dict[str, Job]:
    """Jobs of every fate, run by a real worker that reports to ``metrics``."""
    tries: dict[str, int] = {}

    async def paid(job: Job, ctx: WorkerContext) -> HandlerResult:
        return HandlerResult({"ok": True}, cost=Decimal("0.25"), cost_unit="usd")

    async def flaky(job: Job, ctx: WorkerContext) -> str:
        tries[str(job.id)] = tries.get(str(job.id), 0) + 1
        if tries[str(job.id)] == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    async def doomed(job: Job, ctx: WorkerContext) -> None:
        raise RuntimeError("always fails")

    jobs = {
        "paid1": await jq.enqueue("paid", {}, owner_id=OWNER),
        "paid2": await jq.enqueue("paid", {}, owner_id=OWNER),
        "flaky": await jq.enqueue("flaky", {}, max_attempts=3),
        "doomed": await jq.enqueue("doomed", {}, max_attempts=1),
        # Its deadline passed before any worker came: expired, never run.
        "late": await jq.enqueue("paid", {}, start_by=datetime.now(UTC) - timedelta(seconds=1)),
        # Held by a worker that vanished (its lease runs out at once, no attempts left):
        # the reaper fails it.
        "ghost": await jq.enqueue("ghosted", {}, max_attempts=1, queue="ghosts"),
        # Waits for tomorrow, in a paused queue: pending, not due.
        "later": await jq.enqueue("paid", {}, queue="later", delay=86_400.0),
    }
    [held] = await jq.claim("ghost-worker", queues=["ghosts"], lease=0.05)
    assert held.id == jobs["ghost"].id
    await jq.pause("later")
    await asyncio.sleep(0.1)
    worker = Worker(
        jq,
        {"paid": paid, "flaky": flaky, "doomed": doomed},
        queues=["default", "ghosts"],
        observers=[metrics.worker],
        lease=2,
        poll_interval=0.05,
        reap_interval=0.05,
    )
    deadline = time.monotonic() + 15
    ids = [j.id for name, j in jobs.items() if name != "later"]
    while True:
        await worker.run_until_idle()
        if all([(await jq.get(i)).is_final for i in ids]):
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    return jobs


def check_worker_metrics(found: dict[Any, float]) -> None:
    assert value(found, "jobqueue_jobs_started_total", queue="default", kind="paid") == 2
    assert value(found, "jobqueue_jobs_started_total", queue="default", kind="flaky") == 2
    assert value(found, "jobqueue_jobs_started_total", queue="default", kind="doomed") == 1
    outcome = "jobqueue_job_outcomes_total"
    assert value(found, outcome, queue="default", kind="paid", outcome="completed") == 2
    assert value(found, outcome, queue="default", kind="flaky", outcome="retried") == 1
    assert value(found, outcome, queue="default", kind="flaky", outcome="completed") == 1
    assert value(found, outcome, queue="default", kind="doomed", outcome="failed") == 1
    assert value(found, outcome, queue="default", kind="paid", outcome="expired") == 1
    assert value(found, "jobqueue_leases_expired_total", status="failed") == 1
    runs = "jobqueue_job_run_seconds_count"
    assert value(found, runs, queue="default", kind="flaky") == 2
    waits = "jobqueue_job_queue_wait_seconds_count"
    assert value(found, waits, queue="default", kind="paid") == 2


def check_database_gauges(found: dict[Any, float]) -> None:
    assert value(found, "jobqueue_database_up") == 1
    assert value(found, "jobqueue_queue_jobs", queue="later", status="pending") == 1
    assert value(found, "jobqueue_queue_jobs", queue="later", status="processing") == 0
    # Not due yet: it has not waited at all.
    assert value(found, "jobqueue_queue_oldest_pending_age_seconds", queue="later") == 0
    assert value(found, "jobqueue_queue_overdue_jobs", queue="later") == 0
    assert value(found, "jobqueue_paused", scope="queue", name="later") == 1
    assert value(found, "jobqueue_spend_today", unit="usd") == 0.5
    # Every job of the default queue is finished: it has no line.
    assert ("jobqueue_queue_jobs", (("queue", "default"), ("status", "pending"))) not in found


def check_labels_bounded(text: str, jobs: dict[str, Job]) -> None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            for label in s.labels.values():
                assert OWNER not in label
                assert not any(str(j.id) in label for j in jobs.values()), (s.name, label)


async def test_worker_metrics_and_gauges_over_http(jq: AsyncJobQueue) -> None:
    metrics = Metrics(jq, loop=asyncio.get_running_loop(), ttl=0.0)
    jobs = await run_jobs(jq, metrics)
    port = free_port()
    stop = metrics.serve(port)
    try:
        # From another thread, as Prometheus would: the scrape reads the database on this
        # loop, which must stay free meanwhile.
        response = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/metrics")
    finally:
        await asyncio.to_thread(stop)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    check_worker_metrics(found)
    check_database_gauges(found)
    check_labels_bounded(response.text, jobs)
    assert "process_cpu_seconds_total" in response.text


async def test_the_web_apps_metrics_route(jq: AsyncJobQueue) -> None:
    metrics = Metrics(jq)
    jobs = await run_jobs(jq, metrics)
    app = create_app(jq, metrics=metrics, demo_page=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/metrics")
        refused = await client.post("/metrics")
    assert response.status_code == 200, response.text
    found = samples(response.text)
    check_worker_metrics(found)
    check_database_gauges(found)
    check_labels_bounded(response.text, jobs)
    assert refused.status_code == 405


async def test_a_web_app_without_metrics_has_no_route(jq: AsyncJobQueue) -> None:
    app = create_app(jq, demo_page=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/metrics")).status_code == 404


@pytest.mark.parametrize("jobs", [6, 60])
async def test_a_scrape_runs_two_statements_whatever_the_number_of_jobs(
    queue: JobQueue, jobs: int
) -> None:
    # A sync queue: its statements all pass SQLAlchemy's events (an async queue on SQLite
    # runs its transactions on the driver's thread, out of their sight).
    queue.enqueue_many([{"kind": "k", "queue": f"q{i % 3}"} for i in range(jobs)])
    claimed = queue.claim("w", queues=["q0", "q1", "q2"], limit=jobs // 2)
    for job in claimed[:2]:
        queue.complete(job, None, cost=Decimal("1.5"), cost_unit="credits")
    metrics = Metrics(queue, ttl=60.0)
    app = metrics.asgi()
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        with counting_statements(queue) as statements:
            first = await client.get("/metrics")
            # Within the ttl: served from the first read.
            second = await client.get("/metrics")
    reads = [s for s in statements if s.lstrip().upper().startswith(("SELECT", "WITH"))]
    assert len(reads) == 2, statements
    assert len(statements) <= 3, statements  # and SQLite's BEGIN
    assert metrics.database.reads == 1
    found = samples(first.text)
    ours = {k: v for k, v in found.items() if k[0].startswith("jobqueue_")}
    assert ours == {k: v for k, v in samples(second.text).items() if k[0].startswith("jobqueue_")}
    running = sum(
        value(found, "jobqueue_queue_jobs", queue=f"q{i}", status="processing") for i in range(3)
    )
    pending = sum(
        value(found, "jobqueue_queue_jobs", queue=f"q{i}", status="pending") for i in range(3)
    )
    assert running == len(claimed) - 2
    assert pending == jobs - len(claimed)
    assert value(found, "jobqueue_spend_today", unit="credits") == 3.0


async def test_stuck_jobs_and_the_oldest_wait(jq: AsyncJobQueue) -> None:
    await jq.enqueue("k", {}, queue="slow")
    assert len(await jq.claim("vanished", queues=["slow"], lease=0.01)) == 1
    waiting = await jq.enqueue("k", {}, queue="slow")
    await asyncio.sleep(0.3)
    gauges = await jq.gauges()
    slow = gauges.queues["slow"]
    assert (slow.pending, slow.running, slow.stuck) == (1, 1, 1)
    expected = (gauges.now - waiting.run_at).total_seconds()
    assert slow.oldest_pending_age == pytest.approx(expected, abs=0.01)
    assert slow.oldest_pending_age >= 0.29


async def test_the_backlog_counts_jobs_waiting_over_a_minute_since_due(jq: AsyncJobQueue) -> None:
    """`backlog` reads what `gauges` says of the jobs (the same numbers), and counts the
    jobs due for longer than `OVERDUE_AFTER` apart from those due just now or later."""
    now = datetime.now(UTC)
    await jq.enqueue("k", {}, queue="late", run_at=now - OVERDUE_AFTER - timedelta(minutes=5))
    await jq.enqueue("k", {}, queue="late", run_at=now - OVERDUE_AFTER - timedelta(seconds=30))
    await jq.enqueue("k", {}, queue="late")
    await jq.enqueue("k", {}, queue="late", run_at=now + timedelta(hours=1))
    seen = await jq.backlog()
    late = seen.queues["late"]
    assert (late.pending, late.overdue, late.running) == (4, 2, 0)
    assert late.oldest_pending_age >= (OVERDUE_AFTER + timedelta(minutes=5)).total_seconds()
    gauges = await jq.gauges()
    assert gauges.queues["late"].overdue == 2
    assert gauges.queues.keys() == seen.queues.keys()


async def test_a_failed_read_reports_the_database_down(jq: AsyncJobQueue) -> None:
    metrics = Metrics(AsyncJobQueue(jq.engine, table="jobs_not_installed"), ttl=0.0)
    app = metrics.asgi()
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    found = samples(response.text)
    assert value(found, "jobqueue_database_up") == 0


async def test_labels_stay_bounded_however_many_kinds_and_queues(jq: AsyncJobQueue) -> None:
    """A client inserting jobs of ever new kinds and queues (rows other clients write) adds
    no more than `MAX_LABEL_VALUES` values to a label: the rest count as ``other``."""
    many = MAX_LABEL_VALUES + 5
    jobs = await jq.enqueue_many([{"kind": f"k{i}", "queue": f"q{i}"} for i in range(many)])
    metrics = Metrics(jq)
    for job in jobs:
        # The observer's own entry points, as the worker calls them at each start.
        metrics.worker.ran(job, metrics.worker.started(job), None)
        metrics.worker.finished(job, Event.COMPLETED)
    await metrics.database.refresh()
    found = samples(metrics.render()[0].decode())
    started = {k: v for k, v in found.items() if k[0] == "jobqueue_jobs_started_total"}
    assert sum(started.values()) == many
    assert len({dict(labels)["kind"] for _, labels in started}) == MAX_LABEL_VALUES + 1
    assert value(found, "jobqueue_jobs_started_total", queue="other", kind="other") == 5
    pending = {
        dict(labels)["queue"]: v
        for (name, labels), v in found.items()
        if name == "jobqueue_queue_jobs" and dict(labels)["status"] == "pending"
    }
    assert len(pending) == MAX_LABEL_VALUES and sum(pending.values()) == many
    assert pending["other"] == 6


def test_serving_an_async_queues_metrics_needs_its_loop(jq: AsyncJobQueue) -> None:
    with pytest.raises(ConfigurationError, match="event loop"):
        Metrics(jq).serve(free_port())


async def test_the_documented_rules_name_metrics_that_exist(jq: AsyncJobQueue) -> None:
    """Every metric docs/metrics.md's scrape configuration and alert rules (and its tables)
    name is one a scrape gives."""
    page = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    named = set(re.findall(r"\bjobqueue_[a-z_]+\b", page))
    metrics = Metrics(jq)
    await metrics.database.refresh()
    families = {f.name for f in text_string_to_metric_families(metrics.render()[0].decode())}

    def family(name: str) -> str:
        for suffix in ("_total", "_count", "_sum", "_bucket"):
            if name.removesuffix(suffix) in families:
                return name.removesuffix(suffix)
        return name

    assert named and {family(n) for n in named} <= families, named - families
    assert len(named) >= 10
