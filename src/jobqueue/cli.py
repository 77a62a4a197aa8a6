"""The ``jobqueue`` command: set up the database, run workers, create and inspect jobs.

Every subcommand hangs off one click group, `cli`; add one with ``@cli.command()``. Errors
are turned into exit codes and one line on stderr in a single place (`JobqueueGroup` and
`main`), so subcommands simply raise our exceptions:

- 0: success;
- 1: a job failed, was cancelled or was not found, or a move was refused;
- 2: usage or configuration error (bad option or JSON, unreachable database, schema not
  installed, missing settings).

``--debug`` adds tracebacks and debug logs. ``.env`` in the working directory is read
before the options (`jobqueue.config.load_env_file`, the rule `Settings` follows too), so
``JOBQUEUE_DATABASE_URL`` may live there.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from rich.console import Console

from ._console import closing, run_async
from .database import DEFAULT_URL, URL_ENV, describe_database, redact
from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidJobId,
    InvalidTransition,
    JobFailed,
    JobQueueError,
    PayloadError,
    PermissionDenied,
    SchemaNotInstalled,
)
from .schema import DEFAULT_QUEUE, DEFAULT_TABLE, FINAL_STATUSES, Job, Status

if TYPE_CHECKING:
    from .config import Settings
    from .generators.base import Generator
    from .queue import AsyncJobQueue, JobQueue
    from .registry import Registry

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

#: Which of our errors are the user's set-up or input (2) rather than a job's outcome (1).
#: `InvalidJobId` is a `JobNotFound` (1), but a malformed id is the caller's input: 2.
USAGE_ERRORS: tuple[type[JobQueueError], ...] = (
    InvalidJobId,
    PayloadError,
    ConfigurationError,
    SchemaNotInstalled,
    DatabaseUnavailable,
    PermissionDenied,
)


def exit_code_for(exc: JobQueueError) -> int:
    """2 for set-up and input errors, 1 for everything about jobs themselves."""
    return EXIT_USAGE if isinstance(exc, USAGE_ERRORS) else EXIT_FAILED


def one_line(text: str) -> str:
    """Collapse whitespace and hide passwords: an error must fit on one line, safely."""
    return " ".join(redact(text).split())


def error_line(exc: JobQueueError) -> str:
    line = one_line(exc.message)
    return f"{line} — {one_line(exc.hint)}" if exc.hint else line


class CommandFailed(click.ClickException):
    """A subcommand's error about a job, already worded: one line, exit code 1."""

    exit_code = EXIT_FAILED


class CommandMisused(CommandFailed):
    """A subcommand's set-up or input error, already worded: one line, exit code 2."""

    exit_code = EXIT_USAGE


def command_error(message: str, exit_code: int) -> CommandFailed:
    return CommandMisused(message) if exit_code == EXIT_USAGE else CommandFailed(message)


class JobqueueGroup(click.Group):
    """The command group. Its `invoke` is the one place where errors become exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except JobQueueError as exc:
            if debug:
                traceback.print_exc()
            raise command_error(error_line(exc), exit_code_for(exc)) from exc
        except Exception as exc:
            if debug:
                raise
            raise CommandFailed(
                f"unexpected {type(exc).__name__}: {one_line(str(exc))} — "
                "rerun with --debug to see the traceback"
            ) from exc


# -- durations --------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """``45s``, ``30m``, ``12h``, ``1d``, ``2w``, combinations such as ``1h30m``, or a plain
    number of seconds."""
    value = text.strip().lower()
    try:
        plain = float(value)
    except ValueError:
        pass
    else:
        if plain >= 0 and plain == plain and plain != float("inf"):
            return timedelta(seconds=plain)
        raise ValueError(f"{text!r} is not a duration")
    if not _DURATION.fullmatch(value):
        raise ValueError(f"{text!r} is not a duration")
    return timedelta(
        seconds=sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(value))
    )


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2
    """A click type for `parse_duration`; a bad value is a usage error (exit 2)."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except (ValueError, OverflowError):
            self.fail(f"{value!r} is not a duration such as 45s, 30m, 12h, 1d or 7d", param, ctx)


