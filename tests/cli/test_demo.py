"""`jobqueue demo`, the README's first command, run exactly as a newcomer runs it."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import make_url

from tests.cli.helpers import JOBQUEUE, clean_env


def test_demo_completes_every_job_and_leaves_only_its_database(tmp_path: Path) -> None:
    # A database URL in the environment (a developer's Supabase, say) must not be used:
    # the demo writes to its own SQLite file unless --database-url is typed.
    env = clean_env(JOBQUEUE_DATABASE_URL="postgresql://postgres@127.0.0.1:1/not-for-the-demo")
    done = subprocess.run(
        [JOBQUEUE, "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "8 of 8 jobs completed" in done.stdout
    assert "avg duration" in done.stdout  # the statistics table

    # Looked at before we open the database ourselves (which makes -wal/-shm for a while).
    left = {p.name for p in tmp_path.iterdir()}
    assert left <= {"jobqueue-demo.db", "jobqueue-demo.db-wal", "jobqueue-demo.db-shm"}, left

    db = tmp_path / "jobqueue-demo.db"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT status, progress, result_url FROM generation_jobs").fetchall()
    conn.close()
    assert len(rows) == 8
    assert all(status == "completed" and progress == 100 for status, progress, _ in rows)
    assert all(url and url.startswith("https://") for _, _, url in rows)


@pytest.mark.postgres
def test_demo_never_prints_the_database_password(postgres_url: str, table_name: str) -> None:
    # The test server trusts local connections, so any password connects: a stand-in secret.
    secret = "s3cret-demo-pw"
    url = make_url(postgres_url).set(password=secret).render_as_string(hide_password=False)
    command = [JOBQUEUE, "--database-url", url, "--table", table_name]
    done = subprocess.run(
        [*command, "demo", "--jobs", "2", "--delay", "0.1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "2 of 2 jobs completed" in done.stdout
    assert "***" in done.stdout  # the URL is shown, its password masked
    assert secret not in done.stdout + done.stderr
