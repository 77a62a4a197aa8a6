"""Ctrl-C, as a person presses it: real SIGINTs to the real ``jobqueue`` process, at the
moments that used to print tracebacks (while the command still loads, while it closes,
a second one while the first is being handled). Each must end the command with at most a
line, never a traceback, and leave jobs in a sound state.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from jobqueue import JobQueue, Status, migrate
from tests.cli.helpers import JOBQUEUE, clean_env
from tests.support.ports import free_port

#: What a stopped command may end with: 0 (a stop it handles, such as the worker's), 130
#: (Ctrl-C), or death by SIGINT itself when one lands while Python finishes exiting.
INTERRUPTED = (0, 130, -signal.SIGINT)


def start(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [JOBQUEUE, *args],
        cwd=cwd,
        env=clean_env(MOCK_AI="true"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt(process: subprocess.Popen[str], *pauses: float) -> tuple[str, str]:
    """SIGINT now, then once more after each pause; the output once it has ended."""
    process.send_signal(signal.SIGINT)
    for pause in pauses:
        time.sleep(pause)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        _out, err = process.communicate()
        pytest.fail(f"still running after Ctrl-C: {err[-2000:]}")


def assert_quiet(process: subprocess.Popen[str], err: str) -> None:
    assert process.returncode in INTERRUPTED, (process.returncode, err)
    for noise in ("Traceback", "Exception ignored", "Task was destroyed", "KeyboardInterrupt"):
        assert noise not in err, err


def until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    migrate(url)
    return url


def loading(process: subprocess.Popen[str]) -> bool:
    """Whether the command is importing its libraries: SQLAlchemy's compiled modules are
    mapped (Linux), so its own code (the entry point) runs and the CLI is not loaded yet."""
    try:
        maps = Path(f"/proc/{process.pid}/maps").read_text()
    except OSError:
        return False
    return "/sqlalchemy/" in maps


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_while_the_command_still_loads(tmp_path: Path, db: str, presses: int) -> None:
    """Imports take a moment on a slow machine: Ctrl-C then is as quiet as later."""
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc to see the command loading")
    process = start(tmp_path, "--database-url", db, "list")
    deadline = time.monotonic() + 30
    while not loading(process):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.communicate()
            pytest.skip("could not catch the command while it loads (no compiled SQLAlchemy?)")
        time.sleep(0.001)
    out, err = interrupt(process, *[0.01] * (presses - 1))
    assert_quiet(process, err)
    assert process.returncode != 0  # stopped, not finished
    assert out == "" and err.strip() in ("", "Aborted."), err


def test_ctrl_c_twice_while_watching_a_job(tmp_path: Path, db: str) -> None:
    process = start(tmp_path, "--database-url", db, "generate", "a fox", "--watch")
    assert process.stdout is not None
    job_id = process.stdout.readline().strip()  # printed at once: it is watching now
    _out, err = interrupt(process, *[0.02] * 10)
    assert_quiet(process, err)
    with JobQueue(db) as q:
        assert q.get(job_id).status is Status.PENDING  # watching changed nothing


def test_ctrl_c_three_times_to_a_worker_releases_its_job_quietly(tmp_path: Path, db: str) -> None:
    with JobQueue(db) as q:
        job = q.enqueue("image", {"prompt": "a slow fox"}, max_attempts=3)
    process = start(tmp_path, "--database-url", db, "worker", "--poll-interval", "0.1")
    with JobQueue(db) as q:
        until(lambda: q.get(job.id).status is Status.PROCESSING, "the worker to claim the job")
    # Graceful, then at once (the running job is released), then once more while it exits.
    _out, err = interrupt(process, 0.1, 0.3)
    assert_quiet(process, err)
    with JobQueue(db) as q:
        after = q.get(job.id)
    assert after.status in (Status.PENDING, Status.COMPLETED), after
    if after.status is Status.PENDING:  # released: the attempt is given back, the limit kept
        assert (after.attempts, after.max_attempts, after.progress) == (0, 3, 0), after


def test_ctrl_c_twice_during_the_demo(tmp_path: Path) -> None:
    process = start(tmp_path, "demo", "--delay", "5")
    assert process.stdout is not None
    assert process.stdout.readline().startswith("Enqueued")  # the worker is about to run
    _out, err = interrupt(process, *[0.02] * 10)  # an impatient hand, during the cleanup too
    assert_quiet(process, err)


def test_ctrl_c_twice_to_serve_stops_its_worker_at_once(tmp_path: Path, db: str) -> None:
    port = free_port()
    with JobQueue(db) as q:
        job = q.enqueue("image", {"prompt": "served slowly"}, max_attempts=3)
    process = start(tmp_path, "--database-url", db, "serve", "--port", str(port))
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/jobs/{job.id}", timeout=1).status_code in (200, 404)
        except httpx.TransportError:
            return False

    until(answers, "the server to answer")
    with JobQueue(db) as q:
        until(lambda: q.get(job.id).status is Status.PROCESSING, "the worker to claim the job")
    _out, err = interrupt(process, 0.1, 0.3)
    assert_quiet(process, err)
    with JobQueue(db) as q:
        after = q.get(job.id)
    assert after.status in (Status.PENDING, Status.COMPLETED), err
