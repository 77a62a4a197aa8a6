"""What ``jobqueue serve`` runs: the job API under uvicorn, with or without a worker.

With a worker (the default) one process is the whole demo: page, API and generations.
In production run ``--no-worker`` behind your proxy and scale ``jobqueue worker`` processes
separately; pass ``--identify module:function`` so owners come from your own sessions
instead of the demo's anonymous cookies.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import signal
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from ..errors import ConfigurationError
from ..loading import import_object
from ..queue import AsyncJobQueue
from .admin import Authenticate, check_admin_bind, create_admin_app
from .app import create_app
from .owners import Identify

if TYPE_CHECKING:
    from ..generators.base import Generator
    from ..worker import Worker

logger = logging.getLogger(__name__)


def load_identify(path: str) -> Identify:
    """Import ``package.module:function`` and check it can be called as an identify hook."""
    hook: Identify = _load_hook(path, "--identify", "identify hook", "myapp.auth:owner_of")
    return hook


def load_authenticate(path: str) -> Authenticate:
    """Import ``package.module:function`` as the admin dashboard's authentication hook."""
    hook: Authenticate = _load_hook(path, "--admin-auth", "admin hook", "myapp.auth:admin_of")
    return hook


def _load_hook(path: str, option: str, what: str, example: str) -> Any:
    """The function ``path`` names, checked to be one: a request hook of the web apps."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(
            f"{option} takes module:function, not {path!r}",
            hint=f"for example {option} {example}",
        )
    target: Any = import_object(path, option).value
    if not callable(target):
        raise ConfigurationError(
            f"the {what} {path!r} must be `async def f(request) -> str | None`"
        )
    return target


def listen_on(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for `serve`, or `ConfigurationError` saying why not
    (the port is taken, needs root, or the address is not this machine's).

    Binding comes first, before the app and its worker start: a server that cannot listen
    must not claim jobs on its way out.
    """
    what = f"cannot listen on {host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ConfigurationError(
            f"{what}: {exc.strerror}", hint="--host takes this machine's name or address"
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        # As uvicorn does: a restarted server need not wait for old connections' TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = {
            errno.EADDRINUSE: "another program listens there: stop it, or pick another --port",
            errno.EACCES: "ports below 1024 need privileges: pick another --port, e.g. 8000",
            errno.EADDRNOTAVAIL: "no interface of this machine has that address: check --host",
        }.get(exc.errno or 0, "check --host and --port")
        raise ConfigurationError(f"{what}: {exc.strerror or exc}", hint=hint) from None
    sock.set_inheritable(True)
    return sock


async def serve(
    queue: AsyncJobQueue,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    generator: Generator | None = None,
    concurrency: int = 10,
    identify: Identify | None = None,
    log_level: str = "info",
    sock: socket.socket | None = None,
    cancel_abandoned_after: float | None = None,
    admin: bool = False,
    authenticate: Authenticate | None = None,
    metrics: bool = False,
) -> None:
    """Serve the API until SIGINT/SIGTERM; with ``generator``, run a worker in-process.

    ``sock`` is a socket from `listen_on` (by default, one for ``host`` and ``port``): the
    worker starts only once the address is ours. uvicorn owns the signals: on shutdown the
    app's lifespan stops the worker gracefully. ``cancel_abandoned_after``: as for
    `create_app`. With ``admin``, the admin dashboard (`create_admin_app`, with
    ``authenticate``) is served under ``/admin/``; without a hook only on loopback.
    With ``metrics``, Prometheus metrics (`jobqueue.observability.Metrics`: the database's
    gauges, and the in-process worker's counters) are served at ``/metrics``.
    """
    from ..worker import Worker

    if admin:
        check_admin_bind(host, authenticate)
    if sock is None:
        sock = listen_on(host, port)
    observed = None
    if metrics:
        from ..observability import Metrics

        observed = Metrics(queue)
    worker = None
    if generator is not None:
        observers = [] if observed is None else [observed.worker]
        worker = Worker(queue, generator=generator, concurrency=concurrency, observers=observers)
    app = create_app(
        queue,
        identify=identify,
        worker=worker,
        cancel_abandoned_after=cancel_abandoned_after,
        metrics=observed,
    )
    served: ASGIApp = app
    if admin:
        served = with_admin(app, create_admin_app(queue, authenticate=authenticate))
    config = uvicorn.Config(served, host=host, port=port, lifespan="on", log_level=log_level)
    await _Server(config, worker).serve(sockets=[sock])


def with_admin(api: Starlette, dashboard: Starlette, path: str = "/admin") -> Starlette:
    """One app: ``dashboard`` under ``path``, ``api`` everywhere else, with the API's
    lifespan (its in-process worker) run for both."""

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with api.router.lifespan_context(api):
            yield

    async def to_dashboard(request: Request) -> Response:
        # The page links its files and API relative to itself: it must end with a slash.
        return RedirectResponse(request.url.replace(path=request.url.path + "/"), 308)

    return Starlette(
        routes=[
            Route(path, to_dashboard, methods=["GET", "HEAD"]),
            Mount(path, app=dashboard),
            Mount("", app=api),
        ],
        lifespan=lifespan,
    )


class _Server(uvicorn.Server):
    """uvicorn's server, except that it does not re-raise the stop signal once it has shut
    down: the caller still has a queue and a generator to close, and a requested stop is a
    clean exit (status 0), not a crash.

    A second Ctrl-C stops the in-process worker at once (its running jobs are released),
    and the app is still shut down: uvicorn's forced exit skips the app's lifespan, which
    would leave the worker to be cancelled (a traceback) instead of stopped.
    """

    def __init__(self, config: uvicorn.Config, worker: Worker | None) -> None:
        super().__init__(config)
        self.worker = worker
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and self.worker is not None and self.loop is not None:
            # From a signal handler: leave the worker's state to the event loop.
            self.loop.call_soon_threadsafe(functools.partial(self.worker.stop, immediate=True))
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.force_exit:
            await self.lifespan.shutdown()

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stops = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in stops}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
