"""The broker contract (``flask_sse_stream/broker/base.py``), for every broker kind.

Each test runs once per kind of ``make_broker`` (see ``conftest.py``). The
tests only use the contract, so a new broker passes them or is wrong.
Subscribers are greenlets of this process; publishers are greenlets or
real OS threads (this process is not monkey-patched: ``threading`` is the
real thing).
"""

from __future__ import annotations

import gc
import string
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from flask_sse_stream import Event
from flask_sse_stream._broker import (
    RESET_EVENT,
    Broker,
    BrokerClosedError,
    BrokerStats,
    Subscription,
)

from .conftest import (
    ORDER_PER_CHANNEL_ONLY,
    MakeBroker,
    claims_everything,
    fast_thread_switching,
    is_ended,
    take,
    wait_until,
)

Spawn = Callable[..., "gevent.Greenlet[Any, Any]"]


def datas(events: list[Event]) -> list[Any]:
    return [event.data for event in events]


def assert_reset(event: Event) -> None:
    assert event.event == RESET_EVENT
    assert event.data == ""
    assert isinstance(event.id, str)
    assert event.id
    # One event on the wire, whatever the id says.
    assert event.encode().count(b"\n\n") == 1


def test_the_broker_is_a_broker(broker: Broker) -> None:
    assert isinstance(broker, Broker)
    with broker.subscribe(["c"]) as subscription:
        assert isinstance(subscription, Subscription)
    assert isinstance(broker.stats(), BrokerStats)


# Ids.


def test_publish_assigns_short_unique_ascii_ids_and_keeps_given_ones(broker: Broker) -> None:
    ids = [broker.publish(channel, Event("x")).id for channel in ("a", "b", "a", "c") * 50]
    assert len(set(ids)) == len(ids)
    allowed = set(string.ascii_letters + string.digits + "-_.:")
    for event_id in ids:
        assert isinstance(event_id, str)
        assert 0 < len(event_id) <= 40
        assert set(event_id) <= allowed

    mine = Event("y", event="note", id="7", retry=10)
    assert broker.publish("a", mine) is mine


def test_the_stored_event_keeps_data_type_and_retry(broker: Broker) -> None:
    stored = broker.publish("a", Event({"k": [1, 2]}, event="update", retry=500))
    assert stored.data == {"k": [1, 2]}
    assert stored.event == "update"
    assert stored.retry == 500
    assert stored.id is not None


# Delivery.


@pytest.mark.timeout(30)
def test_200_subscribers_each_get_2000_events_exactly_once_in_order(
    make_broker: MakeBroker, spawn: Spawn
) -> None:
    events, subscribers = 2000, 200
    # Big enough that no scheduling order can overflow a queue.
    broker = make_broker(queue_size=events + 1)
    subscriptions = [broker.subscribe(["feed"]) for _ in range(subscribers)]
    received: list[list[Event]] = [[] for _ in range(subscribers)]

    def read(subscription: Subscription, into: list[Event]) -> None:
        for event in subscription:
            into.append(event)
            if len(into) == events:
                return

    readers = [spawn(read, s, r) for s, r in zip(subscriptions, received, strict=True)]
    published = []
    for number in range(events):
        published.append(broker.publish("feed", Event(str(number))))
        if number % 50 == 49:
            gevent.sleep(0)  # let the readers drain while we go on
    done = gevent.joinall(readers, timeout=20)
    assert len(done) == subscribers
    expected_ids = [event.id for event in published]
    for got in received:
        assert [event.id for event in got] == expected_ids
        assert datas(got) == [str(number) for number in range(events)]
    assert not any(subscription.dropped for subscription in subscriptions)
    # Encoded once: every subscriber got the very event that was stored.
    assert all(got[-1] is received[0][-1] for got in received)
    for subscription in subscriptions:
        subscription.close()


