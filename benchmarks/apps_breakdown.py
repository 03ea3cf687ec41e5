"""Where the memory of an idle stream goes: our stream with parts taken away.

Diagnostic only (``core.py --only MEM``): the variants build
:class:`flask_sse_stream.stream.EventStream` directly, an internal class, to
switch off one part at a time. Every variant runs the same producer, a
subscriber blocked on its own ``gevent.queue.Queue`` after one probe event.

* ``/full``: ``@sse.stream`` as users write it (heartbeat, disconnect
  watching, the producer inside copies of the Flask contexts);
* ``/no-heartbeat``: the same with ``heartbeat=None``;
* ``/no-flask-context``: ``EventStream`` with heartbeat, watch and, where
  one of our handlers serves the request (our runner, our gunicorn worker),
  its transport, as ``@sse.stream`` has them, without the Flask contexts in
  the producer;
* ``/bare-stream``: ``EventStream`` alone on the plain path: producer
  greenlet and buffer, no heartbeat, no watch, no transport, no contexts;
* ``/naive``: the naive peer's view (``stream_with_context``), one greenlet.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, request, stream_with_context

from benchmarks import instrument
from flask_sse_stream import SSE

try:
    from flask_sse_stream._cancel import find_socket
    from flask_sse_stream._extension import stream_headers
    from flask_sse_stream._stream import EventStream
except ImportError:  # a commit from before the internal modules became private
    from flask_sse_stream.cancel import find_socket  # type: ignore[no-redef]
    from flask_sse_stream.extension import stream_headers  # type: ignore[no-redef]
    from flask_sse_stream.stream import EventStream  # type: ignore[no-redef]

app = Flask(__name__)
sse = SSE(app)
instrument.instrument(app)

PREAMBLE = b"retry: 3000\n\n"
TRANSPORT_KEY = "flask_sse_stream.transport"
"""Where our handlers offer a request's transport (``flask_sse_stream._transport``)."""


def _encode(item: object) -> bytes:
    return b"data: %s\n\n" % str(item).encode()


@app.get("/full")
@sse.stream
def full() -> Iterator[object]:
    return instrument.idle()


@app.get("/no-heartbeat")
@sse.stream(heartbeat=None)
def no_heartbeat() -> Iterator[object]:
    return instrument.idle()


@app.get("/no-flask-context")
def no_flask_context() -> Response:
    # The library of an older commit (core.py --ref) has no transports: its
    # environ has no such key and its EventStream takes no such argument.
    transport = request.environ.get(TRANSPORT_KEY)
    body = EventStream(
        instrument.idle(),
        encode=_encode,
        preamble=PREAMBLE,
        heartbeat=15.0,
        sock=find_socket(request.environ),
        write_timeout=30.0,
        **({"transport": transport} if transport is not None else {}),
    )
    return Response(body, headers=stream_headers(), direct_passthrough=True)


@app.get("/bare-stream")
def bare_stream() -> Response:
    body = EventStream(instrument.idle(), encode=_encode, preamble=PREAMBLE)
    return Response(body, headers=stream_headers(), direct_passthrough=True)


@app.get("/naive")
def naive() -> Response:
    def frames() -> Iterator[str]:
        for item in instrument.idle():
            yield f"data: {item}\n\n"

    return Response(stream_with_context(frames()), mimetype="text/event-stream")
