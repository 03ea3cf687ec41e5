"""Compressed streams on real servers: every event decodes the moment its chunk arrives.

Each chunk is read off a raw socket (h11, strict) and decoded on its own
arrival with one decoder per stream, as a browser does; the events are
stamped when made, so a test sees that event *i* was readable before event
*i + 1* even existed: no event waits for the next. The last event is
followed by a blocked producer, so it could not have been pushed out by a
later one; heartbeats after it decode on their own too.
"""

from __future__ import annotations

import itertools
import json
import socket
import time

import pytest
import requests

from flask_sse_stream.testing import decoder, iter_events

from .helpers import BESIDE, HOST, RawClient, Server, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]

_tokens = itertools.count()
ENCODINGS = ["gzip", "br"]
N = 4


def read_events(client: RawClient, count: int, beats: int) -> list[tuple[float, dict[str, float]]]:
    """Read chunks until ``count`` events and then ``beats`` heartbeats have come.

    Every chunk must decode to whole events or a heartbeat. Returns each
    event's data with the time its chunk arrived.
    """
    arrived: list[tuple[float, dict[str, float]]] = []
    seen_beats = 0
    while len(arrived) < count or seen_beats < beats:
        before = len(client.events)
        assert client.chunk(timeout=5) is not None, "the stream ended"
        now = time.monotonic()
        text = client.decoded[-1]
        if text == b":\n":
            seen_beats += len(arrived) == count  # only the ones after the last event
            continue
        assert text.endswith(b"\n\n"), f"a chunk decoded to part of an event: {text!r}"
        assert len(client.events) > before, f"a chunk decoded to no event: {text!r}"
        arrived += [(now, json.loads(event.data)) for event in client.events[before:]]
    return arrived


def open_compressed(server: Server, path: str, encoding: str) -> RawClient:
    client = RawClient(server.port)
    client.request(path, headers=[("Accept-Encoding", f"{encoding}, identity;q=0.5")])
    response = client.response()
    headers = {name.decode(): value.decode() for name, value in response.headers}
    assert response.status_code == 200
    assert headers["content-encoding"] == encoding
    assert headers["vary"] == "Accept-Encoding"
    assert "content-length" not in headers
    client.decode = decoder(encoding)
    client.chunk()  # the preamble
    assert client.decoded[0] == b"retry: 1000\n\n"
    return client


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_generator_stream_decodes_event_by_event(server: Server, encoding: str) -> None:
    token = f"compressed-{server.kind}-{encoding}-{next(_tokens)}"
    direct = server.state()["heartbeats"].get("direct", 0)
    with open_compressed(server, f"/compressed?n={N}&gap=0.25&token={token}", encoding) as client:
        arrived = read_events(client, N, beats=2)
    if server.kind in BESIDE:
        # The heartbeats went beside the server, through the same compressor.
        assert server.state()["heartbeats"]["direct"] >= direct + 2
    assert [data["i"] for _, data in arrived] == list(range(N))
    for (at, _), (_, following) in itertools.pairwise(arrived):
        assert at < following["made"], "an event was read only after the next was made"
    wait_for(lambda: token in server.state()["finalized"], 5)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_subscription_decodes_event_by_event(server: Server, encoding: str) -> None:
    channel = f"zip-{server.kind}-{encoding}-{next(_tokens)}"
    with open_compressed(server, f"/compressed-channel/{channel}", encoding) as client:
        status, _ = server_post(server, f"/publish/{channel}?n={N}&gap=0.25")
        assert status == 200
        arrived = read_events(client, N, beats=1)
    assert [data["i"] for _, data in arrived] == list(range(N))
    for (at, _), (_, following) in itertools.pairwise(arrived):
        assert at < following["made"], "an event was read only after the next was published"


def test_a_client_that_does_not_accept_it_reads_plain_bytes(server: Server) -> None:
    with RawClient(server.port) as client:
        client.request("/compressed?n=1", headers=[("Accept-Encoding", "identity")])
        response = client.response()
        headers = {name.decode(): value.decode() for name, value in response.headers}
        assert "content-encoding" not in headers
        assert headers["vary"] == "Accept-Encoding"
        assert client.chunk() == b"retry: 1000\n\n"
        assert client.chunk().startswith(b'data: {"i": 0')  # type: ignore[union-attr]


def server_post(server: Server, path: str) -> tuple[int, bytes]:
    with socket.create_connection((HOST, server.port), timeout=5) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while part := sock.recv(65536):
            data += part
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_requests_and_iter_events_decode_event_by_event(server: Server, encoding: str) -> None:
    """``requests`` (urllib3) decodes gzip and br as chunks arrive; the testing helper reads it."""
    url = f"http://{HOST}:{server.port}/compressed?n={N}&gap=0.25"
    arrived = []
    with requests.get(
        url, stream=True, timeout=5, headers={"Accept-Encoding": encoding}
    ) as response:
        assert response.headers["Content-Encoding"] == encoding
        for event in iter_events(response):
            arrived.append((time.monotonic(), json.loads(event.data)))
            if len(arrived) == N:
                break
    assert [data["i"] for _, data in arrived] == list(range(N))
    for (at, _), (_, following) in itertools.pairwise(arrived):
        assert at < following["made"], "an event was read only after the next was made"