def test_a_subscriber_gets_only_its_channels(make_broker: MakeBroker) -> None:
    broker = make_broker()
    with (
        broker.subscribe(["a"]) as on_a,
        broker.subscribe(["b"]) as on_b,
        broker.subscribe(["a", "b"]) as on_both,
        broker.subscribe(["a", "a"]) as on_a_twice,
    ):
        for number in range(5):
            broker.publish("a", Event(f"a{number}"))
            broker.publish("b", Event(f"b{number}"))
            broker.publish("c", Event(f"c{number}"))
        broker.publish("a", Event("end"))
        broker.publish("b", Event("end"))

        assert datas(take(on_a, 6)) == ["a0", "a1", "a2", "a3", "a4", "end"]
        assert datas(take(on_b, 6)) == ["b0", "b1", "b2", "b3", "b4", "end"]
        both = [f"{c}{n}" for n in range(5) for c in "ab"] + ["end", "end"]
        got = datas(take(on_both, 12))
        if make_broker.kind in ORDER_PER_CHANNEL_ONLY:
            # Different shards: each channel in order, the two interleaved somehow.
            assert sorted(got) == sorted(both)
            for channel in "ab":
                mine = [d for d in got if d.startswith(channel)]
                assert mine == [f"{channel}{n}" for n in range(5)]
        else:
            assert got == both
        assert datas(take(on_a_twice, 6)) == ["a0", "a1", "a2", "a3", "a4", "end"]
        assert on_a_twice.channels == ("a",)
        assert on_both.channels == ("a", "b")
        # Nothing else is queued: a new event is the very next one.
        broker.publish("a", Event("next"))
        assert datas(take(on_a, 1)) == ["next"]


def test_a_subscription_without_last_id_starts_live(broker: Broker) -> None:
    broker.publish("c", Event("before"))
    with broker.subscribe(["c"]) as subscription:
        broker.publish("c", Event("after"))
        assert datas(take(subscription, 1)) == ["after"]
        assert not subscription.reset


# Replay.


def test_replay_merges_the_requested_channels_in_publish_order(broker: Broker) -> None:
    first = broker.publish("a", Event("a0"))
    for name in ("b1", "a2", "c3", "b4", "a5"):
        broker.publish(name[0], Event(name))
    assert first.id is not None
    with broker.subscribe(["b", "a"], last_id=first.id) as subscription:
        broker.publish("a", Event("a6"))
        assert datas(take(subscription, 5)) == ["b1", "a2", "b4", "a5", "a6"]
        assert not subscription.reset


def test_replay_from_an_id_of_another_channel_uses_the_global_order(broker: Broker) -> None:
    broker.publish("a", Event("a0"))
    mark = broker.publish("other", Event("o1"))
    broker.publish("a", Event("a2"))
    assert mark.id is not None
    with broker.subscribe(["a"], last_id=mark.id) as subscription:
        broker.publish("a", Event("a3"))
        assert datas(take(subscription, 2)) == ["a2", "a3"]


def test_replay_from_the_newest_id_replays_nothing(broker: Broker) -> None:
    newest = broker.publish("a", Event("a0"))
    assert newest.id is not None
    with broker.subscribe(["a"], last_id=newest.id) as subscription:
        broker.publish("a", Event("a1"))
        assert datas(take(subscription, 1)) == ["a1"]
        assert not subscription.reset


