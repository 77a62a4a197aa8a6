"""jobqueue: a database-backed job queue for slow work such as AI image generation."""

from .config import Settings
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
from .generators import (
    DefAPIGenerator,
    GenerationRequest,
    GenerationResult,
    Generator,
    JobContext,
    LocalContext,
    MockGenerator,
)
from .migrations import migrate
from .operations import Completion, NewJob, StatusStats
from .queue import AsyncJobQueue, JobQueue
from .schema import FINAL_STATUSES, MOVES, Job, Status, jobs_table
from .worker import HandlerResult, Worker, WorkerContext
from .wrappers import (
    generate_image,
    generate_image_async,
    generate_image_queued,
    generate_image_sync,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "FINAL_STATUSES",
    "MOVES",
    "AsyncJobQueue",
    "Completion",
    "ConfigurationError",
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