DURATION = Duration()


def _format_duration(delta: timedelta) -> str:
    secs = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size and secs % size == 0:
            return f"{int(secs // size)}{unit}"
    return f"{secs:g}s"


# -- context ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Env:
    """The global options, handed to every subcommand."""

    url: str
    table: str
    schema: str | None
    debug: bool
    #: True when --database-url was typed on the command line (not taken from the
    #: environment): the demo uses its own SQLite file unless told otherwise this way.
    url_given: bool

    @property
    def where(self) -> str:
        """The database and table, safe to print (no password)."""
        table = f"{self.schema}.{self.table}" if self.schema else self.table
        return f"{describe_database(self.url)} (table {table})"

    def require_database(self) -> None:
        """Refuse a SQLite file that does not exist: connecting would create an empty one
        (a typo in --database-url would leave junk files); only `migrate` creates it."""
        from .checks import sqlite_file_missing

        missing = sqlite_file_missing(self.url)
        if missing is not None:
            raise SchemaNotInstalled(
                f"the jobs table is not installed: the database file {missing} does not exist",
                hint="run `jobqueue migrate` to create it, or check --database-url",
            )

    def queue(self) -> JobQueue:
        from .queue import JobQueue

        self.require_database()
        return JobQueue(self.url, table=self.table, schema=self.schema)

    def async_queue(self) -> AsyncJobQueue:
        from .queue import AsyncJobQueue

        self.require_database()
        return AsyncJobQueue(self.url, table=self.table, schema=self.schema)


@cache
def out() -> Console:
    """The console for results (stdout)."""
    return Console(highlight=False)


def _json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _setup_logging(debug: bool, console: Console) -> None:
    """Rich log lines on a terminal; plain one-line records when piped (journald, files)."""
    handler: logging.Handler
    if console.is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_path=False, rich_tracebacks=debug)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True
    )
    if not debug:
        for noisy in ("httpx", "httpcore", "sqlalchemy", "aiosqlite", "asyncio"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


# -- the group --------------------------------------------------------------------------


@click.group(
    cls=JobqueueGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--database-url",
    envvar=URL_ENV,
    show_envvar=True,
    metavar="URL",
    help=f"Database to use, e.g. postgresql://user:pass@host/db. [default: {DEFAULT_URL}]",
)
@click.option(
    "--table",
    envvar="JOBQUEUE_TABLE",
    show_envvar=True,
    default=DEFAULT_TABLE,
    show_default=True,
    help="Name of the jobs table.",
)
@click.option(
    "--schema",
    envvar="JOBQUEUE_SCHEMA",
    show_envvar=True,
    default=None,
    help="Database schema of the jobs table (PostgreSQL). [default: the search path]",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="jobqueue", prog_name="jobqueue")
@click.pass_context
def cli(
    ctx: click.Context, database_url: str | None, table: str, schema: str | None, debug: bool
) -> None:
    """jobqueue: a database-backed job queue for slow work such as AI image generation.

    Start with `jobqueue demo`. For your own database: `jobqueue migrate`, then
    `jobqueue worker`, then `jobqueue generate "a prompt"` and `jobqueue status ID --watch`.
    """
    from .schema import validate_identifier

    validate_identifier(table, "table name")
    if schema:
        validate_identifier(schema, "schema name")
    source = ctx.get_parameter_source("database_url")
    url_given = database_url is not None and source is click.core.ParameterSource.COMMANDLINE
    if database_url and (url_given or ctx.invoked_subcommand not in _NO_URL_FROM_ENV):
        _check_url(database_url, url_given)
    ctx.obj = Env(
        url=database_url or DEFAULT_URL,
        table=table,
        schema=schema or None,
        debug=debug,
        url_given=url_given,
    )


pass_env = click.make_pass_decorator(Env)


#: Commands that do not use JOBQUEUE_DATABASE_URL (only a --database-url typed before them).
_NO_URL_FROM_ENV = ("demo", "sql")


def _check_url(url: str, given: bool) -> None:
    """A URL that cannot be parsed is a usage error before any command runs, named by
    where it came from (the option, or the environment / .env)."""
    from .database import normalise_url

    try:
        normalise_url(url, asynchronous=False)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{'--database-url' if given else URL_ENV}: {exc.message}", hint=exc.hint
        ) from None


