"""The ``schedule`` commands (add, list, pause, resume, remove) run as a user runs them:
the installed console script in a subprocess, against SQLite and PostgreSQL, the effect
checked through the queue's own API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from jobqueue import JobQueue, migrate
from tests.cli.helpers import Run, clean_env


def test_schedule_add_list_and_remove(jq: Run, db_url: str, table_name: str) -> None:
    migrate(db_url, table=table_name)
    cron = jq(
        "schedule", "add", "report", "--cron", "0 9 * * 1-5", "--tz", "Europe/Berlin",
        "--kind", "report", "--queue", "reports", "--payload", '{"n": 1}',
    )  # fmt: skip
    assert cron.code == 0, cron.err
    assert cron.out.startswith("schedule report: cron '0 9 * * 1-5' (Europe/Berlin), a report")
    every = jq(
        "schedule", "add", "cleanup", "--every", "30s", "--kind", "cleanup", "--missed", "skip"
    )  # fmt: skip
    assert every.code == 0, every.err

    shown = jq("schedule", "list", "--json")
    assert shown.code == 0, shown.err
    rows = {r["name"]: r for r in json.loads(shown.out)}
    assert rows["report"]["payload"] == {"n": 1} and rows["report"]["queue"] == "reports"
    assert (rows["cleanup"]["every"], rows["cleanup"]["missed"]) == (30.0, "skip")
    table = jq("schedule", "list")
    assert table.code == 0 and "every 30s" in table.out and "Europe/Berlin" in table.out
    # A tick is local time, named: unnamed, it would read as the schedule's own wall clock.
    tick = datetime.fromisoformat(rows["report"]["next_tick"]).astimezone()
    assert f"{tick:%Y-%m-%d %H:%M:%S} {tick.tzname()}" in table.out
    assert cron.out.rstrip().endswith(f"next tick {tick:%Y-%m-%d %H:%M:%S} {tick.tzname()}")
    assert ", an email job in default;" in jq(
        "schedule", "add", "mail", "--every", "1h", "--kind", "email"
    ).out  # fmt: skip
    assert jq("schedule", "remove", "mail").code == 0

    with JobQueue(db_url, table=table_name) as q:
        assert {s.name for s in q.list_schedules()} == {"report", "cleanup"}

    paused = jq("schedule", "pause", "report")
    assert (paused.code, paused.out.strip()) == (0, "paused the schedule report"), paused.err
    assert "paused" in jq("schedule", "list").out
    with JobQueue(db_url, table=table_name) as q:
        assert {s.name: s.enabled for s in q.list_schedules()} == {
            "report": False,
            "cleanup": True,
        }
    assert jq("schedule", "resume", "report").out.strip() == "resumed the schedule report"
    with JobQueue(db_url, table=table_name) as q:
        assert all(s.enabled for s in q.list_schedules())
    jq("schedule", "pause", "nothing").one_line_error(1, "no schedule 'nothing'")
    jq("schedule", "resume", "nothing").one_line_error(1, "no schedule 'nothing'")

    assert jq("schedule", "remove", "report").code == 0
    jq("schedule", "remove", "report").one_line_error(1, "no schedule 'report'")
    assert [r["name"] for r in json.loads(jq("schedule", "list", "--json").out)] == ["cleanup"]


def test_schedule_add_refuses_what_cannot_tick(jq: Run, db_url: str, table_name: str) -> None:
    migrate(db_url, table=table_name)
    jq("schedule", "add", "s", "--kind", "k").one_line_error(2, "--cron or --every")
    jq("schedule", "add", "s", "--kind", "k", "--every", "0s").one_line_error(
        2, "--every must be between 1s and 366d, not 0s"
    )
    jq("schedule", "add", "s", "--kind", "k", "--cron", "99 * * * *").one_line_error(
        2, "invalid cron expression"
    )
    jq("schedule", "add", "s", "--kind", "k", "--every", "1m", "--tz", "Mars/Base").one_line_error(
        2, "unknown time zone"
    )
    jq("schedule", "add", "s", "--kind", "k", "--every", "1m", "--payload", "{").one_line_error(
        2, "--payload is not JSON"
    )
    empty = jq("schedule", "list")
    assert empty.code == 0 and "No schedules" in empty.out


def test_check_reports_paused_schedules_and_warns_of_overdue_ones(
    jq_in_process: Run, db_url: str, table_name: str
) -> None:
    migrate(db_url, table=table_name)
    with JobQueue(db_url, table=table_name) as q:
        q.add_schedule("hourly", kind="report", every=3600)
        q.add_schedule("nightly", kind="report", every=86400)
        q.pause_schedule("nightly")

    def check() -> tuple[str, str]:
        checked = jq_in_process("check", env=clean_env(MOCK_AI="true"))
        assert checked.code == 0, checked.out  # a warning at most, never a failure
        (line,) = [ln for ln in checked.out.splitlines() if ln.split()[1:2] == ["schedules"]]
        return line, checked.out

    line, _ = check()
    assert line.split()[0] == "ok" and "1 running, 1 paused (nightly)" in line, line
    # No worker ran the scheduler for two hours: the running schedule's tick is overdue.
    past = f"{datetime.now(UTC) - timedelta(hours=2):%Y-%m-%d %H:%M:%S}"
    past += ".000000" if db_url.startswith("sqlite") else "+00"
    with JobQueue(db_url, table=table_name) as q, q.engine.begin() as conn:
        conn.execute(text(f"UPDATE {table_name}_schedules SET next_tick = :t"), {"t": past})
    line, report = check()
    assert line.split()[0] == "warn" and "1 overdue by over a minute (hourly)" in line, line
    assert "--no-schedules" in report, report
