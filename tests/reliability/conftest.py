"""Helpers of the fault tests: real worker processes, and what they left behind.

`Workers` starts worker processes running `worker_process.main`, lets a test signal them
(SIGKILL, SIGSTOP, SIGTERM) and kills whatever is left at teardown — only the processes it
started, by pid. `terminate_worker_backends` and `refused_connections` take PostgreSQL away
from the workers without restarting the shared server.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from jobqueue import Job, JobQueue, migrate

from . import worker_process

FORKSERVER = multiprocessing.get_context("forkserver")
FORKSERVER.set_forkserver_preload(
    [
        "jobqueue",
        "jobqueue.worker",
        "tests.reliability.worker_process",
        "tests.reliability.drill_worker",
    ]
)


@dataclass
class Workers:
    """Worker processes of one test, sharing one executions file. ``target`` is the
    process's main function (`worker_process.main` unless a test brings its own)."""

    url: str
    table: str
    directory: Path
    defaults: dict[str, Any] = field(default_factory=dict)
    target: Callable[[list[str]], None] = worker_process.main
    procs: dict[str, multiprocessing.process.BaseProcess] = field(default_factory=dict)
    started: int = 0

    @property
    def executions_file(self) -> Path:
        return self.directory / "executions.log"

    def log_file(self, worker_id: str) -> Path:
        return self.directory / f"{worker_id}.log"

    def start(self, worker_id: str | None = None, **options: Any) -> str:
        """Start a worker process; options are `worker_process.py` flags (``no_listen=True``).

        Processes come from a fork server that imported jobqueue once, so a replacement
        starts in milliseconds instead of a second of imports on a busy machine.
        """
        self.started += 1
        worker_id = worker_id or f"w{self.started}-{uuid.uuid4().hex[:4]}"
        argv = [
            "--url",
            self.url,
            "--table",
            self.table,
            "--executions",
            str(self.executions_file),
            "--worker-id",
            worker_id,
            "--log",
            str(self.log_file(worker_id)),
        ]
        for key, value in {**self.defaults, **options}.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not False and value is not None:
                argv += [flag, str(value)]
        proc = FORKSERVER.Process(target=self.target, args=(argv,), name=worker_id)
        proc.start()
        self.procs[worker_id] = proc
        return worker_id

    def pid(self, worker_id: str) -> int:
        pid = self.procs[worker_id].pid
        assert pid is not None
        return pid

    def signal(self, worker_id: str, sig: int) -> None:
        proc = self.procs[worker_id]
        if proc.is_alive():
            os.kill(self.pid(worker_id), sig)

    def kill(self, worker_id: str) -> None:
        """SIGKILL, and reap the process."""
        self.signal(worker_id, signal.SIGKILL)
        self.procs.pop(worker_id).join()

    def stop_all(self, timeout: float = 60.0) -> dict[str, int | None]:
        """SIGTERM every worker, wait for them to exit; their exit codes."""
        for worker_id in self.procs:
            self.signal(worker_id, signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for worker_id, proc in list(self.procs.items()):
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()
            codes[worker_id] = proc.exitcode
            del self.procs[worker_id]
        return codes

    def alive(self) -> list[str]:
        return [w for w, p in self.procs.items() if p.is_alive()]

    def executions(self) -> list[tuple[str, int, str]]:
        """(job id, attempt, worker id) per execution, in the order they started."""
        return [(job_id, attempt, worker_id) for job_id, attempt, worker_id, _ in self._lines()]

    def claims(self) -> list[tuple[str, int, str]]:
        """(job id, attempt, the claim's ``started_at``) per execution: a released attempt
        is given back, so its number comes again with a later start."""
        return [(job_id, attempt, started) for job_id, attempt, _, started in self._lines()]

    def _lines(self) -> list[tuple[str, int, str, str]]:
        if not self.executions_file.exists():
            return []
        out = []
        for line in self.executions_file.read_text().splitlines():
            job_id, attempt, worker_id, started = line.split()
            out.append((job_id, int(attempt), worker_id, started))
        return out

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.directory.glob("*.log"))
        )

    def cleanup(self) -> None:
        for worker_id, proc in self.procs.items():
            if proc.is_alive():
                os.kill(self.pid(worker_id), signal.SIGCONT)  # never leave one stopped
                proc.kill()
            proc.join()
        self.procs.clear()


@pytest.fixture
def workers(migrated: tuple[str, str], tmp_path: Path) -> Iterator[Workers]:
    """Worker processes on the test's backend (SQLite and PostgreSQL)."""
    url, table = migrated
    w = Workers(url, table, tmp_path)
    yield w
    w.cleanup()


