"""The sans-IO operations: what every method of the queues does, written once for the sync
and the async queue, which only run them (`jobqueue.queue`).

- `contract`: how an operation declares what it does to the database (`Access`), and the
  `Operation` the queue runs;
- `jobs`: the operations on jobs;
- `presence`: the operations on the live-workers table;
- `waiting`: the rules of a wait (`Waiter`, `Lookout`), for the loops that read and sleep.

The job operations are importable from here too. So are the names this module held
before the package was laid out by layer (checks and records, which live in
`jobqueue.validation` and `jobqueue.models` now), for code that imports them from here; the
old names of renamed ones (`RENAMED`) warn.
"""

from __future__ import annotations

from typing import Any

from ..errors import warn_renamed
from ..models import (
    DEFAULT_LEASE,
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_DELAY,
    MAX_JSON_DEPTH,
    Completion,
    NewJob,
    StatusStats,
)
from ..sql.steps import Row, Rows, Step
from ..validation import (
    READ_PAYLOAD_FACTOR,
    QueueLimits,
    check_int,
    check_json,
    check_text,
    encode_json,
    parse_job_id,
    parse_statuses,
    read_job,
    seconds_of,
    storable_text,
    stored_json,
    uuid7,
)
from .contract import Access, Operation, Steps, operation
from .jobs import (
    COPY_MIN_JOBS,
    backoff_delay,
    cancel,
    cancel_if_pending,
    claim,
    complete,
    complete_and_claim,
    complete_many,
    enqueue_many,
    expire,
    fail,
    get,
    heartbeat,
    heartbeat_many,
    list_jobs,
    prune,
    reap,
    release,
    retry,
    save_remote_task_id,
    set_progress,
    stats,
)
from .waiting import Waiter

#: Old names of this module's names, served with a `DeprecationWarning`.
RENAMED = {"Limits": "QueueLimits", "remember": "save_remote_task_id"}


def __getattr__(name: str) -> Any:
    new = RENAMED.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warn_renamed(f"jobqueue.operations.{name}", f"jobqueue.operations.{new}", stacklevel=3)
    return globals()[new]


__all__ = [
    "COPY_MIN_JOBS",
    "DEFAULT_LEASE",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_DELAY",
    "MAX_JSON_DEPTH",
    "READ_PAYLOAD_FACTOR",
    "Access",
    "Completion",
    "NewJob",
    "Operation",
    "QueueLimits",
    "Row",
    "Rows",
    "StatusStats",
    "Step",
    "Steps",
    "Waiter",
    "backoff_delay",
    "cancel",
    "cancel_if_pending",
    "check_int",
    "check_json",
    "check_text",
    "claim",
    "complete",
    "complete_and_claim",
    "complete_many",
    "encode_json",
    "enqueue_many",
    "expire",
    "fail",
    "get",
    "heartbeat",
    "heartbeat_many",
    "list_jobs",
    "operation",
    "parse_job_id",
    "parse_statuses",
    "prune",
    "read_job",
    "reap",
    "release",
    "retry",
    "save_remote_task_id",
    "seconds_of",
    "set_progress",
    "stats",
    "storable_text",
    "stored_json",
    "uuid7",
]
