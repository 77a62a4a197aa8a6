"""The HTTP job API, a dependency-free browser client and a demo page (``jobqueue[web]``).

``create_app(queue, identify=...)`` returns an ASGI app to run or to mount; see docs/web.md.
"""

from .app import create_app
from .owners import Identify, anonymous_owner
from .problems import ApiError

__all__ = ["ApiError", "Identify", "anonymous_owner", "create_app"]
