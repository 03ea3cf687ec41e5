"""Compressed streams through nginx and HAProxy: passed through, never compressed twice, never held.

The app compresses (br or gzip, from the client's ``Accept-Encoding``); each
proxy must hand every flushed chunk on at once and leave the body alone,
even where the proxy itself is set to compress ``text/event-stream``. The
client decodes as bytes arrive and measures each event's delay from
production to its decoded arrival (the events carry ``time.monotonic()``,
shared by every process on Linux).
"""

from __future__ import annotations

import json
import time

import pytest
from e2e.helpers import RawClient, Server

from flask_sse_stream.testing import decoder

from .haproxy import HAProxyFactory
from .nginx import NginxFactory

pytestmark = [pytest.mark.e2e, pytest.mark.proxy, pytest.mark.timeout(40)]

INTERVAL = 0.15
COUNT = 8


def compressed_delays(port: int, encoding: str) -> tuple[dict[str, str], list[float]]:
    """Read ``/compressed-ticks`` to its end, decoding; its headers and each event's delay."""
    delays: list[float] = []
    with RawClient(port) as client:
        client.request(
            f"/compressed-ticks?count={COUNT}&interval={INTERVAL}",
            headers=[("Accept-Encoding", encoding)],
        )
        response = client.response()
        assert response.status_code == 200
        headers = {name.decode(): value.decode() for name, value in response.headers}
        client.decode = decoder(headers.get("content-encoding"))
        while client.chunk(timeout=5) is not None:
            arrived = time.monotonic()
            for event in client.events[len(delays) :]:
                delays.append(arrived - json.loads(event.data)["sent"])
    return headers, delays


def check(headers: dict[str, str], delays: list[float], encoding: str) -> None:
    assert headers["content-encoding"] == encoding  # once: not compressed again
    assert "Accept-Encoding" in headers.get("vary", "")
    assert len(delays) == COUNT
    # Each event was decoded before the next was produced.
    assert max(delays) < INTERVAL, [round(d * 1000, 1) for d in delays]


# nginx's gzip filter leaves a response that has a Content-Encoding alone;
# turned on for event streams, it shows that nothing is compressed twice.
NGINX_GZIP = {"proxy_read_timeout": "60s;\n        gzip on;\n        gzip_types text/event-stream"}


@pytest.mark.parametrize("nginx_gzip", [False, True], ids=["shipped", "shipped+gzip-on"])
@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_nginx_passes_a_compressed_stream_through_event_by_event(
    nginx_factory: NginxFactory, app_server: Server, encoding: str, nginx_gzip: bool
) -> None:
    nginx = nginx_factory(set_directives=NGINX_GZIP if nginx_gzip else None)
    headers, delays = compressed_delays(nginx.port, encoding)
    check(headers, delays, encoding)


# HAProxy: the shipped config with its own compression on for event streams,
# which must skip an encoded response.
HAPROXY_GZIP = ("compression algo gzip", "compression type text/event-stream")


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_haproxy_passes_a_compressed_stream_through_event_by_event(
    haproxy_factory: HAProxyFactory, app_server: Server, encoding: str
) -> None:
    headers, delays = compressed_delays(haproxy_factory(backend=HAPROXY_GZIP).port, encoding)
    check(headers, delays, encoding)


def proxy_encoding_of_plain_ticks(port: int) -> str | None:
    """The Content-Encoding a proxy gives the app's plain ``/ticks``: the control."""
    with RawClient(port) as client:
        client.request("/ticks?count=2&interval=0.01", headers=[("Accept-Encoding", "gzip")])
        response = client.response()
        client.chunks_until_end()
    return dict(response.headers).get(b"content-encoding", b"").decode() or None


def test_the_controls_nginx_and_haproxy_do_compress_a_plain_stream(
    nginx_factory: NginxFactory, haproxy_factory: HAProxyFactory, app_server: Server
) -> None:
    """Their compression is on, so the tests above show they skip an encoded response."""
    assert proxy_encoding_of_plain_ticks(nginx_factory(set_directives=NGINX_GZIP).port) == "gzip"
    assert proxy_encoding_of_plain_ticks(haproxy_factory(backend=HAPROXY_GZIP).port) == "gzip"
