"""What protects the API from other sites and from greedy callers.

- `SecurityHeaders`: ``X-Content-Type-Options: nosniff`` on every response, so a browser
  never runs an uploaded or echoed body as a script or stylesheet by guessing its type.
- `OriginCheck`: a ``POST`` that carries cookies must come from the app's own origin (or
  one the host trusts). Browsers attach cookies to requests other sites make, so without
  this a page elsewhere could create or cancel jobs in a signed-in user's name (CSRF).
- `RateLimit` / `RateLimiter`: at most so many ``POST /jobs`` per owner in a window, since
  every job may cost a paid generation.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigurationError
from .problems import error_response

#: Methods that change something; only these are checked for their origin.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class SecurityHeaders:
    """ASGI middleware: ``X-Content-Type-Options: nosniff`` on every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` of an absolute http(s) URL, lower-cased, default port dropped.

    Raises `ConfigurationError` for anything else: origins come from the host's settings.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"{url!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{url!r} is not an http(s) URL with a host",
            hint="for example https://app.example.com",
        )
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname.lower()
    if ":" in host:  # an IPv6 literal keeps its brackets in an origin
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def _origin_netloc(origin: str) -> str | None:
    """``host[:port]`` of an ``Origin`` header value, or None when it is not an http origin."""
    try:
        return urlsplit(origin_of(origin)).netloc
    except ConfigurationError:
        return None


class OriginCheck:
    """ASGI middleware: refuse a state-changing request with cookies from another site.

    A request passes when it carries no cookie (nothing of the user's for another site to
    ride on: token auth in an ``Authorization`` header cannot be sent cross-site without
    CORS), when its ``Origin`` is trusted, or when the browser says it is same-origin:

    - ``Sec-Fetch-Site`` (sent by every current browser) must be ``same-origin`` or
      ``none`` (the user's own action, e.g. the address bar);
    - without it, ``Origin`` must be the app's own (``base_url``'s, else the ``Host`` the
      request was sent to); no ``Origin`` at all is a non-browser client and passes.

    A refusal is a ``403 cross_site_request`` problem; the request goes no further (no
    body is read, no owner cookie is made).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        own_origin: str | None,
        trusted_origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.own_origin = own_origin
        self.trusted = frozenset(origin_of(o) for o in trusted_origins)
        if own_origin is not None:
            self.trusted |= {own_origin}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            why = self.refusal(Headers(scope=scope))
            if why is not None:
                response = error_response(
                    403,
                    "cross_site_request",
                    f"refused a cross-site request that carries cookies ({why})",
                    hint="send the request from the app's own pages; a host app that trusts "
                    "another origin lists it in create_app(trusted_origins=...)",
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, headers: Headers) -> str | None:
        """Why a request with these headers is refused, or None when it may pass."""
        if "cookie" not in headers:
            return None
        origin = headers.get("origin")
        if origin is not None and _known_origin(origin, self.trusted):
            return None
        site = headers.get("sec-fetch-site")
        if site is not None:
            if site.strip().lower() in ("same-origin", "none"):
                return None
            return f"Sec-Fetch-Site: {site[:40]}"
        if origin is None:
            return None
        if self.own_origin is None and _origin_netloc(origin) == headers.get("host", "").lower():
            return None
        return f"Origin: {origin[:80]}"


def _known_origin(origin: str, trusted: frozenset[str]) -> bool:
    try:
        return origin_of(origin) in trusted
    except ConfigurationError:
        return False


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``jobs`` ``POST /jobs`` per owner in any ``per`` seconds (a token bucket: a
    burst of ``jobs`` at once, then one more every ``per / jobs`` seconds). Every request
    counts, a refused or repeated one too: the check comes before the body is read."""

    jobs: int
    per: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ConfigurationError(f"RateLimit(jobs={self.jobs!r}) must be an integer >= 1")
        if not isinstance(self.per, int | float) or not 0 < self.per < math.inf:
            raise ConfigurationError(f"RateLimit(per={self.per!r}) must be seconds > 0")

    def describe(self) -> str:
        return f"{self.jobs} jobs per {self.per:g} s"


#: What demo mode allows each browser unless the host says otherwise.
DEMO_RATE_LIMIT = RateLimit(jobs=10, per=60.0)


class RateLimiter:
    """A `RateLimit` kept in this process's memory, one bucket per key.

    Each server process counts on its own, so N processes allow N times the limit. The
    buckets are bounded: full ones are forgotten (they hold nothing a new bucket would
    not), and beyond ``max_keys`` the least recently used go first.
    """

    def __init__(
        self,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit = limit
        self.clock = clock
        self.max_keys = max_keys
        self._rate = limit.jobs / limit.per
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, *keys: str) -> float | None:
        """Spend one job from each key's bucket: None when every bucket had one, else the
        seconds until they all would (and nothing is spent)."""
        now = self.clock()
        full = float(self.limit.jobs)
        levels = {}
        for key in keys:
            tokens, stamp = self._buckets.pop(key, (full, now))
            levels[key] = min(full, tokens + (now - stamp) * self._rate)
        short = max((1.0 - tokens for tokens in levels.values()), default=0.0)
        spend = 0.0 if short > 0 else 1.0
        for key, tokens in levels.items():
            self._buckets[key] = (tokens - spend, now)  # re-inserted: most recently used last
        if len(self._buckets) > self.max_keys:
            self._forget(now)
        return short / self._rate if short > 0 else None

    def _forget(self, now: float) -> None:
        for key, (tokens, stamp) in list(self._buckets.items()):
            if tokens + (now - stamp) * self._rate >= self.limit.jobs:
                del self._buckets[key]
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