@pytest.mark.timeout(30)
@pytest.mark.parametrize("publisher", ["greenlet", "thread"])
def test_reconnecting_with_last_id_while_publishing_has_no_gap_and_no_duplicate(
    make_broker: MakeBroker, spawn: Spawn, publisher: str
) -> None:
    # The reader cuts its subscription every `cut` events (and whenever it
    # is dropped as slow) and comes back with the last id it saw, while the
    # publisher keeps going; the history holds everything, so never a reset.
    # The thread publisher stays at most `window` events ahead of the reader
    # (more than the queue, so the reader is sometimes dropped), so the two
    # overlap from start to end, with the GIL switching threads very often.
    events, cut, window = 6000, 397, 800
    broker = make_broker(history_size=events, queue_size=500)
    received: list[int] = []
    progress = threading.Condition()

    def publish() -> None:
        for number in range(events):
            if publisher == "thread" and number % 50 == 0:
                with progress:
                    if not progress.wait_for(lambda n=number: n - len(received) < window, 10):
                        return
            broker.publish("c", Event(str(number)))
            if publisher == "greenlet" and number % 7 == 6:
                gevent.sleep(0)

    # The reader may be dropped before it reads anything: then it comes
    # back from a mark published before it started.
    last_id = broker.publish("c", Event("mark")).id
    subscription = broker.subscribe(["c"])
    subscriptions = 1
    with fast_thread_switching():
        if publisher == "greenlet":
            spawn(publish)
            thread = None
        else:
            thread = threading.Thread(target=publish, daemon=True)
            thread.start()
        with gevent.Timeout(20, AssertionError("the reader did not get everything in 20 s")):
            while True:
                with subscription:
                    for event in subscription:
                        assert event.event != RESET_EVENT
                        # A gap or a duplicate fails here, at once.
                        assert int(event.data) == len(received), "gap or duplicate"
                        received.append(int(event.data))
                        last_id = event.id
                        if thread is not None:
                            with progress:
                                progress.notify()
                        if len(received) % cut == 0 or len(received) == events:
                            break
                if len(received) == events:
                    break
                subscription = broker.subscribe(["c"], last_id=last_id)
                subscriptions += 1
        if thread is not None:
            thread.join(timeout=10)
            assert not thread.is_alive()
    assert received == list(range(events))
    assert subscriptions >= events // cut


# Reset.


def test_an_evicted_id_gets_one_reset_event_then_live_events(make_broker: MakeBroker) -> None:
    broker = make_broker(history_size=10)
    published = [broker.publish("c", Event(str(number))) for number in range(30)]
    evicted_id = published[4].id
    assert evicted_id is not None
    with broker.subscribe(["c"], last_id=evicted_id) as subscription:
        assert subscription.reset
        broker.publish("c", Event("live"))
        reset, live = take(subscription, 2)
        assert_reset(reset)
        assert live.data == "live"
    # The reset's id is a position: coming back with it replays what followed.
    for number in range(3):
        broker.publish("c", Event(f"later{number}"))
    assert reset.id is not None
    with broker.subscribe(["c"], last_id=reset.id) as again:
        assert not again.reset
        assert datas(take(again, 4)) == ["live", "later0", "later1", "later2"]


def test_an_id_evicted_from_one_of_several_channels_gets_a_reset(make_broker: MakeBroker) -> None:
    broker = make_broker(history_size=10)
    mark = broker.publish("quiet", Event("q0"))
    for number in range(30):
        broker.publish("busy", Event(str(number)))
    assert mark.id is not None
    # "quiet" still holds everything after the mark; "busy" does not.
    with broker.subscribe(["quiet"], last_id=mark.id) as quiet:
        assert not quiet.reset
    with broker.subscribe(["quiet", "busy"], last_id=mark.id) as both:
        assert both.reset
        assert_reset(take(both, 1)[0])


TTL = 0.6
"""A history TTL short enough to wait out in a test (Redis: expiry within 1.5 of it)."""


def _gets_reset(broker: Broker, channels: list[str], last_id: str) -> bool:
    """Whether coming back with ``last_id`` gets the reset (a subscriber renews the TTL)."""
    with broker.subscribe(channels, last_id=last_id) as subscription:
        if subscription.reset:
            assert_reset(take(subscription, 1)[0])
        return subscription.reset


# Waiting the TTL out is the behaviour under test: these sleeps are its duration.
KEPT, GONE = 0.7 * TTL, 1.7 * TTL


def test_a_history_expires_after_its_ttl_and_its_ids_get_a_reset(make_broker: MakeBroker) -> None:
    """Issue 11, item 9: no subscriber and no publish for the TTL: the history is gone."""
    broker = make_broker(history_ttl=TTL)
    first = broker.publish("user-1", Event("one"))
    broker.publish("user-1", Event("two"))
    assert first.id is not None
    gevent.sleep(KEPT)
    with broker.subscribe(["user-1"], last_id=first.id) as subscription:
        assert not subscription.reset, "expired before its TTL"
        assert datas(take(subscription, 1)) == ["two"]
    gevent.sleep(GONE)
    assert _gets_reset(broker, ["user-1"], first.id)


