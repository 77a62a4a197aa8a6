"""What the API shows of a job: the fields a client needs, and nothing internal.

Left out on purpose: ``owner_id`` (the caller knows who they are), ``locked_by`` and lease
times (worker internals), the error history, and the input images (they may be large
data: URLs the client sent itself). A failed job's stored error is for operators (it may
name hosts, worker ids or an exception's internals): the API shows an ``error_code`` and a
message of its own, and passes through only what the generator (the provider) said.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from ..errors import GenerationError
from ..generators.base import GenerationResult
from ..models import Job, Position, Status
from .placeholder import NAME

#: Hosts under the reserved ``.invalid`` top-level domain (RFC 2606) can never be fetched:
#: the mock generator uses one. A browser is shown a drawn placeholder instead.
_UNREACHABLE_SUFFIX = ".invalid"

PlaceholderUrl = Callable[[str], str]


def placeholder_name(url: str) -> str | None:
    """The placeholder image name for an unreachable URL, or None for a real one."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if not (host.endswith(_UNREACHABLE_SUFFIX) or host == _UNREACHABLE_SUFFIX[1:]):
        return None
    stem = parts.path.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]
    if NAME.fullmatch(stem):
        return stem
    return hashlib.sha256(url.encode("utf-8")).hexdigest()[:32]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def result_images(job: Job) -> list[str]:
    """The job's result images (`GenerationResult.of_job`), as a JSON list."""
    return list(GenerationResult.of_job(job).images)


#: What an end user is told about a failed attempt, by ``error_code``.
PUBLIC_ERRORS = {
    "worker_lost": "the worker running this job stopped before it finished",
    "interrupted": "the job was interrupted and will run again",
    "timed_out": "the generation took too long and was stopped",
    "internal_error": "the job failed because of an internal error; "
    "quote the job id when you report it",
    "expired": "the job was not started before its deadline; it never ran and cost nothing",
}
#: Stored by the worker for the lease that expired / the job it handed back (statements.py
#: and worker.py write these texts).
_LOST_PREFIX = "lease expired while held by"
_RELEASED_PREFIX = "released:"
_TIMEOUT_TYPE = "JobTimeout"  # the worker's job_timeout


def _generator_error_types() -> set[str]:
    """GenerationError and its subclasses (the worker stores ``Type: message``).

    Looked up at call time, so a provider's subclass (DefAPI's ``TaskEnded``, imported with
    the generators package that the app loads) is known without naming it here.
    """
    found: set[str] = set()
    todo: list[type[GenerationError]] = [GenerationError]
    while todo:
        cls = todo.pop()
        found.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return found


def _without_hint(message: str) -> str:
    """The message without the operator's hint that `JobQueueError` appends as `` (hint)``."""
    cut = message.rfind(" (")
    return message[:cut] if cut > 0 and message.endswith(")") else message


def public_error(error: str | None) -> tuple[str | None, str | None]:
    """``(error_code, message)`` safe to show the job's owner, from its stored error.

    A generator's message is the user's business (the prompt was refused, the provider
    failed) and is shown, marked ``generation_failed``; anything else is summarised.
    """
    if error is None:
        return None, None
    kind, sep, message = error.partition(": ")
    if sep and message.strip() and kind in _generator_error_types():
        return "generation_failed", _without_hint(message.strip())
    if error.startswith(_LOST_PREFIX):
        code = "worker_lost"
    elif error.startswith(_RELEASED_PREFIX):
        code = "interrupted"
    elif kind == _TIMEOUT_TYPE:
        code = "timed_out"
    else:
        code = "internal_error"
    return code, PUBLIC_ERRORS[code]


def position_view(position: Position) -> dict[str, Any]:
    """Where a job stands, for a person waiting (`AsyncJobQueue.position`): ``position``
    is how many jobs are ahead of it (0 while it runs; null when it is not in the line:
    final, or waiting for its time), ``position_more`` says there are more than that,
    ``eta_seconds`` and ``start_eta_seconds`` estimate when it finishes and starts (whole
    seconds; null when nothing can be estimated), and ``position_text`` says it in words
    ("3rd in line · about 40 s")."""

    def whole(seconds: float | None) -> int | None:
        return None if seconds is None else round(seconds)

    return {
        "position": position.ahead,
        "position_more": position.more,
        "eta_seconds": whole(position.finish_in),
        "start_eta_seconds": whole(position.start_in),
        "position_text": position.describe() or None,
    }


def job_view(
    job: Job, placeholder_url: PlaceholderUrl, position: Position | None = None
) -> dict[str, Any]:
    """The JSON body of ``GET /jobs/{id}`` (and of every other answer about one job).

    An ``expired`` job (not started by its ``start_by``) has ``error_code`` ``expired``.
    ``preview_urls`` are what a browser should display: the result images, except that
    unreachable mock URLs become the app's own placeholder drawings. With ``position``,
    the fields of `position_view` too (``GET /jobs/{id}`` and its event stream).
    """
    images = result_images(job)
    previews = []
    for url in images:
        name = placeholder_name(url)
        previews.append(placeholder_url(name) if name is not None else url)
    payload = job.payload if isinstance(job.payload, dict) else {}
    prompt = payload.get("prompt")
    error_code, error = public_error(job.error)
    if job.status is Status.EXPIRED:
        error_code, error = "expired", PUBLIC_ERRORS["expired"]
    return {
        "id": str(job.id),
        "status": job.status.value,
        "kind": job.kind,
        "prompt": prompt if isinstance(prompt, str) else None,
        "model": payload.get("model") if isinstance(payload.get("model"), str) else None,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "result_url": job.result_url,
        "images": images,
        "preview_url": previews[0] if previews else None,
        "preview_urls": previews,
        "error": error,
        "error_code": error_code,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.completed_at),
        "updated_at": _iso(job.updated_at),
        "start_by": _iso(job.start_by),
        "duration": job.duration,
        "final": job.is_final,
        **({} if position is None else position_view(position)),
    }
