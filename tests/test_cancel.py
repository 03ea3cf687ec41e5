"""Finding and watching the client socket, on real sockets."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import gevent
import gevent.socket
import pytest

from flask_sse_stream._cancel import SOCKET_KEYS, SocketWatch, find_socket, peer_closed

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    yield server, client
    server.close()
    client.close()


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A TCP connection on 127.0.0.1: (the server's end, the client's end)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2], timeout=5)
        server, _ = listener.accept()
    yield server, client
    server.close()
    client.close()


def test_find_socket_looks_under_each_known_key(pair: tuple[socket.socket, ...]) -> None:
    sock = pair[0]
    for key in SOCKET_KEYS:
        assert find_socket({key: sock}) is sock


def test_find_socket_prefers_our_own_key(pair: tuple[socket.socket, ...]) -> None:
    ours, theirs = pair
    environ = {key: theirs for key in SOCKET_KEYS} | {"flask_sse_stream.socket": ours}
    assert find_socket(environ) is ours


def test_find_socket_ignores_what_is_not_a_socket(pair: tuple[socket.socket, ...]) -> None:
    assert find_socket({}) is None
    assert find_socket({"werkzeug.socket": None, "gunicorn.socket": "text"}) is None
    assert find_socket({"gunicorn.socket": object(), "gunicorn.sock": pair[0]}) is pair[0]


def test_peer_closed_tells_an_open_peer_from_a_gone_one(pair: tuple[socket.socket, ...]) -> None:
    server, client = pair
    assert not peer_closed(server)
    client.close()
    assert peer_closed(server)


def test_peer_closed_peeks_without_consuming(pair: tuple[socket.socket, ...]) -> None:
    server, client = pair
    client.sendall(b"GET")
    assert not peer_closed(server)
    assert not peer_closed(server)
    assert server.recv(3) == b"GET"


def test_peer_closed_never_blocks_a_blocking_socket(pair: tuple[socket.socket, ...]) -> None:
    server, _ = pair
    server.settimeout(None)
    with gevent.Timeout(1):
        assert not peer_closed(server)
    assert server.gettimeout() is None


def test_peer_closed_for_a_socket_closed_here(pair: tuple[socket.socket, ...]) -> None:
    server, _ = pair
    server.close()
    assert peer_closed(server)


def test_peer_closed_after_a_reset(tcp_pair: tuple[socket.socket, ...]) -> None:
    server, client = tcp_pair
    # Linger 0: close sends RST instead of FIN.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    with gevent.Timeout(1):
        while not peer_closed(server):
            gevent.sleep(0.005)


def test_peer_closed_on_a_gevent_socket() -> None:
    server, client = gevent.socket.socketpair()
    try:
        assert not peer_closed(server)
        client.close()
        assert peer_closed(server)
    finally:
        server.close()
        client.close()


def test_the_watch_fires_once_when_the_peer_closes(pair: tuple[socket.socket, ...]) -> None:
    server, client = pair
    fired: list[bool] = []
    watch = SocketWatch(server, lambda: fired.append(True))
    try:
        gevent.sleep(0.02)
        assert fired == []
        client.close()
        with gevent.Timeout(1):
            while not fired:
                gevent.sleep(0.001)
        gevent.sleep(0.02)  # level-triggered, yet it does not fire again
        assert fired == [True]
    finally:
        watch.stop()
    watch.stop()  # twice is harmless


def test_a_stopped_watch_never_fires(pair: tuple[socket.socket, ...]) -> None:
    server, client = pair
    fired: list[bool] = []
    watch = SocketWatch(server, lambda: fired.append(True))
    watch.stop()
    client.close()
    gevent.sleep(0.02)
    assert fired == []


def test_a_watch_on_a_closed_socket_cannot_start(pair: tuple[socket.socket, ...]) -> None:
    server, _ = pair
    server.close()
    with pytest.raises((OSError, ValueError)):
        SocketWatch(server, lambda: None)
