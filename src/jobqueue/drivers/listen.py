"""LISTEN/NOTIFY on PostgreSQL: a wake-up signal for idle workers, never a source of truth.

The migration installs a statement-level ``AFTER INSERT`` trigger that sends
``pg_notify(<table name>, <queue name>)`` whoever inserts (the library, a web front end
through Supabase, psql). A `Listener` keeps one dedicated autocommit connection that
``LISTEN``\\s on that channel and calls a callback for each notification. It does nothing
else: the worker's claim loop decides what to claim and still polls, so a lost notification
(or a dead listener) only delays a job by the poll interval, never loses it.

The connection is separate from the SQLAlchemy pool on purpose: a pooled connection is
handed to other work between statements and would drop its LISTEN, and transaction-mode
poolers (PgBouncer, Supabase's pooler) cannot hold one at all — which is why the worker
can switch listening off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg
from psycopg import sql
from sqlalchemy import URL

from ..backoff import Backoff
from ..errors import describe_error

log = logging.getLogger("jobqueue.listener")

#: How long the listener waits for a notification before checking that its connection is
#: still alive; a half-open TCP connection would otherwise stay silent forever.
DEFAULT_HEALTH_INTERVAL = 15.0


def libpq_url(url: URL) -> str:
    """A plain ``postgresql://`` URL for psycopg from an engine's SQLAlchemy URL.

    Query parameters libpq does not know (driver options such as psycopg's
    ``prepare_threshold`` or asyncpg's ``prepared_statement_cache_size``) are dropped, since
    libpq refuses a URL that has them. The password stays in (it is needed to connect);
    never log the result, only `redact` of it.
    """
    known = {d.keyword.decode() for d in psycopg.pq.Conninfo.get_defaults()}
    query = {k: v for k, v in url.query.items() if k in known}
    plain = url.set(drivername="postgresql", query=query)
    return plain.render_as_string(hide_password=False)


class Listener:
    """Holds ``LISTEN "<channel>"`` on its own connection and reopens it when it dies.

    ``on_notify`` receives each notification's payload (the queue name), and ``None`` after
    every (re)connection, because inserts made while the connection was down sent
    notifications nobody heard. It runs on the event loop and must not block.
    """

    def __init__(
        self,
        conninfo: str,
        channel: str,
        on_notify: Callable[[str | None], None],
        *,
        application_name: str = "jobqueue-listener",
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        reconnect_backoff: tuple[float, float] = (0.1, 10.0),
        connect_timeout: float = 10.0,
    ) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.on_notify = on_notify
        # libpq truncates application_name to 63 bytes; do it here so filters match.
        self.application_name = application_name[:63]
        self.health_interval = health_interval
        self.reconnect_backoff = reconnect_backoff
        self.connect_timeout = connect_timeout
        #: Set while the connection is up and listening; cleared when it is lost.
        self.listening = asyncio.Event()
        #: How many times a connection was opened and LISTEN issued (1 = never reconnected).
        self.connections = 0
        #: Notifications received (all queues).
        self.notifications = 0
        self._was_up = False

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with capped, jittered exponential backoff."""
        backoff = Backoff(*self.reconnect_backoff)
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                self.listening.clear()
                raise
            except Exception as exc:
                self.listening.clear()
                if self._was_up:
                    backoff.reset()
                delay = backoff.next()
                log.warning(
                    "listener on channel %r %s (%s); reconnecting in %.1fs",
                    self.channel,
                    "lost its connection" if self._was_up else "cannot connect",
                    describe_error(exc),
                    delay,
                )
                await asyncio.sleep(delay)

    async def _listen_once(self) -> None:
        """One connection's life: connect, LISTEN, pass notifications on until it fails."""
        self._was_up = False
        conn = await psycopg.AsyncConnection.connect(
            self.conninfo,
            autocommit=True,
            application_name=self.application_name,
            connect_timeout=max(1, round(self.connect_timeout)),
        )
        async with conn:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
            self._was_up = True
            self.connections += 1
            self.listening.set()
            log.info(
                "listening for new jobs on channel %r%s",
                self.channel,
                " (reconnected)" if self.connections > 1 else "",
            )
            self.on_notify(None)
            while True:
                async for notice in conn.notifies(timeout=self.health_interval):
                    self.notifications += 1
                    self.on_notify(notice.payload)
                # Quiet for a while: prove the connection still answers.
                async with asyncio.timeout(self.connect_timeout):
                    await conn.execute("SELECT 1")
