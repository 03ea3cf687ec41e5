"""Compressed streams: the compressors, the state machine's use of them, negotiation.

What the browser needs is that every chunk on the wire decodes, on its own
arrival, to whole events: the tests decode chunk by chunk with a fresh
decoder per stream and look at what each chunk gave, never at the body as
a whole only.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import pytest
from flask import Flask

from flask_sse_stream import SSE, ConfigError, Event
from flask_sse_stream._compress import Compression, brotli_module, choose
from flask_sse_stream._core import HEARTBEAT, StreamCore, TurnKind
from flask_sse_stream.testing import EventStreamParser, decoder, iter_events, parse

ENCODINGS = ["gzip", "br"]
EVENTS = [
    Event({"n": n, "kind": "update", "payload": "x" * 40}.__repr__()).encode() for n in range(5)
]


def unchunk(framed: bytes) -> bytes:
    """The payload of one HTTP/1.1 chunk as the core frames it."""
    size, _, rest = framed.partition(b"\r\n")
    assert rest.endswith(b"\r\n")
    assert len(rest) == int(size, 16) + 2
    return rest[:-2]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_each_flush_decodes_to_exactly_what_was_given(encoding: str) -> None:
    compressor = Compression.default(encoding).new()
    decode = decoder(encoding)
    for frame in [*EVENTS, HEARTBEAT, *EVENTS]:
        assert decode(compressor.flush(frame)) == frame
    assert decode(compressor.finish(b"")) == b""


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_repeats_shrink_across_events(encoding: str) -> None:
    # The dictionary spans the stream: the second copy of an event costs
    # a fraction of the first.
    compressor = Compression.default(encoding).new()
    first = compressor.flush(EVENTS[0])
    again = compressor.flush(EVENTS[0])
    assert len(again) * 3 < len(first)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_the_core_compresses_every_way_out_in_order(encoding: str) -> None:
    """Preamble, handler writes, beside writes, heartbeats both ways, the end."""
    core = StreamCore(8, Compression.default(encoding).new())
    decode = decoder(encoding)
    got: list[bytes] = []

    got.append(decode(core.start(b"retry: 1000\n\n")))
    core.item(EVENTS[0])
    turn = core.handler_turn()  # through the server
    assert turn.kind is TurnKind.WRITE
    got.append(decode(turn.data))
    core.item(EVENTS[1])
    core.item(EVENTS[2])
    frame = core.take_beside()  # beside it: one chunk, framed
    assert frame is not None
    core.sent(frame, len(frame))
    got.append(decode(unchunk(frame)))
    assert core.heartbeat_due()
    beat = core.take_beside()  # a heartbeat beside the server
    assert beat is not None
    core.sent(beat, len(beat))
    got.append(decode(unchunk(beat)))
    assert core.heartbeat_due()
    turn = core.handler_turn()  # a heartbeat through it
    got.append(decode(turn.data))
    core.item(EVENTS[3])
    core.finished()
    last = core.handler_turn()
    got.append(decode(last.data))
    assert core.handler_turn().kind is TurnKind.STOP

    assert got == [
        b"retry: 1000\n\n",
        EVENTS[0],
        EVENTS[1] + EVENTS[2],
        HEARTBEAT,
        HEARTBEAT,
        EVENTS[3],
    ]


def test_a_gzip_stream_that_ends_is_whole() -> None:
    core = StreamCore(8, Compression.default("gzip").new())
    body = core.start(b": hi\n\n")
    core.item(EVENTS[0])
    core.finished()
    body += core.handler_turn().data
    state = zlib.decompressobj(16 + zlib.MAX_WBITS)
    assert state.decompress(body) == b": hi\n\n" + EVENTS[0]
    assert state.eof  # the trailer (CRC and length) came: curl and browsers see no truncation


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("taken", [0, 1, 7])
def test_a_partial_write_leaves_the_compressed_stream_whole(encoding: str, taken: int) -> None:
    """The rest of a frame that went out in part is sent as it is, never compressed again."""
    core = StreamCore(8, Compression.default(encoding).new())
    wire = [core.start(b"retry: 1\n\n")]
    core.item(EVENTS[0])
    frame = core.take_beside()
    assert frame is not None
    assert core.sent(frame, taken)  # the rest is owed
    core.item(EVENTS[1])  # made meanwhile: it waits behind the rest
    turn = core.handler_turn()
    assert turn.kind is TurnKind.RAW
    assert frame[:taken] + turn.data == frame
    core.raw_sent()
    wire.append(unchunk(frame))
    wire.append(core.handler_turn().data)
    decode = decoder(encoding)
    assert [decode(part) for part in wire] == [b"retry: 1\n\n", EVENTS[0], EVENTS[1]]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_drained_stream_ends_with_its_retry_compressed(encoding: str) -> None:
    core = StreamCore(8, Compression.default(encoding).new())
    decode = decoder(encoding)
    decode(core.start(b"retry: 1\n\n"))
    core.item(EVENTS[0])
    assert core.drain(b"retry: 1500\n\n")
    assert decode(core.handler_turn().data) == EVENTS[0] + b"retry: 1500\n\n"
    assert core.handler_turn().kind is TurnKind.STOP


def test_a_closed_stream_sends_no_trailer() -> None:
    core = StreamCore(8, Compression.default("gzip").new())
    core.start(b"retry: 1\n\n")
    core.item(EVENTS[0])
    core.peer_closed()
    assert core.handler_turn().kind is TurnKind.STOP


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip, deflate, br, zstd", "br"),
        ("gzip, deflate", "gzip"),
        ("br;q=0, gzip", "gzip"),
        ("*", "br"),
        ("identity", None),
        ("", None),
        ("gzip;q=0, br;q=0", None),
    ],
)
def test_choose_the_first_offered_coding_the_client_accepts(
    header: str, expected: str | None
) -> None:
    from werkzeug.datastructures import Accept
    from werkzeug.http import parse_accept_header

    offered = (Compression.default("br"), Compression.default("gzip"))
    accept = parse_accept_header(header, Accept)
    chosen = choose(offered, accept.quality)
    assert (chosen.encoding if chosen else None) == expected


def test_br_without_a_binding_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import flask_sse_stream._compress as compress

    monkeypatch.setattr(compress, "brotli_module", lambda: None)
    with pytest.raises(ConfigError, match=r"flask-sse-stream\[brotli\]"):
        Compression.default("br").checked()
    with pytest.raises(ConfigError, match=r"flask-sse-stream\[brotli\]"):
        SSE().stream(compress=["gzip", "br"])  # when decorating, not on the first request


def test_a_brotli_binding_is_installed_for_the_tests() -> None:
    assert brotli_module() is not None


# Through Flask: the response and the testing helpers.


def make_app(**config: Any) -> tuple[Flask, SSE]:
    app = Flask(__name__)
    app.config.update(SSE_HEARTBEAT_INTERVAL=None, SSE_RETRY=500, **config)
    sse = SSE(app)

    def produce() -> Iterator[dict[str, Any]]:
        for n in range(3):
            yield {"n": n, "text": "the same words again " * 4}

    @app.get("/plain-default")
    @sse.stream
    def default() -> Iterator[dict[str, Any]]:
        yield from produce()

    @app.get("/gzip")
    @sse.stream(compress="gzip")
    def gzip_view() -> Iterator[dict[str, Any]]:
        yield from produce()

    @app.get("/off")
    @sse.stream(compress=None)
    def off() -> Iterator[dict[str, Any]]:
        yield from produce()

    app.register_blueprint(sse.blueprint, url_prefix="/events")
    return app, sse


def fetch(
    app: Flask, path: str, accept: str | None, count: int = 3
) -> tuple[dict[str, str], list[Any]]:
    headers = {} if accept is None else {"Accept-Encoding": accept}
    response = app.test_client().get(path, headers=headers, buffered=False)
    try:
        events = [event.json() for event in islice(iter_events(response), count)]
    finally:
        response.close()
    return dict(response.headers), events


EXPECTED = [{"n": n, "text": "the same words again " * 4} for n in range(3)]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_sse_compression_negotiates_and_says_so(encoding: str) -> None:
    app, _ = make_app(SSE_COMPRESSION=encoding)
    headers, events = fetch(app, "/plain-default", "gzip, deflate, br")
    assert headers["Content-Encoding"] == encoding
    assert headers["Vary"] == "Accept-Encoding"
    assert "Content-Length" not in headers
    assert events == EXPECTED


@pytest.mark.parametrize("accept", [None, "identity", "deflate"])
def test_a_client_that_does_not_accept_it_gets_the_plain_stream(accept: str | None) -> None:
    app, _ = make_app(SSE_COMPRESSION=["br", "gzip"])
    headers, events = fetch(app, "/plain-default", accept)
    assert "Content-Encoding" not in headers
    assert headers["Vary"] == "Accept-Encoding"  # a cache must not serve it to the others
    assert events == EXPECTED


def test_without_compression_nothing_changes() -> None:
    app, _ = make_app()
    headers, events = fetch(app, "/plain-default", "gzip")
    assert "Content-Encoding" not in headers
    assert "Vary" not in headers
    assert events == EXPECTED


def test_per_view_compress_overrides_the_config() -> None:
    app, _ = make_app(SSE_COMPRESSION="br", SSE_COMPRESSION_LEVEL=2)
    assert fetch(app, "/gzip", "gzip, br")[0]["Content-Encoding"] == "gzip"
    headers, events = fetch(app, "/off", "gzip, br")
    assert "Content-Encoding" not in headers
    assert "Vary" not in headers
    assert events == EXPECTED


def test_the_blueprint_follows_the_config() -> None:
    app, sse = make_app(SSE_COMPRESSION="gzip")
    client = app.test_client()
    response = client.get(
        "/events?channel=news", headers={"Accept-Encoding": "gzip"}, buffered=False
    )
    try:
        assert response.headers["Content-Encoding"] == "gzip"
        events = iter_events(response)
        with app.app_context():
            sse.publish({"headline": "compressed"}, channel="news")
        assert next(events).json() == {"headline": "compressed"}
    finally:
        response.close()


def test_a_bad_compress_option_fails_when_decorating() -> None:
    sse = SSE()
    with pytest.raises(ConfigError, match="compress"):
        sse.stream(compress="zstd")


def test_raw_bytes_need_the_coding_named() -> None:
    app, _ = make_app(SSE_COMPRESSION="gzip")
    response = app.test_client().get(
        "/plain-default", headers={"Accept-Encoding": "gzip"}, buffered=True
    )
    body = response.get_data()
    assert not body.startswith(b"retry")
    assert [e.json() for e in parse(body, content_encoding="gzip")] == EXPECTED


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_chunk_of_the_body_decodes_to_whole_events(encoding: str) -> None:
    app, _ = make_app(SSE_COMPRESSION=encoding)
    response = app.test_client().get(
        "/plain-default", headers={"Accept-Encoding": encoding}, buffered=False
    )
    decode: Callable[[bytes], bytes] = decoder(encoding)
    parser = EventStreamParser()
    try:
        for part in response.iter_encoded():
            text = decode(part)
            assert text.endswith(b"\n\n"), text  # whole events, nothing held back
            parser.feed(text)
    finally:
        response.close()


def test_decoder_refuses_an_unknown_coding() -> None:
    with pytest.raises(ValueError, match="zstd"):
        decoder("zstd")
