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
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: ``async def identify(request) -> owner id | None`` (a plain function works too).
Identify = Callable[[Request], Awaitable[str | None] | str | None]

OWNER_COOKIE = "jobqueue_owner"
ANONYMOUS_PREFIX = "anonymous:"
_STATE_KEY = "jobqueue_owner"
COOKIE_MAX_AGE = 365 * 24 * 3600


def _cookie_owner(scope: Scope, cookie_name: str) -> str | None:
    """The anonymous id in the request's cookies, if it is a well-formed one.

    Parsed the lenient way browsers write cookies (Starlette's `cookie_parser`), not with
    `http.cookies.SimpleCookie`, which gives up on the whole header at the first cookie it
    finds malformed: another site's odd cookie on the same host must not cost a browser
    its jobs. Several ``Cookie`` headers (HTTP/2 may split them) are read in turn.
    """
    for name, value in scope.get("headers", ()):
        if name != b"cookie":
            continue
        found = cookie_parser(value.decode("latin-1")).get(cookie_name)
        if found is None:
            continue
        try:
            return str(uuid.UUID(found))
        except ValueError:
            return None
    return None


@dataclass(slots=True)
class AnonymousOwner:
    """The owner of one demo-mode request: from its cookie, or new (``known`` False)."""

    value: str
    known: bool
    used: bool = False

    @property
    def owner_id(self) -> str:
        return ANONYMOUS_PREFIX + self.value


def anonymous_owner_of(request: Request) -> AnonymousOwner | None:
    """The demo-mode owner of ``request`` (None outside demo mode)."""
    found = request.scope.get("state", {}).get(_STATE_KEY)
    return found if isinstance(found, AnonymousOwner) else None


def _cacheable(message: Message) -> bool:
    """Whether a response may be kept by a cache (browser or shared) and replayed."""
    control = Headers(raw=message.get("headers", [])).get("cache-control", "").lower()
    return "no-store" not in control and "private" not in control


class AnonymousOwnerCookie:
    """ASGI middleware for demo mode: give every browser an anonymous owner id.

    Reads the id from the cookie, or makes a new random one. The cookie is set only on a
    response that used the owner (`anonymous_owner` was asked) and that no cache may keep
    (``Cache-Control: no-store`` or ``private``): a static file or a placeholder image
    served with a ``Set-Cookie`` could be replayed by a shared cache to other browsers,
    handing them someone's owner id. Streaming responses work too, since the header is
    added on ``http.response.start``.
    """

    def __init__(self, app: ASGIApp, cookie_name: str = OWNER_COOKIE) -> None:
        self.app = app
        self.cookie_name = cookie_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        known = _cookie_owner(scope, self.cookie_name)
        owner = AnonymousOwner(known or str(uuid.uuid4()), known=known is not None)
        state: dict[str, Any] = scope.setdefault("state", {})
        state[_STATE_KEY] = owner
        if owner.known:
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start" and owner.used and not _cacheable(message):
                MutableHeaders(scope=message).append("set-cookie", self._set_cookie(scope, owner))
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _set_cookie(self, scope: Scope, owner: AnonymousOwner) -> str:
        path = (scope.get("root_path") or "").rstrip("/") + "/"
        parts = [
            f"{self.cookie_name}={owner.value}",
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
    owner = anonymous_owner_of(request)
    if owner is None:
        return None
    owner.used = True
    return owner.owner_id
