"""Heartbeats written beside the server (``flask_sse_stream._transport``), on the wire.

Where our own handler serves the request (the runner, our gunicorn worker)
and passes the stream's chunks through unchanged, an idle stream's
heartbeat is sent by the heartbeat loop itself, framed as the server frames
a chunk; h11 in strict mode reads every byte. Elsewhere (gunicorn's own
workers, a middleware that changes the body, HTTP/1.0) the handler writes
it, through the server.

Our servers also freeze the app's startup objects out of the cyclic
collector's sight (``flask_sse_stream._server.freeze_startup_objects``).
"""

from __future__ import annotations

import pytest

from .helpers import BESIDE, HOST, RawClient, Server, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]


def beats(server: Server) -> tuple[int, int]:
    """(direct, through the handler) heartbeats the server has sent so far."""
    counts = server.state()["heartbeats"]
    return counts.get("direct", 0), counts.get("handler", 0)


def test_an_idle_stream_gets_its_heartbeats_beside_our_handler_only(server: Server) -> None:
    direct, handler = beats(server)
    with RawClient(server.port) as client:
        client.request("/quiet")
        assert client.response().status_code == 200
        assert client.chunk() == b"retry: 1000\n\n"
        for _ in range(3):
            assert client.chunk(timeout=3) == b":\n"
    after = beats(server)
    if server.kind in BESIDE:
        assert after[0] - direct >= 3, after
        assert after[1] == handler, after
    else:  # no transport of ours: every byte through the server
        assert after[1] - handler >= 3, after
        assert after[0] == direct, after


def test_a_middleware_that_changes_the_body_gets_heartbeats_through_the_server(
    server: Server,
) -> None:
    direct, handler = beats(server)
    with RawClient(server.port) as client:
        client.request("/marked/quiet")
        assert client.response().status_code == 200
        assert client.chunk() == b"retry: 1000\n\n: marked\n"
        for _ in range(2):
            assert client.chunk(timeout=3) == b":\n: marked\n"
    after = beats(server)
    assert after[1] - handler >= 2, after
    assert after[0] == direct, after


def test_http_1_0_gets_unframed_heartbeats_through_the_server(server: Server) -> None:
    direct, handler = beats(server)
    with RawClient(server.port) as client:
        client.sock.sendall(f"GET /quiet HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        received = bytearray()

        def two_beats() -> bool:
            data = client.sock.recv(4096)
            assert data, "the server closed the stream"
            received.extend(data)
            return received.endswith(b"retry: 1000\n\n:\n:\n")

        client.sock.settimeout(3)
        wait_for(two_beats, 5)
    assert b"\r\n" not in received.partition(b"\r\n\r\n")[2]
    after = beats(server)
    assert after[1] - handler >= 2, after
    assert after[0] == direct, after


def test_what_a_producer_made_before_it_blocks_arrives_at_once(server: Server) -> None:
    token = f"burst-{server.kind}"
    with RawClient(server.port) as client:
        client.request(f"/burst?n=3&token={token}")
        assert client.response().status_code == 200
        assert client.chunk() == b"retry: 1000\n\n"
        while len(client.events) < 3:
            assert client.chunk(timeout=2)
        assert [e.data for e in client.events] == ["burst 0", "burst 1", "burst 2"]
        assert [e.id for e in client.events] == ["0", "1", "2"]
    wait_for(lambda: token in server.state()["finalized"], 2)


def test_a_producer_that_never_waits_leaves_the_server_free_for_others(server: Server) -> None:
    with RawClient(server.port) as client:
        client.request("/fast?n=1000000&size=10")
        assert client.response().status_code == 200
        for _ in range(20):
            assert client.chunk(timeout=2)
        # The client keeps its stream open and unread for a moment, then
        # reads on: meanwhile another request is answered.
        status, body = server.get("/health", timeout=2)
        assert (status, body) == (200, b"ok")
        assert client.chunk(timeout=2)


def test_our_servers_freeze_the_startup_objects_only_theirs(server: Server) -> None:
    frozen = server.state()["gc_frozen"]
    if server.kind in BESIDE:
        # The app's modules, routes and config: thousands of objects.
        assert frozen > 10_000, frozen
    else:  # gunicorn's own workers: the collector as Python leaves it
        assert frozen == 0, frozen
