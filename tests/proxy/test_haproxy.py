"""A real HAProxy, with the config we ship (``examples/deploy/haproxy.cfg``), in
front of gunicorn with our config, and a raw-socket client on the other side.

Issue 11, item 8: behind HAProxy a client's close reached the producer only
at ``timeout server`` without ``option abortonclose``. Each test says which
variant of the shipped config it runs. Run with ``-rP`` to see the figures.
"""

from __future__ import annotations

import time
import uuid

import h11
import pytest
from e2e.helpers import RawClient, Server, wait_for

from .haproxy import HAProxyFactory
from .test_nginx import arrival_delays, quiet_stream, summary

pytestmark = [pytest.mark.e2e, pytest.mark.proxy, pytest.mark.timeout(40)]

SHORT_TIMEOUTS = {"timeout client": "3s", "timeout server": "3s"}


def test_a_1s_heartbeat_keeps_a_stream_open_through_10s_of_quiet_under_3s_timeouts(
    haproxy_factory: HAProxyFactory, app_server: Server
) -> None:
    haproxy = haproxy_factory(set_directives=SHORT_TIMEOUTS)
    # Each chunk within 3 s, or HAProxy would have cut the stream.
    events, quiet, heartbeats = quiet_stream(haproxy.port, f"quiet=10&token={uuid.uuid4().hex}")
    print(f"quiet period {quiet:.2f} s behind HAProxy's 3 s timeouts: {heartbeats} heartbeats")
    assert events == ["before", "after"]
    assert quiet >= 9.9  # "after" is produced 10 s after "before"
    assert heartbeats >= 9


def test_without_heartbeat_haproxy_cuts_an_idle_stream_at_its_timeout(
    haproxy_factory: HAProxyFactory, app_server: Server
) -> None:
    """The control: the blueprint's streams send no heartbeat in the test app."""
    haproxy = haproxy_factory(set_directives=SHORT_TIMEOUTS)
    with RawClient(haproxy.port) as client:
        client.request(f"/events?channel=idle{uuid.uuid4().hex[:8]}")
        assert client.response().status_code == 200
        assert client.chunk() is not None  # the retry: preamble
        quiet_since = time.monotonic()
        with pytest.raises((h11.RemoteProtocolError, ConnectionError)):
            client.chunk(timeout=10)
        cut_after = time.monotonic() - quiet_since
    print(f"HAProxy cut the silent stream after {cut_after:.2f} s")
    assert 2.9 <= cut_after < 5
    wait_for(lambda: app_server.state()["open_streams"] == 0, timeout=2)


@pytest.mark.parametrize(
    ("remove", "bound"),
    [((), 1.0), (("option abortonclose",), 10.0)],
    ids=["shipped", "without-abortonclose"],
)
def test_a_client_leaving_haproxy_stops_the_producer(
    haproxy_factory: HAProxyFactory,
    app_server: Server,
    remove: tuple[str, ...],
    bound: float,
) -> None:
    haproxy = haproxy_factory(set_directives={"timeout server": "2500ms"}, remove=remove)
    token = uuid.uuid4().hex
    with RawClient(haproxy.port) as client:
        client.request(f"/blocked?token={token}")
        assert client.response().status_code == 200
        while not client.events:
            assert client.chunk() is not None
    left_at = time.monotonic()
    finalized = wait_for(
        lambda: app_server.state()["finalized"].get(token),
        timeout=bound,
        interval=0.02,
        message="the producer's finally did not run after the client left HAProxy",
    )
    took = finalized - left_at
    print(f"{remove or 'shipped'}: producer cleaned up {took * 1000:.0f} ms after the client left")
    assert took < bound


def test_events_arrive_without_delay(haproxy_factory: HAProxyFactory, app_server: Server) -> None:
    haproxy = haproxy_factory()
    interval = 0.15
    delays = arrival_delays(haproxy.port, f"/ticks?count=10&interval={interval}")
    print("arrival delay through HAProxy:", summary(delays))
    assert len(delays) == 10
    assert max(delays) < interval, summary(delays)
