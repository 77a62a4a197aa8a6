"""A TCP proxy on loopback that a test puts between its clients and a server, to fail the
network the way clouds do: silently.

`NetProxy` listens on ``127.0.0.1`` (a free port) and opens one upstream connection per
client connection, with one pipe per direction. Its mode applies to every connection, those
open now and those made later, and can change at any moment from any thread:

- `NetProxy.passing` (the start): bytes go through;
- `NetProxy.blackhole` (``"up"``: client to server, ``"down"``: server to client,
  ``"both"``): bytes in that direction are read and dropped, and both sockets stay open, so
  neither side learns anything: no FIN, no RST, every byte acknowledged by the proxy's
  kernel. A client on the other side of it needs a timeout of its own to notice (TCP
  keepalives and ``tcp_user_timeout`` see a healthy connection to the proxy). New
  connections are accepted, and silent too. The dropped bytes are gone for good: a
  connection that carried traffic while blackholed is broken after the heal, as a real
  one would be by then (its peer timed out);
- `NetProxy.delay` (milliseconds): every chunk is delivered that much later, in order;
- `NetProxy.reset`: every open connection is closed with an RST on both sides (``SO_LINGER``
  0); with ``refuse=True`` new connections are reset as soon as they are accepted, until
  the next mode change.

The context managers `NetProxy.blackholed` and `NetProxy.delayed` restore passing at the end
of their block. `NetProxy.url_for` rewrites a database URL to go through the proxy.

The proxy runs an asyncio loop on a thread of its own, so it serves sync tests, async tests
and worker processes alike; ``with NetProxy(host, port) as proxy:`` starts and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy.engine import make_url

Direction = Literal["up", "down", "both"]

#: Bytes read at once from a socket.
CHUNK = 65536


@dataclass(frozen=True)
class Mode:
    """What the proxy does to traffic now."""

    drop_up: bool = False
    drop_down: bool = False
    delay: float = 0.0
    refuse: bool = False

    def drops(self, up: bool) -> bool:
        return self.drop_up if up else self.drop_down

    def describe(self) -> str:
        if self.refuse:
            return "reset"
        if self.drop_up or self.drop_down:
            which = "both" if self.drop_up and self.drop_down else "up" if self.drop_up else "down"
            return f"blackhole {which}"
        if self.delay:
            return f"delay {self.delay * 1000:g} ms"
        return "pass"


PASS = Mode()


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream, with the pipes between them."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        """Close both sockets with an RST, not a FIN."""
        for writer in (self.client, self.server):
            _rst(writer)
        for task in self.tasks:
            task.cancel()


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class NetProxy:
    """A proxy from ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``; see the module."""

    def __init__(self, upstream_host: str, upstream_port: int, *, port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._wanted_port = port
        self.port = 0
        self.mode = PASS
        #: Connections accepted so far, and bytes dropped by a blackhole (both directions).
        self.accepted = 0
        self.dropped_bytes = 0
        self._links: set[_Link] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @classmethod
    def for_url(cls, url: str) -> NetProxy:
        """A proxy in front of the server a database URL names (not started)."""
        u = make_url(url)
        return cls(u.host or "127.0.0.1", u.port or 5432)

    # -- life -------------------------------------------------------------------------------

    def start(self) -> NetProxy:
        self._thread = threading.Thread(target=self._run, name="netproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"the proxy did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        thread.join(10)
        self._loop = self._thread = None

    def __enter__(self) -> NetProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's (password kept)."""
        u = make_url(url).set(host="127.0.0.1", port=self.port)
        return u.render_as_string(hide_password=False)

    @property
    def open_connections(self) -> int:
        return len(self._links)

    # -- modes (thread-safe: a mode is one immutable value, swapped whole) ------------------

    def passing(self) -> None:
        """Let every byte through (again), undelayed."""
        self.mode = PASS

    def blackhole(self, direction: Direction = "both") -> None:
        """Drop the bytes going ``direction``, keeping every socket open."""
        self.mode = Mode(
            drop_up=direction in ("up", "both"), drop_down=direction in ("down", "both")
        )

    def delay(self, milliseconds: float) -> None:
        """Deliver every chunk ``milliseconds`` late (in order)."""
        self.mode = Mode(delay=milliseconds / 1000)

    def reset(self, *, refuse: bool = False) -> None:
        """Reset every open connection; with ``refuse``, reset new ones too until the mode
        changes. Returns once the connections open now are reset."""
        if refuse:
            self.mode = Mode(refuse=True)
        loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._reset_all(), loop).result(10)

    @contextlib.contextmanager
    def blackholed(self, direction: Direction = "both") -> Iterator[NetProxy]:
        """A blackhole for the block, then passing again."""
        self.blackhole(direction)
        try:
            yield self
        finally:
            self.passing()

    @contextlib.contextmanager
    def delayed(self, milliseconds: float) -> Iterator[NetProxy]:
        """A delay for the block, then passing again."""
        self.delay(milliseconds)
        try:
            yield self
        finally:
            self.passing()

    # -- the loop's side ----------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self._wanted_port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()
        asyncio.get_running_loop().call_soon(asyncio.get_running_loop().stop)

    async def _reset_all(self) -> None:
        links = list(self._links)
        for link in links:
            link.abort()
        await asyncio.gather(*(t for link in links for t in link.tasks), return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode.refuse:
            _rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _rst(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, link, up=True)),
            asyncio.create_task(self._pipe(up_reader, writer, link, up=False)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._links.discard(link)
        for w in (writer, up_writer):
            w.close()

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link, *, up: bool
    ) -> None:
        """Copy ``src`` to ``dst`` by the mode of the moment; a delayed chunk goes through a
        queue so that chunks keep their order whatever the delay was when each came."""
        pending: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(pending, dst))
        try:
            while True:
                data = await src.read(CHUNK)
                if not data:
                    break
                mode = self.mode
                if mode.drops(up):
                    self.dropped_bytes += len(data)
                    continue
                pending.put_nowait((time.monotonic() + mode.delay, data))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            pending.put_nowait(None)
            with contextlib.suppress(BaseException):
                await sender
            # One side ended: end the other as a FIN (a reset already aborted both).
            with contextlib.suppress(OSError, RuntimeError):
                if dst.can_write_eof():
                    dst.write_eof()

    async def _send(
        self, pending: asyncio.Queue[tuple[float, bytes] | None], dst: asyncio.StreamWriter
    ) -> None:
        while True:
            item = await pending.get()
            if item is None:
                return
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                dst.write(data)
                await dst.drain()
            except (OSError, RuntimeError):
                return


__all__ = ["CHUNK", "PASS", "Direction", "Mode", "NetProxy"]
