"""Prometheus metrics (``jobqueue[metrics]``): what workers count, and what the database
says about the whole fleet.

- `WorkerMetrics` is a worker's `Observer`: counters of jobs started and of what their
  attempts came to, histograms of run time and of the wait between a job being due and
  its start, per queue and kind.
- `DatabaseGauges` is a collector: jobs pending, running and stuck per queue, the oldest
  due job's wait, the paused queues and limit keys, the spend of the jobs created today.
  A scrape reads them in two grouped statements (`JobQueue.gauges`), at most once per
  ``ttl`` seconds however often it is scraped, and never once per job.
- `Metrics` puts both in one registry, served by `Metrics.asgi` (a route of any ASGI
  app, such as `jobqueue.web.create_app`'s ``/metrics``) or `Metrics.serve` (``jobqueue
  worker --metrics-port``).

Labels are bounded: ``queue``, ``kind``, ``outcome``, ``status``, a pause's ``scope`` and
``name``, a cost ``unit``; never an owner or a job id. A label past `MAX_LABEL_VALUES`
distinct values (a client inserting jobs of ever new kinds) is counted as ``other``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ..errors import ConfigurationError, describe_error
from ..models import Job, Status
from ..operations.gauges import Gauges, QueueGauge
from ..queue import AsyncJobQueue, JobQueue
from ..worker.observer import Event
from ..worker.outcome import Outcome

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

log = logging.getLogger("jobqueue.metrics")

#: Distinct values one label may take before further ones count as ``other``.
MAX_LABEL_VALUES = 200
OTHER = "other"

#: Run times of paid AI work: from a fraction of a second to many minutes (seconds).
RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Waits in the queue (seconds).
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400)

#: How long a scrape's database read serves later scrapes (seconds).
DEFAULT_TTL = 5.0
#: How long a scrape waits for the worker's event loop to read the database (seconds).
READ_TIMEOUT = 10.0


def require_prometheus() -> Any:
    """The prometheus_client module; a `ConfigurationError` saying how to install it when
    it is missing."""
    try:
        import prometheus_client
    except ImportError:
        raise ConfigurationError(
            "metrics need the prometheus-client package",
            hint="pip install 'jobqueue[metrics]'",
        ) from None
    return prometheus_client


class _Bounded:
    """A label's values, at most `MAX_LABEL_VALUES` of them; the rest are ``other``."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= MAX_LABEL_VALUES:
            return OTHER
        self.seen.add(value)
        return value


