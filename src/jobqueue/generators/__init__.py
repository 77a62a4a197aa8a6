"""Image generators: the protocol (`base`), a mock (`mock`) and DefAPI (`defapi`).

Generators are pure HTTP (or pure simulation): they know nothing of SQL and act on their job
only through the `JobContext` they are given.
"""

from .base import (
    IMAGE_KIND,
    GenerationRequest,
    GenerationResult,
    Generator,
    JobContext,
    LocalContext,
)
from .defapi import DEFAULT_BASE_URL, DEFAULT_MODEL, DefAPIGenerator, TaskEnded
from .mock import MockGenerator

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "IMAGE_KIND",
    "DefAPIGenerator",
    "GenerationRequest",
    "GenerationResult",
    "Generator",
    "JobContext",
    "LocalContext",
    "MockGenerator",
    "TaskEnded",
]
