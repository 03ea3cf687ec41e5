"""The response on the wire: read from a raw socket, framed by h11 in strict mode."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from werkzeug.test import EnvironBuilder

from flask_sse_stream.testing import EventStreamParser, parse

from . import apps
from .helpers import HOST, RawClient, Server, raw_exchange, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}


def header_list(response: object) -> list[tuple[str, str]]:
    return [(n.decode(), v.decode()) for n, v in response.headers]  # type: ignore[attr-defined]


def is_whole_events(chunk: bytes) -> bool:
    """Whether ``chunk`` ends where a new event may start: after a blank
    line, or after a comment line that follows one (a heartbeat)."""
    lines = chunk.split(b"\n")
    assert lines.pop() == b"", f"chunk does not end with a line break: {chunk!r}"
    while lines and lines[-1].startswith(b":"):
        lines.pop()
    return not lines or lines[-1] == b""


def test_the_app_sets_no_hop_by_hop_header_nor_a_length() -> None:
    captured: list[tuple[str, str]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> Callable[[bytes], None]:
        captured.extend(headers)
        return lambda data: None

    environ = EnvironBuilder(path="/blocked").get_environ()
    body = apps.app.wsgi_app(environ, start_response)
    try:
        names = {name.lower() for name, _ in captured}
    finally:
        body.close()  # type: ignore[attr-defined]
    assert not names & HOP_BY_HOP
    assert not names & {"content-length", "content-encoding"}
    assert dict(captured)["Content-Type"] == "text/event-stream; charset=utf-8"


def test_headers_and_first_bytes_arrive_while_the_producer_blocks(server: Server) -> None:
    with RawClient(server.port) as client:
        sent = time.monotonic()
        client.request("/blocked")
        response = client.response()
        first = client.chunk()
        elapsed = time.monotonic() - sent
    headers = header_list(response)
    names = [name for name, _ in headers]
    assert response.status_code == 200
    assert response.http_version == b"1.1"
    values = dict(headers)
    assert values["content-type"] == "text/event-stream; charset=utf-8"
    assert values["cache-control"] == "no-cache"
    assert values["x-accel-buffering"] == "no"
    # The server, not the app, frames the body, once.
    assert names.count("transfer-encoding") == 1
    assert values["transfer-encoding"] == "chunked"
    assert "content-length" not in names
    assert "content-encoding" not in names
    assert names.count("connection") <= 1
    assert first == b"retry: 1000\n\n"
    assert elapsed < 1, f"first bytes after {elapsed:.3f} s"


def test_the_development_server_streams_too(server_pool: object) -> None:
    server = server_pool.get("werkzeug")  # type: ignore[attr-defined]
    with RawClient(server.port) as client:
        client.request("/finite?n=3&gap=0.02")
        response = client.response()
        chunks = client.chunks_until_end()
    assert response.status_code == 200
    assert dict(header_list(response))["transfer-encoding"] == "chunked"
    assert chunks[0] == b"retry: 1000\n\n"
    assert [e.data for e in client.events] == ["event 0", "event 1", "event 2"]
    server.settled()


def test_each_event_leaves_as_one_chunk_and_the_stream_ends_with_the_last_chunk(
    server: Server,
) -> None:
    with RawClient(server.port) as client:
        client.request("/finite?n=5&gap=0.05")
        assert client.response().status_code == 200
        chunks = client.chunks_until_end()
        # After the terminating chunk the connection stays usable.
        client.conn.start_next_cycle()
        client.request("/health")
        assert client.response().status_code == 200
    assert chunks[0] == b"retry: 1000\n\n"
    assert len(chunks) == 6, chunks
    for i, chunk in enumerate(chunks[1:]):
        assert parse(chunk) == [parse(chunk)[0]]
        assert chunk == f"id: {i}\nevent: count\ndata: event {i}\n\n".encode()


def test_a_request_longer_than_the_read_buffer_is_read_whole(server: Server) -> None:
    # Our handlers read with a small buffer (TransportHandler.READ_BUFFER);
    # a browser's cookies alone may be several times longer.
    long_value = "c" * 6000
    many = [(f"X-Header-{i}", "v" * 100) for i in range(40)]
    with RawClient(server.port) as client:
        client.request("/finite?n=2", [("Cookie", f"session={long_value}"), *many])
        assert client.response().status_code == 200
        chunks = client.chunks_until_end()
        client.conn.start_next_cycle()
        client.request("/health", [("Cookie", f"session={long_value}")])
        assert client.response().status_code == 200
    assert b"".join(chunks) == b"retry: 1000\n\n" + b"".join(
        f"id: {i}\nevent: count\ndata: event {i}\n\n".encode() for i in (0, 1)
    )


def test_a_fast_producer_is_coalesced_into_whole_event_chunks(server: Server) -> None:
    with RawClient(server.port) as client:
        client.request("/fast?n=300&size=10")
        assert client.response().status_code == 200
        chunks = client.chunks_until_end()
    assert all(is_whole_events(chunk) for chunk in chunks)
    counts = [len(parse(chunk)) for chunk in chunks]
    assert sum(counts) == 300
    assert max(counts) > 1, "no two events ever shared a chunk"
    assert client.events == parse(b"".join(chunks))
    assert all(e.data == "x" * 10 for e in client.events)


def test_a_quiet_stream_gets_heartbeats_at_its_interval(server: Server) -> None:
    interval = 0.5  # the view's @sse.stream(heartbeat=0.5)
    with RawClient(server.port) as client:
        client.request("/quiet")
        assert client.response().status_code == 200
        assert client.chunk() == b"retry: 1000\n\n"
        last = time.monotonic()
        gaps = []
        for _ in range(4):
            assert client.chunk(timeout=3) == b":\n"
            now = time.monotonic()
            gaps.append(now - last)
            last = now
    assert client.parser.comments == [""] * 4
    # The first gap counts from the preamble; none exceeds the interval
    # (plus scheduling slack), and beats are not sent much faster either.
    assert max(gaps) < interval + 0.25, gaps
    assert min(gaps[1:]) > interval / 3, gaps


def test_a_heartbeat_never_lands_inside_an_event(server: Server) -> None:
    with RawClient(server.port) as client:
        # Events 0.25 s apart on a 0.2 s heartbeat: beats fall between them.
        client.request("/ticks?n=8&gap=0.25")
        assert client.response().status_code == 200
        chunks = client.chunks_until_end(timeout=3)
    assert b":\n" in chunks, "no heartbeat between the events"
    for chunk in chunks:
        assert is_whole_events(chunk), chunk
    events = client.events
    assert [e.id for e in events] == [str(i) for i in range(8)]
    assert all(e.data == f"tick {i}\nsecond line\n" for i, e in enumerate(events))
    assert all(e.event == "tick" for e in events)


@pytest.mark.parametrize(
    ("case", "data"),
    [
        ("crlf-data", "hello\n\nevent: admin\ndata: pwned"),
        ("lone-cr", "one\ntwo"),
    ],
)
def test_hostile_data_arrives_as_exactly_one_event(server: Server, case: str, data: str) -> None:
    with RawClient(server.port) as client:
        client.request(f"/inject/{case}")
        assert client.response().status_code == 200
        client.chunks_until_end()
    assert [(e.event, e.data) for e in client.events] == [
        ("message", "before"),
        ("message", data),
        ("message", "after"),
    ]


@pytest.mark.parametrize("case", ["crlf-event", "crlf-id"])
def test_a_line_break_in_event_or_id_is_rejected_and_the_stream_ends_cleanly(
    server: Server, case: str
) -> None:
    with RawClient(server.port) as client:
        client.request(f"/inject/{case}")
        assert client.response().status_code == 200
        chunks = client.chunks_until_end()
    assert [e.data for e in client.events] == ["before"]
    assert b"pwned" not in b"".join(chunks)
    field = case.removeprefix("crlf-")
    wait_for(
        lambda: f"{field} must not contain '\\r'" in server.log(),
        5,
        message="the rejected event was not logged",
    )


def test_a_raising_producer_ends_the_stream_and_logs_the_traceback_server_side(
    server: Server,
) -> None:
    with RawClient(server.port) as client:
        client.request("/raises?token=raises")
        assert client.response().status_code == 200
        chunks = client.chunks_until_end()
    body = b"".join(chunks)
    assert [e.data for e in parse(body)] == ["first"]
    assert b"Traceback" not in body
    assert b"secret-internal-detail" not in body
    wait_for(lambda: "RuntimeError: secret-internal-detail" in server.log(), 5)
    log = server.log()
    assert "Traceback (most recent call last)" in log
    assert wait_for(lambda: server.state()["closed"].get("raises"), 5) == "error"


def test_http_1_0_gets_a_close_delimited_body(server: Server) -> None:
    request = f"GET /finite?n=3 HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode()
    raw = raw_exchange(server.port, request)
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *header_lines = head.decode("latin-1").split("\r\n")
    names = [line.partition(":")[0].strip().lower() for line in header_lines]
    assert status.split()[1] == "200"
    assert "transfer-encoding" not in names
    assert "content-length" not in names
    assert body.startswith(b"retry: 1000\n\n")
    assert [e.data for e in parse(body)] == ["event 0", "event 1", "event 2"]


def test_http_1_0_sees_an_endless_stream_open_at_once(server: Server) -> None:
    token = f"http10-{server.kind}"
    with RawClient(server.port) as client:
        client.sock.sendall(f"GET /blocked?token={token} HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        received = b""
        parser = EventStreamParser()
        deadline = time.monotonic() + 1
        while b"retry: 1000\n\n" not in received:
            client.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = client.sock.recv(4096)
            assert data, "the server closed the stream"
            received += data
        parser.feed(received.partition(b"\r\n\r\n")[2])
        assert parser.retry == 1000
        wait_for(lambda: token in server.state()["started"], 5)
    wait_for(lambda: token in server.state()["finalized"], 2)
