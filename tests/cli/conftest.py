"""Fixtures of the command's tests: the console script run in an empty directory, as a
subprocess (`run`, `jq`, `sq`) or, where the process is not the point, in this process
through the same entry point (`run_here`, `jq_in_process`, `sq_in_process`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jobqueue import migrate
from tests.cli.helpers import JOBQUEUE, Result, Run, clean_env, run_in_process


@pytest.fixture
def run(tmp_path: Path) -> Run:
    """Run the console script in an empty directory (no .env there or above it in /tmp)."""

    def call(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        done = subprocess.run(
            [JOBQUEUE, *args],
            cwd=tmp_path,
            env=env or clean_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(done.returncode, done.stdout, done.stderr)

    return call


@pytest.fixture
def jq(run: Run, db_url: str, table_name: str) -> Run:
    """`run` pointed at the test database and a fresh table."""

    def call(*args: str, **kwargs: object) -> Result:
        return run("--database-url", db_url, "--table", table_name, *args, **kwargs)

    return call


@pytest.fixture
def sq(run: Run, jobqueue_sqlite_url: str, table_name: str) -> Run:
    """`run` on a SQLite file with the jobs table installed (in-process, to save a start)."""
    migrate(jobqueue_sqlite_url, table=table_name)

    def call(*args: str, **kwargs: object) -> Result:
        return run("--database-url", jobqueue_sqlite_url, "--table", table_name, *args, **kwargs)

    return call


@pytest.fixture
def run_here(tmp_path: Path) -> Run:
    """`run` in this process (`tests.cli.helpers.run_in_process`), in the same directory."""

    def call(*args: str, env: dict[str, str] | None = None) -> Result:
        return run_in_process(*args, cwd=tmp_path, env=env)

    return call


@pytest.fixture
def jq_in_process(tmp_path: Path, db_url: str, table_name: str) -> Run:
    """`jq` run in this process (`tests.cli.helpers.run_in_process`)."""

    def call(*args: str, env: dict[str, str] | None = None) -> Result:
        base = ("--database-url", db_url, "--table", table_name)
        return run_in_process(*base, *args, cwd=tmp_path, env=env)

    return call


@pytest.fixture
def sq_in_process(tmp_path: Path, jobqueue_sqlite_url: str, table_name: str) -> Run:
    """`sq` run in this process (`tests.cli.helpers.run_in_process`)."""
    migrate(jobqueue_sqlite_url, table=table_name)

    def call(*args: str, env: dict[str, str] | None = None) -> Result:
        base = ("--database-url", jobqueue_sqlite_url, "--table", table_name)
        return run_in_process(*base, *args, cwd=tmp_path, env=env)

    return call
