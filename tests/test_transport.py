"""Writing beside the server through our Transport, over real sockets.

The "server" here is the part of one that matters: a handler greenlet that
iterates the stream and writes each item as one HTTP/1.1 chunk, telling the
transport what it wrote, as :class:`flask_sse_stream._server.TransportHandler`
does. Socket buffers are made small so that a big event goes beside the
server only in part; h11 reads the wire strictly on the client's side.
"""

from __future__ import annotations

import os
import socket
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import gevent
import gevent.socket
import h11
import pytest
from gevent.event import Event as Flag
from greenlet_guard import without_the_cycle_collector

from flask_sse_stream import Event, MemoryBroker
from flask_sse_stream._core import chunk
from flask_sse_stream._stream import EventStream, heartbeats
from flask_sse_stream._transport import Transport

pytestmark = pytest.mark.timeout(20)

PREAMBLE = b"retry: 10\n\n"
BIG = "x" * 1_000_000


def encode(item: Any) -> bytes:
    return item.encode() if isinstance(item, Event) else Event(item).encode()


class Handler:
    """A handler greenlet serving one stream on ``sock``, chunked."""

    def __init__(self, sock: gevent.socket.socket, source: Iterable[Any], **options: Any) -> None:
        self.sock = sock
        self.source = source
        self.options = options
        self.writes = 0
        self.stream: EventStream | None = None
        self.greenlet = gevent.spawn(self._run)

    def wait_parked(self, timeout: float = 2) -> None:
        """Wait until the handler waits inside the stream (it writes nothing then)."""
        with gevent.Timeout(timeout):
            while self.stream is None or not self.stream.parked:
                gevent.sleep(0.001)

    def _run(self) -> None:
        transport = Transport(self.sock)  # made in the handler's greenlet
        self.sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        transport.response_started(chunked=True)
        stream = self.stream = EventStream(
            self.source, encode=encode, preamble=PREAMBLE, transport=transport, **self.options
        )
        try:
            for data in stream:
                self.sock.sendall(chunk(data))
                transport.body_written(len(data))
                self.writes += 1
            self.sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the client left
        finally:
            stream.close()
            transport.release()


class Client:
    """The client end, read by h11."""

    def __init__(self, sock: gevent.socket.socket) -> None:
        self.sock = sock
        self.conn = h11.Connection(h11.CLIENT)
        self.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "test")]))
        self.body = bytearray()

    def read_until(self, data: bytes, timeout: float = 5) -> None:
        with gevent.Timeout(timeout):
            while data not in self.body:
                event = self.conn.next_event()
                if event is h11.NEED_DATA:
                    self.conn.receive_data(self.sock.recv(65536))
                elif isinstance(event, h11.Data):
                    self.body += event.data
                else:
                    assert isinstance(event, h11.Response | h11.EndOfMessage), event
                    assert not isinstance(event, h11.EndOfMessage), "the stream ended"


@pytest.fixture
def pair() -> Iterator[tuple[gevent.socket.socket, gevent.socket.socket]]:
    server, client = gevent.socket.socketpair()
    # Small buffers: a 1 MB event never fits in one send().
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    yield server, client
    server.close()
    client.close()


def test_a_big_event_of_a_subscription_goes_beside_in_part_and_its_rest_at_once(
    pair: tuple[gevent.socket.socket, gevent.socket.socket],
) -> None:
    server, client_sock = pair
    broker = MemoryBroker(history_size=10, queue_size=10)
    handler = Handler(server, broker.subscribe(["c"]))
    client = Client(client_sock)
    try:
        client.read_until(PREAMBLE)
        handler.wait_parked()
        broker.publish("c", Event("small"))
        client.read_until(b"data: small\n\n")
        assert handler.writes == 1  # beside the handler: it never woke
        broker.publish("c", Event(BIG, id="big"))
        # Only part fits the socket; the rest follows at once, not with the
        # next event (there is none): the handler woke to send it.
        client.read_until(b"id: big\ndata: " + BIG.encode() + b"\n\n")
        broker.publish("c", Event("after"))
        client.read_until(b"data: after\n\n")
        assert client.body.count(b"data: ") == 3
    finally:
        client_sock.close()
        handler.greenlet.join(5)
        broker.close()
    assert handler.greenlet.dead


