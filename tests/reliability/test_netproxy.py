"""The test proxy itself (`tests.support.netproxy.NetProxy`), against an echo server of its
own on loopback: each mode does what the drills rely on."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.netproxy import NetProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = _Server(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[0], server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[NetProxy]:
    with NetProxy(*echo) as p:
        yield p


def _client(proxy: NetProxy, timeout: float = 0.5) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=5)
    sock.settimeout(timeout)
    return sock


def _echoes(sock: socket.socket, data: bytes = b"ping") -> bool:
    sock.sendall(data)
    try:
        got = b""
        while len(got) < len(data):
            chunk = sock.recv(4096)
            if not chunk:
                return False
            got += chunk
        return got == data
    except TimeoutError:
        return False


def test_bytes_pass_both_ways(proxy: NetProxy) -> None:
    with _client(proxy) as sock:
        assert _echoes(sock, b"x" * 200_000)
    assert proxy.accepted == 1


@pytest.mark.parametrize("direction", ["up", "down", "both"])
def test_a_blackhole_keeps_the_connection_open_and_silent_then_heals(
    proxy: NetProxy, direction: str
) -> None:
    with _client(proxy) as sock:
        assert _echoes(sock)
        with proxy.blackholed(direction):  # type: ignore[arg-type]
            # Nothing comes back, and nothing says the connection is gone: no EOF, no reset.
            assert not _echoes(sock)
            assert proxy.open_connections == 1
            assert proxy.dropped_bytes >= 4
        # Healed: a new connection works at once.
        with _client(proxy) as fresh:
            assert _echoes(fresh)


def test_a_blackhole_accepts_new_connections_and_says_nothing(proxy: NetProxy) -> None:
    with proxy.blackholed(), _client(proxy) as sock:
        assert not _echoes(sock)


def test_a_delay_holds_every_chunk_back_in_order(proxy: NetProxy) -> None:
    with _client(proxy, timeout=5) as sock, proxy.delayed(300):
        started = time.monotonic()
        assert _echoes(sock, b"".join(b"%d," % i for i in range(1000)))
        # Up and down each wait their 0.3 s.
        assert time.monotonic() - started >= 0.55


def test_a_reset_sends_rst_to_open_connections_and_refuses_new_ones(proxy: NetProxy) -> None:
    with _client(proxy, timeout=5) as sock:
        assert _echoes(sock)
        proxy.reset(refuse=True)
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"ping")
            sock.recv(10)
        # A new connection is accepted and reset at once: the reset reaches the client at
        # its connect when the client's thread is slower than the proxy, else at its first
        # exchange.
        with pytest.raises(ConnectionResetError), _client(proxy, timeout=5) as fresh:
            fresh.sendall(b"ping")
            fresh.recv(10)
        proxy.passing()
        with _client(proxy) as healed:
            assert _echoes(healed)


def test_url_for_points_a_database_url_at_the_proxy(proxy: NetProxy) -> None:
    url = proxy.url_for("postgresql://u:p%40ss@db.example:5432/app?sslmode=disable")
    assert url == f"postgresql://u:p%40ss@127.0.0.1:{proxy.port}/app?sslmode=disable"
