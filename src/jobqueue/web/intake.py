"""Reading ``POST /jobs``: a JSON body or a multipart form with an optional image file.

Everything a request may carry is checked here, before the queue is touched, so a refused
request never leaves a job behind. The body is read through a counting ``receive`` so an
oversize upload is cut off at the limit instead of being spooled to disk first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from ..errors import PayloadError
from ..generators.base import GenerationRequest
from ..models import MAX_JSON_DEPTH
from .allowed import Allowed
from .problems import ApiError

JSON_FIELDS = frozenset({"prompt", "model", "images", "options", "expires_in", "start_by"})
FORM_FIELDS = frozenset({"prompt", "model", "options", "image", "expires_in", "start_by"})
MAX_IMAGE_URLS = 8
MAX_URL_CHARS = 8192
MAX_MODEL_CHARS = 200
#: Room for the prompt, options and multipart framing on top of the image itself.
BODY_OVERHEAD_BYTES = 64 * 1024

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
#: A Content-Length as HTTP spells it: ASCII digits only (``str.isdigit`` also takes "²").
_DECIMAL = re.compile(r"^[0-9]{1,20}$")
#: The longest number literal a request may carry. Python refuses to turn integers of
#: thousands of digits into ``int`` (and a stored one would burden every later reader);
#: no option of a generator needs more than a few digits.
MAX_NUMBER_CHARS = 100

#: Magic numbers of the image formats we accept, so the stored MIME type is what the bytes
#: are, not what the browser claimed.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """How much a single ``POST /jobs`` may carry (the queue's own bounds on what it
    stores are `jobqueue.validation.QueueLimits`)."""

    max_prompt_chars: int
    max_upload_bytes: int
    allowed: Allowed = field(default_factory=Allowed)

    @property
    def max_body_bytes(self) -> int:
        # A JSON body may carry the image as a data: URL, which base64 makes 4/3 larger.
        return self.max_upload_bytes * 4 // 3 + BODY_OVERHEAD_BYTES


def idempotency_key_of(request: Request) -> str | None:
    value = request.headers.get("idempotency-key")
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            "Idempotency-Key must be 1 to 200 printable ASCII characters without spaces",
            hint="a random UUID per user action is a good key",
        )
    return value


def sniff_image(data: bytes) -> str | None:
    """The MIME type of an image from its first bytes, or None when it is not one we take."""
    for magic, mime in _SIGNATURES:
        if data.startswith(magic):
            return mime
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "payload_too_large",
        f"the request body is over the limit of {limit} bytes",
        hint="send a smaller image, or pass an image URL instead of the file",
    )


def limited(request: Request, limit: int) -> Request:
    """A view of ``request`` whose body raises 413 once more than ``limit`` bytes arrive."""
    declared = request.headers.get("content-length")
    if declared is not None and _DECIMAL.fullmatch(declared) and int(declared) > limit:
        raise _too_large(limit)
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return Request(request.scope, receive)


@dataclass(frozen=True, slots=True)
class NewGeneration:
    """What a ``POST /jobs`` asks for: the generation, and its start deadline as the
    queue's ``enqueue`` options (``expires_in`` seconds, or a ``start_by`` time; none
    when empty). The queue checks the deadline's bounds (`PayloadError`: 422)."""

    request: GenerationRequest
    deadline: dict[str, Any] = field(default_factory=dict)


