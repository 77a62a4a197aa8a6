"""Commands about the database and the queue as a whole: set it up (``migrate``, ``sql``),
diagnose it (``check``), look at it (``stats``, ``workers``), tidy it (``reap``,
``prune``).
"""

from __future__ import annotations

from datetime import timedelta

import click
from rich.markup import escape

from ..errors import ConfigurationError
from ..models import FINAL_STATUSES, Status
from .group import EXIT_FAILED, Env, cli, one_line, pass_env
from .output import (
    DURATION,
    echo_json,
    format_duration,
    out,
    paused_lines,
    paused_now,
    render_stats,
    render_workers,
)

# -- set-up: migrate, sql, check --------------------------------------------------------


@cli.command("migrate")
@pass_env
def migrate_command(env: Env) -> None:
    """Create or upgrade the jobs table (safe to run again)."""
    from ..migrations import migrate, schema_state

    migrate(env.url, table=env.table, schema=env.schema)
    state = schema_state(env.url, table=env.table, schema=env.schema)
    out().print(f"Migrated {env.where}: at revision {state.current} (latest).", soft_wrap=True)


@cli.command("sql")
@click.option(
    "--supabase",
    is_flag=True,
    help="Also print the row-level security policies and grants Supabase needs.",
)
@click.option(
    "--worker-role",
    default="service_role",
    show_default=True,
    help="With --supabase: the role workers connect as (may update every job).",
)
@pass_env
def sql_command(env: Env, supabase: bool, worker_role: str) -> None:
    """Print the PostgreSQL SQL that creates the jobs table.

    Paste it into the Supabase SQL Editor (or pipe it to psql) where `jobqueue migrate`
    cannot connect. It includes our own version table, so a later `jobqueue migrate`
    knows where the database stands, and it is safe to run again: revisions already
    applied are skipped.
    """
    from ..migrations import sql

    # With --supabase: the migrations and the RLS set-up, in one transaction.
    text = _supabase_sql(env, worker_role) if supabase else sql(table=env.table, schema=env.schema)
    click.echo(text.rstrip())


def _supabase_sql(env: Env, worker_role: str) -> str:
    try:
        from ..migrations.supabase import supabase_script
    except ImportError as exc:
        if exc.name not in ("jobqueue.rls", None):
            raise
        raise ConfigurationError(
            "this version of jobqueue cannot print Supabase RLS policies yet",
            hint="run `jobqueue sql` without --supabase and add the policies by hand",
        ) from exc
    return supabase_script(table=env.table, schema=env.schema, worker_role=worker_role)


_MARKS = {
    "ok": "[green]ok  [/]",
    "warn": "[yellow]warn[/]",
    "fail": "[red]FAIL[/]",
    "skip": "[dim]skip[/]",
}


@cli.command("check")
@pass_env
def check_command(env: Env) -> None:
    """Diagnose the set-up: database, schema, writes, workers, generator and more.

    Checks the database, the schema, access, writes, stuck jobs, pauses, the backlog, live
    workers, schedules and the generator: one line per check, with a fix for each problem.
    Exit code 0 when nothing failed, 1 otherwise (warnings do not fail).
    """
    from .checks import run_checks

    checks = run_checks(env.url, table=env.table, schema=env.schema)
    console = out()
    for c in checks:
        fix = f" — fix: {c.fix}" if c.fix and c.state != "ok" else ""
        if c.state == "ok" and c.fix:
            fix = f" — {c.fix}"
        line = one_line(f"{c.detail}{fix}")
        console.print(f"{_MARKS[c.state]} {c.name:<11} {escape(line)}", soft_wrap=True)
    if any(c.state == "fail" for c in checks):
        raise click.exceptions.Exit(EXIT_FAILED)


# -- the queue as a whole: stats, workers, reap, prune ----------------------------------


@cli.command("stats")
@click.option(
    "--since",
    type=DURATION,
    default="1d",
    show_default=True,
    help="Jobs created within this time.",
)
@click.option(
    "--by",
    type=click.Choice(["kind", "owner"]),
    help="Split each status's line by kind or by owner.",
)
@click.option("--owner", "owner_id", help="Only this owner's jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@pass_env
def stats_command(
    env: Env, since: timedelta, by: str | None, owner_id: str | None, as_json: bool
) -> None:
    """Count, average duration (creation to finish) and cost of jobs per status.

    The cost is summed per unit; "paid" counts the jobs that cost money (on a failed or
    cancelled line: paid for and not delivered). Below the table, what is paused
    (`jobqueue pause`), since when and why.
    """
    with env.queue() as q:
        stats = q.stats(since, by=by, owner_id=owner_id)
        limits = q.list_limits(counts=False)
    if as_json:
        statuses = [s.to_dict() for s in stats]
        echo_json(
            {"statuses": statuses, "paused": [limit.to_dict() for limit in paused_now(limits)]}
        )
        return
    console = out()
    title = f"Jobs created in the last {format_duration(since)}"
    if owner_id is not None:
        title += f" by {owner_id}"
    console.print(render_stats(stats, title=title, by=by))
    for line in paused_lines(limits):
        console.print(line, markup=False, soft_wrap=True)


@cli.command("workers")
@click.option("--json", "as_json", is_flag=True, help="Print the workers as JSON.")
@pass_env
def workers_command(env: Env, as_json: bool) -> None:
    """List the live workers: their queues, kinds, concurrency and last heartbeat.

    A worker is live while its heartbeat is recent (it beats every third of its lease and
    counts for two leases after a beat); crashed workers drop off by themselves.
    """
    with env.queue() as q:
        workers = q.live_workers()
    if as_json:
        echo_json([w.to_dict() for w in workers])
    elif not workers:
        out().print("No live worker. Start one with `jobqueue worker`.", markup=False)
    else:
        out().print(render_workers(workers))


@cli.command("reap")
@pass_env
def reap_command(env: Env) -> None:
    """Return jobs whose worker vanished (lease expired) to pending, or fail them when out
    of attempts. Running workers do this on their own; this is for when none runs."""
    with env.queue() as q:
        reaped = q.reap()
    back = [i for i, s in reaped if s is Status.PENDING]
    failed = [i for i, s in reaped if s is Status.FAILED]
    console = out()
    console.print(
        f"reaped {len(reaped)} job(s): {len(back)} back to pending, "
        f"{len(failed)} failed (out of attempts)",
        markup=False,
    )
    for job_id, status in reaped:
        console.print(f"  {job_id} -> {status.value}", markup=False)


@cli.command("prune")
@click.option(
    "--older-than",
    type=DURATION,
    default="7d",
    show_default=True,
    help="Delete jobs that finished longer ago than this.",
)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status if s in FINAL_STATUSES]),
    help="Only jobs in this final status (repeatable). [default: all final statuses]",
)
@pass_env
def prune_command(env: Env, older_than: timedelta, statuses: tuple[str, ...]) -> None:
    """Delete finished (completed, failed, cancelled) jobs. Pending and running jobs stay."""
    with env.queue() as q:
        count = q.prune(older_than, statuses or None)
    out().print(
        f"deleted {count} finished job(s) older than {format_duration(older_than)}",
        markup=False,
    )
