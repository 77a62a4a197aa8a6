"""jobqueue: a database-backed job queue for slow work such as AI image generation.

The names below are imported on first use (PEP 562), so that ``import jobqueue`` and the
``jobqueue`` command start quickly: a CLI call that only reads a job never loads Alembic,
httpx or the worker.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._compat import install as _serve_old_import_paths
from .errors import (
    BudgetExceeded,
    ConfigurationError,
    DatabaseBusy,
    DatabaseReadOnly,
    DatabaseTimeout,
    DatabaseUnavailable,
    GenerationError,
    InvalidJobId,
    InvalidTransition,
    JobExpired,
    JobFailed,
    JobNotFound,
    JobQueueError,
    LeaseLost,
    PayloadError,
    PermissionDenied,
    RetryLater,
    SchemaNotInstalled,
    WaitTimeout,
)

if TYPE_CHECKING:
    from .config import (
        Settings,
    )
    from .generators import (
        DefAPIGenerator,
        GenerationRequest,
        GenerationResult,
        Generator,
        JobContext,
        LocalContext,
        MockGenerator,
    )
    from .migrations import (
        migrate,
    )
    from .models import (
        FINAL_STATUSES,
        MOVES,
        Budget,
        Completion,
        Job,
        NewJob,
        Position,
        Status,
        StatusStats,
    )
    from .queue import (
        AsyncJobQueue,
        JobQueue,
    )
    from .sql.table import (
        jobs_table,
    )
    from .worker import (
        HandlerResult,
        Worker,
        WorkerContext,
    )
    from .worker.registry import Registry
    from .wrappers import (
        generate_image,
        generate_image_async,
        generate_image_queued,
        generate_image_sync,
    )

__version__ = "0.1.0.dev0"

_serve_old_import_paths()

#: Where each lazily imported name lives.
_LAZY: dict[str, str] = {
    "AsyncJobQueue": "queue",
    "Budget": "models",
    "Completion": "models",
    "DefAPIGenerator": "generators",
    "FINAL_STATUSES": "models",
    "GenerationRequest": "generators",
    "GenerationResult": "generators",
    "Generator": "generators",
    "HandlerResult": "worker",
    "Job": "models",
    "JobContext": "generators",
    "JobQueue": "queue",
    "LocalContext": "generators",
    "MOVES": "models",
    "MockGenerator": "generators",
    "NewJob": "models",
    "Position": "models",
    "Registry": "worker.registry",
    "Settings": "config",
    "Status": "models",
    "StatusStats": "models",
    "Worker": "worker",
    "WorkerContext": "worker",
    "generate_image": "wrappers",
    "generate_image_async": "wrappers",
    "generate_image_queued": "wrappers",
    "generate_image_sync": "wrappers",
    "jobs_table": "sql.table",
    "migrate": "migrations",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "FINAL_STATUSES",
    "MOVES",
    "AsyncJobQueue",
    "Budget",
    "BudgetExceeded",
    "Completion",
    "ConfigurationError",
    "DatabaseBusy",
    "DatabaseReadOnly",
    "DatabaseTimeout",
    "DatabaseUnavailable",
    "DefAPIGenerator",
    "GenerationError",
    "GenerationRequest",
    "GenerationResult",
    "Generator",
    "HandlerResult",
    "InvalidJobId",
    "InvalidTransition",
    "Job",
    "JobContext",
    "JobExpired",
    "JobFailed",
    "JobNotFound",
    "JobQueue",
    "JobQueueError",
    "LeaseLost",
    "LocalContext",
    "MockGenerator",
    "NewJob",
    "PayloadError",
    "PermissionDenied",
    "Position",
    "Registry",
    "RetryLater",
    "SchemaNotInstalled",
    "Settings",
    "Status",
    "StatusStats",
    "WaitTimeout",
    "Worker",
    "WorkerContext",
    "generate_image",
    "generate_image_async",
    "generate_image_queued",
    "generate_image_sync",
    "jobs_table",
    "migrate",
]
