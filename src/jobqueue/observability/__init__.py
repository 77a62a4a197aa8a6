"""Watching jobqueue in production: Prometheus metrics (`jobqueue.observability.metrics`,
``pip install 'jobqueue[metrics]'``). Traces need no code here: with OpenTelemetry
installed (``jobqueue[otel]``), enqueue and the worker trace by themselves
(`jobqueue.tracing`). docs/operations.md shows both at work.

Importing this package needs nothing optional; `Metrics` and its parts import
prometheus-client when first made, and say how to install it when it is missing.
"""

from __future__ import annotations

from .metrics import DatabaseGauges, Metrics, WorkerMetrics

__all__ = ["DatabaseGauges", "Metrics", "WorkerMetrics"]
