"""`Registry`: declaring job kinds, enqueueing with their defaults, and workers running them,
on SQLite and PostgreSQL; and `jobqueue.loading`, which finds a registry named on the
command line (the command itself is run in tests/test_cli_app.py)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

from jobqueue import AsyncJobQueue, ConfigurationError, Job, JobQueue, MockGenerator, Status
from jobqueue.loading import import_object, load_registry
from jobqueue.worker import Worker, WorkerContext
from jobqueue.worker.registry import Registry
from tests.conftest import Either
from tests.worker.conftest import drain


async def settle(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def shop() -> Registry:
    """Two kinds with options, as an application declares them."""
    jobs = Registry()

    @jobs.handler("email", max_attempts=5, timeout=30, queue="mail")
    def send_email(job: Job, ctx: WorkerContext) -> dict[str, Any]:
        return {"sent_to": job.payload["to"]}

    @jobs.handler("thumbnail", timeout=timedelta(minutes=2))
    async def thumbnail(job: Job, ctx: WorkerContext) -> int:
        await ctx.report_progress(50, "resizing")
        return 128

    return jobs


# -- declaring ------------------------------------------------------------------------------


def test_the_registry_is_importable_from_the_package() -> None:
    import jobqueue
    import jobqueue.worker.registry

    assert jobqueue.worker.registry.Registry is Registry is jobqueue.Registry
    assert jobqueue.worker.registry.JobKind is type(Registry.of({"x": print}).kinds["x"])


def test_the_decorator_registers_the_function_unchanged_with_its_options() -> None:
    jobs = Registry()

    async def original(job: Job, ctx: WorkerContext) -> None:
        pass

    assert jobs.handler("email", max_attempts=5, timeout=30, queue="mail")(original) is original
    entry = jobs.kinds["email"]
    assert (entry.name, entry.handler, entry.queue) == ("email", original, "mail")
    assert (entry.max_attempts, entry.timeout) == (5, 30.0)
    assert list(jobs) == ["email"] and len(jobs) == 1 and "email" in jobs
    registry = shop()
    assert registry.kinds["thumbnail"].timeout == 120.0
    assert (registry.kinds["thumbnail"].queue, registry.kinds["thumbnail"].max_attempts) == (
        "default",
        3,
    )
    assert registry.queues == ("mail", "default")
    # `image` runs with the settings' generator unless the app says otherwise.
    assert registry.serves("image") and not Registry(image=False).serves("image")
    assert registry.served() == ["email", "image", "thumbnail"]
    assert not registry.serves("emial")


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"max_attempts": 0}, "max_attempts of kind 'k' must be between 1 and 1000"),
        ({"max_attempts": True}, "max_attempts of kind 'k' must be an integer"),
        ({"timeout": 0}, "the timeout of kind 'k' must be between"),
        ({"timeout": float("nan")}, "the timeout of kind 'k' must be a finite number"),
        ({"queue": " "}, "the queue of kind 'k' must be 1 to 200 characters"),
    ],
)
def test_bad_options_are_refused_when_registered(options: dict[str, Any], words: str) -> None:
    jobs = Registry()
    with pytest.raises(ConfigurationError, match=words):
        jobs.add("k", print, **options)
    assert "k" not in jobs


def test_a_kind_registered_twice_or_a_handler_that_is_not_one_is_refused() -> None:
    jobs = shop()
    with pytest.raises(ConfigurationError, match=r"'email' is registered twice .*send_email"):
        jobs.add("email", print)
    with pytest.raises(ConfigurationError, match="neither callable nor a Generator"):
        jobs.add("report", "not a function")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="a job kind must be 1 to 200 characters"):
        jobs.add("", print)
    assert list(jobs) == ["email", "thumbnail"]


def test_with_default_adds_a_kind_to_a_copy_unless_registered() -> None:
    jobs = shop()
    generator = MockGenerator(delay=0)
    more = jobs.with_default("image", generator)
    assert list(more) == ["email", "thumbnail", "image"] and list(jobs) == ["email", "thumbnail"]
    assert more.kinds["image"].handler is generator
    mine = Registry()
    mine.add("image", print, queue="images")
    assert mine.with_default("image", generator).kinds["image"].handler is print


# -- enqueueing with a kind's defaults --------------------------------------------------------


async def test_enqueue_takes_the_kinds_queue_and_max_attempts_unless_given(q: Either) -> None:
    jobs = shop()
    email = await settle(jobs.enqueue(q.target, "email", {"to": "ann@example.com"}))
    assert (email.kind, email.queue, email.max_attempts) == ("email", "mail", 5)
    assert email.payload == {"to": "ann@example.com"}
    given = await settle(jobs.enqueue(q.target, "email", {}, queue="urgent", max_attempts=1))
    assert (given.queue, given.max_attempts) == ("urgent", 1)
    # Other options pass through; image takes the queue's defaults.
    image = await settle(
        jobs.enqueue(q.target, "image", {"prompt": "a fox"}, priority=7, owner_id="ann")
    )
    assert (image.queue, image.max_attempts, image.priority, image.owner_id) == (
        "default",
        3,
        7,
        "ann",
    )
    # A kind no worker of this registry runs is a mistake: nothing is written.
    with pytest.raises(ConfigurationError, match=r"'emial' is not registered .*email, image"):
        await settle(jobs.enqueue(q.target, "emial", {}))
    assert len(await q.list()) == 3


def test_enqueue_joins_the_callers_transaction(queue: JobQueue) -> None:
    jobs = shop()
    with queue.engine.connect() as conn:
        job = jobs.enqueue(queue, "thumbnail", {"source": "a.png"}, connection=conn)
        conn.rollback()
    assert queue.list() == []
    with queue.engine.begin() as conn:
        job = jobs.enqueue(queue, "thumbnail", {"source": "a.png"}, connection=conn)
    assert queue.get(job.id).kind == "thumbnail"


# -- workers --------------------------------------------------------------------------------


async def test_a_worker_runs_a_registry_from_the_queues_of_its_kinds(jq: AsyncJobQueue) -> None:
    jobs = shop()
    email = await jobs.enqueue(jq, "email", {"to": "ann@example.com"})
    thumb = await jobs.enqueue(jq, "thumbnail", {"source": "a.png"})
    image = await jobs.enqueue(jq, "image", {"prompt": "a fox"})
    worker = Worker(jq, jobs, generator=MockGenerator(delay=0), lease=2)
    assert worker.queues == ("mail", "default")
    assert set(worker.handlers) == {"email", "thumbnail", "image"}
    await drain(worker, jq, [email.id, thumb.id, image.id])
    assert (await jq.get(email.id)).result == {"sent_to": "ann@example.com"}
    assert (await jq.get(thumb.id)).result == 128
    done = await jq.get(image.id)
    assert done.status is Status.COMPLETED and done.result_url
    # Told its queues, a worker claims from those only.
    other = await jobs.enqueue(jq, "email", {"to": "bo@example.com"})
    await Worker(jq, jobs, queues=["default"], lease=2).run_until_idle()
    assert (await jq.get(other.id)).status is Status.PENDING


async def test_a_kinds_timeout_wins_over_the_workers_job_timeout(jq: AsyncJobQueue) -> None:
    jobs = Registry()

    @jobs.handler("patient", timeout=10)
    async def patient(job: Job, ctx: WorkerContext) -> str:
        await asyncio.sleep(0.6)
        return "done"

    @jobs.handler("hasty", timeout=0.2)
    async def hasty(job: Job, ctx: WorkerContext) -> str:
        await asyncio.sleep(5)
        return "late"

    @jobs.handler("plain")
    async def plain(job: Job, ctx: WorkerContext) -> str:
        await asyncio.sleep(5)
        return "late"

    ids = {
        kind: (await jq.enqueue(kind, {}, max_attempts=1)).id
        for kind in ("patient", "hasty", "plain")
    }
    await Worker(jq, jobs, lease=2, job_timeout=0.4).run_until_idle()
    done = {kind: await jq.get(job_id) for kind, job_id in ids.items()}
    assert (done["patient"].status, done["patient"].result) == (Status.COMPLETED, "done")
    assert done["hasty"].status is Status.FAILED
    assert done["hasty"].error == "JobTimeout: the handler ran longer than 0.2s"
    assert done["plain"].status is Status.FAILED
    assert done["plain"].error == "JobTimeout: the handler ran longer than 0.4s"


async def test_a_kinds_max_attempts_is_honoured_by_the_worker(jq: AsyncJobQueue) -> None:
    jobs = Registry()
    calls: list[int] = []

    @jobs.handler("flaky", max_attempts=5)
    async def flaky(job: Job, ctx: WorkerContext) -> None:
        calls.append(job.attempts)
        raise ConnectionError(f"provider hiccup {job.attempts}")

    job = await jobs.enqueue(jq, "flaky", {})
    once = await jobs.enqueue(jq, "flaky", {}, max_attempts=1)
    await drain(Worker(jq, jobs, lease=2), jq, [job.id, once.id])
    done = await jq.get(job.id)
    assert (done.status, done.attempts, done.max_attempts) == (Status.FAILED, 5, 5)
    assert [e["attempt"] for e in done.errors] == [1, 2, 3, 4, 5]
    assert ((await jq.get(once.id)).attempts, sorted(calls)) == (1, [1, 1, 2, 3, 4, 5])


async def test_a_kind_without_a_handler_is_logged_once_per_kind(
    jq: AsyncJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker claiming every kind fails strays at once; a flood of them is one warning
    per kind in the log (each job's failure is still written on the job)."""
    caplog.set_level(logging.INFO, logger="jobqueue.worker")
    strays = [(await jq.enqueue(kind, {}, max_attempts=3)).id for kind in ["video"] * 4]
    strays += [(await jq.enqueue("audio", {})).id for _ in range(3)]

    async def echo(job: Job, ctx: WorkerContext) -> str:
        return "hi"

    mine = (await jq.enqueue("echo", {})).id
    await Worker(jq, {"echo": echo}, lease=2, all_kinds=True).run_until_idle()
    for job_id in strays:
        failed = await jq.get(job_id)
        assert (failed.status, failed.attempts) == (Status.FAILED, 1)
        assert f"no handler for job kind {failed.kind!r}" in (failed.error or "")
    assert (await jq.get(mine)).status is Status.COMPLETED
    shown = [r for r in caplog.records if r.levelno >= logging.INFO]
    for kind, ids in (("video", strays[:4]), ("audio", strays[4:])):
        warnings = [r for r in shown if f"No handler for jobs of kind {kind!r}" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in shown]
        assert "it runs: echo" in warnings[0].getMessage()
        lines = [r for r in shown if any(str(i) in r.getMessage() for i in ids)]
        # The first job of the kind: processing, then failed; the rest: nothing above debug.
        assert len(lines) == 2, [r.getMessage() for r in lines]


