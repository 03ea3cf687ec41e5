"""A real nginx, with the config we ship (``examples/deploy/nginx.conf``), in
front of ``gunicorn -k gevent``, and a raw-socket client on the other side.

Each test says which variant of the shipped config it runs: as shipped,
with ``proxy_read_timeout 3s``, or with nginx's default HTTP/1.0 to the app
(the ``proxy_http_version`` and ``Connection`` lines taken out). The shipped
config leaves ``proxy_buffering`` at nginx's default, on.

Run with ``-rP`` to see the figures each test measured.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from typing import Any

import h11
import pytest
from e2e.helpers import HOST, RawClient, Server, wait_for

from .nginx import SHIPPED, NginxFactory

pytestmark = [pytest.mark.e2e, pytest.mark.proxy, pytest.mark.timeout(30)]

NGINX_DEFAULT_HTTP = ("proxy_http_version", "proxy_set_header Connection")
"""Take these out of the shipped config and nginx speaks HTTP/1.0 to the app."""

SHORT_READ_TIMEOUT = {"proxy_read_timeout": "3s"}


def test_the_shipped_config_leaves_proxy_buffering_at_its_default_on() -> None:
    active = [
        line.strip()
        for line in SHIPPED.read_text().splitlines()
        if not line.strip().startswith("#")
    ]
    assert not any(line.startswith("proxy_buffering") for line in active)


def post(server: Server, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request("POST", path, headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]
    finally:
        conn.close()


def requests_for(server: Server, query: str) -> list[dict[str, Any]]:
    return [r for r in server.state()["requests"] if r["query"] == query]


def arrival_delays(port: int, target: str) -> list[float]:
    """Read a finite ``/ticks`` stream to its end; each event's delay from production to arrival."""
    delays: list[float] = []
    with RawClient(port) as client:
        client.request(target)
        assert client.response().status_code == 200
        while client.chunk(timeout=5) is not None:
            arrived = time.monotonic()
            for event in client.events[len(delays) :]:
                delays.append(arrived - json.loads(event.data)["sent"])
    return delays


def quiet_stream(port: int, query: str) -> tuple[list[str], float, int]:
    """Read ``/quiet?<query>`` through the proxy at ``port`` until it ends.

    Every chunk must come within 3 s (the tests' proxy timeouts). Returns the
    events' data, the seconds between the "before" and "after" events, and
    the heartbeats received.
    """
    arrived: dict[str, float] = {}
    with RawClient(port) as client:
        client.request(f"/quiet?{query}")
        assert client.response().status_code == 200
        while client.chunk(timeout=3) is not None:
            for event in client.events:
                arrived.setdefault(event.data, time.monotonic())
    quiet = arrived["after"] - arrived["before"]
    return [event.data for event in client.events], quiet, client.body.count(b":\n")


