"""Old public names still work, do the same as their new names, and warn (`DeprecationWarning`).

Each renamed name is called here by its old name on purpose; the new names are checked by
the tests of the behaviour itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, GenerationError, LocalContext, MockGenerator, WorkerContext
from jobqueue.generators import GenerationRequest, ScrubbedGenerator
from jobqueue.generators.base import GenerationResult, JobContext

from .conftest import Either

# -- the provider's task id: remote_task_id ---------------------------------------------------


async def test_queue_remember_task_saves_the_remote_task_id(q: Either) -> None:
    await q.enqueue("image", {})
    (job,) = await q.claim("w")
    with pytest.warns(DeprecationWarning, match=r"remember_task\(\) is deprecated: use save_remo"):
        await q.remember_task(job, "task-old-name")
    assert (await q.get(job.id)).remote_task_id == "task-old-name"


async def test_worker_context_remember_and_remembered(aqueue: AsyncJobQueue) -> None:
    await aqueue.enqueue("image", {})
    (job,) = await aqueue.claim("w")
    ctx = WorkerContext(aqueue, job, "w", asyncio.get_running_loop())
    with pytest.warns(DeprecationWarning, match="use save_remote_task_id"):
        await ctx.remember("task-1")
    assert ctx.remote_task_id == "task-1"
    assert (await aqueue.get(job.id)).remote_task_id == "task-1"
    with pytest.warns(DeprecationWarning, match="use the remote_task_id property"):
        assert ctx.remembered() == "task-1"


async def test_local_context_old_names() -> None:
    with pytest.warns(DeprecationWarning, match=r"LocalContext\(task_id=...\)"):
        ctx = LocalContext(task_id="task-1")
    assert ctx.remote_task_id == "task-1"
    with pytest.warns(DeprecationWarning, match=r"LocalContext\.task_id"):
        assert ctx.task_id == "task-1"
    with pytest.warns(DeprecationWarning, match=r"LocalContext\.task_id"):
        ctx.task_id = "task-2"
    assert ctx.remote_task_id == "task-2"
    with pytest.warns(DeprecationWarning, match="use save_remote_task_id"):
        await ctx.remember("task-3")
    with pytest.warns(DeprecationWarning, match="remote_task_id property"):
        assert ctx.remembered() == "task-3"


class OldStyleContext:
    """A caller's own context written for the old protocol: remember / remembered."""

    def __init__(self, task_id: str | None = None) -> None:
        self.task_id = task_id
        self.saved: list[str] = []

    async def report_progress(self, percent: int, message: str | None = None) -> None:
        pass

    async def remember(self, task_id: str) -> None:
        self.saved.append(task_id)
        self.task_id = task_id

    def remembered(self) -> str | None:
        return self.task_id


@pytest.mark.parametrize("scrubbed", [False, True], ids=["mock", "scrubbed-mock"])
async def test_our_generators_still_use_an_old_style_context(scrubbed: bool) -> None:
    mock = MockGenerator(delay=0)
    generator: Any = ScrubbedGenerator(mock, "sk-secret-key-0123456789") if scrubbed else mock
    ctx = OldStyleContext()
    with pytest.warns(DeprecationWarning, match="OldStyleContext has the deprecated"):
        await generator.generate(GenerationRequest("a cat"), ctx)
    assert len(ctx.saved) == 1 and ctx.saved[0].startswith("mock-")
    resumed = OldStyleContext("mock-from-before")
    with pytest.warns(DeprecationWarning):
        await generator.generate(GenerationRequest("a cat"), resumed)
    assert (mock.submitted, mock.resumed) == (1, 1) and resumed.saved == []


class OverridingContext(LocalContext):
    """A subclass of ours that overrides the old name: its override is still called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def remember(self, task_id: str) -> None:
        self.calls.append(task_id)
        await super().remember(task_id)


async def test_an_override_of_the_old_name_is_still_called() -> None:
    ctx = OverridingContext()
    with pytest.warns(DeprecationWarning):
        await MockGenerator(delay=0).generate(GenerationRequest("a cat"), ctx)
    assert ctx.calls == [ctx.remote_task_id] and ctx.remote_task_id is not None


class OldStyleGenerator:
    """A caller's generator written for the old protocol, saving a task id holding the key."""

    name = "old-style"

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    async def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        await context.remember(self.task_id)  # type: ignore[attr-defined]
        return GenerationResult(images=("https://img.example.invalid/1.png",))

    async def aclose(self) -> None:
        pass


async def test_the_old_name_on_a_scrubbed_context_still_refuses_a_secret() -> None:
    key = "sk-secret-key-0123456789"
    ctx = LocalContext()
    generator = ScrubbedGenerator(OldStyleGenerator(f"task-{key}"), key)
    with pytest.warns(DeprecationWarning), pytest.raises(GenerationError, match="API key"):
        await generator.generate(GenerationRequest("a cat"), ctx)
    assert ctx.remote_task_id is None
    fine = ScrubbedGenerator(OldStyleGenerator("task-1"), key)
    with pytest.warns(DeprecationWarning):
        await fine.generate(GenerationRequest("a cat"), ctx)
    assert ctx.remote_task_id == "task-1"


def test_operations_remember_is_save_remote_task_id() -> None:
    import jobqueue.operations as ops

    with pytest.warns(DeprecationWarning, match=r"jobqueue\.operations\.remember is deprecated"):
        from jobqueue.operations import remember
    assert remember is ops.save_remote_task_id


# -- the two classes that were both named Limits ----------------------------------------------


def test_operations_limits_is_queue_limits() -> None:
    from jobqueue.validation import QueueLimits

    with pytest.warns(DeprecationWarning, match=r"jobqueue\.operations\.Limits is deprecated"):
        from jobqueue.operations import Limits
    assert Limits is QueueLimits
