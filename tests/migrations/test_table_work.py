"""Every revision says what it does to an existing jobs table (`TableWork`), and the
operations page and the SQL script say the same."""

from __future__ import annotations

from pathlib import Path

from alembic.script import ScriptDirectory

from jobqueue.migrations import TableWork, _config, sql, table_work
from jobqueue.migrations.supabase import supabase_script

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def _revisions() -> list[str]:
    scripts = ScriptDirectory.from_config(_config("generation_jobs", None))
    return [s.revision for s in reversed(list(scripts.walk_revisions()))]


def test_every_revision_declares_its_table_work_and_the_docs_list_it() -> None:
    rows = {
        cells[0]: cells
        for line in OPERATIONS.read_text().splitlines()
        if line.startswith("| 0")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    for revision in _revisions():
        work = table_work(revision)
        assert isinstance(work, TableWork) and work.locks
        _, _, pg, sqlite, locks = rows[revision]
        assert pg == ("yes" if work.rewrites else "no"), revision
        assert sqlite.startswith("**yes**" if work.sqlite_rewrites else "no"), revision
        assert locks == work.locks, revision


def test_the_sql_scripts_say_it_and_wait_briefly_for_locks() -> None:
    for script in (sql(), supabase_script()):
        assert "BEGIN;\nSET LOCAL lock_timeout = '2s';\n" in script
        for revision in _revisions():
            comment = table_work(revision).comment()
            assert f"-- revision {revision}: " in script
            assert script.index(comment) > script.index(f"-- revision {revision}: ")
    assert "-- jobs table: no rewrite; lock: ACCESS EXCLUSIVE" in sql()
