"""Periodic jobs: what a schedule's ticks are (cron, intervals, time zones, DST), and the
schedules table on SQLite and PostgreSQL through the sync and the async queue: one job per
tick however many callers run the scheduler at once, missed ticks run once or skipped.

The race between real worker processes is in tests/reliability/test_schedules.py.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobqueue import ConfigurationError, JobQueue, PayloadError
from jobqueue.operations.schedules import (
    CATCH_UP,
    KEY_PREFIX,
    ON_TIME,
    Timing,
    define_schedule,
    idempotency_key,
    plan_ticks,
)

from ..conftest import Either


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# -- ticks ----------------------------------------------------------------------------------------


def test_interval_ticks_count_from_the_epoch_so_every_worker_agrees() -> None:
    every = Timing.of(every=30)
    assert every.next_after(utc(2026, 5, 1, 12, 0, 10)) == utc(2026, 5, 1, 12, 0, 30)
    assert every.next_after(utc(2026, 5, 1, 12, 0, 30)) == utc(2026, 5, 1, 12, 1, 0)
    assert every.latest_until(utc(2026, 5, 1, 12, 0, 30)) == utc(2026, 5, 1, 12, 0, 30)
    assert every.latest_until(utc(2026, 5, 1, 12, 0, 29, 999999)) == utc(2026, 5, 1, 12, 0, 0)
    assert Timing.of(every=timedelta(hours=1)).every == 3600


def test_an_interval_counts_from_midnight_in_its_time_zone() -> None:
    # Kolkata is 5:30 ahead of UTC: hourly ticks fall on its hours, half past in UTC.
    hourly = Timing.of(every=3600, timezone="Asia/Kolkata")
    assert hourly.next_after(utc(2026, 5, 1, 12, 0)) == utc(2026, 5, 1, 12, 30)


def test_an_interval_keeps_its_spacing_across_a_dst_change() -> None:
    hourly = Timing.of(every=3600, timezone="Europe/Berlin")
    tick = utc(2026, 3, 28, 22, 0)
    ticks = []
    for _ in range(6):
        tick = hourly.next_after(tick)
        ticks.append(tick)
    assert {b - a for a, b in itertools.pairwise(ticks)} == {timedelta(hours=1)}


def test_cron_follows_the_wall_clock_of_its_time_zone() -> None:
    nine = Timing.of(cron="0 9 * * *", timezone="Europe/Berlin")
    assert nine.next_after(utc(2026, 1, 10, 12, 0)) == utc(2026, 1, 11, 8, 0)  # CET
    assert nine.next_after(utc(2026, 7, 10, 12, 0)) == utc(2026, 7, 11, 7, 0)  # CEST
    assert nine.latest_until(utc(2026, 7, 11, 7, 0)) == utc(2026, 7, 11, 7, 0)
    assert nine.latest_until(utc(2026, 7, 11, 6, 59)) == utc(2026, 7, 10, 7, 0)


def test_cron_in_the_hour_dst_skips_runs_once_right_after_the_change() -> None:
    # 2026-03-29 in Berlin: 02:00 becomes 03:00, so 02:30 never happens that night.
    half_past_two = Timing.of(cron="30 2 * * *", timezone="Europe/Berlin")
    first = half_past_two.next_after(utc(2026, 3, 28, 12, 0))
    assert first == utc(2026, 3, 29, 1, 0)  # 03:00 CEST
    assert half_past_two.next_after(first) == utc(2026, 3, 30, 0, 30)  # 02:30 CEST


def test_cron_in_the_hour_dst_repeats_runs_once() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST becomes 02:00 CET, so 02:30 happens twice.
    half_past_two = Timing.of(cron="30 2 * * *", timezone="Europe/Berlin")
    first = half_past_two.next_after(utc(2026, 10, 24, 12, 0))
    assert first == utc(2026, 10, 25, 0, 30)  # the first 02:30 (CEST)
    assert half_past_two.next_after(first) == utc(2026, 10, 26, 1, 30)  # the next day's, CET


def test_a_late_scheduler_catches_up_on_the_ticks_that_are_still_on_time() -> None:
    every_second = Timing.of(every=1)
    start = utc(2026, 5, 1, 12)
    now = start + timedelta(seconds=2.5)
    for missed in ("once", "skip"):
        runs, following, dropped = plan_ticks(every_second, missed, start, now)
        assert runs == [start + timedelta(seconds=i) for i in range(3)]
        assert (following, dropped) == (start + timedelta(seconds=3), False)
    # After a long outage, only the latest few on-time ticks: a few jobs, not a burst.
    runs, _, dropped = plan_ticks(every_second, "once", start, start + timedelta(hours=1))
    assert len(runs) == CATCH_UP and runs[-1] == start + timedelta(hours=1) and dropped


def test_the_tick_plan_runs_missed_ticks_once_or_skips_them() -> None:
    hourly = Timing.of(every=3600)
    # Due since 09:00; the 12:00 tick is 20 s late: on time, so it runs whatever the policy
    # and stands for the missed ones.
    now = utc(2026, 5, 1, 12, 0, 20)
    for missed in ("once", "skip"):
        assert plan_ticks(hourly, missed, utc(2026, 5, 1, 9), now) == (
            [utc(2026, 5, 1, 12)],
            utc(2026, 5, 1, 13),
            True,
        )
    # A minute and more late, every due tick was missed: once runs the latest, skip none.
    later = utc(2026, 5, 1, 12) + timedelta(seconds=ON_TIME + 1)
    assert plan_ticks(hourly, "once", utc(2026, 5, 1, 9), later) == (
        [utc(2026, 5, 1, 12)],
        utc(2026, 5, 1, 13),
        False,
    )
    assert plan_ticks(hourly, "skip", utc(2026, 5, 1, 9), later) == ([], utc(2026, 5, 1, 13), True)


def test_a_schedule_is_checked_before_it_is_stored() -> None:
    with pytest.raises(PayloadError, match="either a cron expression or an interval"):
        define_schedule("s", kind="k")
    with pytest.raises(PayloadError, match="either a cron expression or an interval"):
        define_schedule("s", kind="k", cron="* * * * *", every=60)
    with pytest.raises(PayloadError, match="invalid cron expression"):
        define_schedule("s", kind="k", cron="61 * * * *")
    with pytest.raises(PayloadError, match="unknown time zone"):
        define_schedule("s", kind="k", every=60, timezone="Mars/Olympus")
    with pytest.raises(PayloadError, match="every must be between"):
        define_schedule("s", kind="k", every=0.5)
    with pytest.raises(PayloadError, match="missed must be one of"):
        define_schedule("s", kind="k", every=60, missed="all")
    with pytest.raises(PayloadError):
        define_schedule("", kind="k", every=60)
    with pytest.raises(PayloadError, match="payload"):
        define_schedule("s", kind="k", every=60, payload={"x": object()})


def test_cron_without_the_extra_says_how_to_get_it_and_intervals_still_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cronsim", None)  # as if it were not installed
    with pytest.raises(ConfigurationError, match="needs the cron extra") as caught:
        define_schedule("s", kind="k", cron="*/5 * * * *")
    assert "jobqueue[cron]" in caught.value.hint
    assert define_schedule("s", kind="k", every=60).timing.every == 60


def test_a_ticks_key_names_its_schedule_and_tick() -> None:
    key = idempotency_key("nightly", utc(2026, 5, 1, 3))
    assert key == f"{KEY_PREFIX}nightly:2026-05-01T03:00:00+00:00"
    assert len(idempotency_key("n" * 200, utc(2026, 5, 1, 3, 0, 0, 1))) <= 255


# -- the schedules table --------------------------------------------------------------------------


def _set_next_tick(
    raw_sql: Callable[..., list[Any]], migrated: tuple[str, str], name: str, when: str
) -> None:
    """Move a schedule's next tick by hand (``YYYY-MM-DD HH:MM:SS``, UTC), as stored."""
    url, table = migrated
    value = f"{when}.000000" if url.startswith("sqlite") else f"{when}+00"
    raw_sql(f"UPDATE {table}_schedules SET next_tick = :v WHERE name = :n", v=value, n=name)


