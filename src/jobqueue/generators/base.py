"""The generator protocol: what an image generator is given and what it returns.

Generators are pure HTTP (or pure simulation) and know nothing of SQL. What they may do to
their job goes through a `JobContext`: report progress, and save the provider's task id (the
job's ``remote_task_id``) *before* waiting on it, so that a later attempt (after a crash)
resumes polling that task instead of paying for a second generation.
"""

from __future__ import annotations

import base64
import difflib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

from ..errors import PayloadError, warn_renamed

if TYPE_CHECKING:
    from ..models import Job

IMAGE_KIND = "image"
#: What to do about a missing, misspelt or empty prompt.
PROMPT_HINT = 'the prompt says what the image shows, e.g. {"prompt": "a red fox in the snow"}'


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One image generation: a prompt, an optional model, input images and options.

    ``images`` are URLs; input image bytes become ``data:`` URLs (see `with_image_bytes`),
    so a request always fits in a job's JSON payload.
    """

    prompt: str
    model: str | None = None
    images: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise PayloadError(
                f"the prompt must be text, not {type(self.prompt).__name__}", hint=PROMPT_HINT
            )
        if not self.prompt.strip():
            raise PayloadError("the prompt is empty", hint=PROMPT_HINT)
        if isinstance(self.images, str):
            object.__setattr__(self, "images", (self.images,))
        else:
            object.__setattr__(self, "images", tuple(self.images))

    def with_image_bytes(self, data: bytes, mime: str = "image/png") -> GenerationRequest:
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        return GenerationRequest(self.prompt, self.model, (*self.images, url), self.options)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"prompt": self.prompt}
        if self.model is not None:
            payload["model"] = self.model
        if self.images:
            payload["images"] = list(self.images)
        if self.options:
            payload["options"] = dict(self.options)
        return payload

    @classmethod
    def from_payload(cls, payload: Any) -> GenerationRequest:
        if not isinstance(payload, Mapping):
            raise PayloadError(
                "an image job's payload must be an object with a 'prompt'", hint=PROMPT_HINT
            )
        images = payload.get("images") or ()
        options = payload.get("options") or {}
        if not isinstance(images, list | tuple) or not all(isinstance(i, str) for i in images):
            raise PayloadError("'images' must be a list of URL strings")
        if not isinstance(options, Mapping):
            raise PayloadError("'options' must be an object")
        model = payload.get("model")
        if model is not None and not isinstance(model, str):
            raise PayloadError("'model' must be a string")
        if "prompt" not in payload:
            keys = [key for key in payload if isinstance(key, str)]
            near = difflib.get_close_matches("prompt", keys, n=1, cutoff=0.6)
            typo = f" (it has {near[0]!r}: is that the prompt, misspelt?)" if near else ""
            raise PayloadError(
                f"an image job's payload has no 'prompt' field{typo}", hint=PROMPT_HINT
            )
        return cls(payload["prompt"], model, tuple(images), dict(options))


@dataclass(frozen=True, slots=True)
class GenerationResult:
    """What a generation produced. ``raw`` is the provider's last answer, for debugging."""

    images: tuple[str, ...]
    text: str | None = None
    #: What the generation cost (DefAPI's ``consumed``), exactly, in ``cost_unit``: the
    #: worker stores it in the job's ``cost`` column.
    cost: Decimal | None = None
    raw: Any = None
    cost_unit: str | None = None

    @property
    def url(self) -> str | None:
        """The first image: the job's ``result_url``."""
        return self.images[0] if self.images else None

    def to_result(self) -> dict[str, Any]:
        """The job's ``result`` column (JSON)."""
        cost = None if self.cost is None else float(self.cost)  # JSON: the column has it exactly
        return {"images": list(self.images), "text": self.text, "cost": cost, "raw": self.raw}

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> GenerationResult:
        """The result a generator stored (`to_result`); ``images`` that are not a list of
        URL strings count as none."""
        images = result.get("images")
        valid = isinstance(images, list | tuple) and all(isinstance(i, str) for i in images)
        cost = result.get("cost")
        number = isinstance(cost, int | float) and not isinstance(cost, bool)
        return cls(
            tuple(images) if valid and images else (),
            result.get("text"),
            Decimal(str(cost)) if number else None,
            result.get("raw"),
        )

    @classmethod
    def of_job(cls, job: Job) -> GenerationResult:
        """What ``job`` produced, the one answer for the API, the CLI and the wrappers.

        The generator's stored result when it holds images; otherwise ``result_url`` is the
        one image (a handler that stored only a URL, or a result of its own shape), with
        the job's ``result`` kept as ``raw``.
        """
        if isinstance(job.result, Mapping):
            result = cls.from_result(job.result)
            if result.images:
                if job.cost is not None:  # the column's exact amount
                    return replace(result, cost=job.cost, cost_unit=job.cost_unit)
                return result
        images = (job.result_url,) if job.result_url else ()
        return cls(images=images, raw=job.result, cost=job.cost, cost_unit=job.cost_unit)


