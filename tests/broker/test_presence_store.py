"""The presence contract, over every store: two trackers stand for two workers.

With the in-process store both trackers share one :class:`MemoryStore` and
one broker (what two streams of one process see); with Redis each tracker
has its own :class:`RedisBroker` on one key prefix, as two workers do. The
Redis kind runs in a gevent-patched pytest, against a real redis-server
(see ``conftest.py``); what only Redis has (leases that run out, a Redis
that lost its data) is at the end.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import gevent
import pytest
from redis_server import RedisServer

from flask_sse_stream import Event
from flask_sse_stream._broker import Broker, MemoryBroker
from flask_sse_stream._presence import ANONYMOUS, MemoryStore, Tracker, identity_key

from .conftest import take, wait_until

GRACE = 0.2
TTL = 1.0
ADA = identity_key({"name": "ada"})
BOB = identity_key({"name": "bob"})


@dataclass
class Worker:
    broker: Broker
    tracker: Tracker


def _memory_pair(request: pytest.FixtureRequest) -> list[Worker]:
    broker = MemoryBroker()
    store = MemoryStore()
    return [
        Worker(broker, Tracker(store, broker, events=("room:*",), grace=GRACE)) for _ in range(2)
    ]


def _redis_pair(request: pytest.FixtureRequest) -> list[Worker]:
    from flask_sse_stream._broker._presence_redis import RedisStore
    from flask_sse_stream._broker.redis import RedisBroker

    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    workers = []
    for _ in range(2):
        broker = RedisBroker(server.url, key_prefix=prefix)
        store = RedisStore(broker.execute, prefix, TTL)
        tracker = Tracker(store, broker, events=("room:*",), grace=GRACE, renew_every=TTL / 3)
        workers.append(Worker(broker, tracker))
    return workers


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def workers(request: pytest.FixtureRequest) -> Iterator[list[Worker]]:
    pair = (_redis_pair if request.param == "redis" else _memory_pair)(request)
    yield pair
    for worker in pair:
        worker.tracker.close()
        worker.broker.close()


def names(worker: Worker, channel: str) -> list[str]:
    return [member["name"] for member in worker.tracker.presence(channel).members]


def presence_events(events: list[Event]) -> list[tuple[str | None, str]]:
    return [(e.event, e.data["name"]) for e in events if e.event in ("sse-join", "sse-leave")]


def settled(*trackers: Tracker) -> None:
    wait_until(
        lambda: all(t._idle.is_set() and not t._timers for t in trackers), 10, "the grace timers"
    )


def test_members_of_both_workers_are_seen_from_either(workers: list[Worker]) -> None:
    a, b = workers
    leave_ada = a.tracker.enter(["lobby"], ADA)
    b.tracker.enter(["lobby"], ADA)
    b.tracker.enter(["lobby"], BOB)
    b.tracker.enter(["lobby"], ANONYMOUS)
    for worker in workers:
        # Each worker sends its changes in batches, from a greenlet of its
        # own: the other's may still be on the way.
        wait_until(
            lambda w=worker: w.tracker.presence("lobby").connections == 4,
            5,
            "both workers' changes",
        )
        answer = worker.tracker.presence("lobby")
        assert answer.members == ({"name": "ada"}, {"name": "bob"})
        assert answer.connections == 4
    leave_ada()
    leave_ada()  # only the first call counts
    assert a.tracker.presence("lobby").connections == 3  # a's own change, at once
    wait_until(lambda: b.tracker.presence("lobby").connections == 3, 5, "b to see it")


def test_join_and_leave_go_out_once_across_workers_and_tabs(workers: list[Worker]) -> None:
    a, b = workers
    with a.broker.subscribe(["room:1"]) as observer:
        tab_on_a = a.tracker.enter(["room:1"], ADA)
        tab_on_b = b.tracker.enter(["room:1"], ADA)
        assert names(b, "room:1") == ["ada"]
        tab_on_a()
        # A reconnect to the other worker within the grace period.
        tab_on_b()
        again = a.tracker.enter(["room:1"], ADA)
        assert names(a, "room:1") == ["ada"]
        settled(a.tracker, b.tracker)
        again()
        settled(a.tracker, b.tracker)
        a.broker.publish("room:1", Event("end"))
        events = take(observer, 3)
    assert presence_events(events) == [("sse-join", "ada"), ("sse-leave", "ada")]
    assert events[-1].data == "end"
    assert names(a, "room:1") == []


def test_a_channel_without_a_pattern_gets_no_events(workers: list[Worker]) -> None:
    a, b = workers
    with a.broker.subscribe(["lobby"]) as observer:
        b.tracker.enter(["lobby"], ADA)()
        settled(b.tracker)
        a.broker.publish("lobby", Event("end"))
        assert [e.data for e in take(observer, 1)] == ["end"]


# What only the Redis store has.


@pytest.fixture
def redis_workers(workers: list[Worker]) -> list[Worker]:
    if isinstance(workers[0].broker, MemoryBroker):
        pytest.skip("leases are the Redis store's")
    return workers


def test_a_dead_workers_members_are_gone_within_the_ttl(redis_workers: list[Worker]) -> None:
    a, b = redis_workers
    with a.broker.subscribe(["room:2"]) as observer:
        a.tracker.enter(["room:2"], ADA)
        b.tracker.enter(["room:2"], BOB)
        b.tracker.enter(["room:2"], ADA)
        assert names(b, "room:2") == ["ada", "bob"]
        assert [e.data["name"] for e in take(observer, 2)] == ["ada", "bob"]
        b.tracker.close()  # dies: no leave, no renewal
        died = time.monotonic()
        wait_until(lambda: names(a, "room:2") == ["ada"], 2 * TTL, "bob to be gone")
        assert time.monotonic() - died <= TTL + 0.5
        (left,) = take(observer, 1)
    assert (left.event, left.data) == ("sse-leave", {"name": "bob"})
    assert a.tracker.presence("room:2").connections == 1


def test_a_worker_puts_its_members_back_after_redis_lost_them(
    redis_workers: list[Worker], redis_server: RedisServer
) -> None:
    a, b = redis_workers
    a.tracker.enter(["lobby"], ADA)
    b.tracker.enter(["lobby"], BOB)
    a.tracker.presence("lobby")  # returns once a's own change is in Redis
    assert names(b, "lobby") == ["ada", "bob"]
    with redis_server.client() as client:
        for key in client.scan_iter(match=f"{a.broker.key_prefix}presence:*"):  # type: ignore[attr-defined]
            client.delete(key)
    assert names(a, "lobby") == []
    # The next renewal finds the lease gone and sends everything again.
    wait_until(lambda: names(a, "lobby") == ["ada", "bob"], 2 * TTL, "the members back")


def test_a_renewal_keeps_members_past_the_ttl(redis_workers: list[Worker]) -> None:
    a, b = redis_workers
    b.tracker.enter(["lobby"], BOB)
    assert names(b, "lobby") == ["bob"]
    gevent.sleep(2 * TTL)  # the time that passes is what is tested, not a synchronisation
    assert names(a, "lobby") == ["bob"]


def test_identities_are_compared_by_their_json() -> None:
    assert identity_key({"b": 1, "a": "é"}) == identity_key({"a": "é", "b": 1})
    assert json.loads(identity_key({"a": "é"})) == {"a": "é"}
    with pytest.raises(ValueError, match="1024"):
        identity_key("x" * 2000)
    with pytest.raises(TypeError, match="JSON-able"):
        identity_key({1j})
