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
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import URL

from ..backoff import Backoff
from ..errors import describe_error
from .deadline import arm_on_loop, breaker_of
from .engines import PG_CONNECT_DEFAULTS

log = logging.getLogger("jobqueue.listener")

#: How long the listener waits for a notification before checking that its connection is
#: still alive: a LISTEN connection that hears nothing cannot tell a quiet queue from a
#: silent network (a partition, a stuck proxy) without asking.
DEFAULT_HEALTH_INTERVAL = 15.0

#: How long the probe (``SELECT 1``) may take before the connection counts as dead: it is
#: then dropped (its socket shut down under the driver, so that nothing waits on it) and
#: a new one made, with backoff, while the worker finds new jobs by polling.
DEFAULT_PROBE_TIMEOUT = 5.0


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
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    ) -> None:
        self.conninfo = conninfo
        self.channel = channel
        self.on_notify = on_notify
        # libpq truncates application_name to 63 bytes; do it here so filters match.
        self.application_name = application_name[:63]
        self.health_interval = health_interval
        self.reconnect_backoff = reconnect_backoff
        self.connect_timeout = connect_timeout
        self.probe_timeout = probe_timeout
        #: Probes that got no answer in time (each dropped its connection).
        self.silent_probes = 0
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
        # The TCP defaults of the queue's own connections (`PG_CONNECT_DEFAULTS`), where
        # the URL does not set them.
        known = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        tcp: dict[str, Any] = {k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in known}
        tcp["connect_timeout"] = max(1, round(self.connect_timeout))
        conn = await psycopg.AsyncConnection.connect(
            self.conninfo,
            autocommit=True,
            application_name=self.application_name,
            **tcp,
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
                await self._probe(conn)

    async def _probe(self, conn: psycopg.AsyncConnection[object]) -> None:
        """``SELECT 1`` within ``probe_timeout``, else the connection's socket is shut down
        (a cancelled statement would wait on psycopg's cancel request, through the same
        silent network) and the error raised ends this connection's life."""
        with arm_on_loop(breaker_of(conn), self.probe_timeout) as timer:
            try:
                await conn.execute("SELECT 1")
            except psycopg.Error as exc:
                if timer is not None and timer.fired:
                    self.silent_probes += 1
                    raise TimeoutError(
                        f"no answer to a probe within {self.probe_timeout:g} s"
                    ) from exc
                raise
