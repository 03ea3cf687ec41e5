"""The Redis broker behind Redis Sentinel: a primary killed under load, and lost writes.

The failover tests start their own primary, two replicas and three sentinels
(real ``redis-server`` processes) and kill the primary with ``SIGKILL``
while a publisher publishes 100 events a second. Every publish either
returns (then every subscriber gets the event exactly once, in order) or
raises :class:`BrokerUnavailableError` (then a subscriber gets it at most
once): nothing that returned is lost, nothing comes twice.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from redis_server import RedisServer, SentinelGroup, find_redis_server

from flask_sse_stream import Event
from flask_sse_stream._broker import RESET_EVENT, BrokerUnavailableError
from flask_sse_stream._broker._redis_wire import connection_factory, replicas_to_wait, where

from .conftest import Reader, check_exactly_once, take, wait_until

# Parsing a URL connects nowhere: these run in every process.


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    cls, kwargs = connection_factory(
        "redis+sentinel://:secret@10.0.0.1:26379,[::1]:26380/cache/3?sentinel_password=s",
        timeout=1,
        socket_timeout=2,
        name="n",
    )
    pool = kwargs["connection_pool"]
    assert pool.service_name == "cache"
    assert [
        (c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
        for c in pool.sentinel_manager.sentinels
    ] == [("10.0.0.1", 26379), ("::1", 26380)]
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"] == "s"
    assert kwargs["password"] == "secret"
    assert kwargs["db"] == 3
    assert kwargs["socket_timeout"] == 2
    assert cls.__name__ == "SentinelManagedConnection"
    assert "cache" in where(kwargs)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://host:26379",  # no service
        "redis+sentinel://host/svc",  # no port
        "redis+sentinel://host:26379/svc/x",  # db not a number
        "redis+sentinel://host:26379,/svc",  # an empty host
    ],
)
def test_a_malformed_sentinel_url_says_what_it_should_look_like(url: str) -> None:
    with pytest.raises(ValueError, match="redis\\+sentinel://"):
        connection_factory(url, timeout=1, socket_timeout=1, name="n")


def test_a_sentinel_publish_waits_for_one_replica_unless_told_otherwise() -> None:
    assert replicas_to_wait("redis+sentinel://h:1/s") == 1
    assert replicas_to_wait("redis+sentinel://h:1/s?wait=2") == 2
    assert replicas_to_wait("redis+sentinel://h:1/s/0?wait=0") == 0
    assert replicas_to_wait("redis://h:1/0?wait=2") == 0
    with pytest.raises(ValueError, match="wait"):
        replicas_to_wait("redis+sentinel://h:1/s?wait=all")


# Real sentinels, in a gevent-patched process.


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    """A group of its own: the test kills its primary."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary")
    with SentinelGroup(binary) as made:
        yield made