@pytest.fixture
def pg_migrated(postgres_url: str, table_name: str) -> tuple[str, str]:
    """A migrated jobs table on PostgreSQL only."""
    migrate(postgres_url, table=table_name)
    return postgres_url, table_name


@pytest.fixture
def pg_workers(pg_migrated: tuple[str, str], tmp_path: Path) -> Iterator[Workers]:
    """Worker processes on PostgreSQL only."""
    url, table = pg_migrated
    w = Workers(url, table, tmp_path)
    yield w
    w.cleanup()


def status_counts(queue: JobQueue) -> dict[str, int]:
    with queue.engine.connect() as conn:
        t = queue.table
        rows = conn.execute(select(t.c.status, func.count()).group_by(t.c.status)).all()
    return {status: int(n) for status, n in rows}


def all_jobs(queue: JobQueue) -> list[Job]:
    """Every row of the table (``list`` stops at 10,000)."""
    with queue.engine.connect() as conn:
        return [Job.from_row(r._mapping) for r in conn.execute(select(*queue.table.c))]


def wait_for(check: Callable[[], Any], timeout: float, what: str, pause: float = 0.2) -> Any:
    """Poll ``check`` until truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(pause)


def check_exactly_once(queue: JobQueue, workers: Workers, job_ids: list[Any]) -> Counter[str]:
    """The promise, checked against the table and the executions file.

    Every job completed; its stored result is from its last holder (its final attempt and
    ``locked_by``), so no stale worker overwrote it; every job ran at least once and each
    claim at most once. Returns executions per job.
    """
    jobs = {str(j.id): j for j in all_jobs(queue)}
    assert set(jobs) >= {str(i) for i in job_ids}
    not_done = {i: j.status for i, j in jobs.items() if j.status.value != "completed"}
    assert not not_done, f"{len(not_done)} jobs not completed: {list(not_done.items())[:5]}"
    for job in jobs.values():
        assert job.result == {"attempt": job.attempts, "worker": job.locked_by}, job
    runs = workers.claims()
    per_claim = collections.Counter(runs)
    twice = [k for k, n in per_claim.items() if n > 1]
    assert not twice, f"claims executed twice: {twice[:5]}"
    per_job = collections.Counter(job_id for job_id, _, _ in runs)
    assert set(per_job) == set(jobs), "a job never ran, or an unknown job ran"
    for job_id, job in jobs.items():
        started = job.started_at.isoformat() if job.started_at else "-"
        final = (job_id, job.attempts, started)
        assert final in per_claim, f"the final claim of {job_id} never ran"
    return per_job


Counter = collections.Counter


# -- PostgreSQL going away ------------------------------------------------------------------

#: The ``application_name`` of the workers' pooled connections (set in their URL), and of
#: their LISTEN connections (set by jobqueue).
APP = "jq-reliability-worker"
LISTENERS = "jobqueue-listener%"


def backends(queue: JobQueue, pattern: str, database: str | None = None) -> set[int]:
    """The backends in ``database`` (default: the queue's) whose ``application_name`` is
    LIKE ``pattern``."""
    with queue.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = coalesce(:db, current_database()) AND application_name LIKE :p"
            ),
            {"p": pattern, "db": database},
        )
        return {pid for (pid,) in rows}


def terminate_worker_backends(
    queue: JobQueue,
    *,
    database: str | None = None,
    patterns: tuple[str, ...] = (APP, LISTENERS),
) -> int:
    """Kill the workers' connections (pooled and listening: ``application_name`` LIKE one
    of ``patterns``) in ``database`` only (default: the queue's), never the caller's own."""
    with queue.engine.connect() as conn:
        killed = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                "FROM pg_stat_activity WHERE datname = coalesce(:db, current_database()) "
                "AND pid <> pg_backend_pid() AND application_name LIKE ANY(:patterns)"
            ),
            {"db": database, "patterns": list(patterns)},
        ).scalar_one()
    return int(killed)


@contextmanager
def refused_connections(admin: JobQueue, database: str) -> Iterator[int]:
    """PostgreSQL is gone for ``database`` while the block runs: new connections are
    refused (``ALLOW_CONNECTIONS false``) and every open one is terminated; yields how many
    were. ``admin`` is connected to another database; the server itself never restarts."""
    with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
    try:
        yield terminate_worker_backends(admin, database=database, patterns=("%",))
    finally:
        with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
