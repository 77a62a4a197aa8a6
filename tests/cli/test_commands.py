"""The ``jobqueue`` command, run as a user runs it: the installed console script in a
subprocess, against SQLite and PostgreSQL, checking output and exit codes. Where a test
runs many commands whose point is what they read and print, the first runs as a subprocess
and the rest in this process, through the same entry point (`run_here`, `jq_in_process`,
`sq_in_process` in tests/cli/conftest.py); workers, watches that must exit with a code,
--debug, the demo, .env and ``python -m`` stay real processes.

Error cases check the contract of `jobqueue.cli`: exactly one line on stderr, starting
with ``Error:``, no traceback, and exit code 1 (a job's outcome) or 2 (usage or set-up).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import make_url

from jobqueue import JobQueue, migrate
from jobqueue.cli import cli
from jobqueue.cli.output import parse_duration
from jobqueue.cli.run import _looks_like_transaction_pooler
from jobqueue.drivers.engines import make_engine
from tests.cli.helpers import JOBQUEUE, Run, clean_env, worker_running

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"


# -- the main flow, on both databases ---------------------------------------------------


def test_migrate_then_create_inspect_cancel_retry(
    jq: Run, jq_in_process: Run, db_url: str, table_name: str
) -> None:
    migrated = jq("migrate")
    assert migrated.code == 0, migrated.err
    assert "at revision" in migrated.out
    jq = jq_in_process

    created = jq(
        "enqueue",
        "image",
        "--payload",
        '{"prompt": "a cat"}',
        "--owner",
        "alice",
        "--idempotency-key",
        "click-1",
    )
    assert created.code == 0, created.err
    job_id = created.out.strip()
    assert str(uuid.UUID(job_id)) == job_id  # the id alone, at once

    again = jq(
        "enqueue",
        "image",
        "--payload",
        '{"prompt": "a cat"}',
        "--owner",
        "alice",
        "--idempotency-key",
        "click-1",
        "--json",
    )
    assert again.code == 0, again.err
    assert json.loads(again.out)["id"] == job_id

    shown = jq("status", job_id, "--json")
    assert shown.code == 0, shown.err
    job = json.loads(shown.out)
    assert (job["status"], job["payload"], job["owner_id"]) == (
        "pending",
        {"prompt": "a cat"},
        "alice",
    )

    listed = jq("list", "--status", "pending", "--owner", "alice", "--since", "1h", "--json")
    assert listed.code == 0, listed.err
    assert [j["id"] for j in json.loads(listed.out)["jobs"]] == [job_id]

    assert jq("cancel", job_id).code == 0
    again = jq("cancel", job_id)  # what the user wanted is the case: say so, no error
    assert (again.code, again.out.strip(), again.err) == (
        0,
        f"job {job_id} is already cancelled",
        "",
    )
    cancelled = jq("status", job_id)
    cancelled.one_line_error(1, job_id, "ended cancelled")
    assert "cancelled" in cancelled.out  # the details are still shown

    retried = jq("retry", job_id)
    assert retried.code == 0, retried.err
    assert "pending again" in retried.out

    with JobQueue(db_url, table=table_name) as q:
        q.complete(q.claim("w")[0], {"done": True})
    jq("cancel", job_id).one_line_error(1, "cannot move from completed to cancelled")


def test_worker_runs_a_generated_job_then_stats_and_prune(
    run_here: Run, db_url: str, table_name: str, tmp_path: Path
) -> None:
    run = run_here  # the worker is the real process here
    url = db_url
    if url.startswith("postgresql"):
        # PostgreSQL here trusts every local connection, so any password works: use one
        # to check that the worker's banner never prints it.
        url = make_url(url).set(password="s3cret-pw").render_as_string(hide_password=False)
    migrate(url, table=table_name)
    base = ("--database-url", url, "--table", table_name)
    created = run(*base, "generate", "a red fox", "--model", "mock", "--option", "n=2", "--json")
    assert created.code == 0, created.err
    job = json.loads(created.out)
    assert job["payload"] == {"prompt": "a red fox", "model": "mock", "options": {"n": 2}}
    job_id = job["id"]

    log_file = tmp_path / "worker.log"
    with worker_running(tmp_path, base, "--log-file", str(log_file)) as worker:
        watched = run(*base, "status", job_id, "--watch", "--interval", "0.2")
    out, err = worker.output
    assert watched.code == 0, (watched.err, err)
    assert f"completed: job {job_id}" in watched.out
    assert worker.code == 0, err
    banner = err.splitlines()[0]
    assert "generator: mock" in banner
    assert table_name in banner
    assert "s3cret-pw" not in out + err
    assert f"Job {job_id} status: completed" in log_file.read_text()

    stats = run(*base, "stats", "--since", "1d", "--json")
    assert stats.code == 0, stats.err
    shown = json.loads(stats.out)
    assert shown["paused"] == []
    (line,) = shown["statuses"]
    assert (line["status"], line["count"]) == ("completed", 1)
    assert line["avg_duration_sec"] > 0

    pruned = run(*base, "prune", "--older-than", "0s")
    assert pruned.code == 0, pruned.err
    assert "deleted 1 finished job" in pruned.out


def test_watching_a_job_that_fails_exits_1(
    run: Run, run_here: Run, jobqueue_sqlite_url: str, table_name: str, tmp_path: Path
) -> None:
    migrate(jobqueue_sqlite_url, table=table_name)
    base = ("--database-url", jobqueue_sqlite_url, "--table", table_name)
    created = run_here(*base, "generate", "too slow", "--max-attempts", "1")
    job_id = created.out.strip()
    with worker_running(tmp_path, base, "--job-timeout", "0.3s") as worker:
        watched = run(*base, "status", job_id, "--watch", "--interval", "0.2")
    assert worker.code == 0, worker.output
    watched.one_line_error(1, f"job {job_id} ended failed", "longer than 0.3s")
    assert "failed" in watched.out  # the bar's last state


def test_missing_migration_is_one_line_naming_the_fix(jq_in_process: Run, db_url: str) -> None:
    jq = jq_in_process
    jq("list").one_line_error(2, "not installed", "jobqueue migrate")
    if db_url.startswith("sqlite"):  # and no empty database file was made on the way
        assert not Path(make_url(db_url).database or "").exists()
    checked = jq("check")
    assert checked.code == 1
    failed = [line for line in checked.out.splitlines() if line.startswith("FAIL")]
    assert failed and "jobqueue migrate" in failed[0], checked.out


@pytest.mark.postgres
def test_a_worker_role_with_the_jobs_table_only_passes_check_and_others_are_refused(
    run_here: Run, postgres_url: str, table_name: str
) -> None:
    """docs/supabase.md suggests a dedicated worker role granted the jobs table alone; it
    cannot read our version table, which must not fail `check` (or stop `worker`)."""
    run = run_here
    migrate(postgres_url, table=table_name)
    worker_role, stranger = (f"jq_{uuid.uuid4().hex[:10]}" for _ in range(2))
    engine = make_engine(postgres_url)
    with engine.begin() as conn:
        for role in (worker_role, stranger):
            conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
        conn.exec_driver_sql(
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table_name}" TO "{worker_role}"'
        )
    try:
        as_worker = make_url(postgres_url).set(username=worker_role).render_as_string(False)
        checked = run(
            "--database-url", as_worker, "--table", table_name, "check",
            env=clean_env(MOCK_AI="true"),
        )  # fmt: skip
        assert checked.code == 0, checked.out + checked.err
        assert "warn schema" in checked.out and "ok   access" in checked.out
        as_stranger = make_url(postgres_url).set(username=stranger).render_as_string(False)
        run("--database-url", as_stranger, "--table", table_name, "list").one_line_error(
            2, "refused access", "permission denied", "jobqueue sql --supabase"
        )
    finally:
        with engine.begin() as conn:
            for role in (worker_role, stranger):
                conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
                conn.exec_driver_sql(f'DROP ROLE "{role}"')
        engine.dispose()


# -- SQLite only: the rest of the commands and the error contract ------------------------


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["enqueue", "image", "--payload", "{not json"], 2, ["--payload is not valid JSON"]),
        (["status", "not-a-uuid"], 2, ["'not-a-uuid' is not a job id"]),
        (["status", str(uuid.UUID(int=7))], 1, [f"no job {uuid.UUID(int=7)}"]),
        (["list", "--since", "3 fortnights"], 2, ["not a duration", "jobqueue list --help"]),
        (["list", "--status", "stuck"], 2, ["'stuck' is not one of"]),
        (["--table", "jobs; drop", "list"], 2, ["invalid table name"]),
        (["generate", " "], 2, ["the prompt is empty", 'jobqueue generate "a red fox']),
        (
            ["enqueue", "image", "--payload", '{"promt": "a cat"}'],
            2,
            ["no 'prompt' field", "it has 'promt'", '{"prompt": "a red fox'],
        ),
        (["enqueue", "image"], 2, ["image job's payload has no 'prompt' field"]),
        (["enqueue", "image", "--payload", '{"prompt": 7}'], 2, ["prompt must be text, not int"]),
    ],
    ids=[
        "bad-json",
        "malformed-id",
        "unknown-id",
        "bad-duration",
        "bad-status",
        "bad-table",
        "empty-prompt",
        "misspelt-prompt",
        "no-prompt",
        "number-prompt",
    ],
)
def test_bad_input_is_one_clear_line(
    sq_in_process: Run, args: list[str], code: int, fragments: list[str]
) -> None:
    sq_in_process(*args).one_line_error(code, *fragments)


def test_unreachable_or_unsupported_database_is_one_line(run: Run) -> None:
    run("--database-url", UNREACHABLE, "list").one_line_error(
        2, "127.0.0.1", "port 1", "JOBQUEUE_DATABASE_URL"
    )
    run("--database-url", "mysql://app:hunter2@db/app", "list").one_line_error(
        2, "unsupported database 'mysql'", "sqlite:///"
    )


@pytest.mark.parametrize(
    "url",
    ["notaurl", "postgresql:/one-slash", "postgresql://app:hunter2@db:port/app", "sqlite//x.db"],
)
def test_a_malformed_database_url_is_a_usage_error(run_here: Run, url: str) -> None:
    run = run_here
    line = run("--database-url", url, "list").one_line_error(
        2, "--database-url: not a database URL", "postgresql://user@host/dbname"
    )
    assert "hunter2" not in line and "unexpected" not in line
    run("list", env=clean_env(JOBQUEUE_DATABASE_URL=url)).one_line_error(
        2, "JOBQUEUE_DATABASE_URL: not a database URL"
    )


def test_demo_help_shows_how_to_give_it_a_database(run: Run, tmp_path: Path) -> None:
    shown = run("demo", "--help")
    assert shown.code == 0, shown.err
    assert "jobqueue --database-url URL demo" in " ".join(shown.out.split())
    # As the help says, and nothing else: the option after the command is refused, naming
    # where it goes.
    run("demo", "--database-url", "sqlite:///mine.db").one_line_error(
        2, "No such option", "jobqueue --database-url … demo"
    )
    done = run(
        "--database-url", "sqlite:///mine.db", "demo", "--jobs", "1", "--delay", "0",
        env=clean_env(JOBQUEUE_DATABASE_URL="not a url, and not used by the demo"),
    )  # fmt: skip
    assert done.code == 0, done.err
    assert (tmp_path / "mine.db").exists() and not (tmp_path / "jobqueue-demo.db").exists()


def test_debug_shows_the_traceback(sq: Run) -> None:
    result = sq("--debug", "status", "not-a-uuid")
    assert result.code == 2
    assert "Traceback" in result.err and "InvalidJobId" in result.err


def test_worker_without_a_generator_fails_at_once_naming_the_key(sq: Run) -> None:
    sq("worker", env=clean_env(MOCK_AI="false")).one_line_error(2, "DEFAPI_API_KEY")


def test_reap_and_check_find_a_job_whose_worker_vanished(
    sq_in_process: Run, jobqueue_sqlite_url: str, table_name: str
) -> None:
    sq = sq_in_process
    with JobQueue(jobqueue_sqlite_url, table=table_name) as q:
        job = q.enqueue("image", {"prompt": "lost"})
        q.claim("vanished-worker", lease=0.001)
    checked = sq("check", env=clean_env(MOCK_AI="true"))
    assert checked.code == 0, checked.out  # a warning, not a failure
    assert "warn stuck jobs" in checked.out and "jobqueue reap" in checked.out
    reaped = sq("reap")
    assert reaped.code == 0, reaped.err
    assert "1 back to pending" in reaped.out and str(job.id) in reaped.out
    listed = sq("list")  # the rich table, as a person reads it
    assert listed.code == 0, listed.err
    (row,) = [line for line in listed.out.splitlines() if str(job.id) in line]
    assert "pending" in row and "1/3" in row  # status, attempts


LONG_URL = "https://cdn.example.com/generated/2026/11/29/" + "0123456789abcdef" * 4 + "/image-0.png"
LONG_ERROR = "ProviderError: the provider answered 500 Internal Server Error " + "again " * 20


@pytest.fixture
def listed_jobs(jobqueue_sqlite_url: str, table_name: str) -> dict[str, str]:
    """Jobs of every kind of row `jobqueue list` shows, with long values: status by id."""
    migrate(jobqueue_sqlite_url, table=table_name)
    with JobQueue(jobqueue_sqlite_url, table=table_name) as q:
        q.enqueue("a-rather-long-job-kind-name-for-thumbnails", {}, queue="media-" + "x" * 60)
        done, failed, running = (q.enqueue("image", {"prompt": f"p{i}"}) for i in range(3))
        held = {j.id: j for j in q.claim("w", limit=3)}
        q.complete(held[done.id], {"images": [LONG_URL, LONG_URL]}, LONG_URL)
        q.fail(held[failed.id], LONG_ERROR, retry=False)
        q.set_progress(held[running.id], 40, "waiting for the provider " * 5)
        return {str(j.id): j.status.value for j in q.list()}


@pytest.mark.parametrize("columns", [80, 120])
def test_list_fits_the_terminal_one_line_per_job(
    sq_in_process: Run, listed_jobs: dict[str, str], columns: int
) -> None:
    from rich.cells import cell_len

    sq = sq_in_process

    listed = sq("list", env=clean_env(COLUMNS=str(columns)))
    assert listed.code == 0, listed.err
    lines = listed.out.rstrip("\n").splitlines()
    assert all(cell_len(line) <= columns for line in lines), listed.out
    header, _rule, *rows = lines
    assert len(rows) == len(listed_jobs), listed.out  # no cell wrapped onto a line of its own
    for row, (job_id, status) in zip(rows, listed_jobs.items(), strict=True):
        assert row.startswith(job_id) and f" {status} " in row, row  # the whole id, to copy
    completed = next(r for r in rows if " completed " in r)
    url = completed.split()[-1]  # cut in the middle: where it is and which file stay
    assert url.startswith("https://cdn.exam") and url.endswith("…/image-0.png"), completed
    failed = next(r for r in rows if " failed " in r)
    assert "ProviderError: the provider" in failed and failed.rstrip().endswith("…")
    running = next(r for r in rows if " processing " in r)
    assert "40%" in running
    assert "result / error" in header
    if columns == 120:
        assert {"created", "kind"} <= set(header.split()), header


def test_list_wide_shows_every_column_in_full(
    sq_in_process: Run, listed_jobs: dict[str, str]
) -> None:
    listed = sq_in_process("list", "--wide", env=clean_env(COLUMNS="80"))
    assert listed.code == 0, listed.err
    header, _rule, *rows = listed.out.rstrip("\n").splitlines()
    assert header.split()[:2] == ["id", "status"] and "queue" in header and "took" in header
    assert len(rows) == len(listed_jobs)
    assert any(LONG_URL in row for row in rows)
    assert any(" ".join(LONG_ERROR.split()) in row for row in rows)
    assert any("media-" + "x" * 60 in row for row in rows)


def test_check_passes_on_a_good_setup(sq_in_process: Run) -> None:
    checked = sq_in_process("check", env=clean_env(MOCK_AI="true"))
    assert checked.code == 0, checked.out
    states = [line.split()[0] for line in checked.out.splitlines()]
    assert states and set(states) == {"ok"}, checked.out
    assert "generator" in checked.out


def test_check_sees_an_overdue_job_behind_more_than_a_thousand_newer_ones(
    jq_in_process: Run, db_url: str, table_name: str
) -> None:
    """Overdue jobs are the oldest: a check reading only the newest rows never saw them."""
    migrate(db_url, table=table_name)
    with JobQueue(db_url, table=table_name) as q:
        forgotten = datetime.now(UTC) - timedelta(hours=2)
        q.enqueue("image", {"prompt": "forgotten"}, run_at=forgotten)
        q.enqueue_many([{"kind": "image", "payload": {"n": i}} for i in range(1200)])
    checked = jq_in_process("check", env=clean_env(MOCK_AI="true"))
    assert checked.code == 0, checked.out  # a warning, not a failure
    (line,) = [ln for ln in checked.out.splitlines() if "backlog" in ln]
    assert line.startswith("warn"), checked.out
    assert "1 of 1201 pending" in line, line
    assert f"{forgotten:%Y-%m-%d %H:%M}" in line, line


def test_sql_prints_the_schema_and_the_supabase_policies(run_here: Run) -> None:
    run = run_here
    plain = run("sql")
    assert plain.code == 0, plain.err
    assert "CREATE TABLE generation_jobs" in plain.out
    assert "generation_jobs_alembic_version" in plain.out
    assert "ROW LEVEL SECURITY" not in plain.out
    supabase = run("--table", "my_jobs", "sql", "--supabase")
    assert supabase.code == 0, supabase.err
    assert "CREATE TABLE my_jobs" in supabase.out
    assert "ENABLE ROW LEVEL SECURITY" in supabase.out
    assert "CREATE POLICY" in supabase.out and "service_role" in supabase.out


def test_settings_come_from_dot_env(run: Run, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "JOBQUEUE_DATABASE_URL=sqlite:///from-dotenv.db\nJOBQUEUE_TABLE=dotenv_jobs\n"
    )
    migrated = run("migrate")
    assert migrated.code == 0, migrated.err
    assert f"SQLite file {tmp_path / 'from-dotenv.db'} (table dotenv_jobs)" in migrated.out
    assert (tmp_path / "from-dotenv.db").exists()


def test_every_banner_names_the_sqlite_file_by_its_absolute_path(
    run: Run, run_here: Run, tmp_path: Path
) -> None:
    """The default URL is relative (./jobqueue.db): run from two directories, it is two
    databases, so every command that starts work says which file it uses."""
    where = f"SQLite file {tmp_path / 'jobqueue.db'}"
    assert where in run("migrate").out
    checked = run_here("check", env=clean_env(MOCK_AI="true"))
    assert f"reachable: {where}" in checked.out, checked.out
    job_id = run_here("generate", "a fox").out.strip()
    with worker_running(tmp_path, ()) as worker:  # until it ran the job, so it has started
        assert run_here("status", job_id, "--watch", "--interval", "0.2").code == 0
    banner = worker.output[1].splitlines()[0]
    assert banner.startswith(f"jobqueue worker: database {where} (table generation_jobs)")
    assert "polling every 0.2s" in banner and "LISTEN/NOTIFY" not in banner, banner
    demo = run("--database-url", "sqlite:///jobqueue.db", "demo", "--jobs", "1", "--delay", "0")
    assert demo.code == 0, demo.err
    assert f"in {where}" in demo.out
    assert f"jobqueue --database-url sqlite:///{tmp_path / 'jobqueue.db'} list" in demo.out


def test_dot_env_is_read_from_the_working_directory_only(tmp_path: Path) -> None:
    """One rule with `Settings.from_env`: a .env higher up does not pick the database."""
    (tmp_path / ".env").write_text("JOBQUEUE_DATABASE_URL=sqlite:///parent-dotenv.db\n")
    below = tmp_path / "project"
    below.mkdir()
    done = subprocess.run(
        [JOBQUEUE, "migrate"], cwd=below, env=clean_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "parent-dotenv" not in done.stdout
    assert not (below / "parent-dotenv.db").exists()
    assert (below / "jobqueue.db").exists()


def test_python_dash_m_runs_the_same_command(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "jobqueue", "--version"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "jobqueue" in done.stdout


# -- in-process: every subcommand documents itself, durations parse ----------------------


def test_every_subcommand_has_help() -> None:
    runner = CliRunner()
    assert cli.commands, "no subcommands registered"
    for name, command in cli.commands.items():
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert f"Usage: cli {name}" in result.output or f"{name} [OPTIONS]" in result.output
        assert command.help, f"{name} has no help text"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45s", 45),
        ("30m", 1800),
        ("12h", 43200),
        ("1d", 86400),
        ("7d", 604800),
        ("1h30m", 5400),
        ("2.5", 2.5),
        ("0s", 0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "d", "1x", "-1d", "1 d", "nan", "1d-"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_pooler_ports_are_recognised() -> None:
    pooler = "postgresql://postgres.abc:pw@aws-0-eu.pooler.supabase.com:6543/postgres"
    assert _looks_like_transaction_pooler(pooler)
    assert not _looks_like_transaction_pooler("postgresql://postgres@db.abc.supabase.co:5432/x")
    assert not _looks_like_transaction_pooler("sqlite:///jobs.db")


def test_status_says_the_place_in_line(jq_in_process: Run, db_url: str, table_name: str) -> None:
    """Runs of 10 s, one live worker running one job at a time: the third job waiting is
    done in about 30 s. A final job has no place."""
    from jobqueue import Completion
    from jobqueue.models import WorkerPresence
    from tests.conftest import sql_runner

    migrate(db_url, table=table_name)
    with JobQueue(db_url, table=table_name) as q:
        q.enqueue("image", {}, queue="history")
        q.complete_many([Completion(j) for j in q.claim("w-history", queues=["history"])])
        later = (
            "started_at + interval '10 seconds'"
            if q.is_postgres
            else "strftime('%Y-%m-%d %H:%M:%f000', started_at, '+10 seconds')"
        )
        with sql_runner(db_url) as run_sql:
            run_sql(f"UPDATE {table_name} SET completed_at = {later}")
        jobs = [q.enqueue("image", {"n": i}) for i in range(3)]
        q.worker_beat(WorkerPresence("w1", ("default",), None, 1), ttl=120)
        q.cancel(jobs[0].id)
    jq = jq_in_process
    shown = jq("status", str(jobs[2].id))
    assert shown.code == 0, shown.err
    assert "in line" in shown.out and "2nd in line · about 20 s" in shown.out
    as_json = json.loads(jq("status", str(jobs[2].id), "--json").out)["position"]
    assert (as_json["ahead"], as_json["finish_in"], as_json["capacity"]) == (1, 20.0, 1)
    assert as_json["text"] == "2nd in line · about 20 s"
    final = jq("status", str(jobs[0].id), "--json")
    assert (
        "position" not in json.loads(final.out)
        and "in line" not in jq("status", str(jobs[0].id)).out
    )


def test_stats_by_owner_sums_each_owners_costs(
    jq_in_process: Run, db_url: str, table_name: str
) -> None:
    """`jobqueue stats --by owner --since 7d`: one line per status and owner with what its
    jobs cost; `--owner` keeps one owner's lines."""
    migrate(db_url, table=table_name)
    with JobQueue(db_url, table=table_name) as q:
        for owner, cost in (("ann", "0.25"), ("ann", "0.5"), ("bob", "2")):
            q.enqueue("image", {}, owner_id=owner)
            (held,) = q.claim("w", limit=1, queues=None)
            q.complete(held, {}, cost=cost, cost_unit="USD")
    jq = jq_in_process
    shown = jq("stats", "--by", "owner", "--since", "7d", "--json")
    assert shown.code == 0, shown.err
    lines = {(x["owner_id"], x["status"]): x for x in json.loads(shown.out)["statuses"]}
    assert set(lines) == {("ann", "completed"), ("bob", "completed")}
    assert (lines["ann", "completed"]["count"], lines["ann", "completed"]["cost"]) == (2, "0.75")
    assert lines["bob", "completed"]["cost_unit"] == "USD"
    one = json.loads(jq("stats", "--owner", "bob", "--json").out)["statuses"]
    assert [(x["status"], x["count"], x["cost"]) for x in one] == [("completed", 1, "2")]
    table = jq("stats", "--by", "owner")
    assert table.code == 0 and "ann" in table.out and "0.75" in table.out, table.out
