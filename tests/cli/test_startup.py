"""What the ``jobqueue`` command loads: a command that only reads or moves jobs starts
without Alembic, the worker or the web app; those load inside the commands that need
them (``migrate``, ``check``, ``worker``, ``serve``, ``demo``), so the split of the command
into modules must keep every heavy import where it is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobqueue import JobQueue, migrate
from tests.cli.helpers import clean_env

#: Runs the console script's entry point with the arguments given, then prints the names
#: of the modules it loaded as one JSON line on stdout.
LOADED = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules))))
sys.argv = ["jobqueue", *sys.argv[1:]]
from jobqueue._console import main
main()
"""

#: Never loaded by a command that reads or moves jobs.
HEAVY = ("alembic", "jobqueue.migrations", "jobqueue.worker", "starlette", "uvicorn")


def loaded_by(cwd: Path, *args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", LOADED, *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY))


@pytest.mark.parametrize(
    "command",
    [
        ("--help",),
        ("status", "{id}"),
        ("status", "{id}", "--json"),
        ("list",),
        ("list", "--json"),
        ("stats",),
        ("workers",),
        ("cancel", "{id}"),
        ("retry", "{id}"),
        ("reap",),
        ("prune",),
        ("enqueue", "thumbnail", "--payload", "{{}}"),
        ("generate", "a fox"),
        ("status", "not-an-id"),
    ],
    ids=" ".join,
)
def test_commands_that_read_or_move_jobs_load_nothing_heavy(
    tmp_path: Path, jobqueue_sqlite_url: str, command: tuple[str, ...]
) -> None:
    migrate(jobqueue_sqlite_url)
    with JobQueue(jobqueue_sqlite_url) as q:
        job = q.enqueue("image", {"prompt": "a fox"})
    args = [part.format(id=job.id) for part in command]
    modules = loaded_by(tmp_path, "--database-url", jobqueue_sqlite_url, *args)
    assert "jobqueue.cli" in modules  # the command really ran
    assert heavy(modules) == []


def test_migrate_does_load_alembic(tmp_path: Path, jobqueue_sqlite_url: str) -> None:
    """The check above can see an import: `migrate` needs Alembic and loads it."""
    modules = loaded_by(tmp_path, "--database-url", jobqueue_sqlite_url, "migrate")
    assert "alembic" in modules and "jobqueue.migrations" in modules


def test_reading_a_job_loads_no_http_client(tmp_path: Path, jobqueue_sqlite_url: str) -> None:
    migrate(jobqueue_sqlite_url)
    with JobQueue(jobqueue_sqlite_url) as q:
        job = q.enqueue("image", {"prompt": "a fox"})
    modules = loaded_by(tmp_path, "--database-url", jobqueue_sqlite_url, "status", str(job.id))
    assert "httpx" not in modules