# -- set-up: migrate, sql, check --------------------------------------------------------


@cli.command("migrate")
@pass_env
def migrate_command(env: Env) -> None:
    """Create or upgrade the jobs table (safe to run again)."""
    from .migrations import migrate, schema_state

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
    from .migrations import sql

    # With --supabase: the migrations and the RLS set-up, in one transaction.
    text = _supabase_sql(env, worker_role) if supabase else sql(table=env.table, schema=env.schema)
    click.echo(text.rstrip())


def _supabase_sql(env: Env, worker_role: str) -> str:
    try:
        from .rls import supabase_script
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
    """Diagnose the set-up: database, schema, access, stuck jobs, live workers, generator.

    One line per check, with a fix for each problem. Exit code 0 when nothing failed,
    1 otherwise (warnings do not fail).
    """
    from .checks import run_checks

    checks = run_checks(env.url, table=env.table, schema=env.schema)
    console = out()
    for c in checks:
        fix = f" — fix: {c.fix}" if c.fix and c.state != "ok" else ""
        if c.state == "ok" and c.fix:
            fix = f" — {c.fix}"
        line = one_line(f"{c.detail}{fix}")
        console.print(f"{_MARKS[c.state]} {c.name:<11} {_escape(line)}", soft_wrap=True)
    if any(c.state == "fail" for c in checks):
        raise click.exceptions.Exit(EXIT_FAILED)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


# -- workers ----------------------------------------------------------------------------


def _app_option(help_text: str) -> Callable[[F], F]:
    """``--app``: the application's `Registry` of job kinds (see `jobqueue.loading`)."""
    return click.option(
        "--app", metavar="MODULE[:NAME]", envvar="JOBQUEUE_APP", show_envvar=True, help=help_text
    )


def _require_schema(env: Env) -> None:
    """Refuse to start work on a database without the current schema (exit 2, one line)."""
    from .migrations import schema_state

    env.require_database()
    try:
        state = schema_state(env.url, table=env.table, schema=env.schema)
    except PermissionDenied:
        # A worker role granted the jobs table only may not read our version table; its
        # first claim will say plainly if the jobs table itself is missing or forbidden.
        return
    if not state.installed:
        raise SchemaNotInstalled(f"the jobs table {env.table!r} is not installed in {env.where}")
    if not state.up_to_date:
        raise SchemaNotInstalled(
            f"the jobs table {env.table!r} is at revision {state.current}, "
            f"this jobqueue needs {state.head}"
        )


