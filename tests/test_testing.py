"""flask_sse_stream.testing: the public parser, against the standard and real apps.

The WHATWG examples and edge cases are tables; the spec-literal reader in
``spec_parser`` is the oracle for fuzzed input; then the helper is used as
users will, on Flask's test client and on a ``requests`` streaming response
from a real gevent server.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import pytest
import requests
from flask import Flask
from gevent.pywsgi import WSGIServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_parser import SpecEvent, read_stream

from flask_sse_stream import SSE, Comment, Event
from flask_sse_stream._server import SSEHandler
from flask_sse_stream.testing import EventStreamParser, ServerSentEvent, iter_events, parse

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

E = ServerSentEvent


def chunked(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def feed_all(chunks: list[bytes], **options: Any) -> tuple[list[E], EventStreamParser]:
    parser = EventStreamParser(**options)
    events: list[E] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    parser.close()
    return events, parser


# (body, the events a browser dispatches); the first rows are the standard's
# own examples.
STREAMS: list[tuple[bytes, list[E]]] = [
    (b"data: YHOO\ndata: +2\ndata: 10\n\n", [E(data="YHOO\n+2\n10")]),
    (
        b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n"
        b"data:  third event\n",
        [E(data="first event", id="1"), E(data="second event", id="")],
    ),
    (b"data\n\ndata\ndata\n\ndata:", [E(data=""), E(data="\n")]),
    (b"data:test\n\ndata: test\n\n", [E(data="test"), E(data="test")]),
    (b"event: add\ndata: 73857293\n\n", [E(event="add", data="73857293")]),
    # Line ends: CRLF, CR, LF, and mixes.
    (b"data: a\r\ndata: b\r\n\r\n", [E(data="a\nb")]),
    (b"data: a\rdata: b\r\r", [E(data="a\nb")]),
    (b"data: a\n\rdata: b\r\n\n", [E(data="a"), E(data="b")]),
    (b"data: a\r\r\ndata: b\n\r", [E(data="a"), E(data="b")]),
    # Field syntax.
    (b"data:x:y\n\n", [E(data="x:y")]),
    (b"data:  x\n\n", [E(data=" x")]),
    (b"data:\n\n", [E(data="")]),
    (b"data\n\n", [E(data="")]),
    (b"Data: x\n\n", []),
    (b"data : x\n\n", []),
    (b"unknown: x\ndata: y\n\n", [E(data="y")]),
    (b" data: x\n\n", []),
    # The event type: defaults to "message", reset after every blank line.
    (b"event: a\n\ndata: x\n\n", [E(data="x")]),
    (b"event: a\ndata: x\n\ndata: y\n\n", [E(event="a", data="x"), E(data="y")]),
    (b"event: a\nevent: b\ndata: x\n\n", [E(event="b", data="x")]),
    (b"event:\ndata: x\n\n", [E(data="x")]),
    (b"event\ndata: x\n\n", [E(data="x")]),
    # The id: persists, an empty one resets it, one with NUL is ignored.
    (b"id: 1\ndata: a\n\ndata: b\n\n", [E(data="a", id="1"), E(data="b", id="1")]),
    (b"id: 1\n\ndata: b\n\n", [E(data="b", id="1")]),
    (b"id: 1\ndata: a\n\nid:\ndata: b\n\n", [E(data="a", id="1"), E(data="b", id="")]),
    (b"id: 1\ndata: a\n\nid: 2\0\ndata: b\n\n", [E(data="a", id="1"), E(data="b", id="1")]),
    (b"id: \xe2\x82\xac\ndata: a\n\n", [E(data="a", id="\u20ac")]),
    # retry: ASCII digits only; kept on the event whose block holds it.
    (b"retry: 10\ndata: a\n\ndata: b\n\n", [E(data="a", retry=10), E(data="b")]),
    (b"retry: 007\ndata: a\n\n", [E(data="a", retry=7)]),
    (b"retry: 1a\ndata: a\n\n", [E(data="a")]),
    (b"retry: -1\ndata: a\n\n", [E(data="a")]),
    (b"retry: 1.5\ndata: a\n\n", [E(data="a")]),
    (b"retry:\ndata: a\n\n", [E(data="a")]),
    (b"retry:  10\ndata: a\n\n", [E(data="a")]),
    ("retry: \u0661\u0662\ndata: a\n\n".encode(), [E(data="a")]),
    ("retry: \uff11\ndata: a\n\n".encode(), [E(data="a")]),
    (b"retry: 5\n\ndata: a\n\n", [E(data="a")]),
    # Comments never dispatch.
    (b":\n\n: beat\n\n", []),
    (b"data: a\n: inside\ndata: b\n\n", [E(data="a\nb")]),
    # Encoding: UTF-8, bad bytes replaced, one leading BOM skipped.
    (b"\xef\xbb\xbfdata: a\n\n", [E(data="a")]),
    (b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n", []),
    (b"\xef\xbb\xbf\ndata: a\n\n", [E(data="a")]),
    (b"data: \xff\xfe\n\n", [E(data="\ufffd\ufffd")]),
    (b"data: \xe2\x82\n\n", [E(data="\ufffd")]),
    (b"data: \xf0\x9f\x98\x80\n\n", [E(data="\U0001f600")]),
    (b"\xefdata: a\n\n", []),
    (b"data: \0\n\n", [E(data="\0")]),
    # The end: an event without its blank line is never dispatched.
    (b"", []),
    (b"\xef\xbb", []),
    (b"data: a", []),
    (b"data: a\n", []),
    (b"data: a\n\ndata: b\n", [E(data="a")]),
]


@pytest.mark.parametrize(("body", "expected"), STREAMS, ids=repr)
def test_reads_a_stream_as_a_browser_does(body: bytes, expected: list[E]) -> None:
    assert parse(body) == expected
    spec = read_stream(body).events
    assert [SpecEvent(e.event, e.data, e.id, e.retry) for e in expected] == spec


@pytest.mark.parametrize(("body", "expected"), STREAMS, ids=repr)
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_chunks_split_anywhere_read_the_same(body: bytes, expected: list[E], size: int) -> None:
    assert feed_all(chunked(body, size))[0] == expected


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"data: a\r", b"\n\r\n"], [E(data="a")]),
        ([b"data: a\r", b"\n", b"\r", b"\n"], [E(data="a")]),
        ([b"data: a\r", b"", b"\n", b"", b"\n"], [E(data="a")]),
        ([b"data: a\r", b"\r"], [E(data="a")]),
        ([b"data: a\r\n", b"\r", b"data: b\r\n\r\n"], [E(data="a"), E(data="b")]),
        ([b"data: \xe2", b"\x82", b"\xac\n\n"], [E(data="\u20ac")]),
        ([b"data: \xe2\x82", b"\n\n"], [E(data="\ufffd")]),
        ([b"\xef", b"\xbb", b"\xbfdata: a\n\n"], [E(data="a")]),
        ([b"\xef", b"", b"\xbb\xbf", b"data: a\n\n"], [E(data="a")]),
        ([b"\xef\xbb", b"data: a\n\n"], []),
        ([b"data: a\n\n", b"\xef\xbb\xbfdata: b\n\n"], [E(data="a")]),
        ([b"", b"data: a\n\n"], [E(data="a")]),
        ([b"da", b"ta", b": ", b"a", b"\n", b"\n"], [E(data="a")]),
        ([bytearray(b"data: a\n\n"), memoryview(b"data: b\n\n")], [E(data="a"), E(data="b")]),
    ],
)
def test_chunk_boundaries_inside_crlf_utf8_and_bom(chunks: list[bytes], expected: list[E]) -> None:
    assert feed_all(chunks)[0] == expected
    assert parse(b"".join(chunks)) == expected


def test_feed_returns_each_event_as_soon_as_its_blank_line_arrives() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b\n") == [E(data="a")]
    assert parser.feed(b"\r") == [E(data="b")]
    assert parser.feed(b"\n") == []  # the LF of that CRLF


def test_parser_keeps_comments_last_event_id_and_reconnection_time() -> None:
    parser = EventStreamParser()
    events = parser.feed(b"retry: 3000\n\n:\n: beat\n:  two\nid: 4\ndata: x\n\nid: 5\0\n\n")
    assert events == [E(data="x", id="4")]
    assert parser.comments == ["", "beat", " two"]
    assert parser.retry == 3000
    assert parser.last_event_id == "4"
    # A reconnect sends the id of the last complete block, dispatched or not.
    parser.feed(b"id: 6\n")
    assert parser.last_event_id == "4"
    assert parser.feed(b"\n") == []
    assert parser.last_event_id == "6"


def test_comments_can_be_dropped() -> None:
    events, parser = feed_all([b": beat\n\ndata: a\n\n"], keep_comments=False)
    assert events == [E(data="a")]
    assert parser.comments == []


def test_close_discards_the_unfinished_event_and_ends_the_parser() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"event: e\nretry: 9\ndata: a\n\ndata: partial\ndata: b") == [
        E(event="e", data="a", retry=9)
    ]
    parser.close()
    assert parser.retry == 9
    with pytest.raises(RuntimeError, match="closed"):
        parser.feed(b"\n\n")


def test_server_sent_event_defaults_json_and_immutability() -> None:
    event = ServerSentEvent()
    assert (event.event, event.data, event.id, event.retry) == ("message", "", "", None)
    assert ServerSentEvent(data='{"a": [1, null]}').json() == {"a": [1, None]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = "x"  # type: ignore[misc]


STREAM = b": hi\n\nid: 1\ndata: a\n\ndata: b\ndata: c\n\nevent: x\ndata: d\n\ndata: cut"
STREAM_EVENTS = [E(data="a", id="1"), E(data="b\nc", id="1"), E(event="x", data="d", id="1")]


@pytest.mark.parametrize(
    "source",
    [
        STREAM,
        bytearray(STREAM),
        memoryview(STREAM),
        chunked(STREAM, 3),
        iter(chunked(STREAM, 1)),
        (chunk for chunk in [STREAM]),
    ],
    ids=["bytes", "bytearray", "memoryview", "list", "iterator", "generator"],
)
def test_iter_events_reads_bytes_and_iterables_of_chunks(source: Any) -> None:
    assert list(iter_events(source)) == STREAM_EVENTS


def test_iter_events_refuses_text() -> None:
    with pytest.raises(TypeError, match="bytes, not str"):
        list(iter_events("data: a\n\n"))  # type: ignore[arg-type]


def test_iter_events_is_lazy_and_can_use_a_given_parser() -> None:
    pulled: list[bytes] = []

    def source() -> Iterator[bytes]:
        for chunk in [b"data: a\n\n", b": beat\n", b"data: b\n\n", b"never"]:
            pulled.append(chunk)
            yield chunk

    parser = EventStreamParser()
    events = iter_events(source(), parser)
    assert next(events) == E(data="a")
    assert pulled == [b"data: a\n\n"]
    assert next(events) == E(data="b")
    assert parser.comments == ["beat"]
    assert list(events) == []


# Fuzzing against the spec-literal reader.

pieces = st.sampled_from(
    [
        *(b"data", b"event", b"id", b"retry", b":", b": ", b" ", b"\r", b"\n", b"\r\n", b"\0"),
        *(b"\xef\xbb\xbf", b"\xe2\x82", b"\xac", b"\xff", b"\xf0\x9f\x98", b"\x80", b"12", b"x"),
    ]
)
streams = st.lists(pieces | st.binary(max_size=6), max_size=40).map(b"".join) | st.binary()


@PROPERTY
@given(body=streams, cuts=st.lists(st.integers(0, 500), max_size=10))
def test_any_bytes_read_as_the_standard_says_however_chunked(body: bytes, cuts: list[int]) -> None:
    spec = read_stream(body)
    bounds = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts)})
    events, parser = feed_all([body[a:b] for a, b in itertools.pairwise(bounds)])
    assert [SpecEvent(e.event, e.data, e.id, e.retry) for e in events] == spec.events
    assert parser.comments == spec.comments
    assert parser.retry == spec.reconnection_time
    assert parser.last_event_id == spec.last_event_id
    assert parse(body) == events


# Real apps.


def make_app(sse_config: dict[str, Any], finished: Any, count: int | None = None) -> Flask:
    """An app whose /ticks stream counts forever (or ``count`` times)."""
    app = Flask(__name__)
    app.config.update(sse_config)
    sse = SSE(app)

    @app.get("/ticks")
    @sse.stream
    def ticks() -> Iterator[Event | Comment]:
        try:
            yield Comment("hello")
            for n in itertools.count() if count is None else range(count):
                yield Event({"n": n}, event="tick", id=n)
                gevent.sleep(0.001)
        finally:
            finished.set()

    return app


@pytest.mark.timeout(10)
def test_flask_test_client_endless_stream_then_close_runs_the_producers_finally() -> None:
    finished = gevent.event.Event()
    app = make_app({"SSE_HEARTBEAT_INTERVAL": None, "SSE_RETRY": 1500}, finished)
    response = app.test_client().get("/ticks", buffered=False)
    assert response.mimetype == "text/event-stream"
    parser = EventStreamParser()
    try:
        events = list(itertools.islice(iter_events(response, parser), 5))
    finally:
        response.close()
    assert events == [E("tick", f'{{"n": {n}}}', str(n)) for n in range(5)]
    assert [e.json()["n"] for e in events] == [0, 1, 2, 3, 4]
    assert parser.retry == 1500
    assert parser.comments == ["hello"]
    assert finished.wait(timeout=5), "the producer's finally did not run after close()"


@pytest.mark.timeout(10)
def test_flask_test_client_finite_stream_reads_to_the_end() -> None:
    finished = gevent.event.Event()
    app = make_app({"SSE_HEARTBEAT_INTERVAL": None, "SSE_RETRY": None}, finished, count=3)
    response = app.test_client().get("/ticks", buffered=False)
    parser = EventStreamParser()
    try:
        events = list(iter_events(response, parser))
    finally:
        response.close()
    assert [e.data for e in events] == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
    assert parser.retry is None
    assert parser.comments == ["", "hello"]  # the opening comment, then ours
    assert finished.wait(timeout=5)
    # A buffered response (read whole and closed by the client) reads the same.
    buffered = app.test_client().get("/ticks", buffered=True)
    assert list(iter_events(buffered)) == events


@pytest.mark.timeout(10)
def test_heartbeats_show_in_comments() -> None:
    finished = gevent.event.Event()
    app = Flask(__name__)
    app.config.update(SSE_HEARTBEAT_INTERVAL=0.02, SSE_RETRY=None)
    sse = SSE(app)

    @app.get("/quiet")
    @sse.stream
    def quiet() -> Iterator[str]:
        try:
            yield "only"
            gevent.sleep(600)
        finally:
            finished.set()

    response = app.test_client().get("/quiet", buffered=False)
    parser = EventStreamParser()
    events: list[E] = []
    chunks = iter(response.response)
    try:
        while len(parser.comments) < 3:  # the opening comment and two beats
            events += parser.feed(next(chunks))
    finally:
        response.close()
    assert events == [E(data="only")]
    assert parser.comments == ["", "", ""]
    assert finished.wait(timeout=5)


class ThreadedServer:
    """A gevent WSGIServer in its own thread and hub, so that a blocking
    client (``requests``) in the test's thread can talk to it."""

    def __init__(self, app: Flask) -> None:
        self._app = app
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: WSGIServer | None = None
        self.port = 0

    def _run(self) -> None:
        server = WSGIServer(("127.0.0.1", 0), self._app, handler_class=SSEHandler, log=None)
        server.start()
        self._server = server
        self.port = server.server_port
        self._ready.set()
        try:
            server.serve_forever()
        finally:
            gevent.get_hub().destroy(destroy_loop=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(timeout=5), "the server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        server = self._server
        assert server is not None
        server.loop.run_callback_threadsafe(server.stop, 2)
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "the server thread did not stop"


@pytest.mark.timeout(15)
def test_requests_streaming_response_from_a_real_gevent_server() -> None:
    finished = threading.Event()  # set in the server's thread
    app = make_app({"SSE_HEARTBEAT_INTERVAL": 5, "SSE_RETRY": 2500}, finished)
    with ThreadedServer(app) as server:
        url = f"http://127.0.0.1:{server.port}/ticks"
        parser = EventStreamParser()
        with requests.get(url, stream=True, timeout=5) as response:
            assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
            assert response.headers["Transfer-Encoding"] == "chunked"
            events = list(itertools.islice(iter_events(response, parser), 20))
        assert [e.id for e in events] == [str(n) for n in range(20)]
        assert [e.json() for e in events] == [{"n": n} for n in range(20)]
        assert parser.retry == 2500
        assert parser.comments == ["hello"]
        assert finished.wait(timeout=5), "the producer's finally did not run after the close"
