"""Commands about scheduling: the limits every worker obeys (``limits set``, ``limits
show``, ``limits remove``) and pausing a queue or a limit key (``pause``, ``resume``).

They only call the queue's API (`JobQueue.set_limit`, `list_limits`, `remove_limit`,
`pause`, `resume`); the rules themselves live in the database (docs/scheduling.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import click

from ..errors import PayloadError
from ..models import MAX_LIMIT, MAX_RATE_PERIOD, Limit
from .group import CommandFailed, Env, cli, pass_env
from .output import (
    DURATION,
    echo_json,
    format_duration,
    limit_settings,
    out,
    pause_text,
    render_limits,
)

#: What ``--clear`` accepts, each with the settings of `JobQueue.set_limit` it clears (a
#: rate goes with its period). Underscores may stand for the dashes.
CLEARABLE: dict[str, tuple[str, ...]] = {
    "max-running": ("max_running",),
    "per-owner": ("max_running_per_owner",),
    "max-running-per-owner": ("max_running_per_owner",),
    "rate": ("rate", "per"),
    "per": ("rate", "per"),
    "weight": ("weight",),
}
_CLEARABLE_SHOWN = "max-running, per-owner, rate (with its period), weight"


def _scope(queue: bool, key: bool, owner: bool, *, default: str) -> str:
    chosen = [name for name, flag in (("queue", queue), ("key", key), ("owner", owner)) if flag]
    if len(chosen) > 1:
        raise PayloadError(
            f"--{chosen[0]} and --{chosen[1]} cannot go together: a limits row is about one "
            "queue, limit key or owner",
            hint=f"give one of --queue, --key, --owner (without one: --{default})",
        )
    return chosen[0] if chosen else default


def _described(limit: Limit) -> str:
    return f"{limit.scope} {limit.name}"


def _scope_options(command: Any) -> Any:
    for option in reversed(
        [
            click.option("--queue", "is_queue", is_flag=True, help="NAME is a queue."),
            click.option(
                "--key",
                "is_key",
                is_flag=True,
                help="NAME is a limit key (a job's limit_key, else its kind). [default]",
            ),
            click.option(
                "--owner", "is_owner", is_flag=True, help="NAME is an owner (for --weight)."
            ),
        ]
    ):
        command = option(command)
    return command


@cli.group("limits")
def limits_group() -> None:
    """Caps, rates and weights that every worker obeys, kept in the database.

    A row is about a queue (--queue), a limit key (--key, the default: a job's limit_key,
    else its kind) or an owner (--owner, whose weight in the fair share it holds). See
    docs/scheduling.md.
    """


@limits_group.command("set")
@click.argument("name")
@_scope_options
@click.option(
    "--max-running",
    type=click.IntRange(1, MAX_LIMIT),
    metavar="N",
    help="At most N jobs of it running at once, across every worker.",
)
@click.option(
    "--per-owner",
    type=click.IntRange(1, MAX_LIMIT),
    metavar="N",
    help="At most N of them running at once per owner.",
)
@click.option(
    "--rate",
    type=click.IntRange(1, MAX_LIMIT),
    metavar="N",
    help="At most N starts per period (with --per).",
)
@click.option("--per", type=DURATION, help="The period of --rate (1m, 1h).")
@click.option(
    "--weight",
    type=float,
    metavar="W",
    help="With --owner: its share in the fair share (2: two turns where others have one).",
)
@click.option(
    "--clear",
    "cleared",
    multiple=True,
    metavar="SETTING",
    help=f"Remove a setting (repeatable): {_CLEARABLE_SHOWN}.",
)
@pass_env
def limits_set_command(
    env: Env,
    name: str,
    is_queue: bool,
    is_key: bool,
    is_owner: bool,
    max_running: int | None,
    per_owner: int | None,
    rate: int | None,
    per: timedelta | None,
    weight: float | None,
    cleared: tuple[str, ...],
) -> None:
    """Create or change the limits of NAME (a limit key unless --queue or --owner).

    Only the settings given change. For example `jobqueue limits set image --per-owner 2`
    lets each user run two image jobs at once; `jobqueue limits set defapi --max-running 5
    --rate 60 --per 1m` caps a provider account; `jobqueue limits set pro-user --owner
    --weight 2` gives an owner two turns where others have one.
    """
    scope = _scope(is_queue, is_key, is_owner, default="key")
    settings = _settings(scope, max_running, per_owner, rate, per, weight, cleared)
    with env.queue() as q:
        limit = q.set_limit(name, scope=scope, **settings)
    out().print(f"{_described(limit)}: {limit_settings(limit)}", markup=False, soft_wrap=True)


def _settings(
    scope: str,
    max_running: int | None,
    per_owner: int | None,
    rate: int | None,
    per: timedelta | None,
    weight: float | None,
    cleared: Sequence[str],
) -> dict[str, Any]:
    """The keyword settings of `set_limit`, or our error naming the option at fault."""
    given: dict[str, Any] = {
        name: value
        for name, value in (
            ("max_running", max_running),
            ("max_running_per_owner", per_owner),
            ("rate", rate),
            ("per", per),
            ("weight", weight),
        )
        if value is not None
    }
    if (rate is None) != (per is None):
        raise PayloadError(
            "--rate needs --per (and --per needs --rate): a rate counts starts over a period",
            hint="e.g. --rate 60 --per 1m for at most 60 starts a minute",
        )
    if per is not None and not 0 < per.total_seconds() <= MAX_RATE_PERIOD:
        raise PayloadError(
            f"--per must be longer than 0s and at most {MAX_RATE_PERIOD / 86400:.0f}d, "
            f"not {format_duration(per)}",
            hint="e.g. --per 1m",
        )
    if weight is not None and not 0.001 <= weight <= 1000:
        raise PayloadError(
            f"--weight must be between 0.001 and 1000, not {weight:g}",
            hint="2 gives an owner two turns where others have one; 0.5 one in two rounds",
        )
    if scope == "owner" and set(given) - {"weight"}:
        raise PayloadError(
            "an owner's row holds only a --weight",
            hint="cap each owner's running jobs on a queue or key instead: "
            "jobqueue limits set KEY --per-owner 2",
        )
    if scope != "owner" and weight is not None:
        raise PayloadError(
            f"--weight belongs to an owner, not to a {scope}",
            hint="jobqueue limits set OWNER_ID --owner --weight 2",
        )
    clear: dict[str, None] = {}
    for raw in cleared:
        setting = raw.strip().lower().replace("_", "-")
        if setting not in CLEARABLE:
            raise PayloadError(
                f"--clear {raw!r}: there is no such setting",
                hint=f"the settings are {_CLEARABLE_SHOWN}",
            )
        clear.update(dict.fromkeys(CLEARABLE[setting]))
    both = set(given) & set(clear)
    if both:
        raise PayloadError(
            f"--clear {', '.join(sorted(both)).replace('_', '-')} while setting it",
            hint="either set a value or clear it",
        )
    if scope == "owner" and set(clear) - {"weight"}:
        raise PayloadError("an owner's row holds only a weight", hint="use --clear weight")
    if scope != "owner" and "weight" in clear:
        raise PayloadError(
            f"a {scope} has no weight to clear", hint="a weight belongs to an owner: --owner"
        )
    settings = {**given, **clear}
    if not settings:
        raise PayloadError(
            "nothing to set",
            hint="give --max-running, --per-owner, --rate with --per, --weight (--owner) "
            "or --clear SETTING",
        )
    return settings


@limits_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@pass_env
def limits_show_command(env: Env, as_json: bool) -> None:
    """Show every limits row: its caps, rate, weight and pause, and the jobs of its queue or
    key running and pending now."""
    with env.queue() as q:
        limits = q.list_limits()
    if as_json:
        echo_json([limit.to_dict() for limit in limits])
    elif not limits:
        out().print(
            "No limits set. Add one with `jobqueue limits set NAME --max-running N`.",
            markup=False,
        )
    else:
        out().print(render_limits(limits))


@limits_group.command("remove")
@click.argument("name")
@_scope_options
@pass_env
def limits_remove_command(
    env: Env, name: str, is_queue: bool, is_key: bool, is_owner: bool
) -> None:
    """Delete the limits row of NAME (a limit key unless --queue or --owner), its pause
    with it. Exit code 1 when there was none."""
    scope = _scope(is_queue, is_key, is_owner, default="key")
    with env.queue() as q:
        removed = q.remove_limit(name, scope=scope)
    if not removed:
        hint = "`jobqueue limits show` lists them"
        if scope == "key":
            hint += "; a queue's row needs --queue, an owner's --owner"
        raise CommandFailed(f"no limits row for {scope} {name!r} — {hint}")
    out().print(f"removed the limits of {scope} {name}", markup=False, soft_wrap=True)


# -- pause, resume -----------------------------------------------------------------------


@cli.command("pause")
@click.argument("name")
@click.option("--key", "is_key", is_flag=True, help="NAME is a limit key, not a queue.")
@click.option(
    "--for",
    "duration",
    type=DURATION,
    help="Resume by itself after this (10m, 2h). [default: never]",
)
@click.option("--reason", help="Why, shown by `check`, `stats`, `list` and `limits show`.")
@pass_env
def pause_command(
    env: Env, name: str, is_key: bool, duration: timedelta | None, reason: str | None
) -> None:
    """Pause the queue NAME (or with --key, a limit key) for every worker.

    Its pending jobs wait, without spending attempts; running ones finish. A pause already
    running keeps its start, and the later of two ends wins.
    """
    if duration is not None and duration.total_seconds() <= 0:
        raise PayloadError(
            "--for must be longer than 0s",
            hint="e.g. --for 10m, or leave it out to pause until `jobqueue resume`",
        )
    scope = "key" if is_key else "queue"
    with env.queue() as q:
        limit = q.pause(name, scope=scope, duration=duration, reason=reason)
    out().print(
        f"paused {pause_text(limit)}: {limit.pending} pending job(s) wait, "
        f"{limit.running} running finish",
        markup=False,
        soft_wrap=True,
    )


@cli.command("resume")
@click.argument("name")
@click.option("--key", "is_key", is_flag=True, help="NAME is a limit key, not a queue.")
@pass_env
def resume_command(env: Env, name: str, is_key: bool) -> None:
    """End the pause of the queue NAME (or with --key, a limit key).

    Its jobs enter the line again within about a second of a worker's next round. A queue
    or key that is not paused is left as it is (exit code 0).
    """
    scope = "key" if is_key else "queue"
    with env.queue() as q:
        was = next((lim for lim in q.list_limits() if (lim.scope, lim.name) == (scope, name)), None)
        limit = q.resume(name, scope=scope)
    console = out()
    if was is None or not was.paused:
        console.print(f"{scope} {name} is not paused", markup=False, soft_wrap=True)
        return
    console.print(
        f"resumed {scope} {name}: its {limit.pending} pending job(s) may start",
        markup=False,
        soft_wrap=True,
    )
