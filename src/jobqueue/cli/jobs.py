"""Commands about single jobs: create them (``enqueue``, ``generate``), look at them
(``status``, ``list``), change them (``cancel``, ``retry``), and follow one until it ends.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from ..errors import (
    ConfigurationError,
    InvalidTransition,
    JobExpired,
    JobFailed,
    JobQueueError,
    PayloadError,
)
from ..models import DEFAULT_QUEUE, FINAL_STATUSES, Job, Position, Status
from .group import Env, F, app_option, cli, one_line, pass_env
from .output import (
    DURATION,
    JobBars,
    echo_json,
    job_details,
    job_outcome,
    out,
    parse_duration,
    paused_lines,
    paused_now,
    render_jobs,
)

if TYPE_CHECKING:
    from ..queue import JobQueue

# -- creating jobs: enqueue, generate ----------------------------------------------------


def _enqueue_options(command: F) -> F:
    """The options every way of creating a job shares."""
    options = [
        click.option(
            "--queue", default=DEFAULT_QUEUE, show_default=True, help="Queue to put the job in."
        ),
        click.option(
            "--priority",
            type=int,
            default=0,
            show_default=True,
            help="Higher runs first.",
        ),
        click.option("--delay", type=DURATION, help="Run no earlier than this from now (30s, 5m)."),
        click.option(
            "--expires-in",
            type=DURATION,
            help="Start deadline from now (10m): not started by then, the job expires unrun.",
        ),
        click.option(
            "--max-attempts",
            type=click.IntRange(1, 1000),
            default=3,
            show_default=True,
            help="Attempts before the job fails for good.",
        ),
        click.option("--owner", help="Owner id (your user's id), for listing and access."),
        click.option(
            "--idempotency-key",
            help="A second enqueue with the same key (same queue and owner) returns the first job.",
        ),
        click.option(
            "--estimated-cost",
            metavar="AMOUNT",
            help="What the job should cost: reserved against the owner's budget, if any.",
        ),
        click.option("--watch", is_flag=True, help="Follow the job with a progress bar."),
        click.option("--json", "as_json", is_flag=True, help="Print the job as JSON."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _create(
    env: Env,
    kind: str,
    payload: Any,
    *,
    queue: str,
    priority: int,
    delay: timedelta | None,
    expires_in: timedelta | None,
    max_attempts: int,
    owner: str | None,
    idempotency_key: str | None,
    watch: bool,
    as_json: bool,
    estimated_cost: str | None = None,
) -> None:
    with env.queue() as q:
        job = q.enqueue(
            kind,
            payload,
            queue=queue,
            priority=priority,
            delay=delay,
            expires_in=expires_in,
            max_attempts=max_attempts,
            owner_id=owner,
            idempotency_key=idempotency_key,
            estimated_cost=estimated_cost,
        )
        if as_json and not watch:
            echo_json(job.to_dict())
        else:
            # The id alone on its own line, at once, so scripts can capture it.
            click.echo(str(job.id))
        if watch:
            _watch(q, job, interval=1.0, as_json=as_json)


@cli.command("enqueue")
@click.argument("kind")
@click.option(
    "--payload",
    default="{}",
    show_default=True,
    metavar="JSON",
    help="The job's input as JSON.",
)
@_enqueue_options
@app_option(
    "Your job kinds (as for `jobqueue worker --app`): KIND takes its queue and max attempts "
    "from there unless given, and a kind no handler is registered for is warned about."
)
@pass_env
def enqueue_command(env: Env, /, kind: str, payload: str, app: str | None, **options: Any) -> None:
    """Create a job of KIND and print its id at once."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"--payload is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            hint='quote it for the shell, e.g. --payload \'{"prompt": "a cat"}\'',
        ) from None
    if app:
        options = _with_app_defaults(app, kind, options)
    from ..generators.base import IMAGE_KIND, GenerationRequest

    if kind == IMAGE_KIND:  # the one kind whose payload we know: refuse it before the worker
        GenerationRequest.from_payload(data)
    _create(env, kind, data, **options)


