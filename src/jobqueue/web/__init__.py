"""The HTTP job API, a dependency-free browser client and a demo page (``jobqueue[web]``).

``create_app(queue, identify=...)`` returns an ASGI app to run or to mount; see docs/web.md.
``create_admin_app(queue, authenticate=...)`` is the operator's dashboard
(docs/dashboard.md).
"""

from .admin import Authenticate, create_admin_app
from .allowed import Allowed
from .app import create_app
from .guards import DEMO_RATE_LIMIT, RateLimit
from .owners import Identify, anonymous_owner
from .problems import ApiError

__all__ = [
    "DEMO_RATE_LIMIT",
    "Allowed",
    "ApiError",
    "Authenticate",
    "Identify",
    "RateLimit",
    "anonymous_owner",
    "create_admin_app",
    "create_app",
]
