"""jobqueue: a database-backed job queue for slow work such as AI image generation."""

from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    GenerationError,
    InvalidJobId,
    InvalidTransition,
    JobFailed,
    JobNotFound,
    JobQueueError,
    LeaseLost,
    PayloadError,
    PermissionDenied,
    SchemaNotInstalled,
    WaitTimeout,
)
from .migrations import migrate
from .operations import Completion, NewJob, StatusStats
from .queue import AsyncJobQueue, JobQueue
from .schema import FINAL_STATUSES, MOVES, Job, Status, jobs_table

__version__ = "0.1.0.dev0"

__all__ = [
    "FINAL_STATUSES",
    "MOVES",
    "AsyncJobQueue",
    "Completion",
    "ConfigurationError",
    "DatabaseUnavailable",
    "GenerationError",
    "InvalidJobId",
    "InvalidTransition",
    "Job",
    "JobFailed",
    "JobNotFound",
    "JobQueue",
    "JobQueueError",
    "LeaseLost",
    "NewJob",
    "PayloadError",
    "PermissionDenied",
    "SchemaNotInstalled",
    "Status",
    "StatusStats",
    "WaitTimeout",
    "jobs_table",
    "migrate",
]
