"""Server-Sent Events: one job's changes pushed to the client until it is final.

Each connection polls the job store (one indexed primary-key read per interval) and sends a
snapshot whenever the status, progress or attempt changes — the same notion of "a change"
that `AsyncJobQueue.wait` uses (`operations.Waiter`). A (re)connecting client always gets
the current snapshot first, so an EventSource that reconnects after a network blip misses
nothing. Comment lines keep idle proxies from closing a stream while a job waits in line.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ..errors import DatabaseUnavailable, JobNotFound
from ..operations import Waiter
from ..schema import Job

#: Tells EventSource how long to wait before reconnecting (milliseconds).
RECONNECT_MS = 3000


def sse_message(data: Any, *, event: str | None = None) -> str:
    lines = [] if event is None else [f"event: {event}"]
    lines.append("data: " + json.dumps(data, separators=(",", ":")))
    return "\n".join(lines) + "\n\n"


async def job_events(
    load: Callable[[], Awaitable[Job]],
    view: Callable[[Job], dict[str, Any]],
    *,
    poll_interval: float,
    heartbeat_interval: float,
) -> AsyncIterator[str]:
    """Yield SSE frames: a snapshot per change, ending after the final status."""
    yield f"retry: {RECONNECT_MS}\n\n"
    waiter = Waiter(poll_interval, None)
    quiet_since = time.monotonic()
    while True:
        try:
            job = await load()
        except JobNotFound:  # pruned while we watched
            yield sse_message(
                {"error": {"code": "not_found", "message": "no such job"}}, event="gone"
            )
            return
        except DatabaseUnavailable:
            job = None
        if job is not None and waiter.changed(job):
            yield sse_message(view(job))
            quiet_since = time.monotonic()
            if job.is_final:
                return
        elif time.monotonic() - quiet_since >= heartbeat_interval:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(waiter.interval)
