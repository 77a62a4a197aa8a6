"""The worker: `Worker` claims jobs, runs their handlers and records what happened.

Its parts, each in a module of its own:

- `jobqueue.worker.worker`: `Worker`, which wires the parts, and its claim loop;
- `jobqueue.worker.lifecycle`: the one state of a worker and the moves between states;
- `jobqueue.worker.slots`: the jobs held, and the rule for free slots;
- `jobqueue.worker.executor`: runs one job and turns it into an outcome
  (`jobqueue.worker.outcome`);
- `jobqueue.worker.completer`: the one writer of every outcome;
- `jobqueue.worker.writes`: the one retry rule of every write to a held job;
- `jobqueue.worker.maintenance`: heartbeats, the reaper, the live-workers row and the
  LISTEN/NOTIFY wake-ups;
- `jobqueue.worker.context`: what a handler is, returns and may do (`WorkerContext`);
- `jobqueue.worker.registry`: `Registry`, an application's job kinds;
- `jobqueue.worker.observer`: what hears of the jobs (`Observer`: metrics, traces).
"""

from __future__ import annotations

from .context import Handler, HandlerResult, WorkerContext, generator_handler
from .observer import Event, Observer
from .outcome import StopReason
from .worker import Worker, default_worker_id

__all__ = [
    "Event",
    "Handler",
    "HandlerResult",
    "Observer",
    "StopReason",
    "Worker",
    "WorkerContext",
    "default_worker_id",
    "generator_handler",
]
