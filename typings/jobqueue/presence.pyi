"""The old import path of `jobqueue.models`, `jobqueue.operations.presence`, `jobqueue.operations.waiting`: its names are served from there (see `jobqueue._compat`)."""

from jobqueue.models import (
    LiveWorker as LiveWorker,
    WorkerPresence as WorkerPresence,
)
from jobqueue.operations.presence import (
    BEATS_PER_LEASE as BEATS_PER_LEASE,
    LIVE_LEASES as LIVE_LEASES,
    beat as beat,
    beat_interval_of as beat_interval_of,
    check_access as check_access,
    gone as gone,
    live_workers as live_workers,
    sweep as sweep,
    ttl_of as ttl_of,
)
from jobqueue.operations.waiting import (
    Lookout as Lookout,
    NO_WORKER_AFTER as NO_WORKER_AFTER,
    no_worker_message as no_worker_message,
)

__all__ = [
    'BEATS_PER_LEASE',
    'LIVE_LEASES',
    'LiveWorker',
    'Lookout',
    'NO_WORKER_AFTER',
    'WorkerPresence',
    'beat',
    'beat_interval_of',
    'check_access',
    'gone',
    'live_workers',
    'no_worker_message',
    'sweep',
    'ttl_of',
]
