"""The executor: runs one job's handler and turns what happened into an `Outcome`.

It finds the handler by the job's kind, runs it (an async handler on the loop, a plain
function on the worker's own thread pool) under the kind's timeout, and reports a
completion, a failure (with the retry decision), a job held back (`RetryLater`) or a stop.
It writes nothing to the database: the completer writes every outcome.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import RetryLater
from ..models import Job
from .context import Handler, WorkerContext
from .outcome import Failed, Outcome, Stopped, completion_of, held_back_of
from .slots import Slot

log = logging.getLogger("jobqueue.worker")


def is_async(handler: Handler) -> bool:
    """Whether ``handler`` is a coroutine function (or an object whose ``__call__`` is)."""
    call = getattr(handler, "__call__", None)  # noqa: B004 - callable objects too
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)


class Executor:
    """Runs jobs with ``handlers`` (by kind); ``timeouts`` per kind win over
    ``job_timeout``. Sync handlers run on a pool of ``threads`` threads of its own, made
    when first needed and shut down by `close`."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        timeouts: Mapping[str, float],
        job_timeout: float | None,
        threads: int,
    ) -> None:
        self.handlers = handlers
        self.timeouts = timeouts
        self.job_timeout = job_timeout
        self.threads = threads
        #: Kinds without a handler whose first job was logged (the next ones are not).
        self._unserved_seen: set[str] = set()
        #: `is_async` of each handler met, by id (the handler kept, so the id stays its).
        self._async: dict[int, tuple[Handler, bool]] = {}
        self._pool: ThreadPoolExecutor | None = None

    async def run(self, slot: Slot) -> Outcome:
        """Run ``slot``'s job to its outcome. A cancellation the worker did not ask for
        (``slot.stopped_because`` unset) is raised, not turned into an outcome."""
        job = slot.job
        # A job of a kind without a handler is logged once per kind (`_seen_unserved`).
        quiet = job.kind not in self.handlers and self._seen_unserved(job)
        log.log(
            logging.DEBUG if quiet else logging.INFO,
            "Job %s status: processing (kind %s, attempt %d of %d)",
            job.id,
            job.kind,
            job.attempts,
            job.max_attempts,
        )
        if job.unreadable is not None:
            # A client stored what no decoder reads: no attempt can ever do better.
            return Failed.of(job.unreadable, False)
        handler = self.handlers.get(job.kind)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            message = f"no handler for job kind {job.kind!r} (this worker runs: {known})"
            return Failed.of(message, False, quiet=quiet)
        timeout = self.timeouts.get(job.kind, self.job_timeout)
        deadline = None
        try:
            if timeout is None:
                value = await self._call(handler, job, slot.ctx)
            else:
                async with asyncio.timeout(timeout) as deadline:
                    value = await self._call(handler, job, slot.ctx)
        except asyncio.CancelledError:
            if slot.stopped_because is None:
                raise
            return Stopped(slot.stopped_because)
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                slot.ctx.cancelled.set()  # a sync handler's thread cannot be cancelled
                return Failed.of(f"JobTimeout: the handler ran longer than {timeout:g}s")
            return Failed.of(exc)
        except RetryLater as exc:
            return held_back_of(exc)
        except (Exception, SystemExit) as exc:  # sys.exit() in a handler ends its job only
            return Failed.of(exc)
        return completion_of(job, value)

    def close(self) -> None:
        """Shut the thread pool down; threads of abandoned sync handlers are left to finish
        on their own. The next run makes a new pool when it needs one."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _is_async(self, handler: Handler) -> bool:
        """`is_async`, asked once per handler (``inspect`` is slow next to a no-op job)."""
        key = id(handler)
        known = self._async.get(key)
        if known is None or known[0] is not handler:
            known = self._async[key] = (handler, is_async(handler))
        return known[1]

    def _seen_unserved(self, job: Job) -> bool:
        """Whether a job of this kind without a handler was met before; the first one of
        each kind is logged with what to do, so a flood of strays is one warning, not one
        line per job (each job's failure is still written on the job)."""
        if job.kind in self._unserved_seen:
            return True
        self._unserved_seen.add(job.kind)
        log.warning(
            "No handler for jobs of kind %r in this worker (it runs: %s): each one fails at "
            "once, logged once per kind. Register the kind (a Registry; jobqueue worker --app), "
            "or claim only the kinds served (no all_kinds) to leave them to other workers",
            job.kind,
            ", ".join(sorted(self.handlers)),
        )
        return False

    async def _call(self, handler: Handler, job: Job, ctx: WorkerContext) -> Any:
        if self._is_async(handler):
            return await handler(job, ctx)
        if self._pool is None:
            # Our own threads: a sync handler that hangs past its timeout cannot be killed,
            # and must not use up asyncio's small default pool that the rest of the
            # process shares.
            self._pool = ThreadPoolExecutor(
                max_workers=self.threads, thread_name_prefix="jobqueue-handler"
            )
        call = functools.partial(contextvars.copy_context().run, handler, job, ctx)
        value = await asyncio.get_running_loop().run_in_executor(self._pool, call)
        if inspect.isawaitable(value):  # a plain function that returned a coroutine
            value = await value
        return value


__all__ = ["Executor", "is_async"]
