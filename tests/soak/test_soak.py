"""The reliability suite: thousands of connections that end badly, on every server.

Each server (our runner, our gunicorn worker, ``-k gevent``,
``-k gevent_pywsgi``) serves the end-to-end test app. The suite measures
its file descriptors, greenlets, RSS and open streams, runs ``SOAK_CYCLES``
connections (default 200; ``make soak`` runs 10,000), each ending in one of
the ways clients end in the wild, waits until the server settles, and fails
on any growth beyond :data:`BOUNDS`. The figures are printed (``-rP``) and,
with ``SOAK_REPORT=path``, appended to that file as JSON lines
(``docs/reliability.md`` has them).

The ways a connection ends, in turn:

* ``before-first-byte``: the request, then close without reading;
* ``mid-event``: read part of a 1 MiB event, then close;
* ``half-close``: read the headers, ``shutdown(SHUT_WR)``, read to the end;
* ``rst``: read the headers, then reset (``SO_LINGER`` 0);
* ``stray-bytes``: read the headers, send ``\\r\\n``, close;
* ``never-reading``: a stream that produces as fast as it can, never read;
* ``big-fast``: a 1 MiB event read whole at once;
* ``big-slow``: a 256 KiB event read 4 KiB at a time with pauses;
* hostile requests: raw bytes in ``channel=``, 1,000 headers, HTTP/1.0 with
  keep-alive, ``HEAD``, a request whose headers never end.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e.conftest import GEVENT_SERVERS
from e2e.helpers import HOST, Server, start_server, wait_for

CYCLES = int(os.environ.get("SOAK_CYCLES", "200"))
CONCURRENCY = 16

BOUNDS = {"fds": 4, "greenlets": 16, "open_streams": 0, "rss_mib": 24.0}
"""The most each figure may grow from before to after the cycles."""

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(max(120, CYCLES // 8))]

REQUEST = "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"


def _connect(port: int, timeout: float = 10) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=timeout)


def _headers(sock: socket.socket) -> bytes:
    """Read until the end of the response headers; return what came after them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"closed before the headers: {data!r}"
        data += chunk
    return data.partition(b"\r\n\r\n")[2]


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, TimeoutError):
        pass