def _with_app_defaults(app: str, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the kind's queue and max attempts from the app's registry where the
    command line does not give them; a warning when no worker of this app runs ``kind``."""
    from ..loading import load_registry

    registry = load_registry(app)
    if not registry.serves(kind):
        click.echo(
            f"warning: no handler is registered for job kind {kind!r} in --app {app} (it "
            f"runs: {', '.join(registry.served()) or 'nothing'}); the job waits for a worker "
            "that runs this kind",
            err=True,
        )
        return options
    ctx = click.get_current_context()
    given = {
        name: options[name]
        for name in ("queue", "max_attempts", "estimated_cost")
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    return {**options, **registry.enqueue_options(kind, **given)}


def _key_values(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON (numbers, true) is taken as such."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise PayloadError(
                f"--option {pair!r} is not KEY=VALUE", hint="e.g. --option aspect_ratio=16:9"
            )
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


@cli.command("generate")
@click.argument("prompt")
@click.option("--model", help="Provider model, e.g. google/nano-banana.")
@click.option(
    "--image",
    "images",
    multiple=True,
    metavar="URL",
    help="Input image URL (repeat for several).",
)
@click.option(
    "--option",
    "extra",
    multiple=True,
    metavar="KEY=VALUE",
    help="Provider option such as aspect_ratio=16:9 (repeatable).",
)
@_enqueue_options
@pass_env
def generate_command(
    env: Env,
    /,
    prompt: str,
    model: str | None,
    images: tuple[str, ...],
    extra: tuple[str, ...],
    **options: Any,
) -> None:
    """Create an image generation job for PROMPT and print its id at once."""
    from ..generators.base import IMAGE_KIND, GenerationRequest

    provider_options = _key_values(extra)
    try:
        request = GenerationRequest(prompt, model, images, provider_options)
    except PayloadError as exc:  # the prompt: show how to give it here
        hint = 'e.g. jobqueue generate "a red fox in the snow"'
        raise PayloadError(exc.message, hint=hint) from None
    _create(env, IMAGE_KIND, request.to_payload(), **options)


# -- looking at jobs: status, list ------------------------------------------------------


def _watch(q: JobQueue, job: Job, *, interval: float, as_json: bool) -> Job:
    """Poll until the job is final, with a live bar (or quietly for --json)."""
    lookout = _no_worker_lookout()
    if as_json:
        final = _waited(q, job, interval=interval, **lookout)
        echo_json(final.to_dict())
    else:
        with JobBars(out()) as bars:
            bars.track(job)
            final = _waited(q, job, interval=interval, on_change=bars.update, **lookout)
        out().print(f"{final.status.value}: {job_outcome(final)}", soft_wrap=True, markup=False)
    _raise_if_failed(final)
    return final


def _waited(q: JobQueue, job: Job, **options: Any) -> Job:
    """`JobQueue.wait`, with an expired job returned like every other final one (shown,
    then refused with exit code 1 by `_raise_if_failed`)."""
    try:
        return q.wait(job.id, **options)
    except JobExpired:
        return q.get(job.id)


#: Seconds a watched job may wait before the watch looks for a live worker serving it
#: (`jobqueue.presence.NO_WORKER_AFTER` unless set; "off" turns the look off).
NO_WORKER_AFTER_ENV = "JOBQUEUE_NO_WORKER_AFTER"


def _no_worker_lookout() -> dict[str, Any]:
    """The `wait` options that print a warning (stderr) when no live worker serves a
    watched job, after the time ``JOBQUEUE_NO_WORKER_AFTER`` sets."""
    import os

    from ..operations.waiting import NO_WORKER_AFTER

    raw = os.environ.get(NO_WORKER_AFTER_ENV, "").strip()
    after: float | None = NO_WORKER_AFTER
    if raw.lower() in ("off", "none", "0"):
        after = None
    elif raw:
        try:
            after = parse_duration(raw).total_seconds() or None
        except (ValueError, OverflowError):
            raise ConfigurationError(
                f"{NO_WORKER_AFTER_ENV}={raw!r} is not a duration",
                hint="use e.g. 15s or 2m, or off",
            ) from None

    def warn(message: str) -> None:
        click.echo(f"warning: {one_line(message)}", err=True)

    return {"no_worker_after": after, "on_no_worker": warn}


def _raise_if_failed(job: Job) -> None:
    if job.status in FINAL_STATUSES and job.status is not Status.COMPLETED:
        raise JobFailed.of(job)


@cli.command("status")
@click.argument("job_id", metavar="ID")
@click.option("--watch", is_flag=True, help="Follow the job with a live progress bar until done.")
@click.option(
    "--interval",
    type=DURATION,
    default="1s",
    show_default=True,
    help="With --watch: how often to look.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@pass_env
def status_command(env: Env, job_id: str, watch: bool, interval: timedelta, as_json: bool) -> None:
    """Show a job, and where it stands in the line while it waits or runs (jobs ahead of
    it, estimated wait). Exit code 1 if it failed, was cancelled or expired."""
    with env.queue() as q:
        job = q.get(job_id)
        if watch and not job.is_final:
            _watch(q, job, interval=max(interval.total_seconds(), 0.05), as_json=as_json)
            return
        position = None if job.is_final else _position(q, job)
    if as_json:
        shown = job.to_dict()
        if position is not None:
            shown["position"] = position.to_dict()
        echo_json(shown)
    else:
        out().print(job_details(job, position))
    _raise_if_failed(job)


def _position(q: JobQueue, job: Job) -> Position | None:
    """Where the job stands, or None when it cannot be had (the status still shows)."""
    try:
        return q.position(job.id)
    except JobQueueError as exc:
        click.echo(f"warning: no place in line: {one_line(exc.message)}", err=True)
        return None


@cli.command("list")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status]),
    help="Only jobs in this status (repeatable).",
)
@click.option("--owner", help="Only this owner's jobs.")
@click.option("--queue", help="Only this queue.")
@click.option("--kind", help="Only this kind.")
@click.option("--since", type=DURATION, help="Only jobs created within this time (1d, 12h).")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="At most this many, newest first.",
)
@click.option(
    "--wide", is_flag=True, help="Every column in full, however wide (the terminal wraps it)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@pass_env
def list_command(
    env: Env,
    statuses: tuple[str, ...],
    owner: str | None,
    queue: str | None,
    kind: str | None,
    since: timedelta | None,
    limit: int,
    wide: bool,
    as_json: bool,
) -> None:
    """List jobs, newest first: as many columns as fit the terminal, one line per job
    (long results cut short); --wide for all of them, --json for everything. Below them,
    what is paused."""
    with env.queue() as q:
        jobs = q.list(
            status=list(statuses) or None,
            owner_id=owner,
            queue=queue,
            kind=kind,
            since=since,
            limit=limit,
        )
        limits = q.list_limits(counts=False)
    if as_json:
        echo_json(
            {
                "jobs": [j.to_dict() for j in jobs],
                "paused": [limit.to_dict() for limit in paused_now(limits)],
            }
        )
        return
    console = out()
    if not jobs:
        console.print("No jobs match.")
    else:
        table = render_jobs(jobs, width=console.width, wide=wide)
        if wide:  # rows as long as they are, not squeezed into the terminal
            unbounded = console.options.update_width(1_000_000)
            full = console.measure(table, options=unbounded).maximum
            console = Console(highlight=False, width=max(console.width, full))
        console.print(table)
    for line in paused_lines(limits):
        console.print(line, markup=False)


# -- changing jobs: cancel, retry ------------------------------------------------------


@cli.command("cancel")
@click.argument("job_id", metavar="ID")
@pass_env
def cancel_command(env: Env, job_id: str) -> None:
    """Cancel a pending or running job (its worker stops the handler). A job already
    cancelled is left as it is (exit code 0); a finished one is refused (1)."""
    with env.queue() as q:
        try:
            job = q.cancel(job_id)
        except InvalidTransition:
            job = q.get(job_id)
            if job.status is not Status.CANCELLED:
                raise
            out().print(f"job {job.id} is already cancelled", markup=False)
            return
    out().print(f"cancelled job {job.id}", markup=False)


@cli.command("retry")
@click.argument("job_id", metavar="ID")
@pass_env
def retry_command(env: Env, job_id: str) -> None:
    """Queue a failed, cancelled or expired job again (one more attempt; an expired job
    runs without its deadline, which has passed)."""
    with env.queue() as q:
        job = q.retry(job_id)
    out().print(
        f"job {job.id} is pending again (attempt {job.attempts + 1} of {job.max_attempts})",
        markup=False,
    )
