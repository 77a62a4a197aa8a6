"""Commands that run until stopped: ``worker``, ``serve`` (the HTTP API, with a worker
unless told otherwise) and ``demo``; and the logging they set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from .._console import closing, run_async
from ..errors import (
    ConfigurationError,
    DatabaseUnavailable,
    PayloadError,
    PermissionDenied,
    SchemaNotInstalled,
)
from ..models import DEFAULT_QUEUE, Status
from .group import EXIT_FAILED, Env, app_option, cli, pass_env
from .output import DURATION, format_duration, out

if TYPE_CHECKING:
    from ..config import Settings
    from ..generators.base import Generator
    from ..worker.registry import Registry


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


def _require_schema(env: Env) -> None:
    """Refuse to start work on a database without the current schema (exit 2, one line)."""
    from ..migrations import schema_state

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
@app_option(
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
@click.option(
    "--no-schedules",
    is_flag=True,
    help="Do not run the scheduler of periodic jobs in this worker (see `jobqueue schedule`).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on this port (needs jobqueue[metrics]; see "
    "docs/metrics.md).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics are served on (0.0.0.0 for every interface).",
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
    no_schedules: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Run a worker until SIGTERM or Ctrl-C.

    Image jobs go to the generator chosen by MOCK_AI and DEFAPI_API_KEY (environment or
    .env); your own kinds come from --app (see docs/jobs.md). A first signal stops claiming
    and lets running jobs finish within the grace period (unfinished ones go back to
    pending); a second stops at once.
    """
    from ..config import Settings

    settings = Settings.from_env()
    if metrics_port is not None:
        from ..observability.metrics import require_prometheus

        require_prometheus()  # before any claim
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
    polling = f"polling every {format_duration(poll_interval)}"
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
            log_file=log_file,
            all_kinds=all_kinds,
            schedules=not no_schedules,
            concurrency=concurrency,
            queues=queues,
            lease=lease.total_seconds(),
            poll_interval=poll_interval.total_seconds(),
            grace_period=grace_period.total_seconds(),
            listen=listen,
            job_timeout=None if job_timeout is None else job_timeout.total_seconds(),
            worker_id=worker_id,
            metrics_at=None if metrics_port is None else (metrics_host, metrics_port),
        )
    )


def _looks_like_transaction_pooler(url: str) -> bool:
    """Supabase's transaction-mode pooler listens on 6543 (PgBouncer's default is 6432)."""
    from sqlalchemy import make_url

    u = make_url(url)
    return u.get_backend_name() == "postgresql" and u.port in (6543, 6432)


def _backend(url: str) -> str:
    """``postgresql`` or ``sqlite`` (the URL was checked when the command started)."""
    from ..drivers.engines import normalise_url

    return normalise_url(url, asynchronous=False).get_backend_name()


