"""Image generators: the protocol (`base`), a mock (`mock`), DefAPI (`defapi`), and keeping
provider keys out of what they store or log (`keys`).

Generators are pure HTTP (or pure simulation): they know nothing of SQL and act on their job
only through the `JobContext` they are given.
"""

from typing import TYPE_CHECKING, Any

from .base import (
    IMAGE_KIND,
    GenerationRequest,
    GenerationResult,
    Generator,
    JobContext,
    LocalContext,
)
from .keys import ScrubbedError, ScrubbedGenerator, Scrubber, check_api_key
from .mock import MockGenerator

if TYPE_CHECKING:
    from .defapi import DEFAULT_BASE_URL, DEFAULT_MODEL, DefAPIGenerator, TaskEnded

# DefAPI's names load its module (and httpx) on first use: a command that only reads jobs
# imports the generators' protocol without paying for an HTTP client.
_DEFAPI_NAMES = frozenset({"DEFAULT_BASE_URL", "DEFAULT_MODEL", "DefAPIGenerator", "TaskEnded"})


def __getattr__(name: str) -> Any:
    if name in _DEFAPI_NAMES:
        from . import defapi

        return getattr(defapi, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