def test_a_channel_with_a_subscriber_keeps_its_history_past_the_ttl(
    make_broker: MakeBroker,
) -> None:
    broker = make_broker(history_ttl=TTL)
    with broker.subscribe(["kept"]) as live:
        first = broker.publish("kept", Event("one"))
        broker.publish("kept", Event("two"))
        assert datas(take(live, 2)) == ["one", "two"]
        gevent.sleep(3 * TTL)
        assert first.id is not None
        with broker.subscribe(["kept"], last_id=first.id) as again:
            assert not again.reset
            assert datas(take(again, 1)) == ["two"]
    # Its TTL starts when the last subscriber leaves.
    gevent.sleep(KEPT)
    assert not _gets_reset(broker, ["kept"], first.id)
    gevent.sleep(GONE)
    assert _gets_reset(broker, ["kept"], first.id)


def test_a_publish_renews_the_ttl(make_broker: MakeBroker) -> None:
    broker = make_broker(history_ttl=TTL)
    first = broker.publish("busy", Event("0"))
    deadline = time.monotonic() + 3 * TTL
    while time.monotonic() < deadline:
        gevent.sleep(TTL / 4)
        broker.publish("busy", Event("more"))
    assert first.id is not None
    with broker.subscribe(["busy"], last_id=first.id) as subscription:
        assert not subscription.reset


def test_without_a_ttl_a_quiet_channel_is_kept(make_broker: MakeBroker) -> None:
    broker = make_broker(history_ttl=None)
    first = broker.publish("quiet", Event("one"))
    broker.publish("quiet", Event("two"))
    gevent.sleep(2 * TTL)
    assert first.id is not None
    with broker.subscribe(["quiet"], last_id=first.id) as subscription:
        assert not subscription.reset
        assert datas(take(subscription, 1)) == ["two"]


def test_an_expired_channel_does_not_reset_a_recent_id_of_another(
    make_broker: MakeBroker,
) -> None:
    """Expiry resets only those who may have missed something."""
    broker = make_broker(history_ttl=TTL)
    old_id = broker.publish("old", Event("gone soon")).id
    broker.publish("old", Event("missed, and gone"))
    assert old_id is not None
    gevent.sleep(GONE)
    assert _gets_reset(broker, ["old"], old_id)
    recent = broker.publish("fresh", Event("one"))
    broker.publish("fresh", Event("two"))
    assert recent.id is not None
    with broker.subscribe(["fresh", "never-published"], last_id=recent.id) as subscription:
        assert not subscription.reset
        assert datas(take(subscription, 1)) == ["two"]


def test_an_id_from_another_broker_instance_gets_a_reset(make_broker: MakeBroker) -> None:
    broker, other = make_broker(), make_broker()
    for number in range(5):
        broker.publish("c", Event(str(number)))
    foreign = other.publish("c", Event("elsewhere"))
    assert foreign.id is not None
    with broker.subscribe(["c"], last_id=foreign.id) as subscription:
        assert subscription.reset
        assert_reset(take(subscription, 1)[0])


def test_a_reset_on_a_broker_that_published_nothing_still_names_a_position(
    make_broker: MakeBroker,
) -> None:
    broker, other = make_broker(), make_broker()
    foreign = other.publish("c", Event("elsewhere"))
    assert foreign.id is not None
    with broker.subscribe(["c"], last_id=foreign.id) as subscription:
        reset = take(subscription, 1)[0]
        assert_reset(reset)
    broker.publish("c", Event("first"))
    assert reset.id is not None
    with broker.subscribe(["c"], last_id=reset.id) as again:
        assert not again.reset
        assert datas(take(again, 1)) == ["first"]


