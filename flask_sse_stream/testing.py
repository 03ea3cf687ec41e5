"""Read an event stream back as events, in tests and load clients.

The parser follows the WHATWG HTML standard, "Server-sent events",
sections "Parsing an event stream" and "Interpreting an event stream",
the way a browser's ``EventSource`` reads a response:

* the body is UTF-8 (invalid bytes become U+FFFD) and one byte order mark
  at the very start is skipped;
* lines end with ``\\r\\n``, ``\\r`` or ``\\n``;
* ``data`` lines accumulate, joined by ``\\n``; a blank line dispatches the
  event; a block without any ``data`` line dispatches nothing;
* the ``event`` type falls back to ``"message"`` and is reset after each
  blank line; the ``id`` persists from one event to the next until changed,
  and an ``id`` holding NUL is ignored; ``retry`` counts only when it is
  made of ASCII digits;
* at the end of the stream an incomplete event is discarded.

Two things are kept that a browser does not show, because tests want them:
the comments (heartbeats), in :attr:`EventStreamParser.comments`, and the
``retry`` field given in an event's own block, in
:attr:`ServerSentEvent.retry`.

With Flask's test client, ask for an unbuffered response so that an endless
stream is read lazily, take what you need, then close the response: closing
it ends the stream on the server side (its producer's ``finally`` runs).
Close it even when you read a finite stream to its end: the test client
only closes responses it was asked to buffer (``buffered=True``)::

    from itertools import islice
    from flask_sse_stream.testing import iter_events

    def test_clock(app):
        client = app.test_client()
        response = client.get("/clock", buffered=False)
        try:
            events = list(islice(iter_events(response), 3))
        finally:
            response.close()
        assert [e.event for e in events] == ["tick"] * 3
        assert "now" in events[0].json()

With ``requests``, stream the response::

    with requests.get(url, stream=True, timeout=5) as response:
        for event in iter_events(response):
            ...

Or feed bytes yourself, as they arrive, to an :class:`EventStreamParser`.

A compressed stream (``SSE_COMPRESSION``) is decoded on the way: a test
client's response by its ``Content-Encoding``, a ``requests`` response by
``requests`` itself (brotli needs a brotli binding installed), and bytes you
read yourself with ``iter_events(chunks, content_encoding="gzip")`` or
:func:`decoder`::

    response = client.get("/clock", headers={"Accept-Encoding": "gzip"}, buffered=False)
    events = list(islice(iter_events(response), 3))   # decoded chunk by chunk
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from werkzeug.wrappers import Response as _WerkzeugResponse

__all__ = [
    "EventSource",
    "EventStreamParser",
    "ServerSentEvent",
    "decoder",
    "iter_events",
    "parse",
]

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event, as a browser's ``EventSource`` would dispatch it.

    :param event: the event type; ``"message"`` when the stream named none.
    :param data: the data lines, joined with ``"\\n"``.
    :param id: the last event id at the time of the event (it carries over
        from earlier events, as in a browser's ``lastEventId``); ``""`` if
        none was ever set.
    :param retry: the reconnection time given by a ``retry`` field in this
        event's own block, or ``None``.
    """

    event: str = "message"
    data: str = ""
    id: str = ""
    retry: int | None = None

    def json(self) -> Any:
        """Return the data decoded as JSON."""
        return json.loads(self.data)


