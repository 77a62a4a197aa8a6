"""The one rule every write a worker makes to a job it holds follows, whoever makes it: the
completer (outcomes) and a handler's `WorkerContext` (progress, the provider's task id).

A refusal (`REFUSED`: the job is no longer this attempt's, or a value cannot be stored) is
raised at once, since retrying cannot help. Any other error (the database unreachable,
restarting, a lost connection, a statement the database turned down this once) is logged
and the write retried with backoff, until it succeeds or the writer's ``gives_up`` says
enough: then `GaveUp`, logged with what it means for the job. When to give up is the
writer's to say: the completer only while the worker stops, a handler's progress after one
lease, a handler's task id once its attempt is stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..backoff import Backoff
from ..errors import InvalidTransition, JobNotFound, LeaseLost, PayloadError, describe_error

log = logging.getLogger("jobqueue.worker")

T = TypeVar("T")

#: Refusals: the job is no longer this attempt's, or a value cannot be stored. Retrying
#: cannot help, so they are never retried.
REFUSED = (LeaseLost, JobNotFound, InvalidTransition, PayloadError)


class GaveUp(Exception):
    """A write abandoned by the retry rule (logged already)."""


async def persist(
    write: Callable[[], Awaitable[T]],
    *,
    gives_up: Callable[[], bool],
    subject: str,
    what: str,
    consequence: str,
    backoff: Backoff | None = None,
    give_up_level: int = logging.ERROR,
) -> T:
    """``await write()`` until it succeeds. `REFUSED` errors are raised at once; any other
    error is logged (``<subject><what> failed``) and retried after ``backoff``'s next wait,
    until ``gives_up()`` is true after a failure: then `GaveUp`, logged (at
    ``give_up_level``) with ``consequence``."""
    backoff = backoff or Backoff()
    while True:
        try:
            return await write()
        except REFUSED:
            raise
        except Exception as exc:
            if gives_up():
                log.log(
                    give_up_level,
                    "%sgiving up %s (%s); %s",
                    subject,
                    what,
                    describe_error(exc),
                    consequence,
                )
                raise GaveUp(what) from exc
            delay = backoff.next()
            log.warning(
                "%s%s failed (%s); retrying in %.1fs", subject, what, describe_error(exc), delay
            )
            await asyncio.sleep(delay)


__all__ = ["REFUSED", "GaveUp", "persist"]
