"""The runner's and our worker's connection reader, over a real socket pair.

:class:`flask_sse_stream._server._Reader` is what pywsgi reads a request
through (``readline`` for the request line and headers, ``read`` and
``readline`` for a body): it must give what ``socket.makefile("rb")``
gives, whatever the bytes' split into ``recv()`` calls, and keep only what
was read and not asked for yet.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import gevent
import gevent.socket
import pytest

from flask_sse_stream._server import _Reader, freeze_startup_objects, lean_greenlets

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def pair() -> Iterator[tuple[gevent.socket.socket, gevent.socket.socket]]:
    ours, theirs = gevent.socket.socketpair()
    with ours, theirs:
        yield ours, theirs


def send_apart(sock: gevent.socket.socket, *parts: bytes) -> gevent.Greenlet[..., None]:
    """Send each part on its own, letting the reader wake between them."""

    def send() -> None:
        for part in parts:
            sock.sendall(part)
            gevent.sleep(0.01)

    return gevent.spawn(send)


def test_lines_split_across_reads_come_whole(pair: tuple[gevent.socket.socket, ...]) -> None:
    ours, theirs = pair
    sender = send_apart(theirs, b"GET / HT", b"TP/1.1\r\nHost: x\r", b"\n\r\n")
    reader = _Reader(ours, 4096)
    assert reader.readline(65537) == b"GET / HTTP/1.1\r\n"
    assert reader.readline() == b"Host: x\r\n"
    assert reader.readline() == b"\r\n"
    sender.join()


def test_what_follows_the_request_is_kept_for_the_next_read(
    pair: tuple[gevent.socket.socket, ...],
) -> None:
    ours, theirs = pair
    theirs.sendall(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
    reader = _Reader(ours, 4096)
    assert reader.readline() == b"GET /a HTTP/1.1\r\n"
    assert reader.readline() == b"\r\n"
    assert reader.readline() == b"GET /b HTTP/1.1\r\n"


def test_readline_stops_at_its_size(pair: tuple[gevent.socket.socket, ...]) -> None:
    ours, theirs = pair
    theirs.sendall(b"abcdefgh\nrest\n")
    reader = _Reader(ours, 3)  # reads of 3 bytes: the limit falls inside one
    assert reader.readline(5) == b"abcde"
    assert reader.readline(0) == b""
    assert reader.readline() == b"fgh\n"
    assert reader.readline(5) == b"rest\n"


def test_read_waits_for_all_it_asks(pair: tuple[gevent.socket.socket, ...]) -> None:
    ours, theirs = pair
    sender = send_apart(theirs, b"0123", b"4567", b"89tail")
    reader = _Reader(ours, 2)
    assert reader.read(10) == b"0123456789"
    assert reader.read(2) == b"ta"
    sender.join()
    theirs.close()
    assert reader.read() == b"il"  # to the end
    assert reader.read(5) == b""


def test_the_end_of_the_stream(pair: tuple[gevent.socket.socket, ...]) -> None:
    ours, theirs = pair
    theirs.sendall(b"no newline")
    theirs.close()
    reader = _Reader(ours, 4096)
    assert reader.readline() == b"no newline"
    assert reader.readline() == b""
    assert reader.read(1) == b""


def test_readinto_gives_kept_bytes_first(pair: tuple[gevent.socket.socket, ...]) -> None:
    ours, theirs = pair
    theirs.sendall(b"line\nabcdef")
    reader = _Reader(ours, 4096)
    assert reader.readline() == b"line\n"
    buffer = bytearray(4)
    assert reader.readinto(buffer) == 4
    assert buffer == b"abcd"
    assert reader.read(2) == b"ef"


def test_a_closed_reader_refuses_to_read(pair: tuple[gevent.socket.socket, ...]) -> None:
    ours, theirs = pair
    theirs.sendall(b"x\n")
    reader = _Reader(ours, 4096)
    assert not reader.closed
    reader.close()
    assert reader.closed
    with pytest.raises(ValueError, match="closed"):
        reader.readline()
    assert ours.fileno() >= 0  # the socket stays open: it is the handler's


@pytest.fixture
def tree_tracking() -> Iterator[None]:
    before = gevent.config.track_greenlet_tree
    gevent.config.track_greenlet_tree = True
    yield
    gevent.config.track_greenlet_tree = before


@pytest.mark.usefixtures("tree_tracking")
def test_our_servers_turn_greenlet_tree_tracking_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEVENT_TRACK_GREENLET_TREE", raising=False)
    lean_greenlets()
    assert gevent.config.track_greenlet_tree is False
    greenlet = gevent.spawn(lambda: None)
    greenlet.join()
    assert getattr(greenlet, "spawning_stack", None) is None


@pytest.mark.usefixtures("tree_tracking")
def test_the_environment_keeps_greenlet_tree_tracking_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEVENT_TRACK_GREENLET_TREE", "1")
    lean_greenlets()
    assert gevent.config.track_greenlet_tree is True


class Node:
    """A container the cyclic collector tracks."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("unfrozen")
def test_startup_objects_are_collected_then_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLASK_SSE_STREAM_GC_FREEZE", raising=False)
    cycle = Node()
    cycle.other = Node()
    cycle.other.other = cycle
    garbage = weakref.ref(cycle)
    del cycle
    kept = Node()
    freeze_startup_objects()
    assert garbage() is None  # collected first, not frozen for ever
    assert gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # out of the collector's sight
    later = Node()
    assert any(o is later for o in gc.get_objects())


@pytest.mark.usefixtures("unfrozen")
def test_the_environment_leaves_the_collector_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_SSE_STREAM_GC_FREEZE", "0")
    freeze_startup_objects()
    assert gc.get_freeze_count() == 0