HOSTILE_IDS = {
    "64 KB": "9" * 65536,
    "CRLF": "1-1\r\n\r\nevent: admin\r\ndata: pwned",
    "lone CR": "1\r2",
    "NUL": "1-1\0",
    "lone surrogates (invalid UTF-8 decoded with surrogateescape)": "\udcff\udcfe-1",
    "invalid UTF-8 decoded as latin-1": "\xc3\x28-\xa0\xa1",
    "empty": "",
    "space": " ",
    "question mark": "?",
    "dash": "-",
    "unicode digits": "١٢٣-٤",
}


@pytest.mark.parametrize("hostile", HOSTILE_IDS.values(), ids=HOSTILE_IDS.keys())
def test_a_hostile_last_id_gets_a_reset_fast_and_is_never_reflected(
    broker: Broker, hostile: str
) -> None:
    broker.publish("c", Event("before"))
    started = time.monotonic()
    with broker.subscribe(["c"], last_id=hostile) as subscription:
        assert time.monotonic() - started < 1
        assert subscription.reset
        broker.publish("c", Event("live"))
        reset, live = take(subscription, 2)
        assert_reset(reset)
        assert reset.id != hostile
        assert len(reset.encode()) < 100
        assert live.data == "live"


def test_a_real_id_with_something_around_it_gets_a_reset(broker: Broker) -> None:
    real = broker.publish("c", Event("x")).id
    assert real is not None
    for bent in (f"{real}\n", f" {real}", f"{real} ", real.upper(), f"{real}0" * 8, f"x{real}"):
        if bent == real:
            continue
        with broker.subscribe(["c"], last_id=bent) as subscription:
            assert subscription.reset, bent