async def read_generation(request: Request, limits: RequestLimits) -> NewGeneration:
    """The generation a ``POST /jobs`` asks for, or an `ApiError` saying what is wrong."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = limited(request, limits.max_body_bytes)
    try:
        if content_type == "application/json":
            return _from_json(await body.body(), limits)
        if content_type == "multipart/form-data":
            return await _from_form(body, limits)
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the request body did not arrive") from None
    raise ApiError(
        415,
        "unsupported_media_type",
        f"POST /jobs takes application/json or multipart/form-data, not {content_type or 'none'}",
        hint='send {"prompt": "..."} with Content-Type: application/json',
    )


class _NumberTooLong(ValueError):
    pass


def _bounded_number(convert: type[int] | type[float]) -> Any:
    def parse(literal: str) -> int | float:
        if len(literal) > MAX_NUMBER_CHARS:
            raise _NumberTooLong(literal)
        return convert(literal)

    return parse


_PARSE_INT = _bounded_number(int)
_PARSE_FLOAT = _bounded_number(float)


def _depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests deeper than ``limit`` (iteratively: no recursion to run out of)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return False


def parse_json(raw: bytes | str, what: str) -> Any:
    """``raw`` decoded as JSON, or a 400 `ApiError` (code ``invalid_json``) saying why not.

    Beyond syntax, refuses what would otherwise raise deep inside the app: numbers longer
    than `MAX_NUMBER_CHARS` characters and nesting deeper than the queue stores.
    """
    try:
        data = json.loads(raw, parse_int=_PARSE_INT, parse_float=_PARSE_FLOAT)
    except _NumberTooLong:
        raise ApiError(
            400,
            "invalid_json",
            f"{what} holds a number longer than {MAX_NUMBER_CHARS} characters",
        ) from None
    except RecursionError:
        data = None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ApiError(400, "invalid_json", f"{what} is not valid JSON: {exc}") from None
    else:
        if not _depth_over(data, MAX_JSON_DEPTH):
            return data
    raise ApiError(400, "invalid_json", f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")


def _deadline(expires_in: Any, start_by: Any, *, texts: bool) -> dict[str, Any]:
    """The start deadline a request gives: ``expires_in`` (seconds from now, by the
    database clock: the client's own clock never counts) or ``start_by`` (an ISO 8601 time
    with its offset). ``texts``: both arrive as form text."""
    out: dict[str, Any] = {}
    if expires_in is not None and expires_in != "":
        if texts:
            try:
                expires_in = float(expires_in)
            except ValueError:
                raise _invalid("expires_in", "must be a number of seconds") from None
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            raise _invalid("expires_in", "must be a number of seconds")
        out["expires_in"] = expires_in
    if start_by is not None and start_by != "":
        if not isinstance(start_by, str) or len(start_by) > 64:
            raise _invalid("start_by", "must be an ISO 8601 time with its offset")
        try:
            when = datetime.fromisoformat(start_by)
        except ValueError:
            raise _invalid("start_by", "must be an ISO 8601 time with its offset") from None
        if when.tzinfo is None:
            raise _invalid("start_by", "needs its offset (Z or +hh:mm)")
        out["start_by"] = when
    return out


def _from_json(raw: bytes, limits: RequestLimits) -> NewGeneration:
    data = parse_json(raw, "the body")
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    _refuse_unknown(data, JSON_FIELDS)
    images = data.get("images", [])
    if not isinstance(images, list) or not all(isinstance(u, str) for u in images):
        raise _invalid("images", "must be a list of URL strings")
    if len(images) > MAX_IMAGE_URLS:
        raise _invalid("images", f"takes at most {MAX_IMAGE_URLS} URLs")
    for url in images:
        _check_image_url(url, limits)
    generation = _build(data.get("prompt"), data.get("model"), images, data.get("options"), limits)
    deadline = _deadline(data.get("expires_in"), data.get("start_by"), texts=False)
    return NewGeneration(generation, deadline)


async def _from_form(request: Request, limits: RequestLimits) -> NewGeneration:
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=limits.max_body_bytes)
    except ApiError:
        raise
    except Exception as exc:  # python-multipart and Starlette raise several kinds
        raise ApiError(400, "invalid_form", f"the multipart body cannot be read: {exc}") from None
    try:
        return await _read_form(form, limits)
    finally:
        await form.close()


async def _read_form(form: FormData, limits: RequestLimits) -> NewGeneration:
    keys = list(form.keys())
    _refuse_unknown(dict.fromkeys(keys), FORM_FIELDS)
    for key in keys:
        if len(form.getlist(key)) > 1:
            raise _invalid(key, "was sent more than once")
    texts: dict[str, str | None] = {}
    for key in ("prompt", "model", "options", "expires_in", "start_by"):
        value = form.get(key)
        if isinstance(value, UploadFile):
            raise _invalid(key, "must be a text field, not a file")
        texts[key] = value
    options: Any = None
    if texts["options"]:
        options = parse_json(texts["options"], "the field 'options'")
    generation = _build(texts["prompt"], texts["model"] or None, [], options, limits)
    deadline = _deadline(texts["expires_in"], texts["start_by"], texts=True)
    upload = form.get("image")
    if upload is None or upload == "":  # an empty file input arrives as an empty field
        return NewGeneration(generation, deadline)
    if not isinstance(upload, UploadFile):
        raise _invalid("image", "must be a file")
    data = await upload.read(limits.max_upload_bytes + 1)
    if len(data) > limits.max_upload_bytes:
        raise ApiError(
            413,
            "payload_too_large",
            f"the image is over the limit of {limits.max_upload_bytes} bytes",
            hint="send a smaller image",
        )
    if not data:
        return NewGeneration(generation, deadline)
    mime = sniff_image(data)
    if mime is None:
        raise ApiError(
            415, "unsupported_image", "the uploaded file is not a PNG, JPEG, GIF or WebP image"
        )
    return NewGeneration(generation.with_image_bytes(data, mime), deadline)


def _build(
    prompt: Any, model: Any, images: list[str], options: Any, limits: RequestLimits
) -> GenerationRequest:
    if prompt is None:
        raise ApiError(422, "missing_prompt", "a prompt is required", hint='send {"prompt": "..."}')
    if not isinstance(prompt, str):
        raise _invalid("prompt", "must be a string")
    if not prompt.strip():
        raise ApiError(422, "missing_prompt", "the prompt is empty")
    if len(prompt) > limits.max_prompt_chars:
        raise _invalid("prompt", f"must be at most {limits.max_prompt_chars} characters")
    if model is not None and (not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL_CHARS):
        raise _invalid("model", f"must be a string of 1 to {MAX_MODEL_CHARS} characters")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise _invalid("options", "must be a JSON object")
    limits.allowed.check(model, options)
    try:
        return GenerationRequest(prompt, model, tuple(images), dict(options))
    except PayloadError as exc:
        raise ApiError(422, "invalid_request", exc.message) from None


def _check_image_url(url: str, limits: RequestLimits) -> None:
    lowered = url[:16].lower()
    if lowered.startswith(("https://", "http://")):
        if len(url) > MAX_URL_CHARS:
            raise _invalid("images", f"URLs must be at most {MAX_URL_CHARS} characters")
        return
    if lowered.startswith("data:image/"):
        if len(url) > limits.max_upload_bytes * 4 // 3 + 100:
            raise _too_large(limits.max_upload_bytes)
        return
    raise _invalid("images", "takes http(s) URLs or data:image/... URLs only")


def _refuse_unknown(data: Mapping[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(
            422,
            "unknown_field",
            f"unknown field(s): {', '.join(unknown)}",
            hint=f"the fields are {', '.join(sorted(allowed))}",
        )


def _invalid(field: str, problem: str) -> ApiError:
    return ApiError(422, "invalid_field", f"'{field}' {problem}")
