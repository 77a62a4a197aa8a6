"""A worker killed (SIGKILL) while DefAPI works on its task is replaced by one that resumes
polling the same task: the fake DefAPI sees exactly one submission and the job completes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobqueue import AsyncJobQueue, DefAPIGenerator, Job, JobQueue, Status
from jobqueue.worker import Worker
from tests.support.fake_defapi import FakeDefAPI

WORKER_SCRIPT = """
import asyncio, logging, os, sys
from jobqueue import AsyncJobQueue, DefAPIGenerator
from jobqueue.worker import Worker

logging.basicConfig(level=logging.DEBUG, stream=sys.stdout)

async def main() -> None:
    queue = AsyncJobQueue(os.environ["URL"], table=os.environ["TABLE"])
    generator = DefAPIGenerator(
        os.environ["DEFAPI_API_KEY"], base_url=os.environ["DEFAPI_BASE_URL"], poll_interval=0.05
    )
    await Worker(queue, generator=generator, lease=2.0, poll_interval=0.05).run()

asyncio.run(main())
"""


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def resume(url: str, table: str, fake: FakeDefAPI, job_id: Any) -> Job:
    """Run a fresh worker (short lease, quick reaper) until the job is final."""
    aqueue = AsyncJobQueue(url, table=table)
    generator = DefAPIGenerator(fake.api_key, base_url=fake.url, poll_interval=0.05)
    worker = Worker(aqueue, generator=generator, lease=2.0, poll_interval=0.05, reap_interval=0.2)
    try:
        runner = asyncio.create_task(worker.run())
        done = await aqueue.wait(job_id, interval=0.1, timeout=60)
        worker.stop()
        await asyncio.wait_for(runner, 20)
        return done
    finally:
        await generator.aclose()
        await aqueue.close()


def test_killed_worker_is_resumed_without_a_second_submission(
    migrated: tuple[str, str], queue: JobQueue, fake_defapi: FakeDefAPI, tmp_path: Path
) -> None:
    url, table = migrated
    prompt = "survive a crash"
    fake_defapi.scenario(prompt, hold=True)  # the task stays in_progress until released
    job = queue.enqueue("image", {"prompt": prompt})

    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    log_path = tmp_path / "worker.log"
    env = {
        **os.environ,
        "URL": url,
        "TABLE": table,
        "DEFAPI_API_KEY": fake_defapi.api_key,
        "DEFAPI_BASE_URL": fake_defapi.url,
    }
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=log, stderr=log)
    try:
        # The first worker submitted the task and saved its id on the job, then kept polling.
        remembered = wait_for(
            lambda: queue.get(job.id).remote_task_id, "the task id to be saved on the job"
        )
        (task,) = fake_defapi.tasks_for(prompt)
        assert remembered == task.task_id
        wait_for(lambda: task.queries >= 2, "the first worker to poll the task")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    held = queue.get(job.id)
    assert held.status is Status.PROCESSING and held.attempts == 1

    fake_defapi.release()
    done = asyncio.run(resume(url, table, fake_defapi, job.id))

    assert done.status is Status.COMPLETED, done.error
    assert done.attempts == 2  # the crashed attempt was reaped, the second one finished
    assert done.remote_task_id == task.task_id
    assert done.result_url == f"https://cdn.fake-defapi.invalid/{task.task_id}/0.png"
    assert fake_defapi.submissions[prompt] == 1
    assert fake_defapi.submit_requests[prompt] == 1
    worker_log = log_path.read_text()
    assert task.task_id in worker_log  # the killed worker really ran (and logged at DEBUG)
    assert fake_defapi.api_key not in worker_log
