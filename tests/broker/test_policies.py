"""Slow-consumer policies (``_broker/_policy.py``), for every broker kind.

Each test runs once per kind of ``make_broker`` (see ``conftest.py``). A
subscriber that does not read is a slow consumer; the tests publish past its
queue and check what it then reads, live and in a replay.
"""

from __future__ import annotations

import json
from typing import Any

import gevent
import pytest

from flask_sse_stream import Event, InvalidEventError
from flask_sse_stream._broker import RESET_EVENT, Broker, Subscription
from flask_sse_stream._broker._policy import GAP_EVENT

from .conftest import ORDER_PER_CHANNEL_ONLY, MakeBroker, take, wait_until

POLICIES = {"tick*": "conflate", "logs": "drop-oldest"}


def publish_all(broker: Broker, channel: str, items: list[tuple[str | None, Any]]) -> list[Event]:
    return [broker.publish(channel, Event(data), key=key) for key, data in items]


def settled(broker: Broker, subscription: Subscription, published: int, **counters: int) -> None:
    """Wait until ``published`` events reached the broker's queues and the counters show."""

    def done() -> bool:
        stats = broker.stats()
        return stats.delivered >= published and all(
            getattr(stats, name) >= value for name, value in counters.items()
        )

    wait_until(done, what=f"{published} events delivered with {counters}")


def drain(subscription: Subscription) -> list[Event]:
    """Everything queued for ``subscription`` now."""
    events: list[Event] = []
    while batch := subscription.get_batch(100):
        events += batch
    return events


def test_every_channel_disconnects_unless_told_otherwise(make_broker: MakeBroker) -> None:
    broker = make_broker(queue_size=3, slow_consumer=POLICIES)
    with broker.subscribe(["chat"]) as chat, broker.subscribe(["ticker"]) as ticker:
        assert chat.policy == "disconnect"
        assert ticker.policy == "conflate"
        published = publish_all(broker, "chat", [(None, n) for n in range(4)])
        wait_until(lambda: chat.dropped, what="the slow chat subscriber dropped")
        assert broker.stats().dropped_slow == 1
        assert published[-1].id is not None
    with broker.subscribe(["logs"]) as logs:
        assert logs.policy == "drop-oldest"


