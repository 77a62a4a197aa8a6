"""The ``jobqueue`` command group: its global options, the `Env` every subcommand is
handed, and the one place where errors become exit codes and one line on stderr.

Subcommands live by topic in `jobqueue.cli.jobs`, `.admin`, `.scheduling` and `.run`,
each added with ``@cli.command()``. Errors are turned into exit codes and one line on
stderr here alone (`JobqueueGroup` and `main`), so subcommands simply raise our exceptions:

- 0: success;
- 1: a job failed, was cancelled or was not found, or a move was refused;
- 2: usage or configuration error (bad option or JSON, unreachable database, schema not
  installed, missing settings).

``--debug`` adds tracebacks and debug logs. ``.env`` in the working directory is read
before the options (`jobqueue.config.load_env_file`, the rule `Settings` follows too), so
``JOBQUEUE_DATABASE_URL`` may live there.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ..drivers.engines import DEFAULT_COMMAND_TIMEOUT, DEFAULT_URL, URL_ENV, describe_database
from ..errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidJobId,
    JobQueueError,
    PayloadError,
    PermissionDenied,
    SchemaNotInstalled,
    redact,
)
from ..models import DEFAULT_TABLE

if TYPE_CHECKING:
    from ..queue import AsyncJobQueue, JobQueue

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


# -- the group --------------------------------------------------------------------------


def _duration(
    value: str | None, param: click.Parameter, ctx: click.Context
) -> timedelta | None:
    """`cli.output.DURATION` for the global options (output imports this module)."""
    from .output import DURATION

    return None if value is None else DURATION.convert(value, param, ctx)


#: Sets --command-timeout from the environment (a worker's unit file, a container).
COMMAND_TIMEOUT_ENV = "JOBQUEUE_COMMAND_TIMEOUT"


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
    #: The queues' ``command_timeout`` (seconds; None: no bound), from --command-timeout.
    command_timeout: float | None = DEFAULT_COMMAND_TIMEOUT

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
        from ..queue import JobQueue

        self.require_database()
        return JobQueue(
            self.url,
            table=self.table,
            schema=self.schema,
            command_timeout=self.command_timeout,
        )

    def async_queue(self, **config: Any) -> AsyncJobQueue:
        """The async queue; ``config`` as `AsyncJobQueue` takes it (``estimated_costs``)."""
        from ..queue import AsyncJobQueue

        self.require_database()
        config.setdefault("command_timeout", self.command_timeout)
        return AsyncJobQueue(self.url, table=self.table, schema=self.schema, **config)


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
@click.option(
    "--command-timeout",
    envvar=COMMAND_TIMEOUT_ENV,
    show_envvar=True,
    callback=lambda ctx, param, value: _duration(value, param, ctx),
    default=None,
    metavar="DURATION",
    help="The longest one database operation waits for PostgreSQL's answer before it fails "
    f"with DatabaseTimeout (a silent network); 0 for no bound. [default: "
    f"{DEFAULT_COMMAND_TIMEOUT:g}s]",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="jobqueue", prog_name="jobqueue")
@click.pass_context
def cli(
    ctx: click.Context,
    database_url: str | None,
    table: str,
    schema: str | None,
    command_timeout: timedelta | None,
    debug: bool,
) -> None:
    """jobqueue: a database-backed job queue for slow work such as AI image generation.

    Start with `jobqueue demo`. For your own database: `jobqueue migrate`, then
    `jobqueue worker`, then `jobqueue generate "a prompt"` and `jobqueue status ID --watch`.
    """
    from ..sql.table import validate_identifier

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
        command_timeout=(
            DEFAULT_COMMAND_TIMEOUT
            if command_timeout is None
            else (command_timeout.total_seconds() or None)
        ),
    )


pass_env = click.make_pass_decorator(Env)


#: Commands that do not use JOBQUEUE_DATABASE_URL (only a --database-url typed before them).
_NO_URL_FROM_ENV = ("demo", "sql")


def _check_url(url: str, given: bool) -> None:
    """A URL that cannot be parsed is a usage error before any command runs, named by
    where it came from (the option, or the environment / .env)."""
    from ..drivers.engines import normalise_url

    try:
        normalise_url(url, asynchronous=False)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"{'--database-url' if given else URL_ENV}: {exc.message}", hint=exc.hint
        ) from None


def app_option(help_text: str) -> Callable[[F], F]:
    """``--app``: the application's `Registry` of job kinds (see `jobqueue.loading`)."""
    return click.option(
        "--app", metavar="MODULE[:NAME]", envvar="JOBQUEUE_APP", show_envvar=True, help=help_text
    )


# -- entry point ------------------------------------------------------------------------


def cli_option_names() -> set[str]:
    """The options of `cli` itself (``--database-url``, ``--table`` …)."""
    return {name for param in cli.params for name in getattr(param, "opts", ())}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script: run `cli` and turn what it raises into one line and an exit code."""
    from ..config import load_env_file  # the one .env rule, shared with Settings.from_env

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
        from .._console import interrupted

        interrupted()
    sys.exit(code if isinstance(code, int) else EXIT_OK)
