"""`create_admin_app`: the operator's dashboard, an ASGI app of its own.

One page (``admin.html`` with plain ``admin.js`` and ``admin.css``, no build step) over a
small JSON API under ``api/``: the overview, a page of the jobs table, one job whole, and
the actions (retry one or many, cancel, pause and resume a queue or limit key). Every read
is one of the queue's bounded operations (`jobqueue.operations.admin`, `list_limits`,
`live_workers`); no SQL lives here.

Who may use it: the host's ``authenticate`` hook says (a name for the log, or None: 401).
Without a hook the dashboard answers only requests that come from this machine — the
client's address is a loopback one, the ``Host`` header names a loopback address (so a
DNS-rebinding page cannot reach it), and no proxy header says the request was forwarded
— and refuses everything else with 403.

Cross-site requests: every action is a ``POST`` that must carry the page's token in the
``X-Jobqueue-Admin-Token`` header, equal to the token cookie the page set (a double-submit
token: another site can neither read the cookie nor send a custom header without a CORS
preflight, which this app never grants), and a cross-site ``POST`` with cookies is refused
before that by `OriginCheck`, as in the job API.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from ..errors import ConfigurationError, JobQueueError
from ..models import Job, Limit, LiveWorker, Status
from ..operations.admin import JobPage, JobSummary, Overview
from ..queue import AsyncJobQueue
from ..sql.admin import MAX_PAGE
from ..validation import parse_job_id
from .guards import OriginCheck, SecurityHeaders
from .problems import ApiError, error_response, handle_http_exception, library_error_handler

#: How long (seconds) every open dashboard shares one read of the overview; an action
#: through the dashboard reads it anew.
OVERVIEW_MAX_AGE = 2.0

logger = logging.getLogger(__name__)

#: ``async def authenticate(request) -> str | None``: the operator's name (for the log), or
#: None when the request is not an admin's (401). A plain function works too.
Authenticate = Callable[[Request], Awaitable[str | None] | str | None]

TOKEN_COOKIE = "jobqueue_admin_token"
TOKEN_HEADER = "x-jobqueue-admin-token"
#: The page's scripts and styles are its own files; nothing inline, nothing from elsewhere,
#: and no other site may frame it (clickjacking an operator's retry or cancel).
ADMIN_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Above this many characters a payload or result is shown cut (a base64 image is long).
MAX_SHOWN_JSON = 64_000
#: The default page size of the jobs table.
DEFAULT_PAGE = 50
_NO_STORE = {"Cache-Control": "no-store"}
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_FORWARDED = (b"forwarded", b"x-forwarded-for", b"x-real-ip")
_COUNT = re.compile(r"^[0-9]{1,4}$")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or a name, without a port) is this machine's loopback."""
    if not host:
        return False
    name = host.strip().strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_admin_bind(host: str, authenticate: Authenticate | None) -> None:
    """Refuse to serve the dashboard without an authentication hook anywhere but loopback
    (`ConfigurationError` with what to do)."""
    if authenticate is None and not is_loopback(host):
        raise ConfigurationError(
            f"the admin dashboard has no authentication hook and would listen on {host}, "
            "reachable from other machines",
            hint="pass --admin-auth module:function (async def f(request) -> name or None), "
            "or listen on 127.0.0.1 and reach it through an SSH tunnel",
        )


def _host_header_name(request: Request) -> str:
    host = request.headers.get("host", "")
    try:
        return urlsplit("//" + host).hostname or ""
    except ValueError:
        return ""


