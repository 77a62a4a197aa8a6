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
import math
import re
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import timedelta
from decimal import Decimal
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConfigurationError, JobQueueError
from ..generators.base import IMAGE_KIND
from ..models import DEFAULT_QUEUE, Job, Position, Status
from ..queue import AsyncJobQueue
from ..validation import parse_job_id
from .allowed import Allowed
from .events import RECONNECT_MS, Snapshot, Subscription, Watchers, job_events
from .guards import (
    DEMO_RATE_LIMIT,
    OriginCheck,
    RateLimit,
    RateLimiter,
    SecurityHeaders,
    origin_of,
)
from .intake import BODY_OVERHEAD_BYTES, RequestLimits, idempotency_key_of, read_generation
from .owners import AnonymousOwnerCookie, Identify, anonymous_owner, anonymous_owner_of
from .placeholder import NAME, draw_placeholder
from .problems import (
    DEMO_NOT_FOUND,
    NOT_FOUND,
    ApiError,
    error_response,
    handle_http_exception,
    library_error_handler,
)
from .views import job_view

if TYPE_CHECKING:
    from ..observability import Metrics
    from ..worker import Worker

logger = logging.getLogger(__name__)

DEFAULT_MAX_PROMPT_CHARS = 4000
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100
DEFAULT_MAX_STREAMS_PER_OWNER = 8
#: A query parameter that is a count: ASCII digits (``str.isdigit`` also takes "²").
_COUNT = re.compile(r"^[0-9]{1,6}$")
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
        limits: RequestLimits,
        *,
        demo: bool,
        queue_name: str,
        poll_interval_ms: int,
        heartbeat_interval: float,
        base_url: str | None,
        rate_limiter: RateLimiter | None,
        watchers: Watchers,
    ) -> None:
        self.queue = queue
        self.identify = identify
        self.limits = limits
        self.demo = demo
        self.queue_name = queue_name
        self.poll_interval_ms = poll_interval_ms
        self.heartbeat_interval = heartbeat_interval
        self.base_url = base_url
        self.rate_limiter = rate_limiter
        self.watchers = watchers

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

    def view(self, request: Request, job: Job, position: Position | None = None) -> dict[str, Any]:
        # A path, not an absolute URL: behind a TLS-terminating proxy the app may not know
        # the public scheme and host, and the browser resolves a path correctly anyway.
        return job_view(job, lambda name: request.url_for("mock_image", name=name).path, position)

    async def snapshot(self, job_id: str, owner: str, job: Job | None = None) -> Snapshot:
        """The job (read now unless given) and where it stands.

        The position is the queue's kept answer (a few seconds old at most) unless the
        job has moved since it was computed. Where it cannot be had (the database is
        busy), the job is shown without it rather than not at all."""
        if job is None:
            job = await self.queue.get(job_id, owner_id=owner)
        if job.is_final:
            return Snapshot(job, Position(job.id, job.status, None))
        try:
            position = await self.queue.position(job.id, owner_id=owner)
            if position.status is not job.status:
                position = await self.queue.position(job.id, owner_id=owner, max_age=0)
        except JobQueueError as exc:
            logger.debug("no position for job %s: %s", job.id, exc)
            return Snapshot(job)
        return Snapshot(job, position)

    def job_id(self, request: Request) -> str:
        return str(parse_job_id(request.path_params["job_id"]))

    def location(self, request: Request, job: Job) -> str:
        """Where the new job lives: under the configured ``base_url``, else an absolute path.

        Never built from the request's ``Host`` header, which the client chooses: a
        poisoned ``Location`` could send a client (or a cache) to another server.
        """
        path = request.url_for("job", job_id=str(job.id)).path
        if self.base_url is None:
            return path
        root = (request.scope.get("root_path") or "").rstrip("/")
        return self.base_url + path.removeprefix(root)

    def spend(self, request: Request, owner: str) -> None:
        """Count one new job against the caller's rate limit; 429 when it is used up."""
        if self.rate_limiter is None:
            return
        keys = [owner]
        anonymous = anonymous_owner_of(request)
        if anonymous is not None and not anonymous.known and request.client is not None:
            # A caller without the cookie is a new owner on every request; counting it by
            # address too keeps "drop the cookie" from being a way around the limit.
            keys.append("address:" + request.client.host)
        wait = self.rate_limiter.take(*keys)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise ApiError(
                429,
                "rate_limited",
                f"too many new jobs: at most {self.rate_limiter.limit.describe()} per caller",
                hint=f"try again in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )

    # -- endpoints ----------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        owner = await self.owner_of(request)
        self.spend(request, owner)
        key = idempotency_key_of(request)
        asked = await read_generation(request, self.limits)
        payload = asked.request.to_payload()
        job = await self.queue.enqueue(
            IMAGE_KIND,
            payload,
            queue=self.queue_name,
            owner_id=owner,
            idempotency_key=key,  # the queue scopes keys per owner
            **asked.deadline,
        )
        if job.owner_id != owner or job.payload != payload:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
                hint="use a new key for each new request; repeat a key only to retry the same one",
            )
        return JSONResponse(
            self.view(request, job),
            status_code=202,
            headers={"Location": self.location(request, job), **_NO_STORE},
        )

    async def show(self, request: Request) -> Response:
        owner = await self.owner_of(request)
        seen = await self.snapshot(self.job_id(request), owner)
        return JSONResponse(self.view(request, seen.job, seen.position), headers=_NO_STORE)

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

    async def spending(self, request: Request) -> Response:
        """The caller's own spending over the last ``days`` (default 30): per status, the
        jobs, what they cost per unit, and how many failed or were cancelled after they
        had cost money; and the caller's budget, if it has one (`JobQueue.get_budget`)."""
        owner = await self.owner_of(request)
        days = _int_param(request, "days", DEFAULT_SPENDING_DAYS, 1, MAX_SPENDING_DAYS)
        lines = await self.queue.stats(timedelta(days=days), owner_id=owner)
        total: dict[str, Decimal] = {}
        for line in lines:
            if line.cost_unit is not None:
                total[line.cost_unit] = total.get(line.cost_unit, Decimal(0)) + line.cost
        lost = sum(line.charged for line in lines if line.status in _PAID_NOT_DELIVERED)
        budget = await self.queue.get_budget(owner)
        body = {
            "days": days,
            # The caller's budget, with what counts against it now and what is left.
            "budget": None if budget is None else budget.to_dict(),
            "spent": [{"cost": str(v), "cost_unit": k} for k, v in sorted(total.items())],
            "paid_not_delivered": lost,
            "statuses": [
                {k: v for k, v in line.to_dict().items() if k not in ("kind", "owner_id")}
                for line in lines
            ],
        }
        return JSONResponse(body, headers=_NO_STORE)

    async def cancel(self, request: Request) -> Response:
        owner = await self.owner_of(request)
        job = await self.queue.cancel(self.job_id(request), owner_id=owner)
        return JSONResponse(self.view(request, job), headers=_NO_STORE)

    async def events(self, request: Request) -> Response:
        owner = await self.owner_of(request)
        job_id = self.job_id(request)
        watchers = self.watchers
        if not watchers.reserve(owner):
            seconds = RECONNECT_MS // 1000
            raise ApiError(
                429,
                "too_many_streams",
                f"at most {watchers.max_streams_per_owner} event streams may be open at once "
                "per caller",
                hint="close the streams of jobs you no longer follow, or poll GET /jobs/{id}",
                headers={"Retry-After": str(seconds)},
            )
        try:
            first = await self.snapshot(job_id, owner)  # 404 now, not in the stream
        except BaseException:
            watchers.release(owner)
            raise

        async def load() -> Snapshot:
            return await self.snapshot(job_id, owner)

        if first.job.is_final:  # nothing will change: send it, no watch needed
            sub = Subscription(first)
        else:
            sub = watchers.subscribe(owner, job_id, first, load)
        watchers.opened(owner, job_id)

        def close() -> None:
            watchers.unsubscribe(owner, job_id, sub)
            watchers.release(owner)
            watchers.closed(owner, job_id, final=sub.latest.job.is_final)

        stream = job_events(
            sub,
            lambda seen: self.view(request, seen.job, seen.position),
            heartbeat_interval=self.heartbeat_interval,
            gone={"error": {"code": "not_found", "message": self.not_found}},
        )
        return _Stream(
            stream,
            on_close=close,
            media_type="text/event-stream",
            headers={"X-Accel-Buffering": "no", **_NO_STORE},
        )

    async def abandoned(self, owner: str, job_id: str) -> None:
        """Every event stream of the job closed and none opened again within the grace
        period: cancel it if no worker has started it (nothing was spent on it yet)."""
        job = await self.queue.cancel_if_pending(job_id, owner_id=owner)
        if job is not None:
            logger.info("Job %s status: cancelled (its last watcher left)", job.id)

    @property
    def not_found(self) -> str:
        return DEMO_NOT_FOUND if self.demo else NOT_FOUND

    async def demo_page(self, request: Request) -> Response:
        if self.demo:
            # The page's owner cookie comes with the page, so its first API calls (the job
            # list and a quick Generate) cannot race each other into two new owners.
            await self.owner_of(request)
        page = _static_text("index.html").replace(
            "{{poll_interval_ms}}", str(self.poll_interval_ms)
        )
        return HTMLResponse(
            page, headers={"Content-Security-Policy": DEMO_CSP, "Cache-Control": "no-store"}
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


class _Stream(StreamingResponse):
    """A streaming response that runs ``on_close`` however it ends (finished, client gone,
    server stopping), so an event stream's slot and subscription are always given back."""

    def __init__(self, *args: Any, on_close: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


#: The period of ``GET /spending`` (days back), unless the caller asks for another.
DEFAULT_SPENDING_DAYS = 30
MAX_SPENDING_DAYS = 366
#: Statuses whose jobs that cost money were paid for and not delivered.
_PAID_NOT_DELIVERED = frozenset({Status.FAILED, Status.CANCELLED})


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _COUNT.fullmatch(raw) or not low <= int(raw) <= high:
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
    allowed: Allowed | None = None,
    rate_limit: RateLimit | Literal[False] | None = None,
    max_streams_per_owner: int = DEFAULT_MAX_STREAMS_PER_OWNER,
    base_url: str | None = None,
    check_origin: bool = True,
    trusted_origins: Iterable[str] = (),
    cancel_abandoned_after: float | None = None,
    metrics: Metrics | None = None,
) -> Starlette:
    """Build the job API app.

    ``identify`` turns a request into an owner id (or None for "not signed in": 401); leave
    it out for demo mode, where each browser gets an anonymous id in a cookie.
    ``worker`` runs inside the app's lifespan when given. ``max_upload_bytes`` defaults to
    the largest image that fits in the queue's payload limit once base64-encoded.
    ``poll_interval_ms`` is the demo page's polling interval; ``events_poll_interval`` is how
    often (seconds) a watched job is re-read for its event streams.

    Guards (docs/web.md): ``allowed`` limits the models and options callers may pass to the
    provider (default: `Allowed()`, the documented ones with bounded sizes);
    ``rate_limit`` caps new jobs per owner (None: `DEMO_RATE_LIMIT` in demo mode, off with
    ``identify``; False: off); ``max_streams_per_owner`` caps open event streams;
    ``base_url`` (the app's public address, e.g. ``https://example.com/api/images``) is
    where ``Location`` points and the app's own origin; ``check_origin`` refuses
    cross-site ``POST``s that carry cookies (turn it off only when ``identify`` never reads
    a cookie), ``trusted_origins`` lists other origins whose pages may post.

    ``cancel_abandoned_after`` (seconds; None, the default: off) cancels a pending job
    whose event streams all closed when none reconnects within that grace period, so a
    job its user walked away from is not paid for. A job a worker has started runs on; a
    client that only polls ``GET /jobs/{id}`` is no watcher and keeps its jobs.

    ``metrics`` (a `jobqueue.observability.Metrics`) is served at ``GET /metrics`` for
    Prometheus; give its ``worker`` to the in-process worker's ``observers`` to count its
    jobs too. Anyone who can reach the app can read it: keep it behind your proxy's rules.
    """
    fits = _default_upload_limit(queue)
    upload_limit = fits if max_upload_bytes is None else max_upload_bytes
    if not 0 < upload_limit <= fits:
        raise ConfigurationError(
            f"max_upload_bytes={upload_limit} does not fit the queue's payload limit "
            f"({queue.limits.max_payload_bytes} bytes; images are stored base64-encoded)",
            hint=f"use at most {fits}, or raise the queue's max_payload_bytes",
        )
    if (
        max_prompt_chars < 1
        or poll_interval_ms < 50
        or events_poll_interval <= 0
        or heartbeat_interval < 0.01
    ):
        raise ConfigurationError(
            "max_prompt_chars must be >= 1, poll_interval_ms >= 50, events_poll_interval > 0 "
            "and heartbeat_interval >= 0.01"
        )
    if isinstance(max_streams_per_owner, bool) or max_streams_per_owner < 1:
        raise ConfigurationError("max_streams_per_owner must be an integer >= 1")
    if rate_limit is not None and rate_limit is not False and not isinstance(rate_limit, RateLimit):
        raise ConfigurationError(
            f"rate_limit must be a RateLimit, None or False, not {rate_limit!r}",
            hint="for example rate_limit=RateLimit(jobs=10, per=60)",
        )
    demo = identify is None
    public_base = None if base_url is None else _public_base(base_url)
    if rate_limit is None:
        rate_limit = DEMO_RATE_LIMIT if demo else False
    if cancel_abandoned_after is not None and (
        isinstance(cancel_abandoned_after, bool)
        or not isinstance(cancel_abandoned_after, int | float)
        or not 0 <= cancel_abandoned_after <= 86_400
    ):
        raise ConfigurationError(
            f"cancel_abandoned_after must be None or seconds from 0 to 86400, "
            f"not {cancel_abandoned_after!r}",
            hint="for example 30: long enough for a page reload to reconnect",
        )
    watchers = Watchers(
        poll_interval=events_poll_interval, max_streams_per_owner=max_streams_per_owner
    )
    api = JobsApi(
        queue,
        identify or anonymous_owner,
        RequestLimits(
            max_prompt_chars=max_prompt_chars,
            max_upload_bytes=upload_limit,
            allowed=Allowed() if allowed is None else allowed,
        ),
        demo=demo,
        queue_name=queue_name,
        poll_interval_ms=poll_interval_ms,
        heartbeat_interval=heartbeat_interval,
        base_url=public_base,
        rate_limiter=None if rate_limit is False else RateLimiter(rate_limit),
        watchers=watchers,
    )
    if cancel_abandoned_after is not None:
        watchers.abandon(float(cancel_abandoned_after), api.abandoned)
    routes = [
        Route("/jobs", api.create, methods=["POST"]),
        Route("/jobs", api.list_jobs, methods=["GET"]),
        Route("/jobs/{job_id}", api.show, methods=["GET"], name="job"),
        Route("/jobs/{job_id}/cancel", api.cancel, methods=["POST"]),
        Route("/jobs/{job_id}/events", api.events, methods=["GET"]),
        Route("/spending", api.spending, methods=["GET"]),
        Route("/mock-images/{name}.svg", api.mock_image, methods=["GET"], name="mock_image"),
        Mount("/static", StaticFiles(packages=[(__package__, "static")]), name="static"),
    ]
    if demo_page:
        routes.append(Route("/", api.demo_page, methods=["GET"]))
    if metrics is not None:
        routes.append(Route("/metrics", metrics.asgi(), methods=["GET", "HEAD"]))
    # Outermost first: a cross-site POST is refused before it gets an owner cookie.
    middleware = []
    trusted = tuple(origin_of(o) for o in trusted_origins)  # refused now, not at first request
    if check_origin:
        own_origin = None if public_base is None else origin_of(public_base)
        middleware.append(Middleware(OriginCheck, own_origin=own_origin, trusted_origins=trusted))
    elif trusted:
        raise ConfigurationError("trusted_origins needs check_origin=True")
    if demo:
        middleware.append(Middleware(AnonymousOwnerCookie))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
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
        finally:
            await watchers.close()

    return _JobsApp(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            JobQueueError: library_error_handler(demo=demo),
            HTTPException: handle_http_exception,
            Exception: _internal_error,
        },
    )


class _JobsApp(Starlette):
    """Starlette, with `SecurityHeaders` outside even its server-error middleware, so the
    headers are on every response, a 500 included."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def _public_base(url: str) -> str:
    """``base_url`` checked (an absolute http(s) URL, no query or fragment), without a
    trailing slash."""
    origin_of(url)  # raises ConfigurationError for anything but http(s)://host...
    parts = urlsplit(url.strip())
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"base_url {url!r} must not have a query or fragment",
            hint="for example https://example.com/api/images",
        )
    return url.strip().rstrip("/")


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