@cli.command("worker")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Jobs run at once.",
)
@click.option(
    "--queue",
    "queues",
    multiple=True,
    help="Queue to take jobs from (repeat for several). [default: the queues of the kinds "
    f"it runs, as registered (image jobs: {DEFAULT_QUEUE})]",
)
@click.option(
    "--lease",
    type=DURATION,
    default="30s",
    show_default=True,
    help="How long a claimed job stays ours without a heartbeat.",
)
@click.option(
    "--poll-interval",
    type=DURATION,
    default="1s",
    show_default=True,
    help="How often to look for jobs when not woken by LISTEN/NOTIFY.",
)
@click.option(
    "--grace-period",
    type=DURATION,
    default="30s",
    show_default=True,
    help="On SIGTERM/SIGINT, how long running jobs may finish before they are released.",
)
@click.option(
    "--no-listen",
    is_flag=True,
    help="Do not use LISTEN/NOTIFY: needed behind transaction-mode poolers such as "
    "PgBouncer or Supabase's pooler on port 6543 (add ?prepare_threshold=none to the URL too).",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the log to this file.",
)
@click.option(
    "--job-timeout",
    type=DURATION,
    help="Fail an attempt whose handler runs longer than this (it is retried by its policy).",
)
@click.option("--worker-id", help="Name shown in locked_by. [default: host:pid:random]")
@_app_option(
    "Your job kinds: a jobqueue Registry in MODULE, MODULE:NAME, or MODULE:FUNCTION (called "
    "with no arguments); the current directory is importable. Image jobs are added unless "
    "the registry registers `image` or says Registry(image=False)."
)
@click.option(
    "--all-kinds",
    is_flag=True,
    help="Also claim jobs of kinds this worker has no handler for, and fail them at once "
    "(logged once per kind), instead of leaving them to other workers.",
)
@pass_env
def worker_command(
    env: Env,
    concurrency: int,
    queues: tuple[str, ...],
    lease: timedelta,
    poll_interval: timedelta,
    grace_period: timedelta,
    no_listen: bool,
    log_file: Path | None,
    job_timeout: timedelta | None,
    worker_id: str | None,
    app: str | None,
    all_kinds: bool,
) -> None:
    """Run a worker until SIGTERM or Ctrl-C.

    Image jobs go to the generator chosen by MOCK_AI and DEFAPI_API_KEY (environment or
    .env); your own kinds come from --app (see docs/jobs.md). A first signal stops claiming
    and lets running jobs finish within the grace period (unfinished ones go back to
    pending); a second stops at once.
    """
    from .config import Settings

    settings = Settings.from_env()
    registry, generator = _worker_kinds(app, settings)  # fails here, before any claim
    from contextlib import suppress

    # An unreachable database does not stop a worker: it retries until the database
    # answers, then checks its tables itself (a missing one stops it then).
    with suppress(DatabaseUnavailable):
        _require_schema(env)
    console = Console(stderr=True, highlight=False)
    listen = not no_listen
    queues = queues or registry.queues
    runs = settings.describe() if generator else "generator: none (no image kind)"
    if app:
        runs += f"; app {app} (kinds {', '.join(registry)})"
    polling = f"polling every {_format_duration(poll_interval)}"
    if _backend(env.url) == "postgresql":  # LISTEN/NOTIFY is PostgreSQL's alone
        polling = "LISTEN/NOTIFY on" if listen else f"LISTEN/NOTIFY off, {polling}"
    console.print(
        f"jobqueue worker: database {env.where}; {runs}; "
        f"queues {', '.join(queues)}; concurrency {concurrency}; {polling}",
        soft_wrap=True,
        markup=False,
    )
    if listen and _looks_like_transaction_pooler(env.url):
        console.print(
            "note: this port usually belongs to a transaction-mode pooler (Supabase 6543, "
            "PgBouncer 6432), where LISTEN/NOTIFY and prepared statements break: if it is one, "
            "use --no-listen and ?prepare_threshold=none",
            soft_wrap=True,
            markup=False,
        )
    _setup_logging(env.debug, console)
    run_async(
        _run_worker(
            env,
            registry,
            generator=generator,
            all_kinds=all_kinds,
            concurrency=concurrency,
            queues=queues,
            lease=lease.total_seconds(),
            poll_interval=poll_interval.total_seconds(),
            grace_period=grace_period.total_seconds(),
            listen=listen,
            log_file=log_file,
            job_timeout=None if job_timeout is None else job_timeout.total_seconds(),
            worker_id=worker_id,
        )
    )


def _looks_like_transaction_pooler(url: str) -> bool:
    """Supabase's transaction-mode pooler listens on 6543 (PgBouncer's default is 6432)."""
    from sqlalchemy import make_url

    u = make_url(url)
    return u.get_backend_name() == "postgresql" and u.port in (6543, 6432)


def _backend(url: str) -> str:
    """``postgresql`` or ``sqlite`` (the URL was checked when the command started)."""
    from .database import normalise_url

    return normalise_url(url, asynchronous=False).get_backend_name()