class AdminApi:
    """The dashboard's endpoints, bound to one queue and one way of telling admins apart."""

    def __init__(self, queue: AsyncJobQueue, authenticate: Authenticate | None) -> None:
        self.queue = queue
        self.authenticate = authenticate
        #: The overview last read (monotonic time, body): its counts read the whole jobs
        #: table, so every open dashboard shares one read per `OVERVIEW_MAX_AGE`.
        self._overview: tuple[float, dict[str, Any]] | None = None

    # -- who is asking -----------------------------------------------------------------

    async def admin_of(self, request: Request) -> str:
        """Who is asking (the hook's answer, or "local"); 401 or 403 when nobody may."""
        if self.authenticate is not None:
            found = self.authenticate(request)
            name = await found if inspect.isawaitable(found) else found
            if not name:
                raise ApiError(
                    401,
                    "unauthenticated",
                    "sign in as an administrator to use the dashboard",
                    hint="the host application's authenticate hook found no admin for this request",
                )
            return str(name)
        client = request.client.host if request.client else None
        forwarded = any(name in _FORWARDED for name, _ in request.scope.get("headers", ()))
        if not is_loopback(client) or not is_loopback(_host_header_name(request)) or forwarded:
            raise ApiError(
                403,
                "admin_loopback_only",
                "the admin dashboard has no authentication hook, so it answers only "
                "requests made on this machine",
                hint="create_admin_app(queue, authenticate=...) to serve it to others",
            )
        return "local"

    def check_token(self, request: Request) -> None:
        """A ``POST`` carries the page's token in a header, equal to its cookie."""
        cookie = request.cookies.get(TOKEN_COOKIE, "")
        sent = request.headers.get(TOKEN_HEADER, "")
        if not cookie or not hmac.compare_digest(cookie.encode(), sent.encode()):
            raise ApiError(
                403,
                "admin_token_missing",
                "this action needs the dashboard page's token",
                hint="reload the dashboard page; actions are sent from the page itself",
            )

    async def acting(self, request: Request) -> str:
        admin = await self.admin_of(request)
        self.check_token(request)
        self._overview = None  # the action changes what the next overview shows
        return admin

    # -- the page ----------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        await self.admin_of(request)
        token = request.cookies.get(TOKEN_COOKIE) or secrets.token_urlsafe(24)
        html = _static_text("admin.html")
        response = HTMLResponse(
            html, headers={"Content-Security-Policy": ADMIN_CSP, "Cache-Control": "no-store"}
        )
        response.set_cookie(
            TOKEN_COOKIE,
            token,
            path=(request.scope.get("root_path") or "").rstrip("/") + "/",
            httponly=False,  # the page's script sends it back in a header
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    # -- reads -------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        await self.admin_of(request)
        cached = self._overview
        if cached is not None and time.monotonic() - cached[0] < OVERVIEW_MAX_AGE:
            return JSONResponse(cached[1], headers=_NO_STORE)
        body = await self._read_overview()
        self._overview = (time.monotonic(), body)
        return JSONResponse(body, headers=_NO_STORE)

    async def _read_overview(self) -> dict[str, Any]:
        seen = await self.queue.overview()
        limits = await self.queue.list_limits()
        workers: list[LiveWorker] | None
        try:
            workers = await self.queue.live_workers()
        except JobQueueError as exc:  # an older schema, a role that may not read them
            logger.debug("no live workers for the dashboard: %s", exc)
            workers = None
        return overview_view(seen, limits, workers)

    async def jobs(self, request: Request) -> Response:
        await self.admin_of(request)
        params = request.query_params
        wanted = (params.get("id") or "").strip()
        if wanted:
            try:
                job = await self.queue.get(parse_job_id(wanted))
            except JobQueueError:
                return JSONResponse({"jobs": [], "next": None}, headers=_NO_STORE)
            return JSONResponse({"jobs": [job_line(job)], "next": None}, headers=_NO_STORE)
        status = params.get("status") or None
        if status is not None and status not in {s.value for s in Status}:
            raise ApiError(
                400,
                "invalid_parameter",
                f"unknown status {status[:40]!r}",
                hint="statuses are " + ", ".join(s.value for s in Status),
            )
        found = await self.queue.job_page(
            status=status,
            queue=params.get("queue") or None,
            kind=params.get("kind") or None,
            owner_id=params.get("owner") or None,
            created_from=_time_param(params.get("from")),
            created_to=_time_param(params.get("to")),
            after=_after_param(params.get("after")),
            limit=_limit_param(params.get("limit")),
        )
        return JSONResponse(page_view(found), headers=_NO_STORE)

    async def job(self, request: Request) -> Response:
        await self.admin_of(request)
        job = await self.queue.get(self.job_id(request))
        return JSONResponse(job_detail(job), headers=_NO_STORE)

    # -- actions -----------------------------------------------------------------------

    async def retry(self, request: Request) -> Response:
        admin = await self.acting(request)
        job = await self.queue.retry(self.job_id(request))
        logger.info("admin %r retried job %s", admin, job.id)
        return JSONResponse(job_detail(job), headers=_NO_STORE)

    async def cancel(self, request: Request) -> Response:
        admin = await self.acting(request)
        job = await self.queue.cancel(self.job_id(request))
        logger.info("admin %r cancelled job %s", admin, job.id)
        return JSONResponse(job_detail(job), headers=_NO_STORE)

    async def retry_many(self, request: Request) -> Response:
        admin = await self.acting(request)
        body = await _json_body(request)
        ids = body.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ApiError(400, "invalid_request", "'ids' must be a list of job ids")
        if len(ids) > MAX_PAGE:
            raise ApiError(
                400, "invalid_request", f"at most {MAX_PAGE} jobs can be retried at once"
            )
        jobs = await self.queue.retry_many([parse_job_id(i) for i in ids])
        logger.info("admin %r retried %d jobs", admin, len(jobs))
        return JSONResponse({"retried": [str(j.id) for j in jobs]}, headers=_NO_STORE)

    async def pause(self, request: Request) -> Response:
        admin = await self.acting(request)
        body = await _json_body(request)
        scope, name = _limit_target(body)
        minutes = body.get("minutes")
        if minutes is not None and (
            isinstance(minutes, bool) or not isinstance(minutes, int | float) or minutes <= 0
        ):
            raise ApiError(400, "invalid_request", "'minutes' must be a number above 0")
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ApiError(400, "invalid_request", "'reason' must be text")
        limit = await self.queue.pause(
            name,
            scope=scope,
            duration=None if minutes is None else timedelta(minutes=minutes),
            reason=reason or f"paused by {admin} from the dashboard",
        )
        logger.info("admin %r paused %s %r", admin, scope, name)
        return JSONResponse(limit_view(limit), headers=_NO_STORE)

    async def resume(self, request: Request) -> Response:
        admin = await self.acting(request)
        scope, name = _limit_target(await _json_body(request))
        limit = await self.queue.resume(name, scope=scope)
        logger.info("admin %r resumed %s %r", admin, scope, name)
        return JSONResponse(limit_view(limit), headers=_NO_STORE)

    def job_id(self, request: Request) -> str:
        return str(parse_job_id(request.path_params["job_id"]))


def create_admin_app(
    queue: AsyncJobQueue,
    *,
    authenticate: Authenticate | None = None,
    check_origin: bool = True,
    trusted_origins: tuple[str, ...] = (),
) -> Starlette:
    """Build the admin dashboard: run it under any ASGI server or mount it into the host's
    app (``app.mount("/admin", create_admin_app(queue, authenticate=is_admin))``).

    ``authenticate(request)`` returns the administrator's name (written to the log with
    each action) or None for "not an admin" (401). Without it the dashboard answers only
    requests made on this machine (loopback client, loopback ``Host``, not forwarded by a
    proxy), and `jobqueue serve --admin` refuses to listen anywhere else. The app owns no
    connections: the host passes an `AsyncJobQueue` in and closes it.
    """
    if authenticate is not None and not callable(authenticate):
        raise ConfigurationError(
            "authenticate must be `async def f(request) -> str | None`",
            hint="return the admin's name, or None to refuse the request",
        )
    api = AdminApi(queue, authenticate)
    routes = [
        Route("/", api.page, methods=["GET"], name="admin"),
        Route("/api/overview", api.overview, methods=["GET"]),
        Route("/api/jobs", api.jobs, methods=["GET"]),
        Route("/api/jobs/retry", api.retry_many, methods=["POST"]),
        Route("/api/jobs/{job_id}", api.job, methods=["GET"]),
        Route("/api/jobs/{job_id}/retry", api.retry, methods=["POST"]),
        Route("/api/jobs/{job_id}/cancel", api.cancel, methods=["POST"]),
        Route("/api/limits/pause", api.pause, methods=["POST"]),
        Route("/api/limits/resume", api.resume, methods=["POST"]),
        Mount("/static", _AdminStatic(api), name="static"),
    ]
    middleware = []
    if check_origin:
        middleware.append(Middleware(OriginCheck, own_origin=None, trusted_origins=trusted_origins))
    return _AdminApp(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            JobQueueError: library_error_handler(demo=False),
            HTTPException: handle_http_exception,
            Exception: _internal_error,
        },
    )


