"""Silent partitions: the network to PostgreSQL stops answering without closing anything.

Every test puts a proxy of its own (`tests.support.netproxy.NetProxy`) between a client and
the shared PostgreSQL server, on loopback, and blackholes it: both sockets stay open and
every byte is acknowledged by the proxy's kernel, so neither TCP keepalives nor
``tcp_user_timeout`` can notice. What must notice is jobqueue's own clock: the queue's
``command_timeout`` (`DatabaseTimeout`), the worker's lease watch, the listener's probe.
The fast variants run in the default suite with timeouts of a second or two; the drill of
two worker processes runs under ``-m soak``.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url, text
from starlette.requests import Request

from jobqueue import AsyncJobQueue, DefAPIGenerator, Job, JobQueue, Status
from jobqueue.drivers.listen import Listener, libpq_url
from jobqueue.errors import DatabaseTimeout
from jobqueue.generators.base import GenerationRequest
from jobqueue.web.app import create_app
from jobqueue.worker import StopReason, Worker
from tests.support.fake_defapi import FakeDefAPI
from tests.support.netproxy import NetProxy
from tests.web.server import running_server

from . import partition_worker
from .conftest import Workers, wait_for

pytestmark = pytest.mark.postgres

#: The client-side bound the fast tests use (seconds), and the slack a bound may take on a
#: busy machine.
COMMAND_TIMEOUT = 1.0
SLACK = 1.5


@pytest.fixture
def proxy(pg_migrated: tuple[str, str]) -> Iterator[NetProxy]:
    """A proxy to the test's database server, stopped (every connection through it reset)
    before the database is dropped."""
    with NetProxy.for_url(pg_migrated[0]) as p:
        yield p


def _through(proxy: NetProxy, url: str, driver: str = "psycopg") -> str:
    """``url`` through the proxy, with a short connect timeout (psycopg's shortest is 2 s)."""
    routed = proxy.url_for(url).replace("postgresql://", f"postgresql+{driver}://", 1)
    return routed + ("?connect_timeout=1" if driver == "psycopg" else "")


# -- clients ---------------------------------------------------------------------------------


def test_a_sync_enqueue_and_wait_through_a_blackhole_time_out_then_recover(
    proxy: NetProxy, pg_migrated: tuple[str, str]
) -> None:
    url, table = pg_migrated
    with JobQueue(_through(proxy, url), table=table, command_timeout=COMMAND_TIMEOUT) as queue:
        job = queue.enqueue("work", {"n": 1})  # a pooled connection, open before the cut
        with proxy.blackholed():
            started = time.monotonic()
            with pytest.raises(DatabaseTimeout, match="did not answer within 1 s") as caught:
                queue.enqueue("work", {"n": 2})
            assert time.monotonic() - started < COMMAND_TIMEOUT + SLACK
            assert caught.value.hint  # what to do, including that a keyed enqueue may repeat
            # The pool is empty now: a new connection waits its connect timeout instead.
            started = time.monotonic()
            with pytest.raises(DatabaseTimeout):
                queue.wait(job.id, timeout=30)
            assert time.monotonic() - started < 2 + COMMAND_TIMEOUT + SLACK
        assert queue.enqueue("work", {"n": 3}).status is Status.PENDING


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
async def test_an_async_enqueue_and_wait_through_a_blackhole_time_out_then_recover(
    proxy: NetProxy, pg_migrated: tuple[str, str], driver: str
) -> None:
    url, table = pg_migrated
    routed = _through(proxy, url, driver)
    queue = AsyncJobQueue(routed, table=table, command_timeout=COMMAND_TIMEOUT)
    try:
        job = await queue.enqueue("work", {"n": 1})
        with proxy.blackholed():
            started = time.monotonic()
            with pytest.raises(DatabaseTimeout):
                await queue.enqueue("work", {"n": 2})
            assert time.monotonic() - started < COMMAND_TIMEOUT + SLACK
        # Healed before the wait: it works again on a fresh connection.
        assert (await queue.get(job.id)).status is Status.PENDING
        proxy.blackhole("down")  # the server hears the statement, its answer is lost
        started = time.monotonic()
        with pytest.raises(DatabaseTimeout):
            await queue.wait(job.id, timeout=30)
        # A connection checkout may open a new connection first (asyncpg's connect timeout
        # is its default, 10 s): the bound is the connect timeout plus command_timeout.
        assert time.monotonic() - started < 10 + COMMAND_TIMEOUT + SLACK
        proxy.passing()
        assert (await queue.enqueue("work", {"n": 3})).status is Status.PENDING
    finally:
        await queue.close()


async def _by_header(request: Request) -> str | None:
    return request.headers.get("x-user")


async def test_the_web_api_answers_503_with_retry_after_through_a_blackhole(
    proxy: NetProxy, pg_migrated: tuple[str, str]
) -> None:
    url, table = pg_migrated
    queue = AsyncJobQueue(_through(proxy, url), table=table, command_timeout=COMMAND_TIMEOUT)
    app = create_app(queue, identify=_by_header)
    try:
        async with (
            running_server(app) as base,
            httpx.AsyncClient(base_url=base, headers={"X-User": "alice"}, timeout=30) as client,
        ):
            assert (await client.post("/jobs", json={"prompt": "before"})).status_code == 202
            with proxy.blackholed():
                started = time.monotonic()
                answers = await asyncio.gather(
                    *(client.post("/jobs", json={"prompt": f"cut {i}"}) for i in range(5))
                )
                elapsed = time.monotonic() - started
            # Every request is answered, in bounded time, with when to come back.
            assert [r.status_code for r in answers] == [503] * 5
            assert all(r.headers["Retry-After"].isdigit() for r in answers)
            assert answers[0].json()["error"]["code"] == "unavailable"
            assert elapsed < 2 + COMMAND_TIMEOUT + SLACK
            assert (await client.post("/jobs", json={"prompt": "after"})).status_code == 202
    finally:
        await queue.close()


# -- the listener ---------------------------------------------------------------------------


async def test_the_listener_notices_a_silent_connection_and_comes_back(
    proxy: NetProxy, pg_migrated: tuple[str, str]
) -> None:
    """LISTEN hears nothing either way: only a probe tells a quiet queue from a silent
    network. The listener probes after ``health_interval`` of quiet, drops the connection
    when the probe gets no answer within ``probe_timeout``, and reconnects once the network
    is back (meanwhile the worker finds jobs by its poll)."""
    url, table = pg_migrated
    heard: list[str | None] = []
    listener = Listener(
        libpq_url(make_url(_through(proxy, url))),
        table,
        heard.append,
        health_interval=0.3,
        probe_timeout=0.5,
        reconnect_backoff=(0.1, 0.5),
        connect_timeout=2,
    )
    task = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.listening.wait(), 10)
        proxy.blackhole()
        started = time.monotonic()
        for _ in range(200):
            if not listener.listening.is_set():
                break
            await asyncio.sleep(0.05)
        # Noticed within a quiet interval and a probe (plus scheduling slack).
        assert time.monotonic() - started < 0.3 + 0.5 + SLACK
        assert listener.silent_probes == 1
        proxy.passing()
        await asyncio.wait_for(listener.listening.wait(), 10)
        assert listener.connections == 2
        queue = AsyncJobQueue(url, table=table)
        try:
            await queue.enqueue("work", {"n": 1}, queue="partitioned")
        finally:
            await queue.close()
        for _ in range(100):
            if "partitioned" in heard:
                break
            await asyncio.sleep(0.05)
        assert "partitioned" in heard
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- a worker cut off mid-job ----------------------------------------------------------------