def _broker(url: str, prefix: str, **options: Any) -> Any:
    from flask_sse_stream._broker.redis import RedisBroker

    return RedisBroker(url, key_prefix=prefix, timeout=2, max_backoff=0.5, **options)


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_killing_the_primary_under_100_events_per_second_loses_and_repeats_nothing(
    group: SentinelGroup,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    url = group.url()
    subscribing, publishing = _broker(url, prefix), _broker(url, prefix)
    readers = [
        Reader(subscribing.subscribe(["a"])),
        Reader(subscribing.subscribe(["a", "b"])),
        Reader(subscribing.subscribe(["b"])),
    ]
    ok: dict[str, list[int]] = {"a": [], "b": []}
    failed: dict[str, list[int]] = {"a": [], "b": []}
    failed_at: list[float] = []
    running = True

    def publish() -> None:
        number = 0
        while running:
            for channel in ("a", "b"):
                try:
                    publishing.publish(channel, Event(f"{channel}:{number}"))
                    ok[channel].append(number)
                except BrokerUnavailableError:
                    failed[channel].append(number)
                    failed_at.append(time.monotonic())
            number += 1
            gevent.sleep(0.02)  # two channels: 100 events/s

    publisher = gevent.spawn(publish)
    try:
        wait_until(lambda: len(readers[1].events) >= 100, 20, "events before the kill")
        promoted = group.kill_primary()
        killed = group.killed_at
        # 200 more events after the promotion, then stop.
        mark = len(ok["a"])
        wait_until(lambda: len(ok["a"]) >= mark + 100, 30, "publishing to resume")
        first_after = min(t for t, _ in readers[0].events if t > max(failed_at, default=killed))
    finally:
        running = False
        publisher.join(10)
    final = ok["a"][-1]
    wait_until(lambda: final in readers[0].numbers("a"), 20, "the last event")
    wait_until(lambda: ok["b"][-1] in readers[2].numbers("b"), 20, "the last event")
    wait_until(lambda: ok["b"][-1] in readers[1].numbers("b"), 20, "the last event")
    for reader in readers:
        reader.close()
    check_exactly_once(readers[0], "a", ok["a"], failed["a"])
    check_exactly_once(readers[1], "a", ok["a"], failed["a"])
    check_exactly_once(readers[1], "b", ok["b"], failed["b"])
    check_exactly_once(readers[2], "b", ok["b"], failed["b"])
    print(
        f"\nsentinel failover: promoted {promoted:.2f} s after the kill, first event "
        f"delivered after it {first_after - killed:.2f} s after the kill; "
        f"{len(ok['a']) + len(ok['b'])} publishes returned, "
        f"{len(failed['a']) + len(failed['b'])} raised, 0 lost, 0 duplicated"
    )
    subscribing.close()
    publishing.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_subscriber_that_comes_back_after_the_failover_replays_from_the_new_primary(
    group: SentinelGroup,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    broker = _broker(group.url(), prefix)
    try:
        published = [broker.publish("c", Event(str(n))) for n in range(10)]
        group.kill_primary()
        # A publish acknowledged by a replica survived the primary.
        with broker.subscribe(["c"], last_id=published[4].id) as again:
            assert [e.data for e in take(again, 5)] == ["5", "6", "7", "8", "9"]
            assert not again.reset
    finally:
        broker.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_publish_no_replica_acknowledges_raises(group: SentinelGroup) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    broker = _broker(group.url(), prefix)
    try:
        broker.publish("c", Event("before"))
        with (
            group.replicas[0].stopped(),
            group.replicas[1].stopped(),
            pytest.raises(BrokerUnavailableError, match="acknowledged"),
        ):
            broker.publish("c", Event("x"))
        broker.publish("c", Event("after"))
    finally:
        broker.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_when_redis_is_behind_what_was_delivered_ids_move_on_and_subscribers_reset(
    redis_server: RedisServer,
) -> None:
    # What a failover that lost unacknowledged writes leaves: the pub/sub
    # connection delivered events 4 and 5, the new primary has only up to 3.
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    broker = _broker(redis_server.url, prefix)
    try:
        with broker.subscribe(["c"]) as subscription:
            published = [broker.publish("c", Event(str(n))) for n in range(5)]
            assert [e.data for e in take(subscription, 5)] == ["0", "1", "2", "3", "4"]
            with redis_server.client() as client:
                client.hset(f"{prefix}state", "seq", 3)
                assert client.xdel(f"{prefix}stream:c", "4-0", "5-0") == 2
            redis_server.client_kill(_type="pubsub")
            reset = take(subscription, 1)[0]
            assert reset.event == RESET_EVENT
            fresh = broker.publish("c", Event("after"))
            assert fresh.id not in {event.id for event in published}
            assert [e.data for e in take(subscription, 1)] == ["after"]
            assert fresh.id is not None
            assert reset.id is not None
        with broker.subscribe(["c"], last_id=reset.id) as again:
            assert [e.data for e in take(again, 1)] == ["after"]
    finally:
        broker.close()