async def _until_due(q: Either, name: str) -> None:
    (schedule,) = [s for s in await q.list_schedules() if s.name == name]
    wait = (schedule.next_tick - datetime.now(UTC)).total_seconds()
    await asyncio.sleep(max(0.0, wait) + 0.05)


async def test_add_list_and_remove_a_schedule(q: Either) -> None:
    added = await q.add_schedule(
        "reports", kind="report", cron="0 9 * * 1-5", timezone="Europe/Berlin", payload={"n": 1}
    )
    assert added.cron == "0 9 * * 1-5" and added.every is None and added.payload == {"n": 1}
    assert added.next_tick > datetime.now(UTC) - timedelta(seconds=5)
    assert added.next_tick.astimezone(added_zone()).hour == 9 and added.last_tick is None
    every = await q.add_schedule("cleanup", kind="cleanup", every=60, queue="maint", missed="skip")
    assert (every.every, every.queue, every.missed) == (60, "maint", "skip")
    assert [s.name for s in await q.list_schedules()] == ["cleanup", "reports"]
    assert await q.remove_schedule("reports") is True
    assert await q.remove_schedule("reports") is False
    assert [s.name for s in await q.list_schedules()] == ["cleanup"]


def added_zone() -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo("Europe/Berlin")


async def test_changing_the_job_keeps_the_next_tick_and_changing_the_timing_moves_it(
    q: Either,
) -> None:
    first = await q.add_schedule("s", kind="a", every=3600)
    again = await q.add_schedule("s", kind="b", every=3600, payload={"v": 2}, priority=5)
    assert again.next_tick == first.next_tick and (again.kind, again.priority) == ("b", 5)
    moved = await q.add_schedule("s", kind="b", every=7200)
    assert moved.every == 7200 and moved.next_tick.timestamp() % 7200 == 0


