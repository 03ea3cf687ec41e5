"""Pub/sub on a real server: the channels blueprint under our runner, many
subscribers on raw sockets, publishing from greenlets and threads.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import h11
import pytest

from flask_sse_stream.testing import EventStreamParser, ServerSentEvent

from .helpers import HOST, Server, free_port, start_command, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

APP = "tests.e2e.pubsub_app:app"


@pytest.fixture(scope="module")
def pubsub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    command = [sys.executable, "-m", "flask_sse_stream", "serve", APP, "--port", str(port)]
    server = start_command(
        "runner", port, [*command, "--no-access-log"], tmp_path_factory.mktemp("pubsub")
    )
    yield server
    server.stop()


@pytest.fixture
def server(pubsub_server: Server) -> Iterator[Server]:
    yield pubsub_server
    pubsub_server.settled()


def post(server: Server, path: str) -> dict[str, Any]:
    import http.client

    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request("POST", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]
    finally:
        conn.close()


class Subscriber:
    """One streaming GET on a non-blocking raw socket, framing read with h11."""

    def __init__(
        self,
        port: int,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        rcvbuf: int | None = None,
        raw: bool = False,
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect((HOST, port))
        self.conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("Host", f"{HOST}:{port}"), *(headers or [])],
        )
        self.sock.sendall(self.conn.send(request) + (self.conn.send(h11.EndOfMessage()) or b""))
        self.sock.setblocking(False)
        self.parser = EventStreamParser(keep_comments=False)
        self.events: list[ServerSentEvent] = []
        # raw: keep the body's bytes instead of parsing (for bulk transfers)
        self.raw = bytearray() if raw else None
        self.status: int | None = None
        self.worker: str | None = None
        self.ended = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, size: int = 1 << 18) -> None:
        """Take what the socket has (up to ``size`` bytes); parse it."""
        try:
            data = self.sock.recv(size)
        except BlockingIOError:
            return
        except ConnectionError:
            data = b""
        self.conn.receive_data(data)
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.Response):
                self.status = event.status_code
                self.worker = dict(event.headers).get(b"x-worker", b"").decode() or None
            elif isinstance(event, h11.Data):
                if self.raw is not None:
                    self.raw += event.data
                else:
                    self.events += self.parser.feed(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self.ended = True
                break
        if not data:
            self.ended = True

    def close(self) -> None:
        self.sock.close()


def read_until(
    subscribers: list[Subscriber], done: Callable[[Subscriber], bool], timeout: float
) -> None:
    """Read every subscriber until ``done`` holds for each, or fail at the deadline."""
    selector = selectors.DefaultSelector()
    waiting = {s for s in subscribers if not done(s)}
    for sub in waiting:
        selector.register(sub, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(waiting)} subscriber(s) not done in {timeout} s")
            for key, _ in selector.select(min(remaining, 1)):
                sub = key.fileobj
                assert isinstance(sub, Subscriber)
                sub.read()
                if done(sub) or sub.ended:
                    waiting.discard(sub)
                    selector.unregister(sub)
    finally:
        selector.close()


def numbers(sub: Subscriber) -> list[int]:
    return [json.loads(e.data)["n"] for e in sub.events if e.event == "message"]


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    opened: list[Subscriber] = []
    yield opened
    for sub in opened:
        sub.close()


def subscribe(
    server: Server, opened: list[Subscriber], query: str, count: int = 1, **kwargs: Any
) -> list[Subscriber]:
    new = [Subscriber(server.port, f"/events?{query}", **kwargs) for _ in range(count)]
    opened += new
    return new


def wait_subscribed(server: Server, channel: str, count: int) -> None:
    wait_for(
        lambda: server.state()["subscribers"].get(channel, 0) >= count,
        20,
        interval=0.05,
        message=f"{count} subscribers of {channel} never showed up",
    )


def test_2000_events_reach_200_subscribers_exactly_once_in_order(
    server: Server, subscribers: list[Subscriber]
) -> None:
    subs = subscribe(server, subscribers, "channel=seq", 200)
    wait_subscribed(server, "seq", 200)
    post(server, "/publish-sequence?channel=seq&count=2000")
    read_until(subs, lambda s: len(s.events) >= 2000, timeout=60)
    for sub in subs:
        assert sub.status == 200
        assert numbers(sub) == list(range(2000))
    ids = [e.id for e in subs[0].events]
    assert len(set(ids)) == 2000
    assert all(sub_ids == ids for sub_ids in ([e.id for e in s.events] for s in subs))


def test_channels_are_isolated_and_one_stream_can_carry_several(
    server: Server, subscribers: list[Subscriber]
) -> None:
    (only_a,) = subscribe(server, subscribers, "channel=iso-a")
    (only_b,) = subscribe(server, subscribers, "channel=iso-b")
    (both,) = subscribe(server, subscribers, "channel=iso-a&channel=iso-b")
    wait_subscribed(server, "iso-a", 2)
    wait_subscribed(server, "iso-b", 2)
    post(server, "/publish-sequence?channel=iso-a&count=3&start=0&wait=1")
    post(server, "/publish-sequence?channel=iso-b&count=3&start=100&wait=1")
    read_until([only_a, only_b, both], lambda s: len(s.events) >= (6 if s is both else 3), 10)
    assert numbers(only_a) == [0, 1, 2]
    assert numbers(only_b) == [100, 101, 102]
    assert numbers(both) == [0, 1, 2, 100, 101, 102]


def test_a_client_cut_off_while_publishing_goes_on_resumes_without_gap_or_duplicate(
    server: Server, subscribers: list[Subscriber]
) -> None:
    (first,) = subscribe(server, subscribers, "channel=resume")
    wait_subscribed(server, "resume", 1)
    post(server, "/publish-sequence?channel=resume&count=1000&pause=0.002")
    read_until([first], lambda s: len(s.events) >= 100, timeout=20)
    first.close()  # the cut: publishing goes on meanwhile
    seen = first.events
    (second,) = subscribe(
        server, subscribers, "channel=resume", headers=[("Last-Event-ID", seen[-1].id)]
    )
    read_until([second], lambda s: bool(s.events) and numbers(s)[-1] == 999, timeout=30)
    assert numbers(first) + numbers(second) == list(range(1000))


def test_an_evicted_last_event_id_gets_the_reset_event(
    server: Server, subscribers: list[Subscriber]
) -> None:
    post(server, "/publish-sequence?channel=evict&count=1&wait=1")
    (probe,) = subscribe(server, subscribers, "channel=evict&lastEventId=0")
    read_until([probe], lambda s: bool(s.events), 10)
    (reset,) = probe.events
    assert reset.event == "sse-reset"
    old_id = reset.id  # the position before the next 3,001 events
    post(server, "/publish-sequence?channel=evict&count=3001&wait=1")
    (late,) = subscribe(server, subscribers, "channel=evict", headers=[("Last-Event-ID", old_id)])
    read_until([late], lambda s: bool(s.events), 10)
    assert late.events[0].event == "sse-reset"
    assert late.events[0].id != old_id


@pytest.mark.parametrize(
    "headers",
    [
        [("Last-Event-ID", "x" * 60000)],
        [("Last-Event-ID", "a\x00b")],
        [("Last-Event-ID", "caf\xe9-\xff")],  # not UTF-8
        [("Last-Event-ID", "a\rb")],
    ],
)
def test_a_hostile_last_event_id_is_answered_fast_and_never_reflected(
    server: Server, headers: list[tuple[str, str]]
) -> None:
    value = headers[0][1]
    request = (
        f"GET /events?channel=hostile HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Last-Event-ID: {value}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1")
    with socket.create_connection((HOST, server.port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and b"sse-reset" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    head = received.split(b"\r\n", 1)[0]
    assert head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 400", b"HTTP/1.1 431")), head
    if head.startswith(b"HTTP/1.1 200"):
        assert b"event: sse-reset" in received
    assert value.encode("latin-1") not in received


def test_refused_malformed_and_private_channels(server: Server) -> None:
    assert server.get("/events")[0] == 400
    assert server.get("/events?channel=bad%20name")[0] == 400
    status, body = server.get("/events?channel=ok&channel=private-1")
    assert status == 403
    assert json.loads(body) == {
        "error": "not allowed to subscribe to this channel",
        "channel": "private-1",
    }


def test_one_stalled_subscriber_among_100_is_dropped_and_the_others_get_everything(
    server: Server, subscribers: list[Subscriber]
) -> None:
    log_mark = len(server.log())
    stalled = Subscriber(server.port, "/events?channel=herd", rcvbuf=4096)
    subscribers.append(stalled)
    healthy = subscribe(server, subscribers, "channel=herd", 99, raw=True)
    wait_subscribed(server, "herd", 100)
    before = server.state()
    # 6 MB: more than the kernel buffers of the stalled connection (about
    # 3 MB on loopback here) plus its queue (200 events) and the chunk in hand.
    # Paced (1 ms between publishes, about 4 s in all): a healthy connection
    # has about as much room (4-5 MB) as the stalled one, so at full speed
    # (6 MB in 0.7 s) a client that keeps up but pauses for 0.1-0.2 s (a GC
    # pass, a busy machine) fills it too and is dropped, rightly: it fell
    # SSE_QUEUE_SIZE behind. At this pace it may pause for seconds.
    post(server, "/publish-sequence?channel=herd&count=1500&size=4000&pause=0.001")
    last = b'"n": 1499,'
    read_until(healthy, lambda s: s.raw is not None and last in s.raw[-8200:], timeout=60)
    for sub in healthy:
        assert sub.raw is not None
        assert [int(n) for n in re.findall(rb'"n": (\d+),', sub.raw)] == list(range(1500))
    # Dropped from the channel at once; its stream ends when the blocked
    # write times out (SSE_WRITE_TIMEOUT, 2 s here).
    after = wait_for(
        lambda: (
            (s := server.state())["subscribers"].get("herd") == 99 and s["open_streams"] == 99 and s
        ),
        15,
        interval=0.05,
        message="the stalled subscriber was never dropped",
    )
    assert after["dropped_slow"] + after["closed"]["write-failed"] > (
        before["dropped_slow"] + before["closed"]["write-failed"]
    )
    # The write the watchdog ended is the client's failure, not a server error.
    server.get("/health")  # the dropped stream's handler has finished by now
    assert "Traceback" not in server.log()[log_mark:]


def test_publish_from_an_os_thread_reaches_subscribers(
    server: Server, subscribers: list[Subscriber]
) -> None:
    (sub,) = subscribe(server, subscribers, "channel=threaded")
    wait_subscribed(server, "threaded", 1)
    event_id = post(server, "/publish-from-thread?channel=threaded")["id"]
    read_until([sub], lambda s: bool(s.events), 10)
    assert [(e.data, e.id) for e in sub.events] == [("from a thread", event_id)]


def test_streams_past_max_connections_are_told_to_come_back_later(
    server: Server, subscribers: list[Subscriber]
) -> None:
    subscribe(server, subscribers, "channel=full", 2)
    wait_subscribed(server, "full", 2)
    with socket.create_connection((HOST, server.port), timeout=5) as sock:
        sock.sendall(
            f"GET /limited/events?channel=full HTTP/1.1\r\nHost: {HOST}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\nContent-Type: text/event-stream; charset=utf-8\r\n" in head
    assert b"\r\nRetry-After: " in head
    assert b"\nretry: " in b"\n" + body
    assert b"event: sse-unavailable\n" in body
    assert b"too many open streams" in body
