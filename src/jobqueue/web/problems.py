"""HTTP errors of the web API: one JSON shape, ``{"error": {"code", "message", "hint"}}``.

Clients branch on ``code`` (stable, snake_case) and show ``message``; the HTTP status says
who is at fault. Library errors are mapped here once, so every endpoint answers the same
way — in particular a job that exists but belongs to someone else is indistinguishable
from one that never existed (404), and an id that is not a UUID is a 400 that reveals
nothing about any job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import (
    BudgetExceeded,
    DatabaseUnavailable,
    InvalidJobId,
    InvalidTransition,
    JobNotFound,
    JobQueueError,
    PayloadError,
)


class ApiError(JobQueueError):
    """A request the API refuses, with the HTTP status and a stable error code."""

    hint = "see docs/web.md for the request format"

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        hint: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code
        self.headers = dict(headers or {})


def error_response(
    status: int,
    code: str,
    message: str,
    hint: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, str] = {"code": code, "message": message}
    if hint:
        body["hint"] = hint
    # A refusal is about this request and this caller: never stored by a cache.
    return JSONResponse(
        {"error": body},
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


#: The 404 of a job the caller may not see, whatever the reason (missing or another
#: owner's); demo mode adds why a curl user most often gets it.
NOT_FOUND = "no such job"
DEMO_NOT_FOUND = "no such job: this job belongs to another owner, or you sent no owner cookie"
DEMO_NOT_FOUND_HINT = (
    "the demo tells browsers apart by the jobqueue_owner cookie its first answer sets; "
    "send it back with every request (curl: -c cookies.txt -b cookies.txt)"
)


#: What an end user refused by their budget can do (see `as_api_error`).
BUDGET_HINT = (
    "your budget for this period is used up: try again once it starts over, or ask for "
    "a larger one; GET /spending shows what is left"
)
#: The same for a prepaid balance, which never starts over.
BALANCE_HINT = (
    "your prepaid balance is used up: ask for it to be topped up; GET /spending shows what "
    "is left"
)

#: Seconds a client is asked to wait (``Retry-After``) when the job store is unavailable.
UNAVAILABLE_RETRY_AFTER = 5


def as_api_error(exc: JobQueueError, *, demo: bool = False) -> ApiError:
    """The HTTP meaning of a library error (``demo``: the app tells owners apart by cookie)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidJobId):
        return ApiError(400, "invalid_job_id", exc.message, hint=exc.hint)
    if isinstance(exc, JobNotFound):
        # Same answer whether the job is missing or someone else's: no existence leak.
        if demo:
            return ApiError(404, "not_found", DEMO_NOT_FOUND, hint=DEMO_NOT_FOUND_HINT)
        return ApiError(404, "not_found", NOT_FOUND, hint=JobNotFound.hint)
    if isinstance(exc, InvalidTransition):
        return ApiError(409, "invalid_transition", exc.message, hint=exc.hint)
    if isinstance(exc, PayloadError):
        return ApiError(422, "invalid_request", exc.message, hint=exc.hint)
    if isinstance(exc, BudgetExceeded):
        # 402: the caller's own budget, not the server's load (429) refused it. The
        # operator's hint (a command to run) is no use to an end user.
        hint = BALANCE_HINT if exc.period == "balance" else BUDGET_HINT
        return ApiError(402, "budget_exceeded", exc.message, hint=hint)
    if isinstance(exc, DatabaseUnavailable):
        # A bounded answer (the queue's command_timeout ends a wait on a silent database)
        # that tells clients when to come back, instead of requests piling up behind it.
        return ApiError(
            503,
            "unavailable",
            "the job store is unavailable, try again shortly",
            hint=f"retry in {UNAVAILABLE_RETRY_AFTER} s",
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
        )
    return ApiError(500, "internal_error", "the job store failed to answer this request")


def library_error_handler(*, demo: bool) -> Callable[[Request, Exception], Awaitable[Response]]:
    """The app's handler for `JobQueueError` (``demo``: see `as_api_error`)."""

    async def handle_library_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, JobQueueError)
        err = as_api_error(exc, demo=demo)
        return error_response(err.status, err.code, err.message, err.hint, err.headers)

    return handle_library_error


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (unknown paths, wrong methods) in our JSON shape."""
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    response = error_response(exc.status_code, code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response
