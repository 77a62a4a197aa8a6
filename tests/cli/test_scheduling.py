"""The scheduling commands (``limits set/show/remove``, ``pause``, ``resume``) and what
``check``, ``stats`` and ``list`` show of pauses, against SQLite and PostgreSQL, the effect
checked through the queue's own API (a claim obeys what the command set).

The first command of each test runs as a user runs it (the installed console script in a
subprocess); the rest run in this process through the same entry point
(`tests.cli.helpers.run_in_process`), which saves a second of start-up per command."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from jobqueue import JobQueue, migrate
from jobqueue.cli.output import pause_text, utc_time
from jobqueue.models import Limit
from tests.cli.helpers import Run, clean_env

# -- on both databases -------------------------------------------------------------------


def test_limits_set_show_and_remove_are_the_rows_claims_obey(
    jq: Run, jq_in_process: Run, db_url: str, table_name: str
) -> None:
    migrate(db_url, table=table_name)
    set_image = jq("limits", "set", "image", "--per-owner", "1")
    jq = jq_in_process
    assert set_image.code == 0, set_image.err
    assert set_image.out.strip() == "key image: 1 running per owner"
    provider = jq("limits", "set", "defapi", "--max-running", "5", "--rate", "60", "--per", "1m")
    assert provider.code == 0, provider.err
    assert provider.out.strip() == "key defapi: at most 5 running, 60 starts per 1m"
    assert jq("limits", "set", "ann", "--owner", "--weight", "2").code == 0
    assert jq("limits", "set", "default", "--queue", "--max-running", "3").code == 0

    shown = jq("limits", "show", "--json")
    assert shown.code == 0, shown.err
    rows = {(r["scope"], r["name"]): r for r in json.loads(shown.out)}
    assert set(rows) == {
        ("key", "image"),
        ("key", "defapi"),
        ("owner", "ann"),
        ("queue", "default"),
    }
    assert rows[("key", "image")]["max_running_per_owner"] == 1
    assert (rows[("key", "defapi")]["rate"], rows[("key", "defapi")]["per_seconds"]) == (60, 60.0)
    assert rows[("owner", "ann")]["weight"] == 2.0
    assert rows[("queue", "default")]["max_running"] == 3

    with JobQueue(db_url, table=table_name) as q:  # the caps the command set are in force
        for _ in range(2):
            q.enqueue("image", {"prompt": "x"}, owner_id="ann")
        q.enqueue("image", {"prompt": "y"}, owner_id="bob")
        claimed = q.claim("w", limit=10)
        assert sorted(j.owner_id or "" for j in claimed) == ["ann", "bob"]

    table = jq("limits", "show")
    assert table.code == 0, table.err
    (image_row,) = [line for line in table.out.splitlines() if " image " in line]
    assert "1 per owner" in image_row and " 1 " in image_row  # its running and pending jobs

    cleared = jq("limits", "set", "defapi", "--clear", "rate", "--clear", "max_running")
    assert (cleared.code, cleared.out.strip()) == (0, "key defapi: no limits"), cleared.err
    with JobQueue(db_url, table=table_name) as q:
        defapi = next(lim for lim in q.list_limits() if lim.name == "defapi")
        assert (defapi.max_running, defapi.rate, defapi.per_seconds) == (None, None, None)

    removed = jq("limits", "remove", "image")
    assert (removed.code, removed.out.strip()) == (0, "removed the limits of key image")
    jq("limits", "remove", "image").one_line_error(1, "no limits row for key 'image'")
    assert jq("limits", "remove", "default", "--queue").code == 0
    with JobQueue(db_url, table=table_name) as q:
        left = {(lim.scope, lim.name) for lim in q.list_limits()}
        assert left == {("key", "defapi"), ("owner", "ann")}
        assert len(q.claim("w", limit=10)) == 1  # ann's second image: no cap any more


def test_pause_and_resume_and_what_check_stats_and_list_show(
    jq: Run, jq_in_process: Run, db_url: str, table_name: str
) -> None:
    migrate(db_url, table=table_name)
    with JobQueue(db_url, table=table_name) as q:
        job = q.enqueue("image", {"prompt": "a fox"})

    paused = jq("pause", "default", "--for", "10m", "--reason", "provider outage")
    jq = jq_in_process
    assert paused.code == 0, paused.err
    assert jq("pause", "image", "--key").code == 0  # until resumed
    with JobQueue(db_url, table=table_name) as q:
        rows = {lim.name: lim for lim in q.list_limits()}
        queue_pause, key_pause = rows["default"], rows["image"]
        assert queue_pause.paused and queue_pause.pause_reason == "provider outage"
        assert queue_pause.paused_at is not None and queue_pause.paused_until is not None
        length = (queue_pause.paused_until - queue_pause.paused_at).total_seconds()
        assert length == pytest.approx(600, abs=0.01)
        assert key_pause.paused and key_pause.paused_until is None
        assert q.claim("w") == []  # its job waits
    since, until = utc_time(queue_pause.paused_at), utc_time(queue_pause.paused_until)
    queue_line = f"queue default since {since} UTC (until {until}, reason: provider outage)"
    key_line = f"key image since {utc_time(key_pause.paused_at)} UTC (until resumed)"
    assert paused.out.strip() == f"paused {queue_line}: 1 pending job(s) wait, 0 running finish"

    stats = jq("stats")
    assert stats.code == 0, stats.err
    assert f"paused: {queue_line}" in stats.out.splitlines()
    assert f"paused: {key_line}" in stats.out.splitlines()
    stats_json = json.loads(jq("stats", "--json").out)
    assert [(p["scope"], p["name"]) for p in stats_json["paused"]] == [
        ("key", "image"),
        ("queue", "default"),
    ]
    assert stats_json["statuses"][0]["status"] == "pending"

    listed = jq("list")
    assert listed.code == 0, listed.err
    assert str(job.id) in listed.out and f"paused: {queue_line}" in listed.out.splitlines()
    listed_json = json.loads(jq("list", "--json").out)
    assert [j["id"] for j in listed_json["jobs"]] == [str(job.id)]
    by_name = {p["name"]: p for p in listed_json["paused"]}
    assert by_name["default"]["pause_reason"] == "provider outage"
    assert by_name["default"]["paused_at"] == queue_pause.paused_at.isoformat()
    assert by_name["image"]["paused_until"] is None

    checked = jq("check", env=clean_env(MOCK_AI="true"))
    assert checked.code == 0, checked.out  # a warning, not a failure
    (line,) = [ln for ln in checked.out.splitlines() if ln.split()[1:2] == ["paused"]]
    assert line.startswith("warn") and queue_line in line and key_line in line, line
    assert "jobqueue resume NAME" in line

    resumed = jq("resume", "default")
    assert (resumed.code, resumed.out.strip()) == (
        0,
        "resumed queue default: its 1 pending job(s) may start",
    )
    again = jq("resume", "default")  # what the user wanted is the case: no error
    assert (again.code, again.out.strip(), again.err) == (0, "queue default is not paused", "")
    assert jq("resume", "image", "--key").code == 0
    with JobQueue(db_url, table=table_name) as q:
        assert q.enter_line() == 1
        assert [j.id for j in q.claim("w")] == [job.id]
    assert json.loads(jq("list", "--json").out)["paused"] == []
    nothing = jq("check", env=clean_env(MOCK_AI="true"))
    assert "ok   paused      nothing paused" in nothing.out, nothing.out


# -- SQLite only: the error contract -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["limits", "set", "image", "--rate", "60"], 2, ["--rate needs --per", "--per 1m"]),
        (["limits", "set", "image", "--per", "1m"], 2, ["--rate needs --per"]),
        (["limits", "set", "image", "--rate", "5", "--per", "0s"], 2, ["--per must be longer"]),
        (
            ["limits", "set", "image", "--weight", "2"],
            2,
            ["--weight belongs to an owner, not to a key", "--owner --weight 2"],
        ),
        (
            ["limits", "set", "ann", "--owner", "--max-running", "2"],
            2,
            ["an owner's row holds only a --weight", "--per-owner 2"],
        ),
        (["limits", "set", "ann", "--owner", "--weight", "0"], 2, ["--weight must be between"]),
        (
            ["limits", "set", "image", "--clear", "speed"],
            2,
            ["--clear 'speed': there is no such setting", "max-running, per-owner, rate"],
        ),
        (
            ["limits", "set", "image", "--per-owner", "2", "--clear", "per-owner"],
            2,
            ["while setting it"],
        ),
        (["limits", "set", "image", "--clear", "weight"], 2, ["a key has no weight to clear"]),
        (["limits", "set", "image"], 2, ["nothing to set", "--max-running"]),
        (
            ["limits", "set", "x", "--queue", "--owner", "--weight", "1"],
            2,
            ["--queue and --owner cannot go together"],
        ),
        (
            ["limits", "set", "image", "--max-running", "0"],
            2,
            ["0 is not in the range", "jobqueue limits set --help"],
        ),
        (["limits", "frobnicate"], 2, ["No such command", "jobqueue limits --help"]),
        (
            ["limits", "remove", "nothing"],
            1,
            ["no limits row for key 'nothing'", "jobqueue limits show", "--queue"],
        ),
        (["pause", "default", "--for", "0s"], 2, ["--for must be longer than 0s", "resume"]),
        (["pause", "default", "--for", "soon"], 2, ["not a duration", "jobqueue pause --help"]),
        (["pause", "defapi", "--owner"], 2, ["No such option", "--owner"]),
    ],
    ids=[
        "rate-without-per",
        "per-without-rate",
        "zero-period",
        "weight-on-a-key",
        "cap-on-an-owner",
        "zero-weight",
        "unknown-setting",
        "set-and-clear",
        "clear-weight-of-a-key",
        "nothing-to-set",
        "two-scopes",
        "zero-cap",
        "unknown-subcommand",
        "remove-unknown",
        "pause-for-nothing",
        "pause-bad-duration",
        "pause-an-owner",
    ],
)
def test_bad_scheduling_input_is_one_clear_line(
    sq_in_process: Run, args: list[str], code: int, fragments: list[str]
) -> None:
    sq_in_process(*args).one_line_error(code, *fragments)


def test_limits_show_without_rows_says_how_to_add_one(sq_in_process: Run) -> None:
    sq = sq_in_process
    shown = sq("limits", "show")
    assert (shown.code, shown.err) == (0, "")
    assert "No limits set" in shown.out and "jobqueue limits set NAME" in shown.out
    assert json.loads(sq("limits", "show", "--json").out) == []


# -- in-process: how a pause reads -------------------------------------------------------


def test_a_pause_names_its_day_unless_it_is_today() -> None:
    today = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    assert utc_time(datetime(2026, 3, 1, 14, 2, 11, tzinfo=UTC), today) == "14:02:11"
    assert utc_time(datetime(2026, 3, 2, 0, 2, 11, tzinfo=UTC), today) == "2026-03-02 00:02:11"
    limit = Limit(
        "key",
        "defapi",
        paused=True,
        paused_at=datetime.now(UTC).replace(microsecond=0),
        pause_reason="429 Too Many\nRequests",
    )
    text = pause_text(limit)
    assert text.startswith("key defapi since ") and text.endswith(
        " UTC (until resumed, reason: 429 Too Many Requests)"
    )
