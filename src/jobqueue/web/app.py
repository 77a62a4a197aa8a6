"""`create_app`: the HTTP job API, the browser client and the demo page as one ASGI app.

The app is a plain Starlette application, so it runs under any ASGI server and mounts into
any ASGI framework (``app.mount("/images", create_app(queue, identify=...))`` in FastAPI or
Starlette). It owns no database connections: the host passes an `AsyncJobQueue` in and
closes it. With ``worker=``, the app runs that worker for its lifetime (the single-process
demo); in production workers run as their own processes and the app only enqueues and
reads.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import ConfigurationError, JobQueueError
from ..generators.base import IMAGE_KIND
from ..operations import parse_job_id
from ..queue import AsyncJobQueue
from ..schema import DEFAULT_QUEUE, Job, Status
from .events import job_events
from .intake import BODY_OVERHEAD_BYTES, Limits, idempotency_key_of, read_generation
from .owners import AnonymousOwnerCookie, Identify, anonymous_owner
from .placeholder import NAME, draw_placeholder
from .problems import ApiError, error_response, handle_http_exception, handle_library_error
from .views import job_view

if TYPE_CHECKING:
    from ..worker import Worker

logger = logging.getLogger(__name__)

DEFAULT_MAX_PROMPT_CHARS = 4000
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100
#: Beyond the worker's own deadline (grace period + one lease for its last writes), how
#: long shutdown waits before giving up on an in-process worker.
WORKER_STOP_MARGIN = 10.0

#: The demo page only talks to its own origin; result images may come from a provider's CDN.
DEMO_CSP = (
    "default-src 'self'; img-src 'self' data: blob: https:; script-src 'self'; "
    "style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_NO_STORE = {"Cache-Control": "no-store"}


class JobsApi:
    """The endpoints, bound to one queue and one way of telling callers apart."""

    def __init__(
        self,
        queue: AsyncJobQueue,
        identify: Identify,
        limits: Limits,
        *,
        queue_name: str,
        poll_interval_ms: int,
        events_poll_interval: float,
        heartbeat_interval: float,
    ) -> None:
        self.queue = queue
        self.identify = identify
        self.limits = limits
        self.queue_name = queue_name
        self.poll_interval_ms = poll_interval_ms
        self.events_poll_interval = events_poll_interval
        self.heartbeat_interval = heartbeat_interval

    # -- helpers ------------------------------------------------------------------------

    async def owner_of(self, request: Request) -> str:
        found = self.identify(request)
        owner = await found if inspect.isawaitable(found) else found
        if not owner:
            raise ApiError(
                401,
                "unauthenticated",
                "sign in to use the job API",
                hint="the host application's identify hook found no user for this request",
            )
        return owner

    def view(self, request: Request, job: Job) -> dict[str, Any]:
        # A path, not an absolute URL: behind a TLS-terminating proxy the app may not know
        # the public scheme and host, and the browser resolves a path correctly anyway.
        return job_view(job, lambda name: request.url_for("mock_image", name=name).path)

    def job_id(self, request: Request) -> str:
        return str(parse_job_id(request.path_params["job_id"]))

    # -- endpoints ----------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        owner = await self.owner_of(request)
        key = idempotency_key_of(request)
        generation = await read_generation(request, self.limits)
        payload = generation.to_payload()
        job = await self.queue.enqueue(
            IMAGE_KIND,
            payload,
            queue=self.queue_name,
            owner_id=owner,
            idempotency_key=key,  # the queue scopes keys per owner
        )
        if job.owner_id != owner or job.payload != payload:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
                hint="use a new key for each new request; repeat a key only to retry the same one",
            )
        location = str(request.url_for("job", job_id=str(job.id)))
        return JSONResponse(
            self.view(request, job), status_code=202, headers={"Location": location, **_NO_STORE}
        )

    async def show(self, request: Request) -> Response:
        owner = await self.owner_of(request)
        job = await self.queue.get(self.job_id(request), owner_id=owner)
        return JSONResponse(self.view(request, job), headers=_NO_STORE)

    async def list_jobs(self, request: Request) -> Response:
        owner = await self.owner_of(request)
        limit = _int_param(request, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
        status = request.query_params.get("status")
        if status is not None and status not in {s.value for s in Status}:
            raise ApiError(
                400,
                "invalid_parameter",
                f"unknown status {status!r}",
                hint="statuses are " + ", ".join(s.value for s in Status),
            )
        jobs = await self.queue.list(
            owner_id=owner, status=status, queue=self.queue_name, limit=limit
        )
        return JSONResponse({"jobs": [self.view(request, j) for j in jobs]}, headers=_NO_STORE)

    async def cancel(self, request: Request) -> Response:
        owner = await self.owner_of(request)
        job = await self.queue.cancel(self.job_id(request), owner_id=owner)
        return JSONResponse(self.view(request, job), headers=_NO_STORE)

    async def events(self, request: Request) -> Response:
        owner = await self.owner_of(request)
        job_id = self.job_id(request)
        await self.queue.get(job_id, owner_id=owner)  # 404 now, not inside the stream

        async def load() -> Job:
            return await self.queue.get(job_id, owner_id=owner)

        stream = job_events(
            load,
            lambda job: self.view(request, job),
            poll_interval=self.events_poll_interval,
            heartbeat_interval=self.heartbeat_interval,
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no", **_NO_STORE},
        )

    async def demo_page(self, request: Request) -> Response:
        page = _static_text("index.html").replace(
            "{{poll_interval_ms}}", str(self.poll_interval_ms)
        )
        return HTMLResponse(
            page, headers={"Content-Security-Policy": DEMO_CSP, "Cache-Control": "no-cache"}
        )

    async def mock_image(self, request: Request) -> Response:
        name = request.path_params["name"]
        if not NAME.fullmatch(name):
            raise ApiError(404, "not_found", "no such image")
        return Response(
            draw_placeholder(name),
            media_type="image/svg+xml",
            headers={"Cache-Control": "public, max-age=86400"},
        )


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(
            400, "invalid_parameter", f"'{name}' must be an integer from {low} to {high}"
        )
    return int(raw)


def _static_text(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text("utf-8")


def _default_upload_limit(queue: AsyncJobQueue) -> int:
    """The largest image whose base64 data: URL still fits in the queue's payload limit."""
    room = queue.limits.max_payload_bytes - BODY_OVERHEAD_BYTES
    return max(0, room * 3 // 4)


def create_app(
    queue: AsyncJobQueue,
    *,
    identify: Identify | None = None,
    worker: Worker | None = None,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_upload_bytes: int | None = None,
    poll_interval_ms: int = 3000,
    queue_name: str = DEFAULT_QUEUE,
    demo_page: bool = True,
    events_poll_interval: float = 0.5,
    heartbeat_interval: float = 15.0,
) -> Starlette:
    """Build the job API app.

    ``identify`` turns a request into an owner id (or None for "not signed in": 401); leave
    it out for demo mode, where each browser gets an anonymous id in a cookie.
    ``worker`` runs inside the app's lifespan when given. ``max_upload_bytes`` defaults to
    the largest image that fits in the queue's payload limit once base64-encoded.
    ``poll_interval_ms`` is the demo page's polling interval; ``events_poll_interval`` is how
    often (seconds) an open event stream re-reads its job.
    """
    fits = _default_upload_limit(queue)
    upload_limit = fits if max_upload_bytes is None else max_upload_bytes
    if not 0 < upload_limit <= fits:
        raise ConfigurationError(
            f"max_upload_bytes={upload_limit} does not fit the queue's payload limit "
            f"({queue.limits.max_payload_bytes} bytes; images are stored base64-encoded)",
            hint=f"use at most {fits}, or raise the queue's max_payload_bytes",
        )
    if max_prompt_chars < 1 or poll_interval_ms < 50 or events_poll_interval <= 0:
        raise ConfigurationError(
            "max_prompt_chars must be >= 1, poll_interval_ms >= 50 and events_poll_interval > 0"
        )
    api = JobsApi(
        queue,
        identify or anonymous_owner,
        Limits(max_prompt_chars=max_prompt_chars, max_upload_bytes=upload_limit),
        queue_name=queue_name,
        poll_interval_ms=poll_interval_ms,
        events_poll_interval=events_poll_interval,
        heartbeat_interval=heartbeat_interval,
    )
    routes = [
        Route("/jobs", api.create, methods=["POST"]),
        Route("/jobs", api.list_jobs, methods=["GET"]),
        Route("/jobs/{job_id}", api.show, methods=["GET"], name="job"),
        Route("/jobs/{job_id}/cancel", api.cancel, methods=["POST"]),
        Route("/jobs/{job_id}/events", api.events, methods=["GET"]),
        Route("/mock-images/{name}.svg", api.mock_image, methods=["GET"], name="mock_image"),
        Mount("/static", StaticFiles(packages=[(__package__, "static")]), name="static"),
    ]
    if demo_page:
        routes.append(Route("/", api.demo_page, methods=["GET"]))
    middleware = [] if identify is not None else [Middleware(AnonymousOwnerCookie)]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if worker is None:
            yield
            return
        task = asyncio.create_task(worker.run(), name="jobqueue-web-worker")
        task.add_done_callback(_report_worker_exit)
        try:
            yield
        finally:
            worker.stop()
            timeout = worker_stop_timeout(worker)
            try:
                await asyncio.wait_for(task, timeout)
            except TimeoutError:
                logger.warning("the in-process worker did not stop within %gs", timeout)
            except Exception:  # already logged by _report_worker_exit
                pass

    return Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            JobQueueError: handle_library_error,
            HTTPException: handle_http_exception,
            Exception: _internal_error,
        },
    )


def worker_stop_timeout(worker: Worker) -> float:
    """How long shutdown waits for ``worker`` to drain.

    The worker gives running jobs its grace period, then spends up to one lease releasing
    the unfinished ones and writing the last results; cancelling it sooner would leave jobs
    held until their leases expire instead of handing them back at once.
    """
    return worker.grace_period + worker.lease + WORKER_STOP_MARGIN


def _report_worker_exit(task: asyncio.Task[None]) -> None:
    """A worker that dies while the app serves would otherwise go unnoticed until shutdown."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("the in-process worker stopped with an error", exc_info=task.exception())


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error in the job API", exc_info=exc)
    return error_response(500, "internal_error", "the server failed to answer this request")