async def test_each_tick_enqueues_one_job_with_its_key(q: Either) -> None:
    await q.add_schedule("tick", kind="image", every=1, payload={"p": 1}, priority=3)
    await _until_due(q, "tick")
    done = await q.run_schedules()
    (job,) = done.enqueued
    (schedule,) = await q.list_schedules()
    assert job.idempotency_key == idempotency_key("tick", schedule.last_tick)
    assert (job.kind, job.payload, job.priority) == ("image", {"p": 1}, 3)
    assert schedule.next_tick == schedule.last_tick + timedelta(seconds=1)
    assert (await q.run_schedules()).enqueued == []  # not due again yet
    await _until_due(q, "tick")
    (second,) = (await q.run_schedules()).enqueued
    assert second.id != job.id


async def test_a_schedule_due_since_last_year_runs_once_or_skips(
    q: Either, raw_sql: Callable[..., list[Any]], migrated: tuple[str, str]
) -> None:
    # Yearly on 1 January: a schedule due since last year missed last year's and this one's.
    year = datetime.now(UTC).year
    for name, missed in (("once", "once"), ("skip", "skip")):
        await q.add_schedule(name, kind="report", cron="0 0 1 1 *", missed=missed)
        _set_next_tick(raw_sql, migrated, name, f"{year - 1}-01-01 00:00:00")
    done = await q.run_schedules()
    this_year, next_year = utc(year, 1, 1), utc(year + 1, 1, 1)
    assert [j.idempotency_key for j in done.enqueued] == [idempotency_key("once", this_year)]
    assert done.skipped == ["skip"]
    ticks = {s.name: (s.next_tick, s.last_tick) for s in await q.list_schedules()}
    assert ticks == {"once": (next_year, this_year), "skip": (next_year, None)}
    assert (await q.run_schedules()).enqueued == []


async def test_a_disabled_schedule_makes_no_jobs(
    q: Either, raw_sql: Callable[..., list[Any]], migrated: tuple[str, str]
) -> None:
    await q.add_schedule("off", kind="k", every=60, enabled=False)
    _set_next_tick(raw_sql, migrated, "off", "2025-01-01 00:00:00")
    assert (await q.run_schedules()).enqueued == []
    assert await q.list(status="pending") == []