class EventStreamParser:
    """Turn the bytes of an event stream into :class:`ServerSentEvent` objects.

    The parser does no I/O: give it the body's bytes, in chunks of any size
    split anywhere, with :meth:`feed`, and call :meth:`close` at the end.

    :param keep_comments: keep the text of every comment line in
        :attr:`comments`; turn it off in a long-running client that does not
        look at them, so they do not pile up.
    """

    __slots__ = (
        "_bom_checked",
        "_closed",
        "_data",
        "_event",
        "_event_retry",
        "_id_buffer",
        "_keep_comments",
        "_pending",
        "_skip_lf",
        "comments",
        "last_event_id",
        "retry",
    )

    def __init__(self, *, keep_comments: bool = True) -> None:
        self.comments: list[str] = []
        """The text of each comment line, after the colon and one optional
        space, in order: a bare ``:`` heartbeat shows as ``""``."""
        self.last_event_id = ""
        """The last event ID string: what a browser would send back as
        ``Last-Event-ID`` if the connection dropped here. Like a browser, it
        takes an ``id`` field's value at the blank line that ends its block,
        whether or not that block dispatches an event."""
        self.retry: int | None = None
        """The reconnection time in milliseconds, from the last valid
        ``retry`` field anywhere in the stream (whether or not an event was
        dispatched with it), or ``None``."""
        self._keep_comments = keep_comments
        self._pending: list[bytes] = []  # the start of a line whose end has not come
        self._skip_lf = False  # the last chunk ended in CR: a LF next is its CRLF
        self._bom_checked = False
        self._closed = False
        self._data: list[str] = []
        self._event = ""
        self._event_retry: int | None = None
        self._id_buffer = ""

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[ServerSentEvent]:
        """Read the next bytes of the stream; return the events they complete.

        :raises RuntimeError: if the parser was closed.
        """
        if self._closed:
            raise RuntimeError("this EventStreamParser is closed; make a new one")
        data = bytes(chunk)
        if not self._bom_checked:
            data = b"".join(self._pending) + data
            self._pending.clear()
            if len(data) < len(_BOM) and _BOM.startswith(data):
                if data:
                    self._pending.append(data)
                return []
            self._bom_checked = True
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
        if b"\n" not in data and b"\r" not in data:
            if data:
                self._pending.append(data)
            return []
        if self._pending:
            self._pending.append(data)
            data = b"".join(self._pending)
            self._pending.clear()
        if b"\r" in data:
            # A CR is a line end at once, even at the end of a chunk.
            self._skip_lf = data[-1] == 0x0D
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        rest = lines.pop()
        if rest:
            self._pending.append(rest)
        return self._interpret(lines)

    def close(self) -> None:
        """End the stream: an incomplete event or line is discarded, as a
        browser does. :meth:`feed` may not be called afterwards."""
        self._closed = True
        self._pending.clear()
        self._data.clear()
        self._event = ""
        self._event_retry = None

    def _interpret(self, lines: list[bytes]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        data = self._data
        for line in lines:
            if not line:
                self.last_event_id = self._id_buffer
                if data:
                    text = "\n".join(data)
                    data.clear()
                    events.append(
                        ServerSentEvent(
                            self._event or "message", text, self.last_event_id, self._event_retry
                        )
                    )
                self._event = ""
                self._event_retry = None
                continue
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                data.append(value.decode("utf-8", "replace"))
            elif name == b"event":
                self._event = value.decode("utf-8", "replace")
            elif name == b"id":
                if b"\0" not in value:
                    self._id_buffer = value.decode("utf-8", "replace")
            elif name == b"retry":
                # bytes.isdigit() is ASCII-only; an empty value is ignored.
                if value.isdigit():
                    self.retry = self._event_retry = int(value)
            elif not name and self._keep_comments:
                self.comments.append(value.decode("utf-8", "replace"))
        return events


class _IterContent(Protocol):
    """What :func:`iter_events` needs of a ``requests.Response``."""

    def iter_content(self, chunk_size: int | None = ..., decode_unicode: bool = ...) -> Any: ...


EventSource: TypeAlias = (
    bytes | bytearray | memoryview | Iterable[bytes] | _IterContent | _WerkzeugResponse
)
"""What :func:`iter_events` reads: the whole body as bytes, an iterable of
byte chunks, a ``requests`` response opened with ``stream=True``, or a
Flask/werkzeug test response (use ``buffered=False`` for an endless stream)."""


def decoder(content_encoding: str | None) -> Callable[[bytes], bytes]:
    """A function that decodes a stream's body in the pieces it arrives in.

    Each call returns all that the bytes given so far decode to: with a
    stream compressed by this library (flushed after every chunk), a whole
    chunk decodes to whole events. ``None`` or ``"identity"``: the bytes as
    they are; ``"gzip"``; ``"br"`` (needs ``Brotli`` or ``brotlicffi``).

    :raises ValueError: for another coding.
    """
    if content_encoding in (None, "", "identity"):
        return bytes
    if content_encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress
    if content_encoding == "br":
        from ._compress import brotli_module

        module = brotli_module()
        if module is None:
            raise ValueError("decoding br needs a brotli binding: pip install brotli")
        state = module.Decompressor()
        return getattr(state, "process", None) or state.decompress  # type: ignore[no-any-return]
    raise ValueError(f"cannot decode Content-Encoding {content_encoding!r}")


def _chunks(source: EventSource, content_encoding: str | None = None) -> Iterable[bytes]:
    chunks = _raw_chunks(source)
    if content_encoding is None and isinstance(source, _WerkzeugResponse):
        content_encoding = source.headers.get("Content-Encoding")
    if content_encoding in (None, "", "identity"):
        return chunks
    decode = decoder(content_encoding)
    return (decode(chunk) for chunk in chunks)


def _raw_chunks(source: EventSource) -> Iterable[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        return (bytes(source),)
    if isinstance(source, str):
        raise TypeError("iter_events() reads bytes, not str: encode the text as UTF-8 first")
    if isinstance(source, _WerkzeugResponse):
        # Lazily, straight from the application's iterable: an endless
        # stream must not be buffered.
        return source.iter_encoded()
    iter_content = getattr(source, "iter_content", None)
    if iter_content is not None:
        # chunk_size=None: whatever has arrived, without waiting for more.
        return iter_content(chunk_size=None)  # type: ignore[no-any-return]
    return source  # type: ignore[return-value]


def iter_events(
    source: EventSource,
    parser: EventStreamParser | None = None,
    *,
    content_encoding: str | None = None,
) -> Iterator[ServerSentEvent]:
    """Yield the events of a stream as their bytes arrive.

    When the source ends, an incomplete last event is discarded. Stopping
    early does not close the source: close the response yourself.

    :param source: see :data:`EventSource`.
    :param parser: a parser to use, to look at its ``comments``,
        ``last_event_id`` or ``retry`` afterwards; a new one by default.
    :param content_encoding: how the bytes of ``source`` are compressed
        (see :func:`decoder`); by default a test client's response says so
        itself, and ``requests`` decodes what it reads.
    """
    if parser is None:
        parser = EventStreamParser()
    for chunk in _chunks(source, content_encoding):
        yield from parser.feed(chunk)
    parser.close()


def parse(data: bytes, *, content_encoding: str | None = None) -> list[ServerSentEvent]:
    """Return the events of a whole stream body (compressed: see :func:`decoder`)."""
    return list(iter_events(data, content_encoding=content_encoding))