def test_a_last_id_that_is_not_text_is_a_programming_error(broker: Broker) -> None:
    with pytest.raises(TypeError):
        broker.subscribe(["c"], last_id=b"1-1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        broker.subscribe("c")
    with pytest.raises(ValueError, match="at least one channel"):
        broker.subscribe([])
    with pytest.raises(TypeError):
        broker.publish("c", "not an event")  # type: ignore[arg-type]


# Threads.


@pytest.mark.timeout(20)
def test_publish_from_an_os_thread_reaches_a_waiting_greenlet(broker: Broker, spawn: Spawn) -> None:
    count = 200
    subscription = broker.subscribe(["c"])
    reader = spawn(take, subscription, count)
    gevent.sleep(0)  # the reader runs until it waits

    def publish() -> None:
        for number in range(count):
            broker.publish("c", Event(str(number)))

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    got = reader.get(timeout=10)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert datas(got) == [str(number) for number in range(count)]
    subscription.close()


@pytest.mark.timeout(30)
def test_publish_from_an_os_thread_never_loses_a_wake_up(broker: Broker) -> None:
    # Ping-pong: the thread publishes one event and waits for the reader to
    # take it, so the reader goes back to waiting every round and each
    # publish lands somewhere in its way to sleep. A lost wake-up leaves an
    # event queued and the reader asleep: the thread then gives up and closes.
    rounds = 10000
    subscription = broker.subscribe(["c"])
    taken = 0
    turn = threading.Condition()
    stuck: list[int] = []

    def publish() -> None:
        for number in range(rounds):
            broker.publish("c", Event(str(number)))
            with turn:
                if not turn.wait_for(lambda n=number: taken > n, timeout=5):
                    stuck.append(number)
                    subscription.close()
                    return

    with fast_thread_switching():
        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        with gevent.Timeout(20, AssertionError("the reader is stuck")):
            for event in subscription:
                assert event.data == str(taken)
                with turn:
                    taken += 1
                    turn.notify()
                if taken == rounds:
                    break
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert not stuck, f"the wake-up for event {stuck[0]} was lost"
    assert taken == rounds
    subscription.close()


@pytest.mark.timeout(20)
def test_close_from_an_os_thread_ends_a_waiting_greenlet(broker: Broker, spawn: Spawn) -> None:
    subscription = broker.subscribe(["c"])
    reader = spawn(lambda: list(subscription))
    gevent.sleep(0)
    thread = threading.Thread(target=subscription.close, daemon=True)
    thread.start()
    assert reader.get(timeout=5) == []
    thread.join(timeout=5)
    assert subscription.closed


# Slow subscribers.


@pytest.mark.timeout(30)
def test_one_non_reading_subscriber_among_100_is_dropped_and_released(
    make_broker: MakeBroker, spawn: Spawn
) -> None:
    events, queue_size, readers_count = 600, 50, 99
    broker = make_broker(queue_size=queue_size)
    idle = broker.subscribe(["c"])
    readers = [broker.subscribe(["c"]) for _ in range(readers_count)]
    received: list[list[str]] = [[] for _ in readers]

    def read(subscription: Subscription, into: list[str]) -> None:
        for event in subscription:
            into.append(event.data)

    for subscription, into in zip(readers, received, strict=True):
        spawn(read, subscription, into)
    gevent.sleep(0)
    for start in range(0, events, 20):
        for number in range(start, start + 20):
            broker.publish("c", Event(str(number)))
        # The readers keep up (each batch is smaller than their queues),
        # whatever the broker's delivery latency.
        wait_until(
            lambda n=start + 20: all(len(into) == n for into in received), what="the readers"
        )
    expected = [str(number) for number in range(events)]
    assert all(into == expected for into in received)
    assert not any(subscription.dropped for subscription in readers)

    assert idle.dropped
    assert idle.closed
    assert is_ended(idle)
    stats = broker.stats()
    assert stats.dropped_slow == 1
    assert stats.subscribers == {"c": readers_count}
    assert stats.subscriptions == readers_count
    assert stats.queued == 0  # the idle subscriber's queue was freed
    watch = weakref.ref(idle)
    del idle
    gc.collect()
    assert watch() is None

    for subscription in readers:
        subscription.close()


# Closing and releasing.


def test_close_is_idempotent_and_ends_iteration(broker: Broker) -> None:
    subscription = broker.subscribe(["a", "b"])
    broker.publish("a", Event("queued"))
    assert broker.stats().subscribers == {"a": 1, "b": 1}
    subscription.close()
    subscription.close()
    assert subscription.closed
    assert not subscription.dropped
    assert is_ended(subscription)
    assert subscription.get_batch(10) == []
    assert subscription.wait(timeout=1)
    stats = broker.stats()
    assert stats.subscribers == {}
    assert stats.subscriptions == 0


@pytest.mark.timeout(10)
def test_close_from_another_greenlet_ends_a_waiting_iteration(broker: Broker, spawn: Spawn) -> None:
    subscription = broker.subscribe(["c"])
    reader = spawn(lambda: list(subscription))
    gevent.sleep(0)
    spawn(subscription.close)
    assert reader.get(timeout=5) == []


def test_a_closed_subscription_leaves_no_reference(broker: Broker) -> None:
    subscriptions = [broker.subscribe(["a", f"own-{n}"], last_id="?") for n in range(20)]
    broker.publish("a", Event("x"))
    watches = [weakref.ref(subscription) for subscription in subscriptions]
    for subscription in subscriptions:
        subscription.close()
    del subscriptions, subscription
    gc.collect()
    assert all(watch() is None for watch in watches)
    assert broker.stats().subscribers == {}


def test_a_subscription_dropped_without_close_is_released(broker: Broker) -> None:
    subscription = broker.subscribe(["lost"])
    watch = weakref.ref(subscription)
    del subscription
    gc.collect()
    assert watch() is None
    broker.publish("lost", Event("x"))
    stats = broker.stats()
    assert stats.subscribers == {}
    assert stats.subscriptions == 0


@pytest.mark.timeout(10)
def test_closing_the_broker_ends_every_subscription_and_refuses_more(
    make_broker: MakeBroker, spawn: Spawn
) -> None:
    broker = make_broker()
    subscriptions = [broker.subscribe([f"c{n % 3}"]) for n in range(10)]
    readers = [spawn(lambda s=s: list(s)) for s in subscriptions]
    gevent.sleep(0)
    broker.close()
    broker.close()
    assert all(reader.get(timeout=5) == [] for reader in readers)
    assert all(s.closed and not s.dropped for s in subscriptions)
    for subscription in subscriptions:
        subscription.close()
    with pytest.raises(BrokerClosedError):
        broker.publish("c0", Event("late"))
    with pytest.raises(BrokerClosedError):
        broker.subscribe(["c0"])
    assert broker.stats().subscriptions == 0


# Batches and waiting, for coalescing writes.


@pytest.mark.timeout(10)
def test_get_batch_takes_replay_then_live_events_without_waiting(broker: Broker) -> None:
    first = broker.publish("c", Event("0"))
    broker.publish("c", Event("1"))
    assert first.id is not None
    with broker.subscribe(["c"], last_id=first.id) as subscription:
        for number in range(2, 10):
            broker.publish("c", Event(str(number)))
        got: list[Event] = []
        deadline = time.monotonic() + 5
        while len(got) < 9 and time.monotonic() < deadline:
            assert subscription.wait(timeout=5)
            batch = subscription.get_batch(4)
            assert 1 <= len(batch) <= 4
            got += batch
        assert datas(got) == [str(number) for number in range(1, 10)]
        assert subscription.get_batch(4) == []
        started = time.monotonic()
        assert not subscription.wait(timeout=0.05)
        assert time.monotonic() - started >= 0.04
        broker.publish("c", Event("10"))
        assert subscription.wait(timeout=5)
        assert datas(subscription.get_batch(100)) == ["10"]


# Sinks: new events taken in the hub while the subscriber sleeps on.


def sink_into(
    subscription: Subscription, got: list[Event], in_hub: list[bool] | None = None
) -> Callable[[], bool]:
    def sink() -> bool:
        if in_hub is not None:
            in_hub.append(gevent.getcurrent() is gevent.get_hub())
        batch = subscription.get_batch(1000)
        got.extend(batch)
        return bool(batch)

    return sink


@pytest.mark.timeout(10)
def test_a_sink_takes_new_events_in_the_hub_and_the_waiter_sleeps_on(
    broker: Broker, spawn: Spawn
) -> None:
    with broker.subscribe(["c"]) as subscription:
        got: list[Event] = []
        in_hub: list[bool] = []
        subscription.set_sink(sink_into(subscription, got, in_hub))
        waiter = spawn(subscription.wait)
        gevent.sleep(0)
        for number in range(100):
            broker.publish("c", Event(str(number)))
            if number % 10 == 0:
                gevent.sleep(0)
        wait_until(lambda: len(got) == 100, 5, "the sink to take 100 events")
        assert datas(got) == [str(number) for number in range(100)]
        assert in_hub
        assert all(in_hub), "the sink ran outside the hub"
        assert not waiter.ready(), "the sink took the events, yet the waiter woke"
        subscription.interrupt()
        assert waiter.get(timeout=5) is True


@pytest.mark.timeout(10)
def test_a_sink_is_not_asked_while_nobody_waits(broker: Broker) -> None:
    with broker.subscribe(["c"]) as subscription:
        asked: list[int] = []
        subscription.set_sink(claims_everything(asked))
        for number in range(3):
            broker.publish("c", Event(str(number)))
        # Delivery may be asynchronous (through Redis, it is).
        wait_until(lambda: broker.stats().queued == 3, 5, "delivery")
        assert not asked
        assert datas(subscription.get_batch(10)) == ["0", "1", "2"]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("claims", "removed"),
    [
        pytest.param(False, False, id="declines"),
        pytest.param(True, False, id="claims-but-takes-nothing"),
        pytest.param(True, True, id="removed"),
    ],
)
def test_the_waiter_wakes_with_the_event_queued_when_no_sink_takes_it(
    broker: Broker, spawn: Spawn, claims: bool, removed: bool
) -> None:
    with broker.subscribe(["c"]) as subscription:
        asked: list[int] = []

        def sink() -> bool:
            asked.append(1)
            return claims

        subscription.set_sink(sink)
        if removed:
            subscription.set_sink(None)
        waiter = spawn(subscription.wait)
        gevent.sleep(0)
        broker.publish("c", Event("x"))
        assert waiter.get(timeout=5) is True
        assert bool(asked) is not removed
        assert datas(subscription.get_batch(10)) == ["x"]


