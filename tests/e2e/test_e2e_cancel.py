"""Cancellation on disconnect, leaks over many connections, and slow clients."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import RawClient, Server, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

_tokens = itertools.count()


def new_token(server: Server, name: str) -> str:
    return f"{name}-{server.kind}-{next(_tokens)}"


def open_blocked(server: Server, token: str) -> RawClient:
    """Open ``/blocked`` and return once its producer is running."""
    client = RawClient(server.port)
    try:
        client.request(f"/blocked?token={token}")
        assert client.response().status_code == 200
        assert client.chunk() == b"retry: 1000\n\n"
        wait_for(lambda: token in server.state()["started"], 5)
    except BaseException:
        client.close()
        raise
    return client


def test_a_blocked_producer_runs_its_finally_within_a_second_of_the_close(
    any_server: Server,
) -> None:
    server = any_server
    token = new_token(server, "cancel")
    client = open_blocked(server, token)
    client.close()
    closed_at = time.monotonic()
    finalized = wait_for(lambda: server.state()["finalized"].get(token), 2)
    assert finalized - closed_at < 1
    assert server.state()["closed"][token] == "disconnect"


def baseline_counts(state: dict[str, Any]) -> dict[str, int]:
    return {key: state[key] for key in ("greenlets", "fds", "open_streams")}


def steady_counts(server: Server) -> dict[str, int]:
    """The counts once they stop changing (handlers finish after their streams)."""
    history: list[dict[str, int]] = []

    def steady() -> bool:
        history.append(baseline_counts(server.state()))
        return len(history) >= 3 and history[-1] == history[-2] == history[-3]

    wait_for(steady, 10, interval=0.1)
    return history[-1]


def connect_and_close(server: Server, n: int) -> None:
    """Open ``n`` streams at once, wait until each has opened, close them all."""
    clients = [RawClient(server.port) for _ in range(n)]
    try:
        for client in clients:
            client.request("/blocked")
        for client in clients:
            assert client.response().status_code == 200
            assert client.chunk() == b"retry: 1000\n\n"
    finally:
        for client in clients:
            client.close()


def test_500_connect_close_cycles_leave_greenlets_fds_and_streams_at_baseline(
    server: Server,
) -> None:
    # One round first, so that what a server creates once, lazily, is in the baseline.
    connect_and_close(server, 50)
    baseline = steady_counts(server)
    for _ in range(10):
        connect_and_close(server, 50)
    last: dict[str, int] = {}

    def back_to_baseline() -> bool:
        # Not above: something the baseline caught finishing may have ended since.
        last.update(baseline_counts(server.state()))
        return all(last[key] <= baseline[key] for key in baseline)

    try:
        wait_for(back_to_baseline, 10, interval=0.1)
    except TimeoutError:
        pytest.fail(f"{server.kind}: baseline {baseline}, after 500 cycles {last}")


EVENT_SIZE = 16384


def test_a_client_that_stops_reading_is_dropped_after_the_write_timeout(server: Server) -> None:
    write_timeout = 1.0  # SSE_WRITE_TIMEOUT of the test app
    baseline = server.settled()
    token = new_token(server, "stalled")
    # A tiny receive window that is never read: the server's writes block.
    with RawClient(server.port, rcvbuf=4096) as client:
        client.request(f"/fast?token={token}&size={EVENT_SIZE}")
        opened = time.monotonic()
        wait_for(lambda: token in server.state()["closed"], 10, interval=0.05)
        dropped_after = time.monotonic() - opened
    state = server.settled()
    assert state["closed"][token] == "write-failed"
    assert write_timeout <= dropped_after < write_timeout + 4
    # Back-pressure: the producer stopped once the kernel's buffers and the
    # stream's (SSE_BUFFER_SIZE=8) were full, instead of making all 100,000
    # events (1.6 GB): the kernel takes at most its largest send buffer.
    send_buffer_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    bound = send_buffer_max // EVENT_SIZE + 8 + 2
    assert state["produced"][token] <= bound, (state["produced"][token], bound)
    assert state["rss"] - baseline["rss"] < 16 * 2**20
