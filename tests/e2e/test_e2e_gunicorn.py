"""gunicorn with our recommended config: streams drain when a worker stops,
and more than 1,000 streams do not starve other requests.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import HOST, RawClient, Server, free_port, start_command, wait_for
from .test_e2e_pubsub import Subscriber, post, read_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

APP = "tests.e2e.pubsub_app:app"


OURS = "flask_sse_stream.gunicorn.GeventWorker"
"""The worker class our gunicorn config selects."""


def start_gunicorn(
    kind: str,
    tmp_path: Path,
    *extra: str,
    workers: int = 1,
    env: dict[str, str] | None = None,
) -> Server:
    """gunicorn with our recommended config, serving the pub/sub test app."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:flask_sse_stream.gunicorn_conf",
        "--worker-class",
        kind,
        "--workers",
        str(workers),
        "--bind",
        f"{HOST}:{port}",
        "--no-control-socket",
        *extra,
        APP,
    ]
    environ = {"SSE_TEST_RECORD_DIR": str(tmp_path), **(env or {})}
    name = "worker" if kind == OURS else kind
    return start_command(f"gunicorn-{name}", port, command, tmp_path, env=environ)


@pytest.fixture(params=[OURS, "gevent", "gevent_pywsgi"], ids=["worker", "gevent", "gevent_pywsgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def open_blocked(server: Server, token: str) -> RawClient:
    client = RawClient(server.port)
    client.request(f"/blocked?token={token}")
    assert client.response().status_code == 200
    while not any(e.data.startswith("hello") for e in client.events):
        client.chunk()
    return client


def drained_retry(client: RawClient) -> int:
    """Read to the end of the response; return the last ``retry`` the stream set."""
    client.chunks_until_end(timeout=10)
    retries = [
        int(line[7:]) for line in client.body.decode().splitlines() if line.startswith("retry: ")
    ]
    return retries[-1]


def test_sigterm_drains_streams_runs_finally_and_exits_fast(
    kind: str, tmp_path: Path, servers: list[Server]
) -> None:
    server = start_gunicorn(kind, tmp_path)
    servers.append(server)
    clients = [open_blocked(server, f"term-{i}") for i in range(3)]
    server.signal(signal.SIGTERM)
    retries = [drained_retry(client) for client in clients]
    for client in clients:
        client.close()
    # A jittered retry between the base (1 s) and twice the base.
    assert all(1000 <= r <= 2000 for r in retries), retries
    for i in range(3):
        assert (tmp_path / f"term-{i}.final").exists()
    # Well before graceful_timeout (10 s), after which gunicorn would kill it.
    assert server.process.wait(timeout=6) == 0


def test_a_hup_reload_drains_the_old_workers_streams(tmp_path: Path, servers: list[Server]) -> None:
    server = start_gunicorn("gevent", tmp_path)
    servers.append(server)
    client = open_blocked(server, "hup")
    old_pid = client.events[0].data.split()[-1]
    server.signal(signal.SIGHUP)
    assert drained_retry(client) >= 1000
    client.close()
    assert (tmp_path / "hup.final").exists()

    def served_by_a_new_worker() -> bool:
        # Until the old worker has stopped accepting, it may still take one.
        with open_blocked(server, "after-hup") as fresh:
            return fresh.events[0].data.split()[-1] != old_pid

    wait_for(served_by_a_new_worker, 20, interval=0.1)


def test_max_requests_recycling_drains_streams(tmp_path: Path, servers: list[Server]) -> None:
    server = start_gunicorn("gevent", tmp_path, "--max-requests", "4")
    servers.append(server)
    client = open_blocked(server, "recycled")  # the health probe was request 1
    for _ in range(3):
        server.get("/health")
    assert drained_retry(client) >= 1000
    client.close()
    assert (tmp_path / "recycled.final").exists()


@pytest.mark.timeout(120)
def test_more_than_1000_streams_do_not_starve_other_requests(
    tmp_path: Path, servers: list[Server]
) -> None:
    server = start_gunicorn("gevent", tmp_path)
    servers.append(server)
    subs = [Subscriber(server.port, "/events?channel=crowd") for _ in range(1100)]
    try:
        wait_for(
            lambda: server.state()["subscribers"].get("crowd", 0) == 1100,
            60,
            interval=0.2,
            message="1,100 streams never opened",
        )
        post(server, "/publish-sequence?channel=crowd&count=1&wait=1")
        read_until(subs, lambda s: bool(s.events), timeout=30)
        assert all(s.events[0].data.startswith('{"n": 0') for s in subs)
    finally:
        for sub in subs:
            sub.close()