def test_a_big_event_made_before_the_producer_waits_arrives_whole_while_it_waits(
    pair: tuple[gevent.socket.socket, gevent.socket.socket],
) -> None:
    finalized = Flag()

    def producer() -> Iterator[str]:
        try:
            yield "first"
            yield BIG
            gevent.sleep(600)
            yield "never"
        finally:
            finalized.set()

    server, client_sock = pair
    handler = Handler(server, producer())
    client = Client(client_sock)
    try:
        client.read_until(b"data: first\n\n" + b"data: " + BIG.encode() + b"\n\n", timeout=5)
    finally:
        client_sock.close()
    # The client's close stops the producer where it waits; its finally runs.
    handler.greenlet.join(5)
    assert handler.greenlet.dead
    assert finalized.is_set()


def test_heartbeats_go_beside_the_handler_and_never_inside_an_event(
    pair: tuple[gevent.socket.socket, gevent.socket.socket],
) -> None:
    server, client_sock = pair
    broker = MemoryBroker(history_size=10, queue_size=10)
    handler = Handler(server, broker.subscribe(["c"]), heartbeat=0.05)
    client = Client(client_sock)
    direct = heartbeats["direct"]
    try:
        client.read_until(PREAMBLE + b":\n:\n:\n")
        broker.publish("c", Event(BIG, id="big"))
        client.read_until(BIG.encode() + b"\n\n:\n")
        assert heartbeats["direct"] - direct >= 4
        assert handler.writes == 1  # only the preamble went through the handler
        head, _, tail = bytes(client.body).partition(b"id: big\ndata: ")
        assert set(head.removeprefix(PREAMBLE).split(b"\n")) <= {b":", b""}
        assert tail.index(b"\n\n") == len(BIG)
    finally:
        client_sock.close()
        handler.greenlet.join(5)
        broker.close()


@pytest.mark.parametrize(
    "case",
    [
        (True, 10, 10, False, True),
        (False, 10, 10, False, False),  # HTTP/1.0: no chunks to frame
        (True, 9, 10, False, False),  # the server has not written it all (or changed it)
        (True, 12, 10, False, False),  # a middleware added bytes
        (True, 0, 0, False, False),  # nothing sent yet: no headers either
        (True, 10, 10, True, False),  # the response is over
    ],
)
def test_a_transport_allows_a_write_beside_only_when_the_server_wrote_exactly_the_body(
    pair: tuple[gevent.socket.socket, gevent.socket.socket],
    case: tuple[bool, int, int, bool, bool],
) -> None:
    chunked, written, returned, released, allowed = case
    transport = Transport(pair[0])
    transport.response_started(chunked=chunked)
    transport.body_written(written)
    if released:
        transport.release()
    assert transport.can_send(returned) is allowed


def test_a_transport_never_writes_beside_a_blocking_descriptor(
    pair: tuple[gevent.socket.socket, gevent.socket.socket],
) -> None:
    # Its write would wait with the whole process.
    os.set_blocking(pair[0].fileno(), True)
    transport = Transport(pair[0])
    transport.response_started(chunked=True)
    transport.body_written(5)
    assert not transport.can_send(5)


def test_a_transport_never_writes_beside_a_socket_that_is_not_gevents_plain_one() -> None:
    a, b = socket.socketpair()  # the standard library's (as a TLS socket would be: not gevent's)
    try:
        transport = Transport(a)  # type: ignore[arg-type]
        transport.response_started(chunked=True)
        transport.body_written(5)
        assert not transport.can_send(5)
    finally:
        a.close()
        b.close()