def before_first_byte(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(REQUEST.format(target="/blocked").encode())


def mid_event(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(REQUEST.format(target=f"/big?size={1 << 20}").encode())
        received = len(_headers(sock))
        while received < 64 << 10:
            received += len(sock.recv(16384))


def half_close(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(REQUEST.format(target="/blocked").encode())
        _headers(sock)
        sock.shutdown(socket.SHUT_WR)
        _drain(sock)  # the server ends the stream: the client went


def rst(port: int) -> None:
    sock = _connect(port)
    sock.sendall(REQUEST.format(target="/blocked").encode())
    _headers(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def stray_bytes(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(REQUEST.format(target="/blocked").encode())
        _headers(sock)
        sock.sendall(b"\r\n")


def never_reading(port: int) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect((HOST, port))
    with sock:
        sock.sendall(REQUEST.format(target="/fast?size=4096").encode())
        time.sleep(0.05)


def big_fast(port: int) -> None:
    size = 1 << 20
    with _connect(port) as sock:
        sock.sendall(REQUEST.format(target=f"/big?size={size}").encode())
        received = _headers(sock).count(b"x")
        while received < size:
            received += sock.recv(65536).count(b"x")


def big_slow(port: int) -> None:
    size = 256 << 10
    with _connect(port) as sock:
        sock.sendall(REQUEST.format(target=f"/big?size={size}").encode())
        received = _headers(sock).count(b"x")
        while received < size:
            received += sock.recv(4096).count(b"x")
            time.sleep(0.001)


def _exchange(port: int, request: bytes) -> None:
    with _connect(port) as sock:
        sock.sendall(request)
        _drain(sock)


def hostile_channel(port: int) -> None:
    _exchange(port, b"GET /events?channel=\xff\xfe HTTP/1.1\r\nConnection: close\r\n\r\n")


def many_headers(port: int) -> None:
    headers = b"".join(b"X-%d: y\r\n" % i for i in range(1000))
    _exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n")


def http_1_0_keep_alive(port: int) -> None:
    with _connect(port, timeout=2) as sock:
        sock.sendall(b"GET /finite?n=2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        _drain(sock)


def head(port: int) -> None:
    _exchange(port, b"HEAD /finite HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


def unfinished_headers(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")


STYLES: list[Callable[[int], None]] = [
    before_first_byte,
    mid_event,
    half_close,
    rst,
    stray_bytes,
    never_reading,
    big_fast,
    big_slow,
    hostile_channel,
    many_headers,
    http_1_0_keep_alive,
    head,
    unfinished_headers,
]


@pytest.fixture(params=GEVENT_SERVERS)
def soak_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server of its own: the suite's figures are not shared with other tests."""
    server = start_server(request.param, tmp_path)
    try:
        yield server
    finally:
        server.stop()


def _figures(server: Server) -> dict[str, float]:
    """The server's figures once they stop changing (handlers end after their streams)."""
    history: list[dict[str, float]] = []

    def steady() -> bool:
        state = server.state()
        history.append(
            {
                "fds": state["fds"],
                "greenlets": state["greenlets"],
                "open_streams": state["open_streams"],
                "rss_mib": round(state["rss"] / 2**20, 1),
            }
        )
        recent = history[-3:]
        return len(recent) == 3 and all(
            {k: v for k, v in h.items() if k != "rss_mib"}
            == {k: v for k, v in recent[0].items() if k != "rss_mib"}
            for h in recent
        )

    wait_for(steady, 60, interval=0.2, message=f"{server.kind} did not settle")
    return history[-1]


def _run(server: Server, count: int) -> dict[str, int]:
    failures: dict[str, int] = {}

    def one(index: int) -> None:
        style = STYLES[index % len(STYLES)]
        try:
            style(server.port)
        except (OSError, AssertionError) as exc:
            # A server may close first; only a pattern of failures matters.
            failures[f"{style.__name__}: {type(exc).__name__}"] = (
                failures.get(f"{style.__name__}: {type(exc).__name__}", 0) + 1
            )

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, range(count)))
    return failures


def test_connections_that_end_badly_leave_nothing_behind(soak_server: Server) -> None:
    server = soak_server
    _run(server, 2 * len(STYLES))  # warm up: imports, pools, allocator arenas
    before = _figures(server)
    started = time.monotonic()
    failures = _run(server, CYCLES)
    took = time.monotonic() - started
    after = _figures(server)
    growth = {key: round(after[key] - before[key], 1) for key in BOUNDS}
    report = {
        "server": server.kind,
        "cycles": CYCLES,
        "seconds": round(took, 1),
        "before": before,
        "after": after,
        "growth": growth,
        "client_errors": failures,
    }
    print(json.dumps(report))
    if path := os.environ.get("SOAK_REPORT"):
        with open(path, "a") as file:
            file.write(json.dumps(report) + "\n")
    log = server.log()
    tracebacks = log.count("Traceback")
    if server.kind == "gevent_pywsgi":
        # Plain pywsgi logs these two with a traceback (docs/reliability.md):
        # a stray CRLF after a stream read as a request, answered on the
        # closed socket; and a request with too many headers.
        tracebacks -= log.count("BrokenPipeError: [Errno 32]")
        tracebacks -= log.count("HTTPException: got more than 100 headers")
    assert tracebacks == 0, log[-5000:]
    for key, bound in BOUNDS.items():
        assert growth[key] <= bound, f"{key} grew by {growth[key]} (bound {bound}): {report}"
    # Each style failed in only a few cycles, if ever (a server may close first).
    assert sum(failures.values()) <= CYCLES // 20, failures