# -- finding a registry named on the command line ---------------------------------------------


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory for application modules; `sys.path` and `sys.modules`
    are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(dedent(source))


APP = """
    from jobqueue import Registry

    jobs = Registry()

    @jobs.handler("email", queue="mail")
    def send(job, ctx):
        return None

    def make_jobs():
        return jobs

    def make_nothing():
        return None

    settings = {"debug": True}
"""


def test_a_registry_is_found_by_name_by_factory_or_alone_in_its_module(app_dir: Path) -> None:
    write(app_dir, "regapp_one", APP)
    named = load_registry("regapp_one:jobs")
    assert list(named) == ["email"]
    assert load_registry("regapp_one:make_jobs") is named
    assert load_registry("regapp_one") is named
    assert import_object("regapp_one:jobs.kinds", "--app").value["email"].queue == "mail"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("regapp_two:settings", "--app regapp_two:settings is a dict, not a jobqueue Registry"),
        ("regapp_two:make_nothing", "make_nothing() returned None, not a jobqueue Registry"),
        ("regapp_two:send", "calling send() failed: TypeError"),
        ("regapp_two:nope", "regapp_two has no attribute 'nope'"),
        ("regapp_missing:jobs", "cannot import regapp_missing (No module named"),
        ("regapp_broken", "importing regapp_broken failed: ZeroDivisionError"),
        ("regapp_deps", "importing regapp_deps failed: ModuleNotFoundError"),
        ("regapp_none", "regapp_none holds no jobqueue Registry"),
        ("regapp_many", "holds several registries (a, b)"),
        ("regapp_two:", "--app takes module or module:name"),
    ],
)
def test_what_is_not_a_registry_is_one_clear_error(app_dir: Path, name: str, words: str) -> None:
    write(app_dir, "regapp_two", APP)
    write(app_dir, "regapp_broken", "x = 1 / 0\n")
    write(app_dir, "regapp_deps", "import regapp_no_such_dependency\n")
    write(app_dir, "regapp_none", "jobs = {}\n")
    write(app_dir, "regapp_many", "from jobqueue import Registry\na = Registry()\nb = Registry()\n")
    with pytest.raises(ConfigurationError) as caught:
        load_registry(name)
    assert words in caught.value.message
    if name.startswith("regapp_missing"):
        assert "PYTHONPATH" in caught.value.hint and str(app_dir) in caught.value.hint
    if name.endswith(":nope"):
        assert caught.value.hint == "it holds: regapp_two:jobs"