@runtime_checkable
class JobContext(Protocol):
    """What a running generation may do to its job."""

    async def report_progress(self, percent: int, message: str | None = None) -> None:
        """Record progress (0-100) and a short message on the job: best-effort (a worker's
        context retries a failed write for up to one lease, then drops it and goes on)."""

    async def save_remote_task_id(self, task_id: str) -> None:
        """Save the provider's task id on the job (its ``remote_task_id``) before waiting
        for the task: durable once it returns (a worker's context retries a failed write
        until it is written, or raises `LeaseLost` if the attempt is stopped first)."""

    @property
    def remote_task_id(self) -> str | None:
        """The task id this or an earlier attempt saved, if any: resume that task instead
        of submitting a new one."""


async def before_paid_request(context: Any) -> None:
    """Call right before a request that costs money and starts remote work (a provider's
    submit). A worker's context returns once the database has confirmed recently that the
    job is still this attempt's, and stops the attempt instead when the worker is cut off
    from the database (`jobqueue.worker.WorkerContext.lease_confirmed`); any other context
    (a caller's own, no worker) returns at once."""
    wait = getattr(context, "lease_confirmed", None)
    if wait is not None:
        await wait()


class OldContextNames:
    """The names a `JobContext`'s task-id methods had before they were named after the
    job's ``remote_task_id``: ``remember(task_id)`` and ``remembered()``. They still work
    on jobqueue's contexts and warn (`DeprecationWarning`)."""

    async def remember(self, task_id: str) -> None:
        """Deprecated: `save_remote_task_id`."""
        warn_renamed("JobContext.remember(task_id)", "save_remote_task_id(task_id)")
        await cast(JobContext, self).save_remote_task_id(task_id)

    def remembered(self) -> str | None:
        """Deprecated: `remote_task_id`."""
        warn_renamed("JobContext.remembered()", "the remote_task_id property")
        return cast(JobContext, self).remote_task_id


def job_context(context: Any) -> JobContext:
    """``context`` as a `JobContext`, for a generator to call by the current names.

    A context of the caller's own that still has the old names (``remember``,
    ``remembered``, of its own or overriding ours) is wrapped so that they are the ones
    called, with a `DeprecationWarning`.
    """
    kind = type(context)
    if (
        getattr(kind, "remember", OldContextNames.remember) is OldContextNames.remember
        and getattr(kind, "remembered", OldContextNames.remembered) is OldContextNames.remembered
    ):
        return cast(JobContext, context)
    warnings.warn(
        f"{kind.__name__} has the deprecated JobContext methods remember() / remembered(): "
        "name them save_remote_task_id(task_id) and a remote_task_id property",
        DeprecationWarning,
        stacklevel=3,
    )
    return _OldStyleContext(context)


class _OldStyleContext:
    """A context with the old method names, seen through the current ones."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def report_progress(self, percent: int, message: str | None = None) -> None:
        await self._inner.report_progress(percent, message)

    async def save_remote_task_id(self, task_id: str) -> None:
        await self._inner.remember(task_id)  # its deprecated name

    @property
    def remote_task_id(self) -> str | None:
        task_id: str | None = self._inner.remembered()  # its deprecated name
        return task_id

    def __getattr__(self, name: str) -> Any:
        # The rest of the context (a worker's ``cancelled``, ``job``, ...). Our own and
        # special names are not forwarded: before __init__ (a copy) that would recurse.
        if name.startswith("__") or name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)


@runtime_checkable
class Generator(Protocol):
    """An image generator. Implementations: `MockGenerator`, `DefAPIGenerator`."""

    name: str

    async def generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        """Run one generation to the end and return its result, or raise."""

    async def aclose(self) -> None:
        """Release connections and other resources."""


class LocalContext(OldContextNames):
    """A context for generations run without a queue (`generate_image`): it only keeps
    what it is told, in memory. ``remote_task_id``: a task an earlier run saved, to resume.
    """

    def __init__(self, remote_task_id: str | None = None, *, task_id: str | None = None) -> None:
        if task_id is not None:  # the deprecated name
            warn_renamed("LocalContext(task_id=...)", "LocalContext(remote_task_id=...)")
            remote_task_id = task_id if remote_task_id is None else remote_task_id
        self.remote_task_id = remote_task_id
        self.progress: list[tuple[int, str | None]] = []

    async def report_progress(self, percent: int, message: str | None = None) -> None:
        self.progress.append((percent, message))

    async def save_remote_task_id(self, task_id: str) -> None:
        self.remote_task_id = task_id

    @property
    def task_id(self) -> str | None:
        """Deprecated: `remote_task_id`."""
        warn_renamed("LocalContext.task_id", "LocalContext.remote_task_id")
        return self.remote_task_id

    @task_id.setter
    def task_id(self, value: str | None) -> None:
        warn_renamed("LocalContext.task_id", "LocalContext.remote_task_id")
        self.remote_task_id = value
