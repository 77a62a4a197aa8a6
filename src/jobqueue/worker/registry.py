"""`Registry`: the job kinds an application runs, declared beside their handlers.

In the application's module:

    jobs = Registry()

    @jobs.handler("email", max_attempts=5, timeout=30, queue="mail")
    async def send_email(job: Job, ctx: WorkerContext) -> None: ...

A registry is what a worker runs (``Worker(queue, jobs)``, or ``jobqueue worker --app
myapp.jobs:jobs``) and where producers take each kind's defaults (``jobs.enqueue(queue,
"email", payload)``). The options of a kind mean:

- ``queue`` and ``max_attempts``: the values a job of this kind gets when it is created
  through the registry (`Registry.enqueue`, ``jobqueue enqueue --app``) and the caller does
  not give them. They are stored on the job: the worker obeys the job's own
  ``max_attempts``, so a row inserted by other means (psql, a Supabase client) keeps
  what it was given. A worker built from a registry claims from the queues of its kinds
  unless told which queues to use.
- ``timeout``: how long the worker lets a handler of this kind run before it fails the
  attempt (retried by the job's policy); it wins over the worker's ``job_timeout``.
- ``estimated_cost``: what a job of this kind is expected to cost, given to jobs created
  through the registry as their ``estimated_cost`` (reserved against their owner's budget,
  `JobQueue.set_budget`) unless the caller gives one.

``jobs.schedule("nightly", "report", cron="0 3 * * *", timezone="Europe/Berlin")``
declares a periodic job (docs/schedules.md): every worker built from the registry writes
it to the database at start and runs the scheduler.

This module knows handlers only as values to keep: running them is the worker's part.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ..errors import ConfigurationError, PayloadError
from ..generators.base import IMAGE_KIND, Generator
from ..models import DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, MAX_ATTEMPTS_LIMIT, MAX_NAME
from ..operations import check_int, check_text, seconds_of
from ..validation import check_cost

if TYPE_CHECKING:
    from typing import Unpack

    from sqlalchemy import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..models import Job
    from ..operations.schedules import ScheduleSpec
    from ..queue import AsyncJobQueue, EnqueueOptions, JobQueue
    from .context import Handler

H = TypeVar("H", bound="Handler")

#: The shortest per-kind timeout (as for the worker's own durations).
MIN_TIMEOUT = 0.001


@dataclass(frozen=True, slots=True)
class JobKind:
    """One registered kind: its handler and its options (see the module's docstring)."""

    name: str
    handler: Handler | Generator
    queue: str = DEFAULT_QUEUE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: Seconds a handler of this kind may run; None: the worker's ``job_timeout``.
    timeout: float | None = None
    #: What a job of this kind is expected to cost (reserved against its owner's budget).
    estimated_cost: Decimal | None = None


class Registry:
    """The job kinds an application runs, with their handlers and per-kind options.

    ``image``: whether ``jobqueue worker --app`` also runs the ``image`` kind with the
    generator chosen by the settings (``MOCK_AI``, ``DEFAPI_API_KEY``) when the registry
    does not register ``image`` itself. ``Registry(image=False)`` is for applications
    without image jobs: their workers then need no generator settings.
    """

    def __init__(self, *, image: bool = True) -> None:
        self.image = image
        self._kinds: dict[str, JobKind] = {}
        #: Declared schedules by name, each with whether it names its queue.
        self._schedules: dict[str, tuple[ScheduleSpec, bool]] = {}

    @classmethod
    def of(cls, handlers: Mapping[str, Handler | Generator]) -> Registry:
        """A registry of ``kind -> handler`` with default options (what `Worker` makes of
        its ``handlers=`` mapping)."""
        registry = cls()
        for kind, handler in handlers.items():
            registry.add(kind, handler)
        return registry

    # -- declaring ------------------------------------------------------------------------

    def handler(
        self,
        kind: str,
        *,
        queue: str = DEFAULT_QUEUE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | timedelta | None = None,
        estimated_cost: Decimal | int | str | None = None,
    ) -> Callable[[H], H]:
        """Register the decorated ``async def h(job, ctx)`` (or plain function, run in a
        thread) as the handler of ``kind``; the function itself is returned unchanged."""

        def register(function: H) -> H:
            self.add(
                kind,
                function,
                queue=queue,
                max_attempts=max_attempts,
                timeout=timeout,
                estimated_cost=estimated_cost,
            )
            return function

        return register

    def add(
        self,
        kind: str,
        handler: Handler | Generator,
        *,
        queue: str = DEFAULT_QUEUE,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        timeout: float | timedelta | None = None,
        estimated_cost: Decimal | int | str | None = None,
    ) -> JobKind:
        """Register ``handler`` (a function or a `Generator`) for ``kind``; as `handler`."""
        _checked(check_text, kind, "a job kind", limit=MAX_NAME)
        if kind in self._kinds:
            raise ConfigurationError(
                f"job kind {kind!r} is registered twice (first by "
                f"{_name_of(self._kinds[kind].handler)}, again by {_name_of(handler)})",
                hint="give each kind one handler",
            )
        if not isinstance(handler, Generator) and not callable(handler):
            raise ConfigurationError(
                f"the handler for kind {kind!r} is neither callable nor a Generator",
                hint="pass async def handler(job, ctx), a function, or a Generator",
            )
        _checked(check_text, queue, f"the queue of kind {kind!r}", limit=MAX_NAME)
        _checked(check_int, max_attempts, f"max_attempts of kind {kind!r}", 1, MAX_ATTEMPTS_LIMIT)
        seconds = None
        if timeout is not None:
            what = f"the timeout of kind {kind!r}"
            seconds = _checked(seconds_of, timeout, what, low=MIN_TIMEOUT)
        estimate = _checked(check_cost, estimated_cost, f"the estimated cost of kind {kind!r}")
        entry = JobKind(kind, handler, queue, max_attempts, seconds, estimate)
        self._kinds[kind] = entry
        return entry

    def schedule(
        self,
        name: str,
        kind: str,
        *,
        cron: str | None = None,
        every: float | timedelta | None = None,
        timezone: str = "UTC",
        payload: Any = None,
        queue: str | None = None,
        priority: int = 0,
        missed: str = "once",
    ) -> ScheduleSpec:
        """Declare the periodic job ``name``: a job of ``kind`` at each tick of ``cron`` (a
        cron expression read in ``timezone``; needs the ``cron`` extra) or ``every``
        seconds. Every worker built from this registry writes it to the schedules table
        when it starts (the last worker to start wins if two disagree), and each tick makes
        one job whichever workers run. ``queue`` defaults to the kind's, as registered by
        the time a worker starts. ``missed``: what ticks missed while no worker ran make,
        one job for the latest (``"once"``) or none (``"skip"``). See docs/schedules.md."""
        from ..operations.schedules import define_schedule

        if name in self._schedules:
            raise ConfigurationError(
                f"schedule {name!r} is declared twice", hint="give each schedule its own name"
            )
        try:
            spec = define_schedule(
                name,
                kind=kind,
                cron=cron,
                every=every,
                timezone=timezone,
                queue=queue or DEFAULT_QUEUE,
                payload=payload,
                priority=priority,
                missed=missed,
            )
        except PayloadError as exc:
            raise ConfigurationError(
                exc.message, hint=f"fix the schedule's declaration ({exc.hint})"
            ) from None
        self._schedules[name] = (spec, queue is not None)
        return spec

    @property
    def schedules(self) -> list[ScheduleSpec]:
        """The declared schedules, each in its kind's queue unless it names one."""
        out = []
        for spec, queue_given in self._schedules.values():
            entry = self._kinds.get(spec.kind)
            if not queue_given and entry is not None:
                spec = replace(spec, queue=entry.queue)
            out.append(spec)
        return out

    def with_default(self, kind: str, handler: Handler | Generator) -> Registry:
        """A copy that also runs ``kind`` with ``handler`` (default options), unless this
        registry registers ``kind`` itself; this registry is left as it is."""
        copy = Registry(image=self.image)
        copy._kinds = dict(self._kinds)
        copy._schedules = dict(self._schedules)
        if kind not in copy._kinds:
            copy.add(kind, handler)
        return copy

    # -- reading ----------------------------------------------------------------------------

    @property
    def kinds(self) -> Mapping[str, JobKind]:
        """The registered kinds by name, in the order they were registered (read-only)."""
        return MappingProxyType(self._kinds)

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues of the registered kinds, each once, in the order of registration."""
        return tuple(dict.fromkeys(k.queue for k in self._kinds.values()))

    def serves(self, kind: str) -> bool:
        """Whether ``jobqueue worker --app`` with this registry runs jobs of ``kind``: a
        registered kind, or ``image`` while ``self.image`` holds."""
        return kind in self._kinds or (self.image and kind == IMAGE_KIND)

    def served(self) -> list[str]:
        """The kinds `serves` accepts, sorted (for messages)."""
        image = [IMAGE_KIND] if self.image and IMAGE_KIND not in self._kinds else []
        return sorted([*self._kinds, *image])

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def __len__(self) -> int:
        return len(self._kinds)

    def __repr__(self) -> str:
        image = "" if self.image else ", image=False"
        return f"<Registry {', '.join(self._kinds) or '(empty)'}{image}>"

    # -- producing ------------------------------------------------------------------------------

    def enqueue_options(self, kind: str, **given: Unpack[EnqueueOptions]) -> EnqueueOptions:
        """``given`` completed with the kind's ``queue``, ``max_attempts`` and
        ``estimated_cost``; a value the
        caller gives wins. `ConfigurationError` for a kind this registry does not serve
        (a typo would otherwise wait for a worker that never comes)."""
        entry = self._kinds.get(kind)
        if entry is None:
            if self.serves(kind):
                return given
            known = ", ".join(self.served()) or "none"
            raise ConfigurationError(
                f"job kind {kind!r} is not registered (registered: {known})",
                hint=f'register it with @jobs.handler("{kind}") or check its spelling',
            )
        options: EnqueueOptions = {"queue": entry.queue, "max_attempts": entry.max_attempts}
        if entry.estimated_cost is not None:
            options["estimated_cost"] = entry.estimated_cost
        options.update(given)
        return options

    @overload
    def enqueue(
        self,
        queue: JobQueue,
        /,
        kind: str,
        payload: Any = None,
        *,
        connection: Connection | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> Job: ...

    @overload
    def enqueue(
        self,
        queue: AsyncJobQueue,
        /,
        kind: str,
        payload: Any = None,
        *,
        connection: AsyncConnection | None = None,
        **options: Unpack[EnqueueOptions],
    ) -> Coroutine[Any, Any, Job]: ...

    def enqueue(
        self,
        queue: JobQueue | AsyncJobQueue,
        /,
        kind: str,
        payload: Any = None,
        *,
        connection: Any = None,
        **options: Unpack[EnqueueOptions],
    ) -> Job | Coroutine[Any, Any, Job]:
        """``queue.enqueue(kind, payload, ...)`` with the kind's defaults (`enqueue_options`).

        With a `JobQueue` it returns the job; with an `AsyncJobQueue` await it."""
        merged = self.enqueue_options(kind, **options)
        return queue.enqueue(kind, payload, connection=connection, **merged)


def _checked(check: Callable[..., Any], value: Any, what: str, *args: Any, **kwargs: Any) -> Any:
    """Run one of the queue's input checks on a registration: its rule, but as a
    `ConfigurationError`, since a bad registration is the application's set-up."""
    try:
        return check(value, what, *args, **kwargs)
    except PayloadError as exc:
        raise ConfigurationError(
            exc.message, hint="fix the registration (@jobs.handler or Registry.add)"
        ) from None


def _name_of(handler: object) -> str:
    return str(getattr(handler, "__qualname__", None) or type(handler).__name__)


__all__ = ["JobKind", "Registry"]