def summary(delays: list[float]) -> str:
    ordered = sorted(delays)
    median = ordered[len(ordered) // 2]
    return f"{len(delays)} events, median {median * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"


@pytest.mark.parametrize(
    "remove", [(), NGINX_DEFAULT_HTTP], ids=["shipped", "nginx-default-http-1.0"]
)
def test_events_arrive_without_delay_with_proxy_buffering_on(
    nginx_factory: NginxFactory, app_server: Server, remove: tuple[str, ...]
) -> None:
    nginx = nginx_factory(remove=remove)
    interval = 0.15
    delays = arrival_delays(nginx.port, f"/ticks?count=10&interval={interval}")
    print("arrival delay through nginx, buffering on:", summary(delays))
    assert len(delays) == 10
    # Loopback takes about a millisecond. Each event arrived before the next
    # was produced: none waited for a buffer to fill or the stream to end.
    assert max(delays) < interval, summary(delays)


def test_without_x_accel_buffering_nginx_holds_events_until_the_stream_ends(
    nginx_factory: NginxFactory, app_server: Server
) -> None:
    """The control: the same stream without our header, through nginx's defaults."""
    nginx = nginx_factory(remove=NGINX_DEFAULT_HTTP)
    delays = arrival_delays(nginx.port, "/ticks-without-header?count=10&interval=0.08")
    print("arrival delay without X-Accel-Buffering:", summary(delays))
    assert len(delays) == 10
    # The first event, produced at once, arrived only when the stream ended.
    assert delays[0] > 0.6, summary(delays)


@pytest.mark.timeout(40)
def test_a_1s_heartbeat_keeps_a_stream_open_through_10s_of_quiet_under_a_3s_read_timeout(
    nginx_factory: NginxFactory, app_server: Server
) -> None:
    nginx = nginx_factory(set_directives=SHORT_READ_TIMEOUT)
    query = f"quiet=10&token={uuid.uuid4().hex}"
    events, quiet, heartbeats = quiet_stream(nginx.port, query)
    print(f"quiet period {quiet:.2f} s behind proxy_read_timeout 3s: {heartbeats} heartbeats")
    assert events == ["before", "after"]
    # gevent's sleep counts from the loop's cached clock, read before "before"
    # went out, so the 10 s can end a few ms early by this process's clock
    # (seen: 9.997 s, twice in three runs).
    assert quiet >= 9.9
    assert heartbeats >= 9
    assert len(requests_for(app_server, query)) == 1  # one connection all along
    assert "upstream timed out" not in nginx.error_log()


def read_events(client: RawClient, count: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while len(client.events) < count:
        assert client.chunk(timeout=max(0.01, deadline - time.monotonic())) is not None


def test_without_heartbeat_nginx_cuts_an_idle_stream_and_the_client_resumes_without_loss(
    nginx_factory: NginxFactory, app_server: Server
) -> None:
    nginx = nginx_factory(set_directives=SHORT_READ_TIMEOUT)
    channel = f"cut{uuid.uuid4().hex[:8]}"
    with RawClient(nginx.port) as first:
        first.request(f"/events?channel={channel}")
        assert first.response().status_code == 200
        post(app_server, f"/publish?channel={channel}&start=1&count=3")
        read_events(first, 3)
        quiet_since = time.monotonic()
        with pytest.raises(h11.RemoteProtocolError, match="incomplete chunked read"):
            first.chunk(timeout=10)  # nginx gives up on the silent upstream
        cut_after = time.monotonic() - quiet_since
    last_id = first.events[-1].id
    assert last_id is not None
    # The app sees nginx close the upstream connection and ends the stream.
    wait_for(lambda: app_server.state()["open_streams"] == 0, timeout=2)

    post(app_server, f"/publish?channel={channel}&start=4&count=3")  # while away
    with RawClient(nginx.port) as second:
        second.request(f"/events?channel={channel}", [("Last-Event-ID", last_id)])
        assert second.response().status_code == 200
        read_events(second, 3)
        post(app_server, f"/publish?channel={channel}&start=7&count=1")
        read_events(second, 4)
    print(f"nginx cut the silent stream after {cut_after:.2f} s; resumed from {last_id}")

    received = [e.data for e in first.events] + [e.data for e in second.events]
    assert received == [str(n) for n in range(1, 8)]
    assert 2.9 <= cut_after < 5
    assert "upstream timed out" in nginx.error_log()


def finite_stream(port: int, query: str) -> RawClient:
    """Read ``/ticks?query`` through nginx to its clean end (the terminating chunk)."""
    with RawClient(port) as client:
        client.request(f"/ticks?{query}")
        response = client.response()
        assert response.status_code == 200
        assert (b"transfer-encoding", b"chunked") in response.headers
        client.chunks_until_end()
    return client


def test_nginx_default_http_1_0_to_the_app_still_streams_and_ends_cleanly(
    nginx_factory: NginxFactory, app_server: Server
) -> None:
    nginx = nginx_factory(remove=NGINX_DEFAULT_HTTP)
    query = f"count=5&interval=0.01&token={uuid.uuid4().hex}"
    for _ in range(2):
        client = finite_stream(nginx.port, query)
        assert [e.data and json.loads(e.data)["n"] for e in client.events] == [1, 2, 3, 4, 5]
    seen = requests_for(app_server, query)
    assert [r["protocol"] for r in seen] == ["HTTP/1.0", "HTTP/1.0"]
    assert [r["connection"] for r in seen] == ["close", "close"]
    # The app ends each response by closing: a new connection every time.
    assert seen[0]["peer_port"] != seen[1]["peer_port"]


def test_the_shipped_http_1_1_keeps_connections_to_the_app(
    nginx_factory: NginxFactory, app_server: Server
) -> None:
    nginx = nginx_factory()
    query = f"count=5&interval=0.01&token={uuid.uuid4().hex}"
    for _ in range(2):
        client = finite_stream(nginx.port, query)
        assert [e.data and json.loads(e.data)["n"] for e in client.events] == [1, 2, 3, 4, 5]
    seen = requests_for(app_server, query)
    assert [r["protocol"] for r in seen] == ["HTTP/1.1", "HTTP/1.1"]
    assert [r["connection"] for r in seen] == [None, None]
    assert seen[0]["peer_port"] == seen[1]["peer_port"]  # the same upstream connection


def test_a_client_leaving_nginx_stops_the_producer_at_once(
    nginx_factory: NginxFactory, app_server: Server
) -> None:
    nginx = nginx_factory()
    token = uuid.uuid4().hex
    with RawClient(nginx.port) as client:
        client.request(f"/blocked?token={token}")
        assert client.response().status_code == 200
        read_events(client, 1)
    left_at = time.monotonic()
    finalized = wait_for(
        lambda: app_server.state()["finalized"].get(token),
        timeout=5,
        interval=0.02,
        message="the producer's finally did not run after the client left nginx",
    )
    print(f"producer cleaned up {(finalized - left_at) * 1000:.0f} ms after the client left")
    assert finalized - left_at < 1.0
