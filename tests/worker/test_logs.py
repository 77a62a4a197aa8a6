"""A worker's log lines in a file: `jobqueue.logs.log_to_file` around a run, and the older
``Worker(log_file=...)``, which still works and says it is deprecated."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from jobqueue import AsyncJobQueue, Job
from jobqueue.logs import log_to_file
from jobqueue.worker import Worker, WorkerContext

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


async def echo(job: Job, ctx: WorkerContext) -> str:
    return "hi"


async def test_log_to_file_gets_the_status_lines_and_is_removed_after(
    jq: AsyncJobQueue, tmp_path: Path
) -> None:
    package = logging.getLogger("jobqueue")
    handlers, level = list(package.handlers), package.level
    job = await jq.enqueue("echo", {})
    path = tmp_path / "worker.log"
    with log_to_file(path):
        assert package.getEffectiveLevel() <= logging.INFO
        await Worker(jq, {"echo": echo}, lease=2).run_until_idle()
    text = path.read_text()
    assert f"Job {job.id} status: processing" in text
    assert f"Job {job.id} status: completed in" in text
    assert " - jobqueue.worker - INFO - " in text
    # Nothing is left behind: later lines do not reach the file, the logger is as it was.
    assert (package.handlers, package.level) == (handlers, level)
    logging.getLogger("jobqueue.worker").warning("after the block")
    assert "after the block" not in path.read_text()


async def test_a_failure_quoting_a_lone_surrogate_reaches_the_file_escaped(
    jq: AsyncJobQueue, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A handler's exception text that UTF-8 cannot hold is written as an escape, not
    lost to an encoding error in the middle of a worker's log."""

    async def hostile(job: Job, ctx: WorkerContext) -> None:
        raise ValueError("lone \udc80 surrogate")

    job = await jq.enqueue("hostile", {}, max_attempts=1)
    path = tmp_path / "worker.log"
    with log_to_file(path):
        await Worker(jq, {"hostile": hostile}, lease=2).run_until_idle()
    text = path.read_text(encoding="utf-8")
    assert f"Job {job.id} status: failed" in text
    assert "lone \\udc80 surrogate" in text
    assert "Logging error" not in capsys.readouterr().err


async def test_log_file_gets_the_status_lines(jq: AsyncJobQueue, tmp_path: Path) -> None:
    job = await jq.enqueue("echo", {})
    log_file = tmp_path / "worker.log"
    with pytest.warns(DeprecationWarning, match=r"jobqueue\.logs\.log_to_file"):
        worker = Worker(jq, {"echo": echo}, lease=2, log_file=log_file)
    await worker.run_until_idle()
    text = log_file.read_text()
    assert f"Job {job.id} status: processing" in text
    assert f"Job {job.id} status: completed in" in text