@pytest.mark.timeout(10)
def test_an_interrupt_wakes_the_waiter_without_asking_its_sink(
    broker: Broker, spawn: Spawn
) -> None:
    with broker.subscribe(["c"]) as subscription:
        asked: list[int] = []
        subscription.set_sink(claims_everything(asked))
        waiter = spawn(subscription.wait)
        gevent.sleep(0)
        subscription.interrupt()
        assert waiter.get(timeout=5) is True
        assert not asked


@pytest.mark.timeout(10)
def test_closing_wakes_a_waiter_without_asking_its_sink(broker: Broker, spawn: Spawn) -> None:
    subscription = broker.subscribe(["c"])
    asked: list[int] = []
    subscription.set_sink(claims_everything(asked))
    waiter = spawn(subscription.wait)
    gevent.sleep(0)
    subscription.close()
    assert waiter.get(timeout=5) is True
    assert subscription.closed
    assert not asked


def test_closing_lets_go_of_the_sink(broker: Broker) -> None:
    subscription = broker.subscribe(["c"])

    def sink() -> bool:
        return False

    subscription.set_sink(sink)
    gone = weakref.ref(sink)
    del sink
    subscription.close()
    gc.collect()
    assert gone() is None


@pytest.mark.timeout(30)
def test_a_sink_loses_nothing_to_a_publisher_thread(make_broker: MakeBroker, spawn: Spawn) -> None:
    # The sink and the woken reader take turns; between them every event
    # arrives exactly once, in order, and none stays queued with nobody awake.
    count = 5000
    # Big enough that no scheduling order can overflow the queue: a thread
    # may well publish faster than the hub takes, and a drop is not a loss.
    broker = make_broker(queue_size=count + 1)
    with broker.subscribe(["c"]) as subscription:
        got: list[Event] = []
        subscription.set_sink(sink_into(subscription, got))

        def read() -> None:
            while len(got) < count:
                subscription.wait()
                got.extend(subscription.get_batch(1000))

        reader = spawn(read)
        gevent.sleep(0)

        def publish() -> None:
            for number in range(count):
                broker.publish("c", Event(str(number)))

        with fast_thread_switching():
            thread = threading.Thread(target=publish, daemon=True)
            thread.start()
            wait_until(lambda: len(got) >= count, 20, "every event")
            thread.join(timeout=10)
        assert not subscription.dropped
        assert datas(got) == [str(number) for number in range(count)]
        subscription.interrupt()
        reader.kill()


