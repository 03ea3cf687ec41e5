"""Fixtures shared by every test module."""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
import pytest

from flask_sse_stream._stream import open_streams


@pytest.fixture(autouse=True)
def _no_stream_left_open() -> Iterator[None]:
    """Fail a test that leaves an event stream of this process open.

    Like Flask's own leak detector: a stream still open after its test means
    a producer greenlet, a socket watch or a heartbeat registration leaked.
    """
    yield
    deadline = time.monotonic() + 2
    while open_streams() and time.monotonic() < deadline:
        gevent.sleep(0.01)
    leaked = open_streams()
    assert not leaked, f"{len(leaked)} event stream(s) left open by this test"
