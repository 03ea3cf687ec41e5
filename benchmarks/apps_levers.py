"""Our app with proposed library changes patched in, to measure them before they land.

Diagnostic only, like :mod:`apps_breakdown`: ``BENCH_LEVERS`` in the server's
environment (comma-separated) picks the changes, applied when the server
imports this module, before any request:

* ``encode``: the encoder sends a ``str`` without line breaks as
  ``b"data: " + text + b"\\n\\n"`` instead of building an ``Event`` (change 1
  of docs/benchmarks.md). The library has had this fast path since ca82d17:
  the lever now only adds a call per item, and is kept as a control (ours
  against ours: the spread of two servers that do the same);
* ``sendall``: our runner's handler tries one ``send()`` before gevent's
  ``sendall``, which costs a ``getsockopt`` syscall per call (change 6).
  The runner had this override from f7cbea7 to e5f99f9; c22aec4 dropped it
  (it overrides pywsgi's undocumented ``WSGIHandler._sendall``), so the
  lever measures it again, on what the runner writes through the server
  (writes beside the server go through the transport's own ``send()``).
  It patches the runner's handler only, not our gunicorn worker's.

Served like :mod:`apps` (same endpoints): ``BENCH_LEVERS=encode python -m
flask_sse_stream serve benchmarks.apps_levers:app``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

try:
    from flask_sse_stream import _extension as extension
    from flask_sse_stream import _server as server
    from flask_sse_stream._event import JSONDumps
except ImportError:  # a commit from before the internal modules became private
    from flask_sse_stream.event import JSONDumps  # type: ignore[no-redef]

    from flask_sse_stream import extension, server  # type: ignore[no-redef]

LEVERS = {name.strip() for name in os.environ.get("BENCH_LEVERS", "").split(",") if name}

if "encode" in LEVERS:
    _encoder = extension.encoder

    def _fast_encoder(dumps: JSONDumps) -> Callable[[Any], bytes]:
        slow = _encoder(dumps)

        def encode(item: Any) -> bytes:
            if type(item) is str and "\n" not in item and "\r" not in item:
                try:
                    return b"data: " + item.encode() + b"\n\n"
                except UnicodeEncodeError:
                    pass  # the Event path raises the library's error
            return slow(item)

        return encode

    extension.encoder = _fast_encoder

if "sendall" in LEVERS:

    def _sendall(self: Any, data: bytes) -> None:
        try:
            sent = self.socket.send(data)
            if sent < len(data):
                self.socket.sendall(memoryview(data)[sent:])
        except OSError as exc:
            self.status = f"socket error: {exc}"
            if self.code is not None and self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    server.SSEHandler._sendall = _sendall  # type: ignore[method-assign]

from benchmarks.apps import app  # noqa: E402

__all__ = ["app"]
