"""What ``jobqueue serve`` runs: the job API under uvicorn, with or without a worker.

With a worker (the default) one process is the whole demo: page, API and generations.
In production run ``--no-worker`` behind your proxy and scale ``jobqueue worker`` processes
separately; pass ``--identify module:function`` so owners come from your own sessions
instead of the demo's anonymous cookies.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import uvicorn

from ..errors import ConfigurationError
from ..loading import import_object
from ..queue import AsyncJobQueue
from .app import create_app
from .owners import Identify

if TYPE_CHECKING:
    from ..generators.base import Generator

logger = logging.getLogger(__name__)


def load_identify(path: str) -> Identify:
    """Import ``package.module:function`` and check it can be called as an identify hook."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(
            f"--identify takes module:function, not {path!r}",
            hint="for example --identify myapp.auth:owner_of",
        )
    target: Any = import_object(path, "--identify").value
    if not callable(target):
        raise ConfigurationError(
            f"the identify hook {path!r} must be `async def f(request) -> str | None`"
        )
    hook: Identify = target
    return hook


async def serve(
    queue: AsyncJobQueue,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    generator: Generator | None = None,
    concurrency: int = 10,
    identify: Identify | None = None,
    log_level: str = "info",
) -> None:
    """Serve the API until SIGINT/SIGTERM; with ``generator``, run a worker in-process.

    uvicorn owns the signals: on shutdown the app's lifespan stops the worker gracefully.
    """
    from ..worker import Worker

    worker = None
    if generator is not None:
        worker = Worker(queue, generator=generator, concurrency=concurrency)
    app = create_app(queue, identify=identify, worker=worker)
    config = uvicorn.Config(app, host=host, port=port, lifespan="on", log_level=log_level)
    await _Server(config).serve()


class _Server(uvicorn.Server):
    """uvicorn's server, except that it does not re-raise the stop signal once it has shut
    down: the caller still has a queue and a generator to close, and a requested stop is a
    clean exit (status 0), not a crash."""

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
