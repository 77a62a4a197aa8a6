"""A worker's presence: its row in the live-workers table while it serves.

A small maintenance service of `Worker`, on its own timer (never on the path of a job):

- `PresenceService.start` checks that the worker's role may do a worker's work and writes
  the row. A missing table or a refused permission stops the worker there, with our error
  and its hint (retrying cannot help); other errors (the database unreachable or
  restarting) are retried with backoff until it works or the worker is asked to stop.
- its timer then refreshes the row every third of the lease and deletes the rows of
  workers that stopped beating (crashed or killed), so the table never grows.
- `PresenceService.stop` removes the row on a clean stop; a row left behind (the database
  was down, the process was killed) expires by itself.

Everything is timed by the database clock (see `jobqueue.presence`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .backoff import Backoff
from .database import describe_error
from .errors import ConfigurationError, PayloadError, PermissionDenied, SchemaNotInstalled
from .presence import WorkerPresence, beat_interval_of, ttl_of
from .queue import AsyncJobQueue

log = logging.getLogger("jobqueue.worker")

#: How long a stopping worker tries to remove its row before leaving it to expire.
STOP_TIMEOUT = 5.0

#: Errors that retrying cannot fix: the worker stops at start instead.
FATAL_AT_START = (PermissionDenied, SchemaNotInstalled, ConfigurationError, PayloadError)


class PresenceService:
    """Keeps ``me``'s row in the live-workers table of ``queue``, timed by ``lease``: a beat
    every third of it, live for `presence.LIVE_LEASES` leases after each beat.

    Its timer runs in a task of its own from `start` to `stop`, and is stopped between two
    statements, never cancelled in the middle of one (a connection being opened when its
    task is cancelled would be lost to the pool).
    """

    def __init__(self, queue: AsyncJobQueue, me: WorkerPresence, lease: float) -> None:
        self.queue = queue
        self.me = me
        self.interval = beat_interval_of(lease)
        self.ttl = ttl_of(lease)
        #: Whether the row was written (so a stop removes it).
        self.announced = False
        self._stopping = asyncio.Event()
        self._timer: asyncio.Task[None] | None = None

    async def start(self, stopping: asyncio.Event) -> bool:
        """Check access, write the row and start the timer: True once written, False when
        ``stopping`` is set first. Raises the errors in `FATAL_AT_START`."""
        backoff = Backoff()
        while not stopping.is_set():
            try:
                await self.queue.check_worker_access()
                await self.queue.worker_beat(self.me, ttl=self.ttl)
            except FATAL_AT_START:
                raise
            except Exception as exc:
                delay = backoff.next()
                log.warning(
                    "Worker %s cannot start yet (%s); retrying in %.1fs",
                    self.me.worker_id,
                    describe_error(exc),
                    delay,
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await stopping.wait()
                continue
            self.announced = True
            await self.sweep()
            self._timer = asyncio.create_task(self._run(), name="jobqueue-presence")
            return True
        return False

    async def _run(self) -> None:
        """Beat every `interval` seconds and sweep stale rows every `ttl`, until `stop`.
        Failures are logged and retried; they never stop the worker."""
        backoff = Backoff(cap=self.interval)
        pause = self.interval
        next_sweep = time.monotonic() + self.ttl
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            pause = self.interval
            try:
                await self.queue.worker_beat(self.me, ttl=self.ttl)
            except Exception as exc:
                pause = backoff.next()
                log.warning(
                    "worker heartbeat failed (%s); retrying in %.1fs", describe_error(exc), pause
                )
                continue
            backoff.reset()
            self.announced = True
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.ttl
                await self.sweep()

    async def sweep(self) -> None:
        """Delete the rows of workers that stopped beating (logged, never raised)."""
        try:
            swept = await self.queue.sweep_workers()
        except Exception as exc:
            log.warning("removing stale workers failed (%s)", describe_error(exc))
            return
        for worker_id in swept:
            log.info("Worker %s sent no heartbeat lately: removed from the live workers", worker_id)

    async def stop(self) -> None:
        """Stop the timer (after the statement it may be running) and remove the row,
        within `STOP_TIMEOUT` seconds; a row left behind expires by itself."""
        self._stopping.set()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                if self._timer is not None:
                    await self._timer
                if self.announced:
                    self.announced = False
                    await self.queue.worker_gone(self.me.worker_id)
        except Exception as exc:
            log.warning(
                "Worker %s: its live-workers row was not removed (%s); it expires in %gs",
                self.me.worker_id,
                describe_error(exc),
                self.ttl,
            )