def _worker_kinds(app: str | None, settings: Settings) -> tuple[Registry, Generator | None]:
    """The kinds a `jobqueue worker` runs: the app's registry (if any) plus ``image`` with
    the settings' generator, unless the app registers ``image`` or says image=False."""
    from ..generators.base import IMAGE_KIND
    from ..loading import load_registry
    from ..worker.registry import Registry

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
    env: Env,
    registry: Registry,
    generator: Generator | None,
    log_file: Path | None,
    metrics_at: tuple[str, int] | None = None,
    **options: Any,
) -> None:
    """Serve ``registry`` (which holds ``generator``'s image kind, if any) until stopped,
    also logging to ``log_file`` when given, and serving metrics on ``metrics_at`` (host,
    port) when given; the generator is closed afterwards."""
    from ..logs import log_to_file
    from ..worker import Worker

    queue = env.async_queue()
    stop_metrics: Callable[[], None] | None = None
    try:
        if metrics_at is not None:
            from ..observability.metrics import Metrics

            metrics = Metrics(queue, loop=asyncio.get_running_loop())
            stop_metrics = metrics.serve(metrics_at[1], metrics_at[0])
            options["observers"] = [metrics.worker]
        worker = Worker(queue, registry, **options)
        worker.install_signal_handlers()
        with log_to_file(log_file) if log_file is not None else contextlib.nullcontext():
            await worker.run()
    finally:
        if stop_metrics is not None:
            stop_metrics()
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
@click.option(
    "--cancel-abandoned-after",
    type=DURATION,
    metavar="DURATION",
    help="Cancel a pending job once its last event stream closed and none reopened within "
    "this grace period (30s). [default: off]",
)
@click.option(
    "--admin",
    is_flag=True,
    help="Serve the admin dashboard under /admin/ too; without --admin-auth only on a "
    "loopback --host.",
)
@click.option(
    "--admin-auth",
    metavar="MODULE:FUNCTION",
    help="async def f(request) -> admin name or None: who may use the dashboard.",
)
@click.option(
    "--estimated-cost",
    "estimates",
    multiple=True,
    metavar="KIND=AMOUNT",
    help="What a job of KIND is expected to cost, reserved against its owner's budget "
    "(repeatable; image=0.04). See `jobqueue budget`.",
)
@click.option(
    "--metrics",
    is_flag=True,
    help="Serve Prometheus metrics at /metrics (needs jobqueue[metrics]; readable by anyone "
    "who reaches the server).",
)
@pass_env
def serve_command(
    env: Env,
    host: str,
    port: int,
    no_worker: bool,
    concurrency: int,
    identify: str | None,
    cancel_abandoned_after: timedelta | None,
    admin: bool,
    admin_auth: str | None,
    estimates: tuple[str, ...],
    metrics: bool,
) -> None:
    """Run the HTTP job API and the demo page (needs `pip install 'jobqueue[web]'`).

    Open http://HOST:PORT/ for the demo. By default a worker runs in the same process;
    with --no-worker only the API runs (production: scale `jobqueue worker` separately).
    With --admin the operator's dashboard is at http://HOST:PORT/admin/.
    """
    try:
        from ..web.admin import check_admin_bind
        from ..web.serve import listen_on, load_authenticate, load_identify, serve
    except ImportError as exc:
        raise ConfigurationError(
            f"the web extra is not installed ({exc.name} is missing)",
            hint="pip install 'jobqueue[web]'",
        ) from None
    from ..config import Settings

    hook = load_identify(identify) if identify else None
    estimated_costs = _estimates(estimates)
    if admin_auth and not admin:
        raise ConfigurationError("--admin-auth needs --admin", hint="add --admin")
    admin_hook = load_authenticate(admin_auth) if admin_auth else None
    if admin:
        check_admin_bind(host, admin_hook)  # before anything starts
    if metrics:
        from ..observability.metrics import require_prometheus

        require_prometheus()
    settings = Settings.from_env()
    generator = None if no_worker else settings.generator()
    _require_schema(env)
    sock = listen_on(host, port)  # before the worker starts, and before any output
    console = Console(stderr=True, highlight=False)
    _setup_logging(env.debug, console)
    worker = "off"
    if generator is not None:
        worker = f"on ({settings.describe()}), concurrency {concurrency}"
    dashboard = f"; admin http://{host}:{port}/admin/" if admin else ""
    if metrics:
        dashboard += f"; metrics http://{host}:{port}/metrics"
    console.print(
        f"jobqueue serve: http://{host}:{port}/ database {env.where}; worker {worker}"
        f"{dashboard}",
        soft_wrap=True,
        markup=False,
    )

    async def run() -> None:
        queue = env.async_queue(estimated_costs=estimated_costs)
        try:
            await serve(
                queue, host=host, port=port, generator=generator, concurrency=concurrency,
                identify=hook, log_level="debug" if env.debug else "info", sock=sock,
                cancel_abandoned_after=(
                    None if cancel_abandoned_after is None
                    else cancel_abandoned_after.total_seconds()
                ),
                admin=admin, authenticate=admin_hook, metrics=metrics,
            )  # fmt: skip
        finally:
            closing()
            if generator is not None:
                await generator.aclose()
            await queue.close()

    run_async(run())


def _estimates(pairs: tuple[str, ...]) -> dict[str, Decimal]:
    """``--estimated-cost KIND=AMOUNT`` options as `JobQueue`'s ``estimated_costs``."""
    from ..validation import check_cost

    out: dict[str, Decimal] = {}
    for pair in pairs:
        kind, sep, amount = pair.partition("=")
        if not sep or not kind.strip() or not amount.strip():
            raise PayloadError(
                f"--estimated-cost {pair!r} is not KIND=AMOUNT", hint="e.g. image=0.04"
            )
        checked = check_cost(amount.strip(), f"--estimated-cost of {kind.strip()}")
        assert checked is not None
        out[kind.strip()] = checked
    return out


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
