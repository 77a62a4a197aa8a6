"""Traces through OpenTelemetry, when it is installed (``jobqueue[otel]``) and configured.

An enqueue runs in a span of its own (`enqueue_span`) and the job keeps that span's
context (W3C ``traceparent`` and ``tracestate``, as JSON text in its ``trace_context``
column); the worker's run of the job continues that trace (`run_span`), so a web request
that enqueues and the worker's run are one trace. Whatever the handler does inside the
run (a provider's HTTP calls under httpx's instrumentation, the handler's own spans) joins
it too.

Nothing is recorded and nothing is stored while OpenTelemetry is not installed, or while
no tracer provider is set and no trace is going on: `enqueue_span` then yields None (the
column stays NULL and the INSERT does not name it) and `run_span` is not entered. The
OpenTelemetry API is imported on first use, never by ``import jobqueue``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span

#: The instrumentation scope of every span jobqueue starts.
TRACER_NAME = "jobqueue"

#: The longest stored trace context (characters): a ``traceparent`` is 55, a
#: ``tracestate`` at most 512 by the W3C rules; what is longer is not stored.
MAX_TRACE_CONTEXT = 1024

_api: Any = None  # the opentelemetry modules once imported; False when not installed


def _otel() -> Any:
    """The OpenTelemetry API as a namespace (``trace``, ``propagate``, ``context``), or
    None when it is not installed. Imported once."""
    global _api
    if _api is None:
        try:
            from opentelemetry import context, propagate, trace
            from opentelemetry.trace import ProxyTracerProvider
        except ImportError:
            _api = False
        else:
            _api = SimpleNamespace(
                trace=trace, propagate=propagate, context=context, proxy=ProxyTracerProvider
            )
    return _api or None


def available() -> bool:
    """Whether the OpenTelemetry API can be imported."""
    return _otel() is not None


def _active(api: Any) -> bool:
    """Whether spans may be recorded or a trace is going on: a tracer provider was set,
    or the current context carries a valid span (another library's, or one propagated
    from a request)."""
    if not isinstance(api.trace.get_tracer_provider(), api.proxy):
        return True
    return bool(api.trace.get_current_span().get_span_context().is_valid)


def active() -> bool:
    """Whether an enqueue now gets a span and stores its trace: OpenTelemetry is installed
    and a tracer provider was set or a trace is going on. Cheap: asked by every enqueue."""
    api = _api if _api is not None else _otel()
    return bool(api) and _active(api)


@contextlib.contextmanager
def enqueue_span(rows: Sequence[dict[str, Any]]) -> Iterator[None]:
    """Run an enqueue of ``rows`` (new jobs' rows, with their ``queue`` and ``kind``) in a
    ``jobqueue enqueue`` span, a child of the current one if any, and store the span's
    context in each row's ``trace_context`` (left out when there is nothing to store)."""
    api = _otel()
    if api is None or not rows:
        yield
        return
    first = rows[0]
    attributes: dict[str, Any] = {
        "messaging.system": "jobqueue",
        "messaging.operation.type": "send",
        "messaging.destination.name": first["queue"],
        "jobqueue.kind": first["kind"],
    }
    if len(rows) != 1:
        attributes["messaging.batch.message_count"] = len(rows)
    with api.trace.get_tracer(TRACER_NAME).start_as_current_span(
        "jobqueue enqueue", kind=api.trace.SpanKind.PRODUCER, attributes=attributes
    ) as span:
        carrier = _carrier_of(api, span)
        if carrier is not None:
            for row in rows:
                row["trace_context"] = carrier
        yield


def _carrier_of(api: Any, span: Span) -> str | None:
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    api.propagate.inject(carrier)
    if not carrier:
        return None
    text = json.dumps(carrier, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= MAX_TRACE_CONTEXT else None


def wants_run_span(trace_context: str | None) -> bool:
    """Whether a run of a job with ``trace_context`` gets a span: when it carries one, or
    when a tracer provider was set (a job enqueued without tracing then starts a trace of
    its own)."""
    api = _otel()
    if api is None:
        return False
    return trace_context is not None or not isinstance(api.trace.get_tracer_provider(), api.proxy)


@contextlib.contextmanager
def run_span(
    trace_context: str | None, name: str, attributes: dict[str, Any]
) -> Iterator[Span | None]:
    """A ``name`` span (kind CONSUMER) around a job's run, continuing the trace stored in
    ``trace_context`` (a context that does not read is ignored), current while the block
    runs; yields the span, or None without OpenTelemetry."""
    api = _otel()
    if api is None:
        yield None
        return
    parent = None
    if trace_context is not None:
        try:
            carrier = json.loads(trace_context)
        except ValueError:
            carrier = None
        if isinstance(carrier, dict):
            parent = api.propagate.extract(
                {str(k): str(v) for k, v in carrier.items() if isinstance(v, str)}
            )
    tracer = api.trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=api.trace.SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def set_error(span: Span | None, description: str) -> None:
    """Mark ``span`` as failed with ``description``."""
    api = _otel()
    if span is None or api is None:
        return
    span.set_status(api.trace.Status(api.trace.StatusCode.ERROR, description))


@contextlib.contextmanager
def child_span(name: str, attributes: dict[str, Any]) -> Iterator[None]:
    """A span ``name`` under the current one, only while a trace is going on (a provider's
    call inside a job's run)."""
    api = _otel()
    if api is None or not api.trace.get_current_span().is_recording():
        yield
        return
    with api.trace.get_tracer(TRACER_NAME).start_as_current_span(name, attributes=attributes):
        yield


__all__ = [
    "MAX_TRACE_CONTEXT",
    "TRACER_NAME",
    "active",
    "available",
    "child_span",
    "enqueue_span",
    "run_span",
    "set_error",
    "wants_run_span",
]
