"""What is particular to :class:`ClusterBroker`: shards, failovers and resharding.

The tests that need Redis run against real ``redis-server --cluster-enabled
yes`` processes (Redis 7, for sharded pub/sub) in a gevent-patched pytest:
``python -m gevent.monkey --module pytest tests/broker -m redis``. The
failover and resharding tests get a cluster of their own (three primaries,
a replica each): they kill a primary with ``SIGKILL``, or move a slot with
its keys, while a publisher publishes 100 events a second; every publish
either returns (then every subscriber gets it exactly once, in order) or
raises :class:`BrokerUnavailableError` (then at most once).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from redis.crc import key_slot
from redis_server import ClusterGroup, need_redis_7

from flask_sse_stream import Event
from flask_sse_stream._broker import RESET_EVENT, BrokerUnavailableError
from flask_sse_stream._broker._cluster_wire import (
    ClusterKeys,
    cluster_settings,
    parse_position,
    vector_id,
)

from .conftest import Reader, check_exactly_once, take, wait_until


def on_shard(index: int, count: int = 3, start: str = "ch") -> str:
    """A channel name whose slot the ``index``-th of ``count`` primaries serves."""
    per = 16384 // count
    for number in range(100000):
        name = f"{start}{number}"
        if min(key_slot(name.encode()) // per, count - 1) == index:
            return name
    raise AssertionError("no such name")


# Ids and URLs: no Redis needed.


def test_a_vector_id_names_each_channel_and_parses_back() -> None:
    positions = [1000, 998, 5]
    assert vector_id("ep", positions) == "ep-rs.0.2.rn"
    assert parse_position("ep-rs.0.2.rn", 3) == ("ep", positions)
    # A plain id names one position for every channel.
    assert parse_position("ep-rs", 3) == ("ep", [1000, 1000, 1000])


@pytest.mark.parametrize(
    ("last_id", "count"),
    [
        ("ep-rs.0.2.rn", 2),  # names three channels, two asked
        ("ep-rs.0.zzz", 2),  # below zero
        ("ep-rs.2.1", 2),  # no channel at the top
        ("ep-01", 1),  # a leading zero
        ("ep-", 1),
        ("-1", 1),
        ("ep-1.", 1),
        ("ep-1..1", 2),
        ("EP-1", 1),
        ("ep-" + "1." * 600 + "0", 600),
    ],
)
def test_an_id_that_cannot_name_the_positions_is_unusable(last_id: str, count: int) -> None:
    assert parse_position(last_id, count) is None


def test_a_cluster_url_names_its_nodes_and_how_many_replicas_acknowledge() -> None:
    settings = cluster_settings(
        "redis+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001/?wait=2", timeout=1, socket_timeout=2
    )
    assert settings.seeds == [("10.0.0.1", 7000), ("::1", 7001)]
    assert settings.replicas == 2
    assert settings.connection["password"] == "p@ss"
    assert settings.connection["username"] == "u"
    assert cluster_settings("redis+cluster://h:1", timeout=1, socket_timeout=1).replicas == 1
    for bad in ("redis+cluster://h", "redis+cluster://h:1/3", "redis+cluster://h:1?wait=x"):
        with pytest.raises(ValueError, match="redis\\+cluster://"):
            cluster_settings(bad, timeout=1, socket_timeout=1)


def test_each_channel_has_its_own_slot_and_a_prefix_cannot_break_it() -> None:
    keys = ClusterKeys("app:")
    assert keys.meta("chat") == "app:{chat}:m"
    slots = {
        key_slot(k.encode()) for k in (keys.meta("c"), keys.stream("c"), keys.shard_channel("c"))
    }
    assert len(slots) == 1
    assert keys.channel_of(keys.shard_channel("a.b:c").encode()) == "a.b:c"
    with pytest.raises(ValueError, match="brace"):
        ClusterKeys("app{x}:")


# Real clusters, in a gevent-patched process.


@pytest.fixture
def cluster() -> Iterator[ClusterGroup]:
    """A cluster of its own: the test kills a primary or moves a slot."""
    with ClusterGroup(need_redis_7()) as made:
        yield made


def _broker(url: str, prefix: str, **options: Any) -> Any:
    from flask_sse_stream._broker.cluster import ClusterBroker

    return ClusterBroker(url, key_prefix=prefix, timeout=2, max_backoff=0.5, **options)


SHARDS = [on_shard(i) for i in range(3)]


class Publishing:
    """Publishes ``channel:number`` to each channel in turn, 100 events a second in all."""

    def __init__(self, broker: Any, channels: list[str]) -> None:
        self.broker = broker
        self.channels = channels
        self.ok: dict[str, list[int]] = {c: [] for c in channels}
        self.failed: dict[str, list[int]] = {c: [] for c in channels}
        self.failed_at: list[float] = []
        self.running = True
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        number = 0
        while self.running:
            for channel in self.channels:
                try:
                    self.broker.publish(channel, Event(f"{channel}:{number}"))
                    self.ok[channel].append(number)
                except BrokerUnavailableError:
                    self.failed[channel].append(number)
                    self.failed_at.append(time.monotonic())
                gevent.sleep(1 / 100)
            number += 1

    def stop(self) -> None:
        self.running = False
        self.greenlet.join(10)

    def published(self) -> int:
        return sum(len(v) for v in self.ok.values())


def _settle(readers: list[Reader], publishing: Publishing) -> None:
    """Wait until every reader has the last event that returned on each of its channels."""
    for reader in readers:
        for channel in reader.subscription.channels:
            last = publishing.ok[channel][-1]
            wait_until(lambda r=reader, c=channel, n=last: n in r.numbers(c), 20, "the last event")
        reader.close()


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_killing_a_primary_under_100_events_per_second_loses_and_repeats_nothing(
    cluster: ClusterGroup,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    subscribing, publishing_broker = _broker(cluster.url(), prefix), _broker(cluster.url(), prefix)
    readers = [Reader(subscribing.subscribe([name])) for name in SHARDS]
    readers.append(Reader(subscribing.subscribe(SHARDS)))
    publishing = Publishing(publishing_broker, SHARDS)
    try:
        wait_until(lambda: len(readers[-1].events) >= 90, 20, "events before the kill")
        took_over = cluster.kill(cluster.primary_for(f"{prefix}{{{SHARDS[1]}}}"))
        killed = cluster.killed_at
        mark = publishing.published()
        wait_until(lambda: publishing.published() >= mark + 200, 30, "publishing to resume")
        first_after = min(
            t for t, e in readers[1].events if t > max(publishing.failed_at, default=killed)
        )
    finally:
        publishing.stop()
    _settle(readers, publishing)
    for reader in readers:
        for channel in reader.subscription.channels:
            check_exactly_once(reader, channel, publishing.ok[channel], publishing.failed[channel])
    assert subscribing.stats().resets == 0
    print(
        f"\ncluster failover: a replica took over {took_over:.2f} s after the kill, the "
        f"first event on its shard came {first_after - killed:.2f} s after it; "
        f"{publishing.published()} publishes returned, "
        f"{sum(len(v) for v in publishing.failed.values())} raised, 0 lost, 0 duplicated"
    )
    subscribing.close()
    publishing_broker.close()


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_moving_a_channels_slot_to_another_shard_loses_and_repeats_nothing(
    cluster: ClusterGroup,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    subscribing, publishing_broker = _broker(cluster.url(), prefix), _broker(cluster.url(), prefix)
    readers = [Reader(subscribing.subscribe([SHARDS[0]])), Reader(subscribing.subscribe(SHARDS))]
    publishing = Publishing(publishing_broker, SHARDS)
    try:
        wait_until(lambda: len(readers[1].events) >= 60, 20, "events before the move")
        target = cluster.primary_for(f"{prefix}{{{SHARDS[2]}}}")
        cluster.move_slot(f"{prefix}{{{SHARDS[0]}}}", target)
        mark = publishing.published()
        wait_until(lambda: publishing.published() >= mark + 150, 30, "publishing to go on")
    finally:
        publishing.stop()
    _settle(readers, publishing)
    for reader in readers:
        for channel in reader.subscription.channels:
            check_exactly_once(reader, channel, publishing.ok[channel], publishing.failed[channel])
    subscribing.close()
    publishing_broker.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_stream_of_three_shards_resumes_from_its_last_id_with_no_gap_and_no_duplicate(
    cluster_group: ClusterGroup,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    broker = _broker(cluster_group.url(), prefix)
    other = _broker(cluster_group.url(), prefix)  # another worker
    # The page loaded at the mark: its stream starts from there.
    last_id = other.publish(SHARDS[0], Event("mark")).id
    publishing = Publishing(other, SHARDS)
    received: dict[str, list[int]] = {c: [] for c in SHARDS}
    cuts = 0
    try:
        while cuts < 6:
            with broker.subscribe(SHARDS, last_id=last_id) as subscription:
                assert not subscription.reset
                for event in take(subscription, 25):
                    assert event.event != RESET_EVENT
                    channel, number = event.data.split(":")
                    received[channel].append(int(number))
                    last_id = event.id
            cuts += 1
            assert last_id is not None
            assert len(last_id) < 60
    finally:
        publishing.stop()
    with broker.subscribe(SHARDS, last_id=last_id) as subscription:
        for channel in SHARDS:
            last = publishing.ok[channel][-1]
            while not received[channel] or received[channel][-1] < last:
                event = take(subscription, 1)[0]
                name, number = event.data.split(":")
                received[name].append(int(number))
    for channel in SHARDS:
        assert received[channel] == publishing.ok[channel], channel
    broker.close()
    other.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_process_holds_one_pubsub_connection_per_shard_not_per_channel_or_client(
    cluster_group: ClusterGroup,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    broker = _broker(cluster_group.url(), prefix)
    names = [f"many{i}" for i in range(60)]
    subscriptions = [broker.subscribe([names[i % 60], names[(i * 7) % 60]]) for i in range(300)]
    try:
        assert broker.shard_links() == 3
        pubsub = 0
        for node in cluster_group.nodes:
            pubsub += sum(
                1
                for client in node.client_list()
                if client.get("name") == "flask-sse-stream:pubsub" and int(client.get("ssub", 0))
            )
        assert pubsub == 3
        broker.publish(names[5], Event("x"))
        got = [s for s in subscriptions if names[5] in s.channels]
        for subscription in got:
            assert take(subscription, 1)[0].data == "x"
    finally:
        for subscription in subscriptions:
            subscription.close()
    wait_until(lambda: broker.shard_links() == 0, 10, "the links to close")
    broker.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_publish_no_replica_acknowledges_raises(cluster_group: ClusterGroup) -> None:
    broker = _broker(cluster_group.url(), f"t{uuid.uuid4().hex[:8]}:")
    replicas = cluster_group.nodes[3:]
    try:
        broker.publish("c", Event("before"))
        with contextlib.ExitStack() as stack:
            for replica in replicas:
                stack.enter_context(replica.stopped())
            with pytest.raises(BrokerUnavailableError, match="acknowledged"):
                broker.publish("c", Event("x"))
        broker.publish("c", Event("after"))
    finally:
        broker.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_a_channel_left_and_taken_again_at_once_is_not_taken_for_a_moved_one(
    cluster_group: ClusterGroup, caplog: pytest.LogCaptureFixture
) -> None:
    broker = _broker(cluster_group.url(), f"t{uuid.uuid4().hex[:8]}:")
    try:
        for number in range(30):
            with broker.subscribe(["again"]) as subscription:
                broker.publish("again", Event(str(number)))
                assert take(subscription, 1)[0].data == str(number)
            gevent.sleep(0.001 * (number % 3))  # the last one leaves; its channel is let go
        assert "moved" not in caplog.text
        assert "Lost" not in caplog.text
    finally:
        broker.close()


@pytest.mark.redis
@pytest.mark.timeout(60)
def test_pubsub_connections_cut_again_and_again_under_load_lose_and_repeat_nothing(
    cluster_group: ClusterGroup,
) -> None:
    # Each cut: the channels are subscribed again and their gaps filled while
    # the publisher goes on; a live event must not overtake the gap fill.
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    subscribing, publishing_broker = (
        _broker(cluster_group.url(), prefix),
        _broker(cluster_group.url(), prefix),
    )
    readers = [Reader(subscribing.subscribe([name])) for name in SHARDS]
    readers.append(Reader(subscribing.subscribe(SHARDS)))
    ok: dict[str, list[int]] = {c: [] for c in SHARDS}
    running = True

    def publish() -> None:
        number = 0
        while running:
            for channel in SHARDS:
                publishing_broker.publish(channel, Event(f"{channel}:{number}"))
                ok[channel].append(number)
            number += 1
            gevent.sleep(0.001)

    publisher = gevent.spawn(publish)
    try:
        for _ in range(6):
            wait_until(lambda: len(readers[-1].events) >= 30, 20, "events before the cut")
            mark = len(readers[-1].events)
            for node in cluster_group.nodes[:3]:
                node.client_kill(_type="pubsub")
            wait_until(lambda m=mark: len(readers[-1].events) >= m + 60, 20, "events after it")
    finally:
        running = False
        publisher.join(10)
    for reader in readers:
        for channel in reader.subscription.channels:
            last = ok[channel][-1]
            wait_until(lambda r=reader, c=channel, n=last: n in r.numbers(c), 20, "the last event")
        reader.close()
    for reader in readers:
        for channel in reader.subscription.channels:
            check_exactly_once(reader, channel, ok[channel], [])
    subscribing.close()
    publishing_broker.close()
