"""Image generators: the protocol (`base`), a mock (`mock`), DefAPI (`defapi`), and keeping
provider keys out of what they store or log (`keys`).

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
from .keys import ScrubbedError, ScrubbedGenerator, Scrubber, check_api_key
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
    "ScrubbedError",
    "ScrubbedGenerator",
    "Scrubber",
    "TaskEnded",
    "check_api_key",
]