class _AdminStatic:
    """The page's own files (``admin.*`` of the package's static folder), behind the same
    check as every other request."""

    def __init__(self, api: AdminApi) -> None:
        self.api = api
        self.files = StaticFiles(packages=[(__package__, "static")])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        path = scope.get("path", "")
        try:
            await self.api.admin_of(request)
            if not path.rsplit("/", 1)[-1].startswith("admin."):
                raise ApiError(404, "not_found", "no such file")
        except ApiError as err:
            response = error_response(err.status, err.code, err.message, err.hint)
            await response(scope, receive, send)
            return
        await self.files(scope, receive, send)


class _AdminApp(Starlette):
    """Starlette, with `SecurityHeaders` on every response, a 500 included."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error in the admin dashboard", exc_info=exc)
    return error_response(500, "internal_error", "the server failed to answer this request")


# -- reading requests -------------------------------------------------------------------


async def _json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the action as application/json")
    raw = await request.body()
    if len(raw) > 64_000:
        raise ApiError(413, "payload_too_large", "the action's body is too large")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise ApiError(400, "invalid_request", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    return body


def _limit_target(body: dict[str, Any]) -> tuple[str, str]:
    scope = body.get("scope", "queue")
    name = body.get("name")
    if scope not in ("queue", "key") or not isinstance(name, str) or not name.strip():
        raise ApiError(
            400,
            "invalid_request",
            "say what to pause or resume: 'scope' ('queue' or 'key') and its 'name'",
        )
    return scope, name.strip()


def _time_param(raw: str | None) -> datetime | None:
    if not raw:
        return None
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(
            400, "invalid_parameter", "times are ISO 8601, e.g. 2026-11-29T10:00:00Z"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _after_param(raw: str | None) -> tuple[datetime, str] | None:
    if not raw:
        return None
    at, _, job_id = raw.rpartition("~")
    moment = _time_param(at)
    if moment is None or not job_id:
        raise ApiError(400, "invalid_parameter", "'after' is the 'next' of the page before")
    return moment, job_id


def _limit_param(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not _COUNT.fullmatch(raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(400, "invalid_parameter", f"'limit' must be an integer from 1 to {MAX_PAGE}")
    return int(raw)


# -- the JSON the page reads ------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _money(value: Any) -> str | None:
    return None if value is None else str(value)


def _age(now: datetime | None, then: datetime | None) -> float | None:
    """Seconds from ``then`` to ``now`` (both the database's), None when either is."""
    if now is None or then is None:
        return None
    try:
        return max(0.0, (now - then).total_seconds())
    except OverflowError:  # a time at infinity, written by another client
        return None


def overview_view(
    seen: Overview, limits: list[Limit], workers: list[LiveWorker] | None
) -> dict[str, Any]:
    totals = {s.value: seen.total(s) for s in Status}
    queues: dict[str, dict[str, Any]] = {}
    for line in seen.counts:
        queue = queues.setdefault(line.queue, {"queue": line.queue, "counts": {}})
        queue["counts"][line.status.value] = line.count
        if line.status is Status.PENDING:
            queue["oldest_pending_age"] = _age(seen.now, line.oldest)
    oldest = seen.oldest_pending
    return {
        "now": _iso(seen.now),
        "totals": totals,
        "queues": [queues[name] for name in sorted(queues)],
        "oldest_pending": _iso(oldest),
        "oldest_pending_age": _age(seen.now, oldest),
        "throughput": {"completed": seen.completed, "failed": seen.failed},
        "cost_today": [{"unit": u, "cost": _money(c)} for u, c in seen.cost_today.items()],
        "workers": None if workers is None else [worker_view(w) for w in workers],
        "limits": [limit_view(limit) for limit in limits if limit.scope != "owner"],
    }


def worker_view(w: LiveWorker) -> dict[str, Any]:
    return {
        "worker_id": w.worker_id,
        "host": w.host,
        "pid": w.pid,
        "queues": list(w.queues),
        "kinds": None if w.kinds is None else list(w.kinds),
        "concurrency": w.concurrency,
        "started_at": _iso(w.started_at),
        "beat_age": round(w.beat_age, 1),
    }


def limit_view(limit: Limit) -> dict[str, Any]:
    return {
        "scope": limit.scope,
        "name": limit.name,
        "paused": limit.paused,
        "paused_until": _iso(limit.paused_until),
        "pause_reason": limit.pause_reason,
        "max_running": limit.max_running,
        "rate": limit.rate,
        "per_seconds": limit.per_seconds,
        "running": limit.running,
        "pending": limit.pending,
    }


def summary_view(j: JobSummary) -> dict[str, Any]:
    return {
        "id": str(j.id),
        "queue": j.queue,
        "kind": j.kind,
        "status": j.status.value,
        "owner_id": j.owner_id,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "progress": j.progress,
        "error": None if j.error is None else j.error[:300],
        "cost": _money(j.cost),
        "cost_unit": j.cost_unit,
        "created_at": _iso(j.created_at),
        "updated_at": _iso(j.updated_at),
        "completed_at": _iso(j.completed_at),
    }


def job_line(job: Job) -> dict[str, Any]:
    """A whole job as one line of the jobs table (the search by id's answer)."""
    return summary_view(
        JobSummary(
            job.id,
            job.queue,
            job.kind,
            job.status,
            job.owner_id,
            job.attempts,
            job.max_attempts,
            job.progress,
            job.error,
            job.cost,
            job.cost_unit,
            job.created_at,
            job.updated_at,
            job.completed_at,
        )
    )


def page_view(found: JobPage) -> dict[str, Any]:
    after = found.after
    return {
        "jobs": [summary_view(j) for j in found.jobs],
        "next": None if after is None else f"{after[0].isoformat()}~{after[1]}",
    }


def _shown(value: Any) -> dict[str, Any]:
    """A JSON value as indented text for the page, cut beyond `MAX_SHOWN_JSON`."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > MAX_SHOWN_JSON:
        return {"text": text[:MAX_SHOWN_JSON], "cut": len(text)}
    return {"text": text, "cut": None}


def job_detail(job: Job) -> dict[str, Any]:
    """Everything the job's page shows."""
    return {
        **job_line(job),
        "error": job.error,
        "priority": job.priority,
        "progress_message": job.progress_message,
        "payload": _shown(job.payload),
        "result": _shown(job.result),
        "result_url": job.result_url,
        "errors": job.errors,
        "locked_by": job.locked_by,
        "remote_task_id": job.remote_task_id,
        "idempotency_key": job.idempotency_key,
        "limit_key": job.limit_key,
        "reserved": _money(job.reserved),
        "unreadable": job.unreadable,
        "timeline": {
            "created_at": _iso(job.created_at),
            "run_at": _iso(job.run_at),
            "started_at": _iso(job.started_at),
            "lease_expires_at": _iso(job.lease_expires_at),
            "start_by": _iso(job.start_by),
            "completed_at": _iso(job.completed_at),
            "updated_at": _iso(job.updated_at),
        },
    }


def _static_text(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text("utf-8")
