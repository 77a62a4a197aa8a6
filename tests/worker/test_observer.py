"""The worker's observers (jobqueue.worker.observer): what they hear of each job, from the
one place each event happens, on SQLite and PostgreSQL; an observer that raises costs
the jobs nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import pytest

from jobqueue import AsyncJobQueue, Job, RetryLater, Status
from jobqueue.worker import Event, Worker, WorkerContext
from jobqueue.worker.outcome import Outcome
from tests.worker.conftest import drain, eventually, run_in_background


class Recorder:
    """An application's observer: notes every event, by job kind."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def started(self, job: Job) -> Any:
        self.events.append((job.kind, "started"))
        return job.kind

    def ran(self, job: Job, started: Any, outcome: Outcome | None) -> None:
        assert started == job.kind
        self.events.append((job.kind, "ran"))

    def finished(self, job: Job, event: Event) -> None:
        self.events.append((job.kind, event.value))

    def expired(self, jobs: Sequence[Job]) -> None:
        self.events += [(job.kind, "expired") for job in jobs]

    def reaped(self, moved: Sequence[tuple[UUID, Status]]) -> None:
        self.events += [("?", f"reaped to {status}") for _, status in moved]


class Raising(Recorder):
    """An observer with a bug at every event."""

    def started(self, job: Job) -> Any:
        raise RuntimeError("observer bug")

    def ran(self, job: Job, started: Any, outcome: Outcome | None) -> None:
        raise RuntimeError("observer bug")

    def finished(self, job: Job, event: Event) -> None:
        raise RuntimeError("observer bug")


async def test_observers_hear_each_outcome_once(jq: AsyncJobQueue) -> None:
    tries = 0

    async def ok(job: Job, ctx: WorkerContext) -> str:
        return "ok"

    async def flaky(job: Job, ctx: WorkerContext) -> str:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise RuntimeError("once")
        return "ok"

    ids = [
        (await jq.enqueue("ok", {})).id,
        (await jq.enqueue("flaky", {}, max_attempts=2)).id,
    ]
    recorder, raising = Recorder(), Raising()
    worker = Worker(jq, {"ok": ok, "flaky": flaky}, observers=[raising, recorder], lease=5)
    await drain(worker, jq, ids)
    assert sorted(recorder.events) == sorted(
        [
            ("ok", "started"),
            ("ok", "ran"),
            ("ok", "completed"),
            ("flaky", "started"),
            ("flaky", "ran"),
            ("flaky", "retried"),
            ("flaky", "started"),
            ("flaky", "ran"),
            ("flaky", "completed"),
        ]
    )
    assert [(await jq.get(i)).status for i in ids] == [Status.COMPLETED] * 2


async def test_observers_hear_holds_failures_and_releases(jq: AsyncJobQueue) -> None:
    release = asyncio.Event()

    async def later(job: Job, ctx: WorkerContext) -> None:
        raise RetryLater(after=60.0, reason="the provider is busy")

    async def doomed(job: Job, ctx: WorkerContext) -> None:
        raise RuntimeError("always")

    async def slow(job: Job, ctx: WorkerContext) -> None:
        await release.wait()

    await jq.enqueue("later", {})
    await jq.enqueue("doomed", {}, max_attempts=1)
    held = await jq.enqueue("slow", {})
    recorder = Recorder()
    worker = Worker(
        jq, {"later": later, "doomed": doomed, "slow": slow}, observers=[recorder], lease=5
    )
    task = await run_in_background(worker)
    await eventually(lambda: ("doomed", "failed") in recorder.events)
    await eventually(lambda: ("later", "held_back") in recorder.events)
    await eventually(lambda: ("slow", "started") in recorder.events)
    worker.stop(immediate=True)
    await asyncio.wait_for(task, 15)
    assert ("slow", "released") in recorder.events
    assert (await jq.get(held.id)).status is Status.PENDING


@pytest.mark.parametrize("trace", [True, False])
async def test_without_observers_the_worker_holds_none(jq: AsyncJobQueue, trace: bool) -> None:
    worker = Worker(jq, {"k": lambda job, ctx: None}, trace=trace)
    # OpenTelemetry is installed in the tests: tracing is the one observer unless refused.
    assert (worker._observer is None) is (not trace)
