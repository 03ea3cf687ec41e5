"""``flask_sse_stream.direct``: the framing, and which servers it trusts.

Whether a write beside a real server is safe is shown over real sockets in
``tests/e2e/test_e2e_direct.py``; here are the parts that need no server.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest

from flask_sse_stream.direct import chunk, writer_for


@pytest.mark.parametrize("size", [1, 2, 15, 16, 255, 256, 4096, 70000])
def test_a_chunk_is_framed_as_http_1_1_says(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    # Read back by h11 as the body of a chunked response.
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.receive_data(chunk(data) + b"0\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Response)
    body = b""
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    assert isinstance(event, h11.EndOfMessage)
    assert body == data


def test_the_heartbeat_chunk() -> None:
    assert chunk(b":\n") == b"2\r\n:\n\r\n"


class NotAServer:
    def start_response(self, status: str, headers: list[tuple[str, str]]) -> Any:
        return None


def start_response(status: str, headers: list[tuple[str, str]]) -> Any:
    return None


@pytest.mark.parametrize(
    "candidate",
    [start_response, NotAServer().start_response, lambda status, headers: None],
    ids=["function", "another-object", "lambda"],
)
def test_an_unknown_start_response_gets_no_writer(candidate: Any) -> None:
    assert writer_for(candidate) is None