async def test_a_paused_schedule_makes_no_jobs_stays_paused_when_declared_and_resumes(
    q: Either, raw_sql: Callable[..., list[Any]], migrated: tuple[str, str]
) -> None:
    await q.add_schedule("nightly", kind="report", cron="0 0 * * *", missed="once")
    assert await q.pause_schedule("nightly") is True
    _set_next_tick(raw_sql, migrated, "nightly", "2025-01-01 00:00:00")
    assert (await q.run_schedules()).enqueued == []
    # A worker starting with the schedule in its registry redeclares it: still paused.
    spec = define_schedule("nightly", kind="report", cron="0 0 * * *", payload={"v": 2})
    assert await q.declare_schedules([spec]) == 1
    (paused,) = await q.list_schedules()
    assert paused.enabled is False and paused.payload == {"v": 2}
    assert (await q.run_schedules()).enqueued == []
    # Resumed: the ticks missed while paused run once (its policy), for the latest.
    assert await q.resume_schedule("nightly") is True
    (job,) = (await q.run_schedules()).enqueued
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert job.idempotency_key == idempotency_key("nightly", today)
    assert (await q.list_schedules())[0].enabled is True
    assert await q.pause_schedule("nobody") is False
    assert await q.resume_schedule("nobody") is False
    # add_schedule says what it is told.
    assert (
        await q.add_schedule("nightly", kind="report", cron="0 0 * * *", enabled=False)
    ).enabled is False


async def test_a_broken_row_is_reported_and_the_others_still_run(
    q: Either, raw_sql: Callable[..., list[Any]], migrated: tuple[str, str]
) -> None:
    await q.add_schedule("bad", kind="k", every=60)
    await q.add_schedule("good", kind="k", every=60)
    _, table = migrated
    raw_sql(f"UPDATE {table}_schedules SET timezone = 'Nowhere/Else' WHERE name = 'bad'")
    for name in ("bad", "good"):
        _set_next_tick(raw_sql, migrated, name, "2025-01-01 00:00:00")
    done = await q.run_schedules()
    assert [j.idempotency_key.split(":")[1] for j in done.enqueued] == ["good"]
    assert "unknown time zone" in done.broken["bad"]


def test_schedulers_running_at_once_make_exactly_one_job_per_tick(
    migrated: tuple[str, str],
) -> None:
    """Four queues (each its own connection pool) run the scheduler in a tight loop for
    about three ticks of a one-second schedule."""
    url, table = migrated
    queues = [JobQueue(url, table=table) for _ in range(4)]
    try:
        queues[0].add_schedule("race", kind="k", every=1)
        stop = time.monotonic() + 3.2
        lost = Counter[int]()
        errors: list[BaseException] = []

        def loop(index: int) -> None:
            while time.monotonic() < stop:
                try:
                    lost[index] += queues[index].run_schedules().lost
                except BaseException as exc:  # reported below
                    errors.append(exc)
                    return

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        jobs = queues[0].list(limit=100)
        keys = Counter(j.idempotency_key for j in jobs)
        assert len(keys) >= 3 and set(keys.values()) == {1}
        (schedule,) = queues[0].list_schedules()
        ticks = sorted(datetime.fromisoformat(k.split(":", 2)[2]) for k in keys)
        expected = [ticks[0] + timedelta(seconds=i) for i in range(len(ticks))]
        assert ticks == expected and schedule.next_tick == ticks[-1] + timedelta(seconds=1)
    finally:
        for q in queues:
            q.close()


async def test_a_tick_replayed_finds_its_job_already_made(
    q: Either, raw_sql: Callable[..., list[Any]], migrated: tuple[str, str]
) -> None:
    """The idempotency key stands behind the compare-and-set: a schedule set back to a tick
    it already ran (removed and added again within the tick, a row edited by hand) makes no
    second job, although the job has no owner (the key's scope then is the queue's)."""
    await q.add_schedule("replay", kind="report", cron="0 0 1 1 *")
    _set_next_tick(raw_sql, migrated, "replay", "2026-01-01 00:00:00")
    (first,) = (await q.run_schedules()).enqueued
    assert first.owner_id is None
    _set_next_tick(raw_sql, migrated, "replay", "2026-01-01 00:00:00")
    (again,) = (await q.run_schedules()).enqueued
    assert again.id == first.id
    assert [j.id for j in await q.list()] == [first.id]