def test_a_stream_of_several_channels_follows_the_strictest_policy(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(slow_consumer=POLICIES)
    for channels, policy in [
        (["ticker", "chat"], "disconnect"),
        (["ticker", "logs"], "drop-oldest"),
        (["ticker", "tick2"], "conflate"),
    ]:
        with broker.subscribe(channels) as subscription:
            assert subscription.policy == policy


def test_drop_oldest_keeps_the_newest_events_and_reports_each_gap_once(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(queue_size=5, slow_consumer=POLICIES)
    with broker.subscribe(["logs"]) as slow:
        published = publish_all(broker, "logs", [(None, n) for n in range(12)])
        settled(broker, slow, 12, dropped=7)
        got = drain(slow)
        gap, *rest = got
        assert gap.event == GAP_EVENT
        assert json.loads(gap.data) == {"skipped": 7}
        assert gap.id == published[6].id  # the last one skipped
        assert [e.data for e in rest] == [7, 8, 9, 10, 11]
        assert [e.id for e in rest] == [e.id for e in published[7:]]
        # Falls behind again: a second gap, of its own size.
        more = publish_all(broker, "logs", [(None, n) for n in range(12, 20)])
        settled(broker, slow, 20, dropped=10, gaps=2)
        gap, *rest = drain(slow)
        assert (gap.event, json.loads(gap.data), gap.id) == (
            GAP_EVENT,
            {"skipped": 3},
            more[2].id,
        )
        assert [e.data for e in rest] == [15, 16, 17, 18, 19]
        assert not slow.dropped
        stats = broker.stats()
        assert (stats.dropped, stats.gaps, stats.dropped_slow) == (10, 2, 0)


def test_conflate_keeps_the_newest_event_per_key_in_the_order_keys_last_changed(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(queue_size=3, slow_consumer=POLICIES)
    with broker.subscribe(["ticker"]) as slow:
        items = [("A", 1), ("B", 1), ("A", 2), ("C", 1), ("B", 2), ("A", 3), ("D", 1)]
        published = publish_all(broker, "ticker", items)  # type: ignore[arg-type]
        settled(broker, slow, 7)
        got = drain(slow)
        assert [e.data for e in got] == [1, 2, 3, 1]  # C1 B2 A3 D1
        assert [e.id for e in got] == [published[i].id for i in (3, 4, 5, 6)]
        # Ids still increase, and every key's last value arrived.
        assert broker.stats().conflated == 3
        # Caught up: every event again, none conflated.
        again = publish_all(broker, "ticker", [("A", 4), ("A", 5)])
        settled(broker, slow, 9)
        assert [e.id for e in drain(slow)] == [e.id for e in again]
        assert broker.stats().conflated == 3
        assert not slow.dropped


def test_a_conflate_subscriber_that_keeps_up_sees_every_event(make_broker: MakeBroker) -> None:
    broker = make_broker(queue_size=2, slow_consumer=POLICIES)
    with broker.subscribe(["ticker"]) as keeping_up:
        published = []
        for n in range(50):
            published.append(broker.publish("ticker", Event(n), key="same"))
            (event,) = take(keeping_up, 1)
            assert event.id == published[-1].id
    assert broker.stats().conflated == 0


def test_events_without_a_key_conflate_as_one_key_of_their_channel(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(queue_size=2, slow_consumer="conflate")
    with broker.subscribe(["prices", "news"]) as slow:
        for n in range(5):
            broker.publish("prices", Event(f"p{n}"))
            broker.publish("news", Event(f"n{n}"))
        settled(broker, slow, 10)
        got = [e.data for e in drain(slow)]
        if make_broker.kind in ORDER_PER_CHANNEL_ONLY:
            got.sort(reverse=True)  # its channels' events may come in either order
        assert got == ["p4", "n4"]
        assert broker.stats().conflated == 8


def test_memory_stays_bounded_whatever_the_publish_rate(make_broker: MakeBroker) -> None:
    broker = make_broker(queue_size=50, history_size=10, slow_consumer=POLICIES)
    with broker.subscribe(["ticker"]) as ticker, broker.subscribe(["logs"]) as logs:
        for n in range(3000):
            broker.publish("ticker", Event(n), key=f"k{n % 20}")
            broker.publish("logs", Event(n))
        settled(broker, ticker, 6000, dropped=2950)
        # Bounded: a lagging conflated queue by 2 x (queue + keys), a dropping one by its size.
        assert broker.stats().queued <= 2 * (50 + 20) + 1 + 50
        # The slow conflated subscriber gets each key's last value, in order.
        assert [e.data for e in drain(ticker)] == list(range(2980, 3000))
        assert len(drain(logs)) == 51  # a gap and the newest 50
        assert broker.stats().conflated == 2980  # counted as skipped, when taken


def test_replay_of_a_conflated_channel_is_the_latest_event_per_key(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(slow_consumer=POLICIES)
    first = broker.publish("ticker", Event("start"), key="A")
    items = [("A", 1), ("B", 1), ("A", 2), ("C", 1), ("B", 2)]
    published = publish_all(broker, "ticker", items)  # type: ignore[arg-type]
    assert first.id is not None
    with broker.subscribe(["ticker"], first.id) as resumed:
        got = take(resumed, 3)
        assert [(e.data, e.id) for e in got] == [
            (published[i].data, published[i].id) for i in (2, 3, 4)
        ]
        assert not resumed.reset
    assert broker.stats().conflated == 2


def test_a_conflated_channel_replays_by_key_until_its_history_expires(
    make_broker: MakeBroker,
) -> None:
    """SSE_HISTORY_TTL and the policies together: the replay follows the policy, then
    the expired history's ids get the reset."""
    ttl = 0.6
    broker = make_broker(slow_consumer=POLICIES, history_ttl=ttl)
    first = broker.publish("ticker", Event("start"), key="A")
    published = publish_all(broker, "ticker", [("A", 1), ("B", 1), ("A", 2)])  # type: ignore[arg-type]
    assert first.id is not None
    with broker.subscribe(["ticker"], first.id) as resumed:
        assert not resumed.reset
        assert [e.id for e in take(resumed, 2)] == [published[1].id, published[2].id]
    # Waiting the TTL out is the behaviour under test (Redis: expiry within 1.5 of it).
    gevent.sleep(1.7 * ttl)
    with broker.subscribe(["ticker"], first.id) as late:
        assert late.reset
        assert [e.event for e in take(late, 1)] == [RESET_EVENT]


def test_replay_of_a_drop_oldest_channel_is_a_gap_and_at_most_a_queue(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(queue_size=3, slow_consumer=POLICIES)
    first = broker.publish("logs", Event("start"))
    published = publish_all(broker, "logs", [(None, n) for n in range(10)])
    assert first.id is not None
    with broker.subscribe(["logs"], first.id) as resumed:
        gap, *rest = take(resumed, 4)
        assert (gap.event, json.loads(gap.data), gap.id) == (
            GAP_EVENT,
            {"skipped": 7},
            published[6].id,
        )
        assert [e.data for e in rest] == [7, 8, 9]
    # Resuming from the gap's id replays what followed it, and no gap.
    with broker.subscribe(["logs"], gap.id) as again:
        assert [e.data for e in take(again, 3)] == [7, 8, 9]
    stats = broker.stats()
    assert (stats.dropped, stats.gaps) == (7, 1)


def test_replay_of_a_disconnect_channel_is_unchanged(make_broker: MakeBroker) -> None:
    broker = make_broker(queue_size=3, slow_consumer=POLICIES)
    first = broker.publish("chat", Event("start"))
    publish_all(broker, "chat", [("k", n) for n in range(10)])
    assert first.id is not None
    with broker.subscribe(["chat"], first.id) as resumed:
        assert [e.data for e in take(resumed, 10)] == list(range(10))


SEVERAL = {"tick*": "conflate", "logs*": "drop-oldest"}


def test_a_replay_of_several_channels_follows_the_policy_and_its_ids_resume_it(
    make_broker: MakeBroker,
) -> None:
    # The Redis Cluster broker gives such a stream ids of its own (a position per channel).
    broker = make_broker(queue_size=3, slow_consumer=SEVERAL)
    first = broker.publish("tickA", Event("start"), key="x")
    items = [("tickA", "x", 1), ("tickB", "x", 1), ("tickA", "y", 1), ("tickA", "x", 2)]
    items.append(("tickB", "x", 2))
    for channel, key, value in items:
        broker.publish(channel, Event(f"{channel}:{key}{value}"), key=key)
    assert first.id is not None
    with broker.subscribe(["tickA", "tickB"], first.id) as resumed:
        got = take(resumed, 3)
        assert [e.data for e in got] == ["tickA:y1", "tickA:x2", "tickB:x2"]
        assert not resumed.reset
    # From the first of them: the newest per key of what followed it.
    assert got[0].id is not None
    assert got[-1].id is not None
    with broker.subscribe(["tickA", "tickB"], got[0].id) as again:
        assert [e.data for e in take(again, 2)] == ["tickA:x2", "tickB:x2"]
    # From the last: nothing, then what comes next.
    with broker.subscribe(["tickA", "tickB"], got[-1].id) as caught_up:
        broker.publish("tickB", Event("tickB:z1"), key="z")
        assert [e.data for e in take(caught_up, 1)] == ["tickB:z1"]
    assert broker.stats().resets == 0


def test_a_drop_oldest_gap_of_several_channels_resumes_where_it_ended(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(queue_size=3, slow_consumer=SEVERAL)
    mark = broker.publish("logsA", Event("mark"))
    with broker.subscribe(["logsA", "logsB"]) as slow:
        for n in range(8):
            side = "AB"[n % 2]
            broker.publish(f"logs{side}", Event(f"{side}{n}"))
        settled(broker, slow, 8, dropped=5)
        gap, *rest = drain(slow)
        assert (gap.event, json.loads(gap.data)) == (GAP_EVENT, {"skipped": 5})
        assert len(rest) == 3
    # Live, the events of two shards may come in either order; the gap's id
    # names where this subscriber was, so a resume replays exactly what followed.
    assert gap.id is not None
    assert mark.id is not None
    with broker.subscribe(["logsA", "logsB"], gap.id) as resumed:
        assert sorted(e.data for e in take(resumed, 3)) == sorted(e.data for e in rest)
    # A replay of the whole run: a gap of 5, the newest 3, in publish order.
    with broker.subscribe(["logsA", "logsB"], mark.id) as replayed:
        gap, *rest = take(replayed, 4)
        assert json.loads(gap.data) == {"skipped": 5}
        assert [e.data for e in rest] == ["B5", "A6", "B7"]


@pytest.mark.parametrize("key", ["", "a\nb", "a\rb", "a\0b", "x" * 257, 7])
def test_a_key_that_cannot_be_one_is_refused(broker: Broker, key: Any) -> None:
    with pytest.raises(InvalidEventError, match="key"):
        broker.publish("ticker", Event("x"), key=key)