def test_a_transport_sends_what_fits_without_waiting_and_release_leaves_the_socket_open(
    pair: tuple[gevent.socket.socket, gevent.socket.socket],
) -> None:
    server, client = pair
    transport = Transport(server)
    transport.response_started(chunked=True)
    sent = transport.send(b"y" * 10_000_000)
    assert 0 < sent < 10_000_000  # the rest did not fit, and nothing waited
    assert transport.send(b"z") == 0  # full: refused, at once
    transport.release()
    assert server.fileno() >= 0  # the descriptor is still the server's
    client.recv(65536)


def test_what_a_producer_makes_while_a_rest_is_on_its_way_follows_it_at_once(
    pair: tuple[gevent.socket.socket, gevent.socket.socket],
) -> None:
    made = Flag()

    def producer() -> Iterator[str]:
        yield BIG
        gevent.sleep(0.01)  # waits: the big frame goes beside, in part
        yield "second"  # made while the rest of the big frame is on its way
        made.set()
        gevent.sleep(600)
        yield "never"

    server, client_sock = pair
    handler = Handler(server, producer())
    client = Client(client_sock)
    try:
        client.read_until(PREAMBLE)
        assert made.wait(5)  # the client reads nothing meanwhile: the rest waits
        client.read_until(BIG.encode() + b"\n\ndata: second\n\n", timeout=5)
        assert client.body.count(b"data: ") == 2
    finally:
        client_sock.close()
    handler.greenlet.join(5)
    assert handler.greenlet.dead


def test_full_chunks_of_a_producer_that_never_waits_go_beside_the_server_whole_and_in_order(
    pair: tuple[gevent.socket.socket, gevent.socket.socket],
) -> None:
    size, count = 10_000, 3 * 8  # three full buffers of 8: each only fits in part

    def producer() -> Iterator[Event]:
        for number in range(count):
            yield Event(str(number) * size, id=str(number))

    server, client_sock = pair
    handler = Handler(server, producer(), buffer_size=8)
    client = Client(client_sock)
    try:
        client.read_until(f"id: {count - 1}\n".encode() + b"data: ", timeout=5)
        last = str(count - 1).encode() * size + b"\n\n"
        client.read_until(last, timeout=5)
    finally:
        client_sock.close()
    handler.greenlet.join(5)
    assert handler.greenlet.dead
    # The handler wrote them itself, beside the server (which wrote the
    # preamble only), each frame whole and in order.
    assert handler.writes == 1
    expected = b"".join(Event(str(n) * size, id=str(n)).encode() for n in range(count))
    assert bytes(client.body) == PREAMBLE + expected


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    with without_the_cycle_collector():
        yield


@pytest.mark.usefixtures("no_cycle_collector")
@pytest.mark.parametrize("source", ["generator", "subscription"])
def test_a_closed_stream_is_freed_by_reference_counting_alone(
    pair: tuple[gevent.socket.socket, gevent.socket.socket], source: str
) -> None:
    # Left in a reference cycle, a closed stream keeps its request's objects
    # (greenlet, socket, Flask's contexts: ~40 per stream) until the
    # collector's next full pass, which then walks them all at once.
    def producer() -> Iterator[str]:
        yield "first"
        gevent.sleep(600)

    server, client_sock = pair
    broker = MemoryBroker(history_size=10, queue_size=10)
    handler = Handler(server, producer() if source == "generator" else broker.subscribe(["c"]))
    client = Client(client_sock)
    try:
        if source == "subscription":
            handler.wait_parked()
            broker.publish("c", Event("first"))
        client.read_until(b"data: first\n\n")
        assert handler.stream is not None
        stream = weakref.ref(handler.stream)
    finally:
        client_sock.close()
        handler.greenlet.join(5)
        broker.close()
    assert handler.greenlet.dead
    handler.stream = None
    assert stream() is None
