"""Who is calling: the host's ``identify`` hook, or an anonymous cookie in demo mode.

The API never trusts an owner id sent by the client. A host app passes ``identify``, which
turns its own session or token into an owner id (None: not signed in, 401). Without a hook
the app runs in demo mode: `AnonymousOwnerCookie` gives each browser a random UUID in an
HttpOnly, SameSite=Lax cookie, which is as good as a bearer token for that browser's jobs
and nothing more.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: ``async def identify(request) -> owner id | None`` (a plain function works too).
Identify = Callable[[Request], Awaitable[str | None] | str | None]

OWNER_COOKIE = "jobqueue_owner"
ANONYMOUS_PREFIX = "anonymous:"
_STATE_KEY = "jobqueue_owner"
COOKIE_MAX_AGE = 365 * 24 * 3600


def _cookie_owner(scope: Scope, cookie_name: str) -> str | None:
    """The anonymous id in the request's cookie, if it is a well-formed one."""
    for name, value in scope.get("headers", ()):
        if name != b"cookie":
            continue
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(value.decode("latin-1"))
        except Exception:  # a malformed Cookie header is the client's problem, not ours
            continue
        morsel = jar.get(cookie_name)
        if morsel is None:
            continue
        try:
            return str(uuid.UUID(morsel.value))
        except ValueError:
            return None
    return None


class AnonymousOwnerCookie:
    """ASGI middleware for demo mode: give every browser an anonymous owner id.

    Reads the id from the cookie, or makes a new random one and sets the cookie on the
    response (streaming responses too, since it acts on ``http.response.start``).
    """

    def __init__(self, app: ASGIApp, cookie_name: str = OWNER_COOKIE) -> None:
        self.app = app
        self.cookie_name = cookie_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        known = _cookie_owner(scope, self.cookie_name)
        value = known or str(uuid.uuid4())
        state: dict[str, Any] = scope.setdefault("state", {})
        state[_STATE_KEY] = ANONYMOUS_PREFIX + value
        if known is not None:
            await self.app(scope, receive, send)
            return

        cookie = self._set_cookie(scope, value)

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("set-cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _set_cookie(self, scope: Scope, value: str) -> str:
        path = (scope.get("root_path") or "").rstrip("/") + "/"
        parts = [
            f"{self.cookie_name}={value}",
            f"Path={path}",
            f"Max-Age={COOKIE_MAX_AGE}",
            "HttpOnly",
            "SameSite=Lax",
        ]
        if scope.get("scheme") == "https":
            parts.append("Secure")
        return "; ".join(parts)


async def anonymous_owner(request: Request) -> str | None:
    """The identify hook of demo mode: the id `AnonymousOwnerCookie` put on the request."""
    owner = request.scope.get("state", {}).get(_STATE_KEY)
    return owner if isinstance(owner, str) else None