def _worker_kinds(app: str | None, settings: Settings) -> tuple[Registry, Generator | None]:
    """The kinds a `jobqueue worker` runs: the app's registry (if any) plus ``image`` with
    the settings' generator, unless the app registers ``image`` or says image=False."""
    from .generators.base import IMAGE_KIND
    from .loading import load_registry
    from .registry import Registry

    registry = load_registry(app) if app else Registry()
    if not registry.image or IMAGE_KIND in registry:
        if not registry:
            raise ConfigurationError(
                f"--app {app} registers no job kind and says image=False: nothing to run",
                hint="register a kind with @jobs.handler(...) or drop image=False",
            )
        return registry, None
    try:
        generator = settings.generator()
    except ConfigurationError as exc:
        if app:  # the app may not want image jobs at all
            exc.hint = f"{exc.hint}; or, if your app has no image jobs, use Registry(image=False)"
        raise
    return registry.with_default(IMAGE_KIND, generator), generator


async def _run_worker(
    env: Env, registry: Registry, generator: Generator | None, **options: Any
) -> None:
    """Serve ``registry`` (which holds ``generator``'s image kind, if any) until stopped;
    the generator is closed afterwards."""
    from .worker import Worker

    queue = env.async_queue()
    try:
        worker = Worker(queue, registry, **options)
        worker.install_signal_handlers()
        await worker.run()
    finally:
        closing()
        if generator is not None:
            await generator.aclose()
        await queue.close()


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option(
    "--no-worker", is_flag=True, help="Serve the API only; run `jobqueue worker` elsewhere."
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Jobs the in-process worker runs at once.",
)
@click.option(
    "--identify",
    metavar="MODULE:FUNCTION",
    help="async def f(request) -> owner id or None, from your app's sessions. "
    "[default: an anonymous cookie per browser (demo mode)]",
)
@pass_env
def serve_command(
    env: Env, host: str, port: int, no_worker: bool, concurrency: int, identify: str | None
) -> None:
    """Run the HTTP job API and the demo page (needs `pip install 'jobqueue[web]'`).

    Open http://HOST:PORT/ for the demo. By default a worker runs in the same process;
    with --no-worker only the API runs (production: scale `jobqueue worker` separately).
    """
    try:
        from .web.serve import listen_on, load_identify, serve
    except ImportError as exc:
        raise ConfigurationError(
            f"the web extra is not installed ({exc.name} is missing)",
            hint="pip install 'jobqueue[web]'",
        ) from None
    from .config import Settings

    hook = load_identify(identify) if identify else None
    settings = Settings.from_env()
    generator = None if no_worker else settings.generator()
    _require_schema(env)
    sock = listen_on(host, port)  # before the worker starts, and before any output
    console = Console(stderr=True, highlight=False)
    _setup_logging(env.debug, console)
    worker = "off"
    if generator is not None:
        worker = f"on ({settings.describe()}), concurrency {concurrency}"
    console.print(
        f"jobqueue serve: http://{host}:{port}/ database {env.where}; worker {worker}",
        soft_wrap=True,
        markup=False,
    )

    async def run() -> None:
        queue = env.async_queue()
        try:
            await serve(
                queue, host=host, port=port, generator=generator, concurrency=concurrency,
                identify=hook, log_level="debug" if env.debug else "info", sock=sock,
            )  # fmt: skip
        finally:
            closing()
            if generator is not None:
                await generator.aclose()
            await queue.close()

    run_async(run())


