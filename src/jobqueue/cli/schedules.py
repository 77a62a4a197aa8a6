"""Commands about periodic jobs: ``schedule add``, ``list``, ``pause``, ``resume`` and
``remove``.

They only call the queue's API (`JobQueue.add_schedule`, `list_schedules`,
`pause_schedule`, `resume_schedule`, `remove_schedule`); the schedules live in the
database, and every worker's scheduler runs them (docs/schedules.md).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import click
from rich.table import Table

from ..errors import PayloadError
from ..models import DEFAULT_QUEUE
from ..sql.table import MAX_EVERY, MIN_EVERY
from .group import CommandFailed, Env, cli, pass_env
from .output import DURATION, echo_json, out, when

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..operations.schedules import Schedule
    from ..queue import JobQueue


@cli.group("schedule")
def schedule_group() -> None:
    """Periodic jobs: a job of a kind at each tick of a cron expression or an interval.

    Every worker runs the scheduler; each tick makes exactly one job however many run.
    See docs/schedules.md.
    """


@schedule_group.command("add")
@click.argument("name")
@click.option(
    "--cron", metavar="EXPR", help="A cron expression, e.g. '*/5 * * * *' (needs the cron extra)."
)
@click.option("--every", type=DURATION, help="An interval instead of --cron: 30s, 5m, 1h.")
@click.option(
    "--tz",
    "timezone",
    default="UTC",
    show_default=True,
    help="The time zone the cron expression is read in (an IANA name: Europe/Berlin).",
)
@click.option("--kind", required=True, help="The kind of job each tick enqueues.")
@click.option("--queue", default=DEFAULT_QUEUE, show_default=True, help="Its queue.")
@click.option("--payload", default="{}", show_default=True, help="Its payload, as JSON.")
@click.option("--priority", type=int, default=0, show_default=True, help="Its priority.")
@click.option(
    "--missed",
    type=click.Choice(["once", "skip"]),
    default="once",
    show_default=True,
    help="Ticks missed while no worker ran: one job for the latest (once) or none (skip).",
)
@pass_env
def schedule_add_command(
    env: Env,
    name: str,
    cron: str | None,
    every: timedelta | None,
    timezone: str,
    kind: str,
    queue: str,
    payload: str,
    priority: int,
    missed: str,
) -> None:
    """Create the schedule NAME, or replace its definition.

    For example `jobqueue schedule add cleanup --every 1h --kind cleanup` or `jobqueue
    schedule add report --cron '0 9 * * 1-5' --tz Europe/Berlin --kind report`. Its next
    tick is the first after now; changing only the job (kind, queue, payload) keeps it.
    """
    if (cron is None) == (every is None):
        raise PayloadError(
            "give either --cron or --every", hint="e.g. --cron '*/5 * * * *' or --every 30s"
        )
    if every is not None and not MIN_EVERY <= every.total_seconds() <= MAX_EVERY:
        raise PayloadError(  # worded for the option, not for add_schedule's every=
            f"--every must be between {MIN_EVERY:g}s and {MAX_EVERY / 86400:.0f}d, "
            f"not {every.total_seconds():g}s",
            hint="e.g. --every 30s, --every 5m or --every 1d",
        )
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise PayloadError(
            f"--payload is not JSON: {exc}", hint="e.g. --payload '{\"n\": 1}'"
        ) from None
    with env.queue() as q:
        schedule = q.add_schedule(
            name,
            kind=kind,
            cron=cron,
            every=every,
            timezone=timezone,
            queue=queue,
            payload=value,
            priority=priority,
            missed=missed,
        )
    article = "an" if schedule.kind[:1].lower() in "aeiou" else "a"
    out().print(
        f"schedule {schedule.name}: {schedule.timing}, {article} {schedule.kind} job in "
        f"{schedule.queue}; next tick {tick_time(schedule.next_tick)}",
        markup=False,
        soft_wrap=True,
    )


@schedule_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the schedules as JSON.")
@pass_env
def schedule_list_command(env: Env, as_json: bool) -> None:
    """Show every schedule: its timing, its job, its next and last tick (in this machine's
    time zone, named after each time)."""
    with env.queue() as q:
        schedules = q.list_schedules()
    if as_json:
        echo_json([s.to_dict() for s in schedules])
    elif not schedules:
        out().print(
            "No schedules. Add one with `jobqueue schedule add NAME --every 1h --kind KIND`.",
            markup=False,
        )
    else:
        out().print(render_schedules(schedules))


def render_schedules(schedules: list[Schedule]) -> Table:
    table = Table(header_style="bold")
    table.add_column("name", overflow="fold")
    table.add_column("timing", overflow="fold")
    table.add_column("kind", overflow="fold")
    table.add_column("queue", overflow="fold")
    table.add_column("missed", no_wrap=True)
    table.add_column("next tick", no_wrap=True)
    table.add_column("last tick", no_wrap=True)
    for s in schedules:
        table.add_row(
            s.name,
            s.timing,
            s.kind,
            s.queue,
            s.missed,
            tick_time(s.next_tick) if s.enabled else "paused",
            tick_time(s.last_tick),
        )
    return table


def tick_time(value: datetime | None) -> str:
    """A tick in local time, with the zone's name: a schedule has a time zone of its own
    (``--tz``), so an unnamed time would read as the schedule's wall clock."""
    shown = when(value)
    if value is None or shown in ("infinity", "-infinity") or shown.endswith("UTC"):
        return shown
    return f"{shown} {value.astimezone().tzname()}"


@schedule_group.command("remove")
@click.argument("name")
@pass_env
def schedule_remove_command(env: Env, name: str) -> None:
    """Delete the schedule NAME; the jobs it made stay. Exit code 1 when there was none.

    A schedule a worker's registry declares comes back when such a worker starts: remove
    it from the registry too."""
    _on_one(env, name, "removed", lambda q: q.remove_schedule(name))


@schedule_group.command("pause")
@click.argument("name")
@pass_env
def schedule_pause_command(env: Env, name: str) -> None:
    """Stop the schedule NAME making jobs, keeping its definition (`schedule resume` lets it
    go on). Exit code 1 when there is none. A worker declaring it leaves it paused."""
    _on_one(env, name, "paused", lambda q: q.pause_schedule(name))


@schedule_group.command("resume")
@click.argument("name")
@pass_env
def schedule_resume_command(env: Env, name: str) -> None:
    """Let the paused schedule NAME make jobs again. Ticks missed meanwhile follow its
    --missed policy: one job for the latest (once) or none (skip). Exit code 1 when there
    is none."""
    _on_one(env, name, "resumed", lambda q: q.resume_schedule(name))


def _on_one(env: Env, name: str, done: str, act: Callable[[JobQueue], bool]) -> None:
    """Act on the schedule ``name`` and say so; exit code 1 when there is none."""
    with env.queue() as q:
        found = act(q)
    if not found:
        raise CommandFailed(f"no schedule {name!r} — `jobqueue schedule list` lists them")
    out().print(f"{done} the schedule {name}", markup=False, soft_wrap=True)
