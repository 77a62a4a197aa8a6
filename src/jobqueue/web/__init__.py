"""The HTTP job API, a dependency-free browser client and a demo page (``jobqueue[web]``).

``create_app(queue, identify=...)`` returns an ASGI app to run or to mount; see docs/web.md.
"""

from .allowed import Allowed
from .app import create_app
from .guards import DEMO_RATE_LIMIT, RateLimit
from .owners import Identify, anonymous_owner
from .problems import ApiError

__all__ = [
    "DEMO_RATE_LIMIT",
    "Allowed",
    "ApiError",
    "Identify",
    "RateLimit",
    "anonymous_owner",
    "create_app",
]