class WorkerMetrics:
    """A worker's counters and histograms, in ``registry``: give it to the worker
    (``Worker(..., observers=[metrics])``). Several workers of one process may share it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        prom = require_prometheus()
        labels = ("queue", "kind")
        self.started_total = prom.Counter(
            "jobqueue_jobs_started",
            "Attempts started by this process's workers.",
            labels,
            registry=registry,
        )
        self.outcomes_total = prom.Counter(
            "jobqueue_job_outcomes",
            "What attempts came to once written: completed, failed (for good), retried, "
            "held_back (RetryLater), released (worker stopped), expired (not started by "
            "its deadline).",
            (*labels, "outcome"),
            registry=registry,
        )
        self.leases_expired_total = prom.Counter(
            "jobqueue_leases_expired",
            "Jobs of vanished workers the reaper took back, by the status they moved to.",
            ("status",),
            registry=registry,
        )
        self.run_seconds = prom.Histogram(
            "jobqueue_job_run_seconds",
            "How long handlers ran.",
            labels,
            buckets=RUN_BUCKETS,
            registry=registry,
        )
        self.queue_wait_seconds = prom.Histogram(
            "jobqueue_job_queue_wait_seconds",
            "From when a job was due to its claim (database clock).",
            labels,
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self._queue = _Bounded()
        self._kind = _Bounded()
        # Children by (queue, kind): `labels()` costs more than a dict look-up.
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}

    def _of(self, job: Job) -> tuple[Any, Any, Any]:
        key = (job.queue, job.kind)
        children = self._children.get(key)
        if children is None:
            labels = (self._queue(job.queue), self._kind(job.kind))
            children = self._children[key] = (
                self.started_total.labels(*labels),
                self.run_seconds.labels(*labels),
                self.queue_wait_seconds.labels(*labels),
            )
        return children

    def _labels(self, job: Job) -> tuple[str, str]:
        return self._queue(job.queue), self._kind(job.kind)

    # -- the Observer protocol ----------------------------------------------------------------

    def started(self, job: Job) -> float:
        started, _, wait = self._of(job)
        started.inc()
        if job.started_at is not None:
            wait.observe(max(0.0, (job.started_at - job.run_at).total_seconds()))
        return time.perf_counter()

    def ran(self, job: Job, started: Any, outcome: Outcome | None) -> None:
        if started is not None:
            self._of(job)[1].observe(time.perf_counter() - started)

    def finished(self, job: Job, event: Event) -> None:
        self.outcomes_total.labels(*self._labels(job), event.value).inc()

    def expired(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self.outcomes_total.labels(*self._labels(job), Event.EXPIRED.value).inc()

    def reaped(self, moved: Sequence[tuple[UUID, Status]]) -> None:
        for _, status in moved:
            self.leases_expired_total.labels(Status(status).value).inc()


class DatabaseGauges:
    """A Prometheus collector of the fleet's gauges (`JobQueue.gauges`), read at most once
    per ``ttl`` seconds.

    With a `JobQueue`, a scrape reads the database itself. With an `AsyncJobQueue`, the
    read runs on its event loop: `refresh` (awaited by `Metrics.asgi` before it renders),
    or, for a scrape from another thread (`Metrics.serve`), on ``loop``, which the scrape
    waits for. A failed read is logged and reported as ``jobqueue_database_up 0``.
    """

    def __init__(
        self,
        queue: JobQueue | AsyncJobQueue,
        *,
        ttl: float = DEFAULT_TTL,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.queue = queue
        self.ttl = ttl
        self.loop = loop
        self._gauges: Gauges | None = None
        self._error: str | None = None
        self._read_at = -float("inf")
        self._lock = threading.Lock()
        self._async_lock: asyncio.Lock | None = None
        #: Database reads so far (what the tests count against scrapes).
        self.reads = 0

    def _fresh(self) -> bool:
        return time.monotonic() - self._read_at < self.ttl

    def _store(self, gauges: Gauges | None, error: BaseException | None) -> None:
        self.reads += 1
        if error is not None:
            log.warning("metrics: reading the gauges failed: %s", describe_error(error))
        self._gauges, self._read_at = gauges, time.monotonic()
        self._error = None if error is None else describe_error(error)

    async def refresh(self) -> None:
        """Read the gauges on this event loop unless a read is fresh."""
        if self._fresh():
            return
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:
            if self._fresh():
                return
            try:
                if isinstance(self.queue, AsyncJobQueue):
                    gauges = await self.queue.gauges()
                else:
                    gauges = await asyncio.to_thread(self.queue.gauges)
            except Exception as exc:
                self._store(None, exc)
            else:
                self._store(gauges, None)

    def _refresh_here(self) -> None:
        with self._lock:
            if self._fresh():
                return
            try:
                if isinstance(self.queue, JobQueue):
                    gauges = self.queue.gauges()
                elif self.loop is not None and not _in_loop(self.loop):
                    future = asyncio.run_coroutine_threadsafe(_read(self.queue), self.loop)
                    gauges = future.result(READ_TIMEOUT)
                else:
                    return  # `refresh` is awaited on the loop before each render
            except Exception as exc:
                self._store(None, exc)
            else:
                self._store(gauges, None)

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        self._refresh_here()
        up = GaugeMetricFamily(
            "jobqueue_database_up",
            "Whether the last read of the gauges from the database succeeded.",
            value=0 if self._gauges is None or self._error is not None else 1,
        )
        yield up
        g = self._gauges
        if g is None or self._error is not None:
            return
        jobs = GaugeMetricFamily(
            "jobqueue_queue_jobs",
            "Jobs waiting (pending) and running (processing), per queue.",
            labels=("queue", "status"),
        )
        age = GaugeMetricFamily(
            "jobqueue_queue_oldest_pending_age_seconds",
            "How long the longest-waiting due job of the queue has waited since it was due.",
            labels=("queue",),
        )
        stuck = GaugeMetricFamily(
            "jobqueue_queue_stuck_jobs",
            "Running jobs whose lease ran out: their worker is gone and none took them back.",
            labels=("queue",),
        )
        overdue = GaugeMetricFamily(
            "jobqueue_queue_overdue_jobs",
            "Jobs due for over a minute and not claimed: no worker serves the queue, or none "
            "has room.",
            labels=("queue",),
        )
        for name, q in _capped_queues(g.queues).items():
            jobs.add_metric((name, Status.PENDING.value), q.pending)
            jobs.add_metric((name, Status.PROCESSING.value), q.running)
            age.add_metric((name,), q.oldest_pending_age)
            stuck.add_metric((name,), q.stuck)
            overdue.add_metric((name,), q.overdue)
        paused = GaugeMetricFamily(
            "jobqueue_paused",
            "Queues (scope queue) and limit keys (scope key) paused now.",
            labels=("scope", "name"),
        )
        shown = [(scope, name) for scope, name in g.paused if scope != "owner"]  # no owner ids
        for scope, name in shown[:MAX_LABEL_VALUES]:
            paused.add_metric((scope, name), 1)
        spend = GaugeMetricFamily(
            "jobqueue_spend_today",
            "What the jobs created since midnight UTC cost so far, per cost unit.",
            labels=("unit",),
        )
        for unit, amount in list(g.spend_today.items())[:MAX_LABEL_VALUES]:
            spend.add_metric((unit or "",), float(amount))
        yield from (jobs, age, stuck, overdue, paused, spend)


def _capped_queues(queues: Mapping[str, QueueGauge]) -> dict[str, QueueGauge]:
    """At most `MAX_LABEL_VALUES` queues by name, the rest added up as ``other`` (their
    oldest wait the longest among them)."""
    if len(queues) <= MAX_LABEL_VALUES:
        return dict(queues)
    names = list(queues)
    shown = {name: queues[name] for name in names[: MAX_LABEL_VALUES - 1]}
    rest = [queues[name] for name in names[MAX_LABEL_VALUES - 1 :]]
    shown[OTHER] = QueueGauge(
        sum(q.pending for q in rest),
        sum(q.running for q in rest),
        max(q.oldest_pending_age for q in rest),
        sum(q.stuck for q in rest),
        sum(q.overdue for q in rest),
    )
    return shown


async def _read(queue: AsyncJobQueue | JobQueue) -> Gauges:
    if isinstance(queue, AsyncJobQueue):
        return await queue.gauges()
    return queue.gauges()


def _in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class Metrics:
    """The worker metrics (`WorkerMetrics`, ``worker``) and the database gauges
    (`DatabaseGauges`, ``database``) of ``queue`` in one registry (a new one unless
    given, with the process's own metrics), served by `asgi` or `serve`."""

    def __init__(
        self,
        queue: JobQueue | AsyncJobQueue,
        *,
        registry: CollectorRegistry | None = None,
        ttl: float = DEFAULT_TTL,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        prom = require_prometheus()
        if registry is None:
            registry = prom.CollectorRegistry()
            prom.ProcessCollector(registry=registry)
            prom.PlatformCollector(registry=registry)
        self.registry: CollectorRegistry = registry
        self.worker = WorkerMetrics(registry)
        self.database = DatabaseGauges(queue, ttl=ttl, loop=loop)
        registry.register(self.database)

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus' text format, and its content type."""
        prom = require_prometheus()
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST

    def asgi(self) -> MetricsApp:
        """An ASGI app answering GET (and HEAD) with the metrics: mount it at ``/metrics``
        (`jobqueue.web.create_app` does, given ``metrics``)."""
        return MetricsApp(self)

    def serve(self, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
        """Serve the metrics over HTTP on ``host:port`` from a thread of its own (every
        path answers); returns what stops it. With an `AsyncJobQueue`, the database is read
        on the loop the `Metrics` was given (``loop``)."""
        prom = require_prometheus()
        database = self.database
        if isinstance(database.queue, AsyncJobQueue) and database.loop is None:
            raise ConfigurationError(
                "serving the metrics of an AsyncJobQueue needs the event loop it runs on",
                hint="Metrics(queue, loop=asyncio.get_running_loop()), or mount metrics.asgi()",
            )
        try:
            server, thread = prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}",
                hint="choose a free port with --metrics-port",
            ) from None

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        return stop


class MetricsApp:
    """The ASGI app of `Metrics.asgi` (a class, so that routers take it for an app)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(
        self,
        scope: dict[str, Any],
        receive: Callable[[], Awaitable[dict[str, Any]]],
        send: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        method = scope.get("method")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain; charset=utf-8")
            return
        await self.metrics.database.refresh()
        body, content_type = self.metrics.render()
        await _respond(send, 200, body, content_type, head=method == "HEAD")


async def _respond(
    send: Callable[[dict[str, Any]], Awaitable[None]],
    status: int,
    body: bytes,
    content_type: str,
    *,
    head: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


__all__ = [
    "DEFAULT_TTL",
    "MAX_LABEL_VALUES",
    "DatabaseGauges",
    "Metrics",
    "MetricsApp",
    "WorkerMetrics",
    "require_prometheus",
]
