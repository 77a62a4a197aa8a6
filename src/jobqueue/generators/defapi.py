"""`DefAPIGenerator`: image generation through DefAPI's task API (httpx, asyncio).

The contract (see docs/generators.md):

- every request carries ``Authorization: Bearer <key>``;
- ``POST /api/image/gen`` (Google models such as ``google/nano-banana``) or
  ``POST /api/gpt-image/gen`` (OpenAI models) submits a task and answers the envelope
  ``{"code": 0, "message": ..., "data": {"task_id": ...}}``; ``code != 0`` is an error;
- ``GET /api/task/query?task_id=...`` answers ``data.status``: ``pending``, ``submitted`` and
  ``in_progress`` mean wait, ``success`` carries ``data.result[]`` (each ``{"image": url}``)
  and the cost in ``data.consumed``, ``failed`` carries ``data.status_reason.message``.
  A task submitted a moment ago may answer "not found" for a while.

Two rules shape the code. A submit costs money, so it is retried only when the request
provably did not arrive (no connection, or a 503 refusal); once DefAPI may have accepted
it, a failure is reported instead of risking a second paid generation. And the task id is
saved on the job (``context.save_remote_task_id``) before any waiting, so a worker that dies
while waiting is replaced by one that polls the same task. Queries are idempotent and are
retried freely with backoff.

A 429 (too many requests, on a submit or a query) is not retried here: it raises
`RetryLater` with the wait from ``Retry-After`` (`retry_later_after`), and the worker gives
the job back without spending an attempt and pauses its limit key for every worker. Retrying
inside one generation would only keep one job's slot busy while every other job of the fleet
met the same refusal. A 429 says the request was not taken on, so the job's next attempt
submits again (no task was made), or polls the task already saved.

The API key is a secret: it is sent in a header and nowhere else. Every message and log line
is scrubbed of it (whole or in pieces, before anything is cut short), and `generate` runs
through `Scrubber.run`, which scrubs the result (image URLs, text, ``raw``), the exception
raised and what is written to the job (see `jobqueue.generators.keys`).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from ..backoff import equal_jitter
from ..errors import ConfigurationError, GenerationError, RetryLater, redact
from ..models import MAX_DELAY
from .base import GenerationRequest, GenerationResult, JobContext, before_paid_request
from .keys import Scrubber, check_api_key, mask_key

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.defapi.org"
DEFAULT_MODEL = "google/nano-banana"
GOOGLE_SUBMIT_PATH = "/api/image/gen"
OPENAI_SUBMIT_PATH = "/api/gpt-image/gen"
QUERY_PATH = "/api/task/query"

WAITING_STATUSES = {"submitted": 5, "pending": 10, "in_progress": 50}
"""Statuses that mean "keep polling", with the progress (percent) each one reports."""

RESERVED_FIELDS = frozenset({"prompt", "model", "images"})
"""Body fields that come from the request itself; options cannot override them."""

_NOT_FOUND_WORDS = ("not found", "not exist", "no such task", "unknown task")
_REFUSED_STATUSES = frozenset({503})
"""Answers that say the request was not taken on: a submit may safely be sent again (a 429
says so too, but raises `RetryLater` instead of being retried here)."""

DEFAULT_RETRY_LATER = 30.0
"""The wait (seconds) of a 429 whose ``Retry-After`` is missing or unreadable."""
MIN_RETRY_LATER = 1.0
"""The shortest wait of a 429 (``Retry-After: 0`` or a date in the past), so that a
provider that asks for no wait at all does not get a tight loop of refused requests."""
DEFAULT_MAX_RETRY_LATER = 3600.0
"""The longest wait of a 429 by default (``max_retry_later``)."""

KEY_HINT = (
    "copy DEFAPI_API_KEY again from DefAPI's dashboard: a key is one unbroken run of "
    "printable ASCII characters"
)


def is_openai_model(model: str) -> bool:
    """OpenAI image models go to ``/api/gpt-image/gen``; everything else to ``/api/image/gen``."""
    lowered = model.lower()
    return lowered.startswith(("openai/", "gpt-"))


class TransientError(Exception):
    """An answer worth asking again (5xx), with the wait the server asked for."""

    def __init__(self, status: int, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class _NotFound(Exception):
    """DefAPI does not (yet) know the task."""


class TaskEnded(GenerationError):
    """The DefAPI task is over without images: it failed, or DefAPI no longer knows it.

    A later attempt of the job that finds such a task saved submits a new one, since
    polling the old one again could never succeed.
    """


def _may_resend_submit(exc: BaseException) -> bool:
    """True only when a submit provably did not reach DefAPI, or DefAPI refused it."""
    if isinstance(exc, TransientError):
        return exc.status in _REFUSED_STATUSES
    # No connection was made, or none was free in the pool: nothing was sent.
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


def _may_resend_query(exc: BaseException) -> bool:
    """Queries change nothing on the server: any transport trouble or 5xx may be retried."""
    return isinstance(exc, TransientError | httpx.TransportError)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def retry_later_after(value: str | None, *, longest: float = DEFAULT_MAX_RETRY_LATER) -> float:
    """The wait (seconds) of a 429 answer with ``Retry-After: value``: its seconds or HTTP
    date, `DEFAULT_RETRY_LATER` when it is missing or unreadable, and never less than
    `MIN_RETRY_LATER` nor more than ``longest``."""
    seconds = parse_retry_after(value)
    if seconds is None or math.isnan(seconds):
        seconds = DEFAULT_RETRY_LATER
    return min(max(seconds, MIN_RETRY_LATER), longest)


class DefAPIGenerator:
    """Generates images with DefAPI; see the module docstring for the contract.

    ``poll_interval`` is the pause between task queries, ``timeout`` bounds one generation
    (submit to result), ``not_found_grace`` how long a task may answer "not found" before
    that counts as an error. ``request_timeout`` bounds one HTTP request; ``max_attempts``,
    ``backoff`` (initial, maximum seconds) and ``max_retry_after`` (a 503's
    ``Retry-After``) shape the transport retries. A 429 raises `RetryLater` for its
    ``Retry-After``, at most ``max_retry_later`` seconds (`retry_later_after`). Pass
    ``client`` to share an `httpx.AsyncClient`; it is then not closed here.
    """

    name = "defapi"
    #: The unit of DefAPI's ``consumed``, which the job's ``cost`` is stored in (a
    #: subclass or an instance may name another).
    cost_unit = "credits"

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        model: str = DEFAULT_MODEL,
        poll_interval: float = 3.0,
        timeout: float = 600.0,
        not_found_grace: float = 30.0,
        request_timeout: float = 30.0,
        max_attempts: int = 5,
        backoff: tuple[float, float] = (1.0, 30.0),
        max_retry_after: float = 60.0,
        max_retry_later: float = DEFAULT_MAX_RETRY_LATER,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigurationError(
                "DefAPIGenerator needs an API key",
                hint="set DEFAPI_API_KEY, or MOCK_AI=true to use the mock generator",
            )
        check_api_key(api_key, name="the DefAPI key", hint=KEY_HINT)
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"DefAPI base URL must start with http:// or https://, not {base_url!r}",
                hint="set DEFAPI_BASE_URL to something like https://api.defapi.org",
            )
        for label, value in (
            ("poll_interval", poll_interval),
            ("timeout", timeout),
            ("request_timeout", request_timeout),
        ):
            if not value > 0:
                raise ConfigurationError(f"DefAPIGenerator {label} must be > 0, not {value!r}")
        if not not_found_grace >= 0 or not max_retry_after >= 0:
            raise ConfigurationError("not_found_grace and max_retry_after must be >= 0")
        if max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, not {max_attempts!r}")
        if not MIN_RETRY_LATER <= max_retry_later <= MAX_DELAY.total_seconds():
            raise ConfigurationError(
                f"max_retry_later must be between {MIN_RETRY_LATER:g} s and "
                f"{MAX_DELAY.days} days, not {max_retry_later!r}"
            )
        self.__key = api_key
        self._scrubber = Scrubber(api_key)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.poll_interval = float(poll_interval)
        self.timeout = float(timeout)
        self.not_found_grace = float(not_found_grace)
        self.request_timeout = float(request_timeout)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_retry_after = float(max_retry_after)
        self.max_retry_later = float(max_retry_later)
        self._client = client
        self._owns_client = client is None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return (
            f"DefAPIGenerator(base_url={redact(self.base_url)!r}, model={self.model!r}, "
            f"key={mask_key(self.__key)!r})"
        )

    @property
    def masked_key(self) -> str:
        return mask_key(self.__key)

    # -- secrecy -------------------------------------------------------------------------------

    def scrub(self, value: Any) -> Any:
        """``value`` (text, or JSON-like data) with the API key hidden: the whole key and
        every run of 8 or more of its characters become ``****`` (`Scrubber`).

        Applied to messages and log arguments; `generate` scrubs its result and errors as a
        whole. A provider that echoes the key back (some do, in "invalid key ..." messages,
        sometimes cut short) must not leak it, nor any readable piece of it.
        """
        return self._scrubber.value(value)

    def _error(
        self, message: str, *, retryable: bool = True, hint: str | None = None
    ) -> GenerationError:
        return GenerationError(redact(self.scrub(message)), retryable=retryable, hint=hint)

    # -- HTTP ----------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        """The client to use. An owned client is (re)made per event loop, because its pooled
        connections belong to the loop that opened them; `aclose` closes it before its loop
        ends (`generate_image_sync` does so after each call, as each runs in a fresh loop)."""
        if not self._owns_client:
            assert self._client is not None
            return self._client
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.is_closed or self._client_loop is not loop:
            self._client = httpx.AsyncClient(
                follow_redirects=False, headers={"Accept": "application/json"}
            )
            self._client_loop = loop
        return self._client

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """One HTTP exchange. A 429 raises `RetryLater`, 5xx `TransientError`; other answers
        are returned."""
        response = await self._http().request(
            method,
            f"{self.base_url}{path}",
            json=body,
            params=params,
            headers={"Authorization": f"Bearer {self.__key}"},
            timeout=httpx.Timeout(self.request_timeout, connect=min(10.0, self.request_timeout)),
        )
        if response.status_code == 429:
            after = retry_later_after(
                response.headers.get("Retry-After"), longest=self.max_retry_later
            )
            message = f"DefAPI {method} {path}: HTTP 429 ({self._message_of(response)})"
            logger.info("%s; retrying the job in %.3g s", message, after)
            raise RetryLater(after, redact(self.scrub(message)))
        if response.status_code >= 500:
            raise TransientError(
                response.status_code,
                f"HTTP {response.status_code}: {self._message_of(response)}",
                parse_retry_after(response.headers.get("Retry-After")),
            )
        return response

    def _wait(self, state: RetryCallState) -> float:
        """Honour ``Retry-After`` (capped at ``max_retry_after``), else exponential jitter."""
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_retry_after)
        # At least half the step, so retries spread out without hammering the server.
        return equal_jitter(state.attempt_number, *self.backoff)

    async def _exchange(
        self,
        method: str,
        path: str,
        may_retry: Callable[[BaseException], bool],
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """`_send` with tenacity retries for the errors ``may_retry`` allows."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            pause = state.next_action.sleep if state.next_action is not None else 0.0
            logger.warning(
                "DefAPI %s %s: %s; retrying in %.3g s (attempt %d of %d)",
                method,
                path,
                self._scrubber.describe(exc) if exc is not None else "no answer",
                pause,
                state.attempt_number,
                self.max_attempts,
            )

        retrying = AsyncRetrying(
            retry=retry_if_exception(may_retry),
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        response: httpx.Response | None = None
        async for attempt in retrying:
            with attempt:
                response = await self._send(method, path, body=body, params=params)
        assert response is not None
        return response

    def _message_of(self, response: httpx.Response) -> str:
        """The provider's own words from an answer: ``message``/``detail``, else the text."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping):
            for key in ("message", "detail", "error"):
                value = body.get(key)
                if isinstance(value, str) and value:
                    return str(self.scrub(value))
                if isinstance(value, Mapping) and isinstance(value.get("message"), str):
                    return str(self.scrub(value["message"]))
        text = self._scrubber.cut(response.text.strip(), 200)
        return text or self._scrubber.text(response.reason_phrase)

    def _envelope(
        self, response: httpx.Response, what: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Check an answer and return ``(body, data)``.

        Raises `_NotFound` for "no such task" (HTTP 404 or a not-found message) and
        `GenerationError` for other 4xx, ``code != 0`` and bodies that are not the envelope.
        """
        if response.status_code == 404:
            raise _NotFound(self._message_of(response))
        if response.status_code >= 400:
            status = response.status_code
            hint = None
            if status in (401, 403):
                hint = "check DEFAPI_API_KEY: DefAPI rejected the key"
            raise self._error(
                f"DefAPI refused to {what} (HTTP {status}): {self._message_of(response)}",
                retryable=False,
                hint=hint,
            )
        try:
            body = response.json()
        except ValueError:
            snippet = self._scrubber.cut(response.text.strip(), 120)
            raise self._error(
                f"DefAPI answered the {what} request with something that is not JSON "
                f"(HTTP {response.status_code}): {snippet!r}"
            ) from None
        if not isinstance(body, dict) or "code" not in body:
            raise self._error(
                f"DefAPI answered the {what} request with JSON that is not its envelope "
                f"{{code, message, data}}: {self._scrubber.cut(json.dumps(body), 120)}"
            )
        message = body.get("message")
        if body.get("code") != 0:
            text = str(message or body.get("detail") or f"code {body.get('code')}")
            if any(word in text.lower() for word in _NOT_FOUND_WORDS):
                raise _NotFound(self.scrub(text))
            raise self._error(
                f"DefAPI could not {what}: {text} (code {body.get('code')})", retryable=False
            )
        data = body.get("data")
        if not isinstance(data, dict):
            raise self._error(f"DefAPI's answer to the {what} request has no 'data' object")
        return body, data

    # -- the generation ------------------------------------------------------------------------

    def submit_body(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        """The endpoint path and JSON body for ``request``.

        Options (``aspect_ratio``, ``image_size``, ``size``, ``quality``, ...) are passed
        through as top-level fields, as DefAPI expects; they cannot replace the prompt, model
        or images.
        """
        model = request.model or self.model
        body: dict[str, Any] = {
            k: v for k, v in request.options.items() if k not in RESERVED_FIELDS
        }
        body["prompt"] = request.prompt
        body["model"] = model
        if request.images:
            body["images"] = list(request.images)
        path = OPENAI_SUBMIT_PATH if is_openai_model(model) else GOOGLE_SUBMIT_PATH
        return path, body

    async def submit(self, request: GenerationRequest) -> str:
        """Start a task and return its id. Never sends twice what DefAPI may have accepted."""
        path, body = self.submit_body(request)
        try:
            response = await self._exchange("POST", path, _may_resend_submit, body=body)
        except (httpx.TransportError, TransientError) as exc:
            if _may_resend_submit(exc):
                raise self._error(
                    f"DefAPI did not take the task after {self.max_attempts} attempts: "
                    f"{self._scrubber.describe(exc)}"
                ) from None
            raise self._error(
                f"DefAPI may have accepted the task but its answer was lost "
                f"({self._scrubber.describe(exc)}); not submitting again, so as not to pay "
                "for a second generation",
                retryable=False,
                hint="check DefAPI's dashboard for the task before retrying this job",
            ) from None
        try:
            _, data = self._envelope(response, "start the generation")
        except _NotFound as exc:
            raise self._error(
                f"DefAPI answered 'not found' to the submit at {path}: {exc}",
                retryable=False,
                hint="check DEFAPI_BASE_URL and the model name",
            ) from None
        task_id = data.get("task_id")
        if not isinstance(task_id, str | int) or isinstance(task_id, bool) or not str(task_id):
            raise self._error(
                "DefAPI accepted the request but its answer has no task_id", retryable=False
            )
        logger.info(
            "DefAPI task %s submitted (model %s)",
            self.scrub(str(task_id)),
            self.scrub(body["model"]),
        )
        return str(task_id)

    async def query(self, task_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """One task query (with transport retries): ``(body, data)``; `_NotFound` if unknown."""
        try:
            response = await self._exchange(
                "GET", QUERY_PATH, _may_resend_query, params={"task_id": task_id}
            )
        except (httpx.TransportError, TransientError) as exc:
            raise self._error(
                f"could not query DefAPI task {task_id} after {self.max_attempts} attempts: "
                f"{self._scrubber.describe(exc)}"
            ) from None
        return self._envelope(response, f"report on task {task_id}")

    async def poll(self, task_id: str, context: JobContext) -> GenerationResult:
        """Query the task until it succeeds, fails, or ``timeout`` passes."""
        deadline = time.monotonic() + self.timeout
        missing_since: float | None = None
        last_status: str | None = None
        while True:
            try:
                body, data = await self.query(task_id)
            except _NotFound as exc:
                now = time.monotonic()
                missing_since = now if missing_since is None else missing_since
                if now - missing_since >= self.not_found_grace:
                    raise TaskEnded(
                        self.scrub(
                            f"DefAPI does not know task {task_id} "
                            f"(still 'not found' after {self.not_found_grace:g} s): {exc}"
                        )
                    ) from None
                logger.debug("DefAPI task %s not found yet; waiting", self.scrub(task_id))
            else:
                missing_since = None
                status = str(data.get("status") or "")
                if status == "success":
                    return self._result(task_id, body, data)
                if status == "failed":
                    reason = _failure_reason(data)
                    # What a failed task consumed is paid all the same: the job keeps it.
                    raise TaskEnded(
                        self.scrub(f"DefAPI task {task_id} failed: {reason}"),
                        cost=_cost(data.get("consumed")),
                        cost_unit=self.cost_unit,
                    )
                if status != last_status:
                    last_status = status
                    if status in WAITING_STATUSES:
                        logger.info("DefAPI task %s: %s", self.scrub(task_id), status)
                        await context.report_progress(WAITING_STATUSES[status], f"DefAPI: {status}")
                    else:
                        logger.warning(
                            "DefAPI task %s has an unknown status %r; still waiting",
                            self.scrub(task_id),
                            self.scrub(status),
                        )
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._error(
                    f"DefAPI task {task_id} did not finish within {self.timeout:g} s "
                    f"(last status: {last_status or 'unknown'})",
                    hint="the task id is saved on the job; a retry resumes polling it",
                )
            await asyncio.sleep(min(self.poll_interval, left))

    def _result(self, task_id: str, body: dict[str, Any], data: dict[str, Any]) -> GenerationResult:
        items = data.get("result")
        if isinstance(items, Mapping):
            items = [items]
        if not isinstance(items, list):
            items = []
        images = tuple(str(i["image"]) for i in items if isinstance(i, Mapping) and i.get("image"))
        texts = [str(i["text"]) for i in items if isinstance(i, Mapping) and i.get("text")]
        text = "\n".join(texts) if texts else None
        if not images:
            detail = f": {self._scrubber.cut(text, 200)}" if text else ""
            error = self._error(
                f"DefAPI task {task_id} succeeded but returned no image{detail}",
                retryable=False,
            )
            error.cost, error.cost_unit = _cost(data.get("consumed")), self.cost_unit
            raise error
        logger.info("DefAPI task %s succeeded with %d image(s)", self.scrub(task_id), len(images))
        # Scrubbed as a whole by `generate` (image URLs and text too); ``raw`` here already,
        # for callers of `poll`.
        return GenerationResult(
            images=images,
            text=text,
            cost=_cost(data.get("consumed")),
            raw=self.scrub(body),
            cost_unit=self.cost_unit,
        )

    async def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        """Resume the task an earlier attempt saved (``context.remote_task_id``), or submit
        one and save its id; then poll to the end.

        A saved task that has ended without images (failed, or unknown to DefAPI for
        longer than ``not_found_grace``) cannot succeed any more: this attempt is a retry, so
        it submits a new task instead. The result, any error and what is written to the job
        are scrubbed of the key (`Scrubber.run`).
        """
        return await self._scrubber.run(self._generate, request, context)

    async def _generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        task_id = context.remote_task_id
        if task_id:
            logger.info("resuming DefAPI task %s instead of submitting again", self.scrub(task_id))
            try:
                return await self.poll(task_id, context)
            except TaskEnded as exc:
                logger.warning("%s; submitting a new task for this attempt", exc.message)
        # Not while the worker cannot vouch for the job: another attempt may own it by the
        # time the task id could be saved, and would pay for a task of its own.
        await before_paid_request(context)
        task_id = await self.submit(request)
        # Saved before any waiting: a worker that dies from here on is replaced by one
        # that polls this task instead of paying for a new one.
        await context.save_remote_task_id(task_id)
        return await self.poll(task_id, context)

    async def aclose(self) -> None:
        """Close the HTTP client if this generator made it."""
        if self._owns_client and self._client is not None and not self._client.is_closed:
            await self._client.aclose()
        if self._owns_client:
            self._client = None


def _failure_reason(data: Mapping[str, Any]) -> str:
    reason = data.get("status_reason")
    if isinstance(reason, Mapping) and reason.get("message"):
        return str(reason["message"])
    if isinstance(reason, str) and reason:
        return reason
    return "no reason given"


def _cost(value: Any) -> Decimal | None:
    """``data.consumed`` as an exact decimal (DefAPI sends it as a string such as "0.04");
    None when it is missing or no amount the job can store (negative, not a number, more
    than 6 places): a result is never lost over its price."""
    if isinstance(value, bool) or value is None or not isinstance(value, str | int | float):
        return None
    try:
        amount = Decimal(str(value).strip())
    except ArithmeticError:
        return None
    if not amount.is_finite() or amount < 0 or amount.as_tuple().exponent < -6:  # type: ignore[operator]
        logger.warning("DefAPI reported a cost the job cannot store: %r", value)
        return None
    return amount