# Stats.


def test_stats_count_what_happened(make_broker: MakeBroker) -> None:
    broker = make_broker(history_size=5)
    assert broker.stats() == BrokerStats()
    on_a = [broker.subscribe(["a"]) for _ in range(2)]
    on_both = broker.subscribe(["a", "b"])
    for number in range(3):
        broker.publish("a", Event(str(number)))
    mark = broker.publish("b", Event("b0"))
    broker.publish("b", Event("b1"))
    broker.publish("nobody", Event("n"))
    # Delivery may be asynchronous (through Redis, it is).
    wait_until(lambda: broker.stats().delivered >= 3 * 3 + 2, what="delivery")
    stats = broker.stats()
    assert stats.published == 6
    assert stats.delivered == 3 * 3 + 2
    assert stats.subscribers == {"a": 3, "b": 1}
    assert stats.subscriptions == 3
    assert stats.replayed == 0
    assert stats.resets == 0
    assert stats.dropped_slow == 0

    assert mark.id is not None
    with broker.subscribe(["b"], last_id=mark.id):
        pass
    with broker.subscribe(["b"], last_id="?"):
        pass
    for number in range(10):
        broker.publish("a", Event(str(number)))
    with broker.subscribe(["a"], last_id=mark.id):  # evicted by now
        pass
    stats = broker.stats()
    assert stats.replayed == 1
    assert stats.resets == 2
    assert stats.published == 16
    for subscription in [*on_a, on_both]:
        subscription.close()
    assert broker.stats().subscriptions == 0