LEASE = 2.0


def _held(fake: FakeDefAPI, prompts: set[str], held: bool) -> None:
    with fake.lock:
        for task in fake.tasks.values():
            if task.prompt in prompts:
                task.held = held


async def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_worker_cut_off_mid_job_gives_up_and_another_takes_over_exactly_once(
    proxy: NetProxy,
    pg_migrated: tuple[str, str],
    fake_defapi: FakeDefAPI,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Worker A reaches PostgreSQL through the proxy, worker B directly. A holds four image
    jobs whose DefAPI tasks are submitted and saved, then is cut off. Two of the tasks
    finish while A is cut off (A's completions wait in its writer), two stay in progress
    (A's handlers are still polling). After one lease A gives the running two up by itself;
    B takes all four over, resumes each saved task and completes it. When the network heals,
    A's late completions are refused (fenced) and change nothing, and A serves new jobs.
    DefAPI saw one submission per job."""
    url, table = pg_migrated
    fake = fake_defapi
    fake.scenario(hold=True, polls_before_success=0)
    a_queue = AsyncJobQueue(
        _through(proxy, url), table=table, lease=LEASE, command_timeout=COMMAND_TIMEOUT
    )
    b_queue = AsyncJobQueue(url, table=table, lease=LEASE)
    gen_a = DefAPIGenerator(fake.api_key, base_url=fake.url, poll_interval=0.05)
    gen_b = DefAPIGenerator(fake.api_key, base_url=fake.url, poll_interval=0.05)
    worker_a = Worker(
        a_queue, generator=gen_a, lease=LEASE, poll_interval=0.1, listen=False, worker_id="A"
    )
    worker_b = Worker(
        b_queue, generator=gen_b, lease=LEASE, poll_interval=0.1, listen=False, worker_id="B"
    )
    finishing = {"finish 0", "finish 1"}
    running = {"run 0", "run 1"}
    jobs = [
        await b_queue.enqueue("image", {"prompt": p}, max_attempts=3)
        for p in sorted(finishing | running)
    ]
    run_a = asyncio.create_task(worker_a.run())
    run_b: asyncio.Task[None] | None = None
    try:

        async def all_saved() -> bool:
            got = [await b_queue.get(j.id) for j in jobs]
            # Saved, and polling the task (its progress written: "in_progress" is 50 %).
            return all(j.remote_task_id and j.locked_by == "A" and j.progress == 50 for j in got)

        await _until(all_saved, 20, "A to submit, save and poll every task")
        run_b = asyncio.create_task(worker_b.run())
        proxy.blackhole()
        _held(fake, finishing, False)  # these finish at DefAPI while A is cut off
        await asyncio.sleep(0.2)  # a heartbeat A sent just before the cut has landed
        leases = {j.id: (await b_queue.get(j.id)).lease_expires_at for j in jobs}

        async def taken_over() -> bool:
            got = [await b_queue.get(j.id) for j in jobs]
            return all(j.locked_by == "B" or j.status is Status.COMPLETED for j in got)

        await _until(taken_over, 20, "B to take every job over")
        # Not before A's lease ran out by the database clock.
        for j in jobs:
            now = await b_queue.get(j.id)
            assert now.started_at is not None and now.started_at >= leases[j.id]
        # A gives up the handlers that are still running (polling tasks still in progress),
        # by itself, while cut off: once their leases must have run out by its own clock,
        # a moment after they ran out by the database's, when B could take them over.
        watch = worker_a.lease_watch
        assert watch is not None

        async def given_up() -> bool:
            return watch.given_up >= len(running)

        await _until(given_up, 5, "A's lease watch to give the running jobs up")
        assert watch.given_up == len(running)
        _held(fake, running, False)

        async def completed() -> bool:
            got = [await b_queue.get(j.id) for j in jobs]
            return all(j.status is Status.COMPLETED for j in got)

        await _until(completed, 20, "B to complete every job")
        proxy.passing()

        # Healed: A's late completions reach the database and are refused.
        async def refused() -> bool:
            return caplog.text.count("LeaseLost: the result of attempt 1 was not written") == 2

        await _until(refused, 20, "A's late writes to be refused")
        final = [await b_queue.get(j.id) for j in jobs]
        assert all(j.status is Status.COMPLETED and j.locked_by == "B" for j in final)
        assert all(j.attempts == 2 for j in final)
        assert all(fake.submissions[p] == 1 for p in finishing | running)
        # A rejoins on its own: with B stopped, A runs a new job.
        worker_b.stop()
        await asyncio.wait_for(run_b, 20)
        fake.scenario(polls_before_success=0)
        new = await b_queue.enqueue("image", {"prompt": "after the heal"})
        done = await b_queue.wait(new.id, timeout=30, interval=0.1)
        assert done.status is Status.COMPLETED and done.locked_by == "A"
    finally:
        worker_a.stop(immediate=True)
        worker_b.stop(immediate=True)
        proxy.passing()
        await asyncio.gather(run_a, *([run_b] if run_b else []), return_exceptions=True)
        for closing in (gen_a.aclose(), gen_b.aclose(), a_queue.close(), b_queue.close()):
            await closing


# -- the drill: two worker processes, one of them cut off ------------------------------------

DRILL_LEASE = 2.0
DRILL_JOBS = 40


@pytest.mark.soak
def test_drill_two_worker_processes_one_cut_off_by_a_partition(
    proxy: NetProxy, pg_workers: Workers, fake_defapi: FakeDefAPI
) -> None:
    """Worker A reaches PostgreSQL through the proxy, worker B directly, both real
    processes on a fake DefAPI whose tasks stay in progress until released. A holds half
    the jobs mid-run (task ids saved), B the other half; then A is cut off for three
    leases, and the tasks finish meanwhile. B takes A's jobs over after the lease and
    completes every job; after the heal A's late writes are refused and A, alone, serves
    new jobs. Audit: each job completed exactly once (a trigger counts the moves into
    ``completed``), DefAPI saw one submission per job."""
    workers, fake = pg_workers, fake_defapi
    url, table = workers.url, workers.table
    queue = JobQueue(url, table=table)
    audit = f"{table}_completions"
    with queue.engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {audit} (job_id uuid NOT NULL)"))
        conn.execute(
            text(
                f"CREATE FUNCTION {audit}_count() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN INSERT INTO {audit} VALUES (NEW.id); RETURN NULL; END $$"
            )
        )
        conn.execute(
            text(
                f"CREATE TRIGGER {audit}_count AFTER UPDATE ON {table} FOR EACH ROW "
                "WHEN (NEW.status = 'completed' AND OLD.status IS DISTINCT FROM 'completed') "
                f"EXECUTE FUNCTION {audit}_count()"
            )
        )
    fake.scenario(hold=True, polls_before_success=0)
    prompts = [f"drill {i}" for i in range(DRILL_JOBS)]
    jobs = [queue.enqueue("image", {"prompt": p}, max_attempts=5) for p in prompts]
    common = {
        "defapi_url": fake.url,
        "defapi_key": fake.api_key,
        "lease": DRILL_LEASE,
        "concurrency": DRILL_JOBS // 2,
    }
    workers.target = partition_worker.main
    workers.url = proxy.url_for(url)
    a = workers.start("A", **common)
    workers.url = url

    def polling(worker_id: str) -> list[Job]:
        got = [queue.get(j.id) for j in jobs]
        mine = [
            j for j in got if j.locked_by == worker_id and j.remote_task_id and j.progress == 50
        ]
        return mine if len(mine) == DRILL_JOBS // 2 else []

    held_by_a = wait_for(lambda: polling(a), 60, "A to hold half the jobs mid-run")
    b = workers.start("B", **common)
    wait_for(lambda: polling(b), 60, "B to hold the other half mid-run")
    proxy.blackhole()
    time.sleep(0.2)
    # B's tasks and half of A's finish while A is cut off (A's completions of those wait
    # in its writer); A's other half are still running when A's lease runs out.
    running = {j.payload["prompt"] for j in held_by_a[: len(held_by_a) // 2]}
    with fake.lock:
        for task in fake.tasks.values():
            task.held = task.prompt in running
    wait_for(
        lambda: all(queue.get(j.id).locked_by == b for j in held_by_a),
        60,
        "B to take A's jobs over",
    )
    fake.release()
    wait_for(
        lambda: all(queue.get(j.id).status is Status.COMPLETED for j in jobs),
        60,
        "B to complete every job",
    )
    for job in held_by_a:
        now = queue.get(job.id)
        assert now.locked_by == b and now.attempts == 2
    time.sleep(max(0.0, 3 * DRILL_LEASE - 1))
    proxy.passing()
    wait_for(
        lambda: "LeaseLost: the result of attempt 1 was not written" in workers.log_text(),
        60,
        "A's late writes to be refused",
    )
    workers.signal(b, signal.SIGTERM)
    workers.procs[b].join(30)
    fake.scenario(polls_before_success=1)
    after = [queue.enqueue("image", {"prompt": f"after {i}"}) for i in range(5)]
    wait_for(
        lambda: all(queue.get(j.id).status is Status.COMPLETED for j in after),
        60,
        "A to rejoin and serve new jobs",
    )
    assert all(queue.get(j.id).locked_by == a for j in after)
    with queue.engine.connect() as conn:
        counts = dict(
            conn.execute(text(f"SELECT job_id, count(*) FROM {audit} GROUP BY job_id")).all()
        )
    assert {str(k): v for k, v in counts.items()} == {str(j.id): 1 for j in jobs + after}
    assert all(fake.submissions[p] == 1 for p in prompts)
    # A gave the running half up by itself, before the heal.
    assert workers.log_text().count("no heartbeat answered") == len(running)
    workers.stop_all()
    queue.close()


async def test_a_worker_cut_off_before_a_paid_submit_never_sends_it(
    proxy: NetProxy, pg_migrated: tuple[str, str], fake_defapi: FakeDefAPI
) -> None:
    """A's handler reaches DefAPI's submit just after A is cut off (its claim's lease still
    fresh by its own clock). The generator first has the lease confirmed in a round trip of
    its own (`before_paid_request`), which gets no answer: A's lease watch stops the
    attempt once the lease must have run out, before anything was submitted. B takes the
    job over and pays for it, once."""
    url, table = pg_migrated
    fake = fake_defapi
    fake.scenario(polls_before_success=0)
    go = asyncio.Event()
    generator = DefAPIGenerator(fake.api_key, base_url=fake.url, poll_interval=0.05)
    stopped: list[tuple[str, StopReason | None]] = []

    async def late_image(job: Job, ctx: Any) -> Any:
        await go.wait()
        try:
            return await generator.generate(GenerationRequest.from_payload(job.payload), ctx)
        except BaseException:
            stopped.append((ctx.worker_id, ctx.stopped_because))
            raise

    a_queue = AsyncJobQueue(
        _through(proxy, url), table=table, lease=LEASE, command_timeout=COMMAND_TIMEOUT
    )
    b_queue = AsyncJobQueue(url, table=table, lease=LEASE)
    options: dict[str, Any] = {"lease": LEASE, "poll_interval": 0.1, "listen": False}
    worker_a = Worker(a_queue, {"image": late_image}, worker_id="A", **options)
    worker_b = Worker(b_queue, {"image": late_image}, worker_id="B", **options)
    job = await b_queue.enqueue("image", {"prompt": "late"}, max_attempts=3)
    run_a = asyncio.create_task(worker_a.run())
    run_b: asyncio.Task[None] | None = None
    try:

        async def held_by_a() -> bool:
            return (await b_queue.get(job.id)).locked_by == "A"

        await _until(held_by_a, 20, "A to claim the job")
        run_b = asyncio.create_task(worker_b.run())
        proxy.blackhole()
        go.set()
        done = await b_queue.wait(job.id, timeout=30, interval=0.1)
        assert done.status is Status.COMPLETED and done.locked_by == "B" and done.attempts == 2
        assert fake.submissions["late"] == 1
        watch = worker_a.lease_watch
        assert watch is not None

        async def given_up() -> bool:
            return watch.given_up >= 1

        await _until(given_up, 5, "A's lease watch to give the job up")  # as above
        assert watch.given_up == 1
        assert stopped == [("A", StopReason.CUT_OFF)]
    finally:
        worker_a.stop(immediate=True)
        worker_b.stop(immediate=True)
        proxy.passing()
        await asyncio.gather(run_a, *([run_b] if run_b else []), return_exceptions=True)
        for closing in (generator.aclose(), a_queue.close(), b_queue.close()):
            await closing


@pytest.mark.parametrize("lock_timeout", [None, 0.2], ids=["waits", "refuses"])
async def test_a_database_that_only_answers_slowly_is_waited_for(
    pg_migrated: tuple[str, str], lock_timeout: float | None
) -> None:
    """Silence is not slowness: another transaction holds the job's row for two leases, so
    the worker's heartbeat waits on the lock and gets no answer, but nothing fails as
    unreachable: the lease watch leaves the handler alone. (Once the lock goes, the lease
    has run out by the database's clock, and the waiting heartbeat and the worker's next
    claim race for the row: the job completes either in attempt 1 or, claimed again, in
    attempt 2; never by a handler the lease watch stopped.)

    With a short ``lock_timeout`` (``refuses``) the heartbeat's lock wait ends in a refusal
    (`DatabaseBusy`) instead: an answer too, as a read-only refusal is, so the queue does
    not count it as unreachable and the lease watch still leaves the handler alone (each
    `DatabaseBusy` used to mark the database unreachable, and the lease watch stopped the
    handler after one lease).
    """
    url, table = pg_migrated
    lease = 1.0
    queue = AsyncJobQueue(url, table=table, lease=lease, lock_timeout=lock_timeout)
    started = asyncio.Event()

    async def slow(job: Job, ctx: Any) -> str:
        started.set()
        await asyncio.sleep(3 * lease)
        return "done"

    worker = Worker(queue, {"work": slow}, lease=lease, poll_interval=0.1, listen=False)
    job = await queue.enqueue("work", max_attempts=3)
    run = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(started.wait(), 20)
        async with queue.engine.connect() as conn, conn.begin():
            await conn.execute(
                text(f"SELECT id FROM {table} WHERE id = :id FOR UPDATE"), {"id": job.id}
            )
            await asyncio.sleep(2 * lease)
        done = await queue.wait(job.id, timeout=20, interval=0.1)
        assert done.status is Status.COMPLETED
        assert worker.lease_watch is not None and worker.lease_watch.given_up == 0
        assert queue.unreachable_at is None
    finally:
        worker.stop(immediate=True)
        await asyncio.gather(run, return_exceptions=True)
        await queue.close()


def test_a_cli_worker_takes_its_command_timeout_from_the_environment(
    proxy: NetProxy, pg_migrated: tuple[str, str], tmp_path: Any
) -> None:
    """`JOBQUEUE_COMMAND_TIMEOUT` (the global ``--command-timeout``) bounds what a
    `jobqueue worker` waits for a silent database: its claims fail after that long, not
    after the 30 s default, and it serves again once the network heals."""
    import subprocess
    import sys

    from tests.cli.helpers import clean_env

    url, table = pg_migrated
    env = clean_env(
        JOBQUEUE_DATABASE_URL=_through(proxy, url),
        JOBQUEUE_TABLE=table,
        JOBQUEUE_COMMAND_TIMEOUT="1s",
        MOCK_AI="1",
    )
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "jobqueue", "worker", "--no-listen", "--poll-interval", "0.2"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with JobQueue(url, table=table) as queue:

            def served(prompt: str) -> None:
                job = queue.enqueue("image", {"prompt": prompt})
                wait_for(
                    lambda: queue.get(job.id).status is Status.COMPLETED,
                    60,
                    f"the worker serving {prompt!r}",
                )

            served("before the partition")  # its pooled connections are open now
            with proxy.blackholed():
                wait_for(
                    lambda: "did not answer within 1 s" in log.read_text(),
                    15,
                    "a claim failing after the worker's 1 s command timeout",
                )
            served("after the partition")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the worker said:\n{log.read_text()}") from None
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
