"""Traces (jobqueue.tracing) on SQLite and PostgreSQL, read with OpenTelemetry's SDK and its
in-memory exporter: a web request that enqueues, the worker's run of the job and the
provider's HTTP calls are one trace; without a tracer provider, or without OpenTelemetry,
nothing is recorded and nothing is stored."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once
from starlette.requests import Request

from jobqueue import AsyncJobQueue, Job, tracing
from jobqueue.generators.defapi import DefAPIGenerator
from jobqueue.models import NewJob
from jobqueue.operations import COPY_MIN_JOBS
from jobqueue.validation import new_job_row
from jobqueue.web import create_app
from jobqueue.worker import Worker, WorkerContext
from tests.support.fake_defapi import FakeDefAPI


def _forget_the_tracer_provider() -> None:
    # OpenTelemetry lets a process set its tracer provider once; its own test utilities
    # reset these two globals the same way between tests.
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A tracer provider recording every span in memory, for this test only."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _forget_the_tracer_provider()
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        _forget_the_tracer_provider()


@pytest.fixture
def no_tracer_provider() -> Iterator[None]:
    _forget_the_tracer_provider()
    yield
    _forget_the_tracer_provider()


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


async def by_header(request: Request) -> str | None:
    return request.headers.get("x-user")


async def test_a_web_request_the_run_and_the_provider_calls_are_one_trace(
    jq: AsyncJobQueue, spans: InMemorySpanExporter, fake_defapi: FakeDefAPI
) -> None:
    app = OpenTelemetryMiddleware(create_app(jq, identify=by_header, demo_page=False))
    HTTPXClientInstrumentor().instrument()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers={"X-User": "alice"}
        ) as client:
            response = await client.post("/jobs", json={"prompt": "a lego castle"})
        assert response.status_code == 202, response.text
        job = await jq.get(response.json()["id"])
        assert job.trace_context is not None
        generator = DefAPIGenerator(
            fake_defapi.api_key,
            base_url=fake_defapi.url,
            poll_interval=0.02,
            backoff=(0.01, 0.05),
            request_timeout=5.0,
        )
        try:
            await Worker(jq, generator=generator, lease=5).run_until_idle()
        finally:
            await generator.aclose()
    finally:
        HTTPXClientInstrumentor().uninstrument()
    assert (await jq.get(job.id)).status.value == "completed"

    [request] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    [enqueue] = named(spans, "jobqueue enqueue")
    [run] = named(spans, "jobqueue run image")
    trace_id = request.context.trace_id
    assert enqueue.context.trace_id == run.context.trace_id == trace_id
    assert parent_of(enqueue) == request.context.span_id
    assert enqueue.kind is SpanKind.PRODUCER
    assert parent_of(run) == enqueue.context.span_id
    assert run.kind is SpanKind.CONSUMER
    assert run.attributes is not None
    assert run.attributes["messaging.message.id"] == str(job.id)
    assert run.attributes["jobqueue.outcome"] == "completed"
    # The provider's HTTP calls, under httpx's instrumentation, are the run's children.
    calls = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert calls
    assert all(c.context.trace_id == trace_id for c in calls)
    assert all(parent_of(c) == run.context.span_id for c in calls)
    # The stored context is the enqueue span's.
    stored = json.loads(job.trace_context)
    assert f"{enqueue.context.span_id:016x}" in stored["traceparent"]


async def test_runs_continue_the_enqueue_trace_and_failures_are_marked(
    jq: AsyncJobQueue, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("the app")
    with tracer.start_as_current_span("checkout"):
        ok = await jq.enqueue("ok", {})
        bad = await jq.enqueue("bad", {}, max_attempts=1)
    inside: list[Any] = []

    def ok_handler(job: Job, ctx: WorkerContext) -> str:
        # A sync handler runs on a thread: the run's span is current there too.
        with tracer.start_as_current_span("handler's own work"):
            inside.append(trace.get_current_span().get_span_context())
        return "done"

    async def bad_handler(job: Job, ctx: WorkerContext) -> None:
        raise RuntimeError("provider refused")

    await Worker(jq, {"ok": ok_handler, "bad": bad_handler}, lease=5).run_until_idle()
    [checkout] = named(spans, "checkout")
    [run_ok] = named(spans, "jobqueue run ok")
    [run_bad] = named(spans, "jobqueue run bad")
    [own] = named(spans, "handler's own work")
    enqueues = named(spans, "jobqueue enqueue")
    assert len(enqueues) == 2
    assert all(parent_of(e) == checkout.context.span_id for e in enqueues)
    assert {parent_of(run_ok), parent_of(run_bad)} == {e.context.span_id for e in enqueues}
    assert parent_of(own) == run_ok.context.span_id
    assert inside[0].trace_id == checkout.context.trace_id
    assert run_bad.status.status_code is StatusCode.ERROR
    assert "provider refused" in (run_bad.status.description or "")
    assert run_ok.status.status_code is not StatusCode.ERROR
    assert (await jq.get(ok.id)).trace_context is not None
    assert (await jq.get(bad.id)).status.value == "failed"


async def test_a_batch_stores_its_trace_with_every_job(
    jq: AsyncJobQueue, spans: InMemorySpanExporter
) -> None:
    # COPY_MIN_JOBS jobs take PostgreSQL's COPY path; a few take the INSERT of arrays
    # (PostgreSQL) or one INSERT each (SQLite).
    for size in (3, COPY_MIN_JOBS):
        jobs = await jq.enqueue_many([{"kind": "k", "payload": {"i": i}} for i in range(size)])
        stored = {(await jq.get(j.id)).trace_context for j in jobs[:: max(1, size // 10)]}
        assert {j.trace_context for j in jobs} == stored
        assert len(stored) == 1 and None not in stored
    [_, large] = named(spans, "jobqueue enqueue")
    assert large.attributes is not None
    assert large.attributes["messaging.batch.message_count"] == COPY_MIN_JOBS


async def test_owned_jobs_store_their_trace_with_or_without_a_budget(
    jq: AsyncJobQueue, spans: InMemorySpanExporter
) -> None:
    """An owned job's guarded INSERT (no budget) and the budget's own enqueue (which
    reserves) both write the trace beside their other columns, one job or a batch."""
    await jq.set_budget("paying", Decimal("10"), period="day")
    free = await jq.enqueue("k", {}, owner_id="free")
    paid = await jq.enqueue("k", {}, owner_id="paying", estimated_cost=Decimal("1"))
    batch = await jq.enqueue_many(
        [
            {"kind": "k", "owner_id": "free"},
            {"kind": "k", "owner_id": "paying", "estimated_cost": Decimal("2")},
        ]
    )
    for job in (free, paid, *batch):
        stored = await jq.get(job.id)
        assert stored.trace_context is not None and stored.trace_context == job.trace_context
    assert [(await jq.get(j.id)).reserved for j in (free, paid, *batch)] == [
        None,
        Decimal("1"),
        None,
        Decimal("2"),
    ]
    assert len(named(spans, "jobqueue enqueue")) == 3


async def test_without_a_tracer_provider_nothing_is_recorded_or_stored(
    jq: AsyncJobQueue, no_tracer_provider: None
) -> None:
    assert not tracing.active()
    job = await jq.enqueue("k", {})
    [job2] = await jq.enqueue_many([{"kind": "k"}])
    seen: list[bool] = []

    async def handler(job: Job, ctx: WorkerContext) -> None:
        seen.append(trace.get_current_span().is_recording())
        seen.append(trace.get_current_span().get_span_context().is_valid)

    await Worker(jq, {"k": handler}, lease=5).run_until_idle()
    assert seen == [False, False, False, False]
    assert job.trace_context is None
    assert (await jq.get(job.id)).trace_context is None
    assert (await jq.get(job2.id)).trace_context is None
    # And the INSERT does not even name the column.
    step = jq.statements.insert_many([new_job_row(NewJob(kind="k"), jq.limits)])
    assert "trace_context" not in str(step.statement)


def test_without_opentelemetry_jobs_run_and_store_nothing(
    tmp_path: Path, jobqueue_sqlite_url: str
) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        from jobqueue import AsyncJobQueue, migrate, tracing
        from jobqueue.worker import Worker

        async def main():
            migrate({jobqueue_sqlite_url!r}, table="untraced")
            q = AsyncJobQueue({jobqueue_sqlite_url!r}, table="untraced")
            job = await q.enqueue("k", {{}})
            done = await Worker(q, {{"k": lambda job, ctx: "ok"}}, lease=5).run_until_idle()
            after = await q.get(job.id)
            await q.close()
            print(tracing.available(), done, after.status.value, after.trace_context)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "1", "completed", "None"]


async def test_the_table_bounds_the_trace_context_as_tracing_does(
    jq: AsyncJobQueue, spans: InMemorySpanExporter
) -> None:
    """What `jobqueue.tracing` stores is never longer than `MAX_TRACE_CONTEXT`, and the
    table refuses what is (a row another client writes)."""
    limit = tracing.MAX_TRACE_CONTEXT
    longest = "x" * limit
    async with jq.engine.begin() as conn:
        await conn.execute(
            jq.table.insert().values(kind="k", trace_context=longest),
        )
    with pytest.raises(Exception, match=r"(?i)check constraint"):
        async with jq.engine.begin() as conn:
            await conn.execute(jq.table.insert().values(kind="k", trace_context=longest + "x"))
    # A tracestate past the bound is not stored: the job keeps no context rather than fail.
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    state = TraceState([(f"k{i}", "v" * 200) for i in range(6)])
    parent = SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(1), trace_state=state)
    with trace.use_span(NonRecordingSpan(parent)):
        job = await jq.enqueue("k", {})
    assert job.trace_context is None
    assert (await jq.get(job.id)).trace_context is None


async def test_a_worker_told_not_to_trace_records_no_run(
    jq: AsyncJobQueue, spans: InMemorySpanExporter
) -> None:
    await jq.enqueue("k", {})
    await Worker(jq, {"k": lambda job, ctx: "ok"}, trace=False).run_until_idle()
    assert [s.name for s in spans.get_finished_spans()] == ["jobqueue enqueue"]