# -- producers: enqueue, generate -------------------------------------------------------


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
    max_attempts: int,
    owner: str | None,
    idempotency_key: str | None,
    watch: bool,
    as_json: bool,
) -> None:
    with env.queue() as q:
        job = q.enqueue(
            kind,
            payload,
            queue=queue,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
            owner_id=owner,
            idempotency_key=idempotency_key,
        )
        if as_json and not watch:
            _json(job.to_dict())
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
@_app_option(
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
    from .generators.base import IMAGE_KIND, GenerationRequest

    if kind == IMAGE_KIND:  # the one kind whose payload we know: refuse it before the worker
        GenerationRequest.from_payload(data)
    _create(env, kind, data, **options)


def _with_app_defaults(app: str, kind: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with the kind's queue and max attempts from the app's registry where the
    command line does not give them; a warning when no worker of this app runs ``kind``."""
    from .loading import load_registry

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
        for name in ("queue", "max_attempts")
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
    from .generators.base import IMAGE_KIND, GenerationRequest

    provider_options = _key_values(extra)
    try:
        request = GenerationRequest(prompt, model, images, provider_options)
    except PayloadError as exc:  # the prompt: show how to give it here
        hint = 'e.g. jobqueue generate "a red fox in the snow"'
        raise PayloadError(exc.message, hint=hint) from None
    _create(env, IMAGE_KIND, request.to_payload(), **options)


# -- looking at jobs: status, list, stats -----------------------------------------------


def _label(job: Job) -> str:
    prompt = job.payload.get("prompt") if isinstance(job.payload, dict) else None
    return str(prompt) if prompt else f"{job.kind} {job.id}"


def _watch(q: JobQueue, job: Job, *, interval: float, as_json: bool) -> Job:
    """Poll until the job is final, with a live bar (or quietly for --json)."""
    from .display import JobBars

    lookout = _no_worker_lookout()
    if as_json:
        final = q.wait(job.id, interval=interval, **lookout)
        _json(final.to_dict())
    else:
        with JobBars(out()) as bars:
            bars.track(job, _label(job))
            final = q.wait(job.id, interval=interval, on_change=bars.update, **lookout)
        out().print(f"{final.status.value}: {_outcome(final)}", soft_wrap=True, markup=False)
    _raise_if_failed(final)
    return final


#: Seconds a watched job may wait before the watch looks for a live worker serving it
#: (`jobqueue.presence.NO_WORKER_AFTER` unless set; "off" turns the look off).
NO_WORKER_AFTER_ENV = "JOBQUEUE_NO_WORKER_AFTER"


def _no_worker_lookout() -> dict[str, Any]:
    """The `wait` options that print a warning (stderr) when no live worker serves a
    watched job, after the time ``JOBQUEUE_NO_WORKER_AFTER`` sets."""
    import os

    from .presence import NO_WORKER_AFTER

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


def _outcome(job: Job) -> str:
    from .display import job_summary, seconds

    took = f" after {seconds(job.duration)}" if job.duration is not None else ""
    return f"job {job.id}{took} {job_summary(job)}".rstrip()


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
    """Show a job. Exit code 1 if it failed or was cancelled."""
    from .display import job_details

    with env.queue() as q:
        job = q.get(job_id)
        if watch and not job.is_final:
            _watch(q, job, interval=max(interval.total_seconds(), 0.05), as_json=as_json)
            return
    if as_json:
        _json(job.to_dict())
    else:
        out().print(job_details(job))
    _raise_if_failed(job)


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
    (long results cut short); --wide for all of them, --json for everything."""
    from .display import jobs_table

    with env.queue() as q:
        jobs = q.list(
            status=list(statuses) or None,
            owner_id=owner,
            queue=queue,
            kind=kind,
            since=since,
            limit=limit,
        )
    if as_json:
        _json([j.to_dict() for j in jobs])
    elif not jobs:
        out().print("No jobs match.")
    else:
        console = out()
        table = jobs_table(jobs, width=console.width, wide=wide)
        if wide:  # rows as long as they are, not squeezed into the terminal
            unbounded = console.options.update_width(1_000_000)
            full = console.measure(table, options=unbounded).maximum
            console = Console(highlight=False, width=max(console.width, full))
        console.print(table)


@cli.command("stats")
@click.option(
    "--since",
    type=DURATION,
    default="1d",
    show_default=True,
    help="Jobs created within this time.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@pass_env
def stats_command(env: Env, since: timedelta, as_json: bool) -> None:
    """Count and average duration (creation to finish) of jobs per status."""
    from .display import stats_table

    with env.queue() as q:
        stats = q.stats(since)
    if as_json:
        _json(
            [
                {"status": s.status.value, "count": s.count, "avg_duration_sec": s.avg_duration_sec}
                for s in stats
            ]
        )
    else:
        out().print(stats_table(stats, title=f"Jobs created in the last {_format_duration(since)}"))


# -- changing jobs: cancel, retry, reap, prune ------------------------------------------


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
    """Queue a failed or cancelled job again (one more attempt)."""
    with env.queue() as q:
        job = q.retry(job_id)
    out().print(
        f"job {job.id} is pending again (attempt {job.attempts + 1} of {job.max_attempts})",
        markup=False,
    )


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
        f"deleted {count} finished job(s) older than {_format_duration(older_than)}",
        markup=False,
    )


# -- live workers -----------------------------------------------------------------------


@cli.command("workers")
@click.option("--json", "as_json", is_flag=True, help="Print the workers as JSON.")
@pass_env
def workers_command(env: Env, as_json: bool) -> None:
    """List the live workers: their queues, kinds, concurrency and last heartbeat.

    A worker is live while its heartbeat is recent (it beats every third of its lease and
    counts for two leases after a beat); crashed workers drop off by themselves.
    """
    from .display import workers_table

    with env.queue() as q:
        workers = q.live_workers()
    if as_json:
        _json([w.to_dict() for w in workers])
    elif not workers:
        out().print("No live worker. Start one with `jobqueue worker`.", markup=False)
    else:
        out().print(workers_table(workers))


# -- the demo ---------------------------------------------------------------------------


@cli.command("demo")
@click.option(
    "--jobs",
    type=click.IntRange(1, 100),
    default=8,
    show_default=True,
    help="How many image jobs to enqueue.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 100),
    default=4,
    show_default=True,
    help="Jobs the worker runs at once.",
)
@click.option(
    "--delay",
    type=click.FloatRange(0, 60),
    default=3.0,
    show_default=True,
    help="Seconds each mock generation takes.",
)
@pass_env
def demo_command(env: Env, jobs: int, concurrency: int, delay: float) -> None:
    """Watch jobs run: a batch of mock image jobs on SQLite, a worker in this process.

    Uses ./jobqueue-demo.db and leaves nothing else behind. To use another database, name
    it before the command: `jobqueue --database-url URL demo` (JOBQUEUE_DATABASE_URL and
    .env are ignored here, so the demo never writes into your own database by accident).
    """
    from .demo import DEMO_URL, run_demo

    url = env.url if env.url_given else DEMO_URL
    results = run_async(
        run_demo(
            url,
            table=env.table,
            schema=env.schema,
            jobs=jobs,
            concurrency=concurrency,
            delay=delay,
            console=out(),
        )
    )
    if any(j.status is not Status.COMPLETED for j in results):
        raise click.exceptions.Exit(EXIT_FAILED)


# -- entry point ------------------------------------------------------------------------


def cli_option_names() -> set[str]:
    """The options of `cli` itself (``--database-url``, ``--table`` …)."""
    return {name for param in cli.params for name in getattr(param, "opts", ())}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script: run `cli` and turn what it raises into one line and an exit code."""
    from .config import load_env_file  # the one .env rule, shared with Settings.from_env

    load_env_file()
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="jobqueue",
            standalone_mode=False,
        )
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "jobqueue"
        fix = f"see `{where} --help`"
        if isinstance(exc, click.NoSuchOption) and exc.option_name in cli_option_names():
            command = where.removeprefix("jobqueue ")
            fix = f"it goes before the command: jobqueue {exc.option_name} … {command}"
        click.echo(f"Error: {one_line(exc.format_message())} — {fix}", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"Error: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:  # Ctrl-C (or EOF at a prompt)
        from ._console import interrupted

        interrupted()
    sys.exit(code if isinstance(code, int) else EXIT_OK)
