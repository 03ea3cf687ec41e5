"""What is particular to :class:`MemoryBroker`: ids, history bounds, threads and hubs.

The shared behaviour is in ``test_contract.py``. Subscribers that iterate
in another OS thread run in that thread's own gevent hub, as they do under
the werkzeug development server.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import threading
import tracemalloc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent._hub_local import get_hub_if_exists

from flask_sse_stream import Event
from flask_sse_stream._broker import RESET_EVENT, MemoryBroker, MemorySubscription
from flask_sse_stream._broker._wakeup import current_waker

from .conftest import claims_everything, take, wait_until

ID = re.compile(r"([0-9a-z]{1,8})-(0|[1-9a-z][0-9a-z]*)")

# Channels the short-lived-channel test makes: 100,000 under `make soak`.
CHANNELS = int(os.environ.get("SOAK_CHANNELS", "10000"))


@pytest.fixture
def memory() -> Iterator[MemoryBroker]:
    broker = MemoryBroker(history_size=5, queue_size=10)
    yield broker
    assert broker.stats().subscriptions == 0
    broker.close()


def sequence(event_id: str | None) -> int:
    assert event_id is not None
    match = ID.fullmatch(event_id)
    assert match is not None, event_id
    return int(match[2], 36)


def test_ids_are_epoch_dash_one_base36_sequence_for_all_channels() -> None:
    broker = MemoryBroker()
    ids = [broker.publish(channel, Event("x")).id for channel in ("a", "b", "c") * 700]
    assert all(event_id is not None and ID.fullmatch(event_id) for event_id in ids)
    assert [sequence(event_id) for event_id in ids] == list(range(1, 2101))
    assert len({event_id.split("-")[0] for event_id in ids if event_id}) == 1
    assert ids[35] is not None
    assert ids[35].endswith("-10")  # 36 in base 36
    assert MemoryBroker().publish("a", Event("x")).id != ids[0]  # another epoch
    broker.close()


def test_the_history_keeps_the_last_history_size_events_per_channel(
    memory: MemoryBroker,
) -> None:
    published = [memory.publish("c", Event(str(n))) for n in range(20)]
    memory.publish("other", Event("o"))
    assert memory.stats().history == 5 + 1
    # 15..19 are kept: from 14 everything is there, from 13 event 14 is gone.
    with memory.subscribe(["c"], last_id=published[14].id) as subscription:
        assert not subscription.reset
        assert [e.data for e in subscription.get_batch(10)] == ["15", "16", "17", "18", "19"]
    with memory.subscribe(["c"], last_id=published[13].id) as subscription:
        assert subscription.reset


def test_with_no_history_only_the_current_position_avoids_a_reset() -> None:
    broker = MemoryBroker(history_size=0)
    first = broker.publish("c", Event("0"))
    newest = broker.publish("c", Event("1"))
    with broker.subscribe(["c"], last_id=first.id) as subscription:
        assert subscription.reset
    with broker.subscribe(["c"], last_id=newest.id) as subscription:
        assert not subscription.reset
        assert subscription.get_batch(10) == []
    assert broker.stats().history == 0
    broker.close()


def test_a_reset_names_the_current_position(memory: MemoryBroker) -> None:
    empty = MemoryBroker()
    with empty.subscribe(["c"], last_id="?") as subscription:
        (reset,) = subscription.get_batch(10)
    assert reset.event == RESET_EVENT
    assert sequence(reset.id) == 0
    empty.close()

    for n in range(7):
        memory.publish("elsewhere", Event(str(n)))
    with memory.subscribe(["c"], last_id="?") as subscription:
        (reset,) = subscription.get_batch(10)
    assert sequence(reset.id) == 7


def test_ids_of_this_epoch_that_were_never_issued_get_a_reset(memory: MemoryBroker) -> None:
    real = memory.publish("c", Event("x")).id
    assert real is not None
    epoch = real.split("-")[0]
    for forged in (f"{epoch}-2", f"{epoch}-zzzzzz", f"{epoch}-01", f"{epoch}-", f"{epoch}--1"):
        with memory.subscribe(["c"], last_id=forged) as subscription:
            assert subscription.reset, forged
    with memory.subscribe(["c"], last_id=f"{epoch}-0") as subscription:
        assert not subscription.reset  # position 0: everything, all still held
        assert [e.data for e in subscription.get_batch(10)] == ["x"]


def test_every_subscriber_gets_the_same_event_object_and_delivery_is_immediate(
    memory: MemoryBroker,
) -> None:
    with memory.subscribe(["c"]) as one, memory.subscribe(["c"]) as two:
        stored = memory.publish("c", Event({"json": True}))
        # In the publisher's own thread delivery is synchronous.
        assert one.get_batch(10)[0] is stored
        assert two.get_batch(10)[0] is stored


@pytest.mark.timeout(10)
def test_an_interrupt_right_after_a_publish_wakes_the_waiter_without_asking_its_sink(
    memory: MemoryBroker,
) -> None:
    # The publish has already queued the waiter to be switched to in the hub
    # when the interrupt comes: the sink must still not be asked.
    with memory.subscribe(["c"]) as subscription:
        asked: list[int] = []
        subscription.set_sink(claims_everything(asked))
        waiter = gevent.spawn(subscription.wait)
        gevent.sleep(0)
        memory.publish("c", Event("x"))
        subscription.interrupt()
        assert waiter.get(timeout=5) is True
        assert not asked
        assert [e.data for e in subscription.get_batch(10)] == ["x"]


def test_the_replay_does_not_count_against_the_queue() -> None:
    broker = MemoryBroker(history_size=100, queue_size=3)
    first = broker.publish("c", Event("0"))
    for n in range(1, 50):
        broker.publish("c", Event(str(n)))
    with broker.subscribe(["c"], last_id=first.id) as subscription:
        broker.publish("c", Event("50"))
        broker.publish("c", Event("51"))
        assert [e.data for e in take(subscription, 51)] == [str(n) for n in range(1, 52)]
        assert not subscription.dropped
    broker.close()


def test_a_dropped_subscriber_is_freed_at_once(memory: MemoryBroker) -> None:
    subscription = memory.subscribe(["c"])
    inner = weakref.ref(subscription._sub)
    for n in range(10):
        memory.publish("c", Event(str(n)))
    assert len(subscription._queue) == 10
    memory.publish("c", Event("overflow"))
    assert subscription.dropped
    assert len(subscription._queue) == 0
    assert memory._subscribers == {}
    del subscription
    gc.collect()
    assert inner() is None


def test_a_subscription_lost_without_close_is_released_by_the_next_call(
    memory: MemoryBroker,
) -> None:
    subscription = memory.subscribe(["c", "d"])
    inner = weakref.ref(subscription._sub)
    del subscription
    gc.collect()
    assert memory._orphans  # noted by the finalizer, released under the lock
    assert memory.stats().subscribers == {}
    assert not memory._orphans
    gc.collect()
    assert inner() is None


def test_constructor_checks_sizes() -> None:
    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValueError, match="history_size"):
            MemoryBroker(history_size=bad)  # type: ignore[arg-type]
    for bad in (0, -1, 2.0, False):
        with pytest.raises(ValueError, match="queue_size"):
            MemoryBroker(queue_size=bad)  # type: ignore[arg-type]


# Threads and hubs.


def run_in_thread(target: Callable[[], Any]) -> Callable[[float], Any]:
    """Run ``target`` in a new OS thread (with its own hub); return a join that gives its result."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:  # reported by the join
            outcome["error"] = exc
        finally:
            hub = get_hub_if_exists()
            if hub is not None:
                hub.destroy(destroy_loop=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float) -> Any:
        thread.join(timeout)
        assert not thread.is_alive(), "the thread did not finish"
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]

    return join


def wait_for_waiter(subscription: MemorySubscription) -> None:
    """Until the subscription's reader, wherever it runs, is asleep waiting for events."""
    wait_until(lambda: bool(subscription._sub.waiting), what="the reader to wait")


@pytest.mark.timeout(20)
def test_a_subscriber_iterating_in_another_threads_hub_gets_every_event() -> None:
    broker = MemoryBroker(queue_size=5000)
    count = 3000
    subscription = broker.subscribe(["c"])

    def read() -> list[str]:
        with gevent.Timeout(10):
            return [e.data for e in take(subscription, count)]

    join = run_in_thread(read)
    wait_for_waiter(subscription)
    for n in range(count):
        broker.publish("c", Event(str(n)))
        if n % 100 == 99:
            gevent.sleep(0)
    assert join(15) == [str(n) for n in range(count)]
    subscription.close()
    broker.close()


@pytest.mark.timeout(20)
def test_subscribers_in_two_hubs_and_a_publisher_thread_without_a_hub() -> None:
    broker = MemoryBroker()
    count = 500
    subscriptions = [broker.subscribe(["c"]) for _ in range(2)]

    def reader(subscription: MemorySubscription) -> Callable[[], list[str]]:
        def read() -> list[str]:
            return [e.data for e in take(subscription, count)]

        return read

    joins = [run_in_thread(reader(s)) for s in subscriptions]
    for subscription in subscriptions:
        wait_for_waiter(subscription)

    def publish() -> bool:
        for n in range(count):
            broker.publish("c", Event(str(n)))
        # Publishing from a plain thread must not create a hub there.
        return get_hub_if_exists() is None

    publish_thread = threading.Thread(target=lambda: results.append(publish()), daemon=True)
    results: list[bool] = []
    publish_thread.start()
    for join in joins:
        assert join(15) == [str(n) for n in range(count)]
    publish_thread.join(10)
    assert results == [True]
    for subscription in subscriptions:
        subscription.close()
    broker.close()


@pytest.mark.timeout(20)
def test_closing_from_this_thread_ends_an_iteration_in_another_hub() -> None:
    broker = MemoryBroker()
    subscription = broker.subscribe(["c"])
    join = run_in_thread(lambda: list(subscription))
    wait_for_waiter(subscription)
    subscription.close()
    assert join(10) == []
    broker.close()


@pytest.mark.timeout(20)
def test_a_thread_waiting_only_on_a_subscription_does_not_hit_loop_exit() -> None:
    # The reader's hub has nothing else to do; without the waker's watcher
    # keeping the loop alive, gevent would raise LoopExit in the reader.
    broker = MemoryBroker()
    subscription = broker.subscribe(["c"])

    def wait_then_read() -> list[str]:
        assert subscription.wait()
        return [e.data for e in subscription.get_batch(10)]

    join = run_in_thread(wait_then_read)
    wait_for_waiter(subscription)
    broker.publish("c", Event("late"))
    assert join(10) == ["late"]
    subscription.close()
    broker.close()


def test_waking_a_hub_that_was_destroyed_meanwhile_does_not_break_publish() -> None:
    # A publisher may pop the waiter of a reader whose thread then ends and
    # destroys its hub before the publisher kicks it.
    def make_waker() -> Any:
        waker = current_waker()
        waker.enter()
        waker.leave()
        return waker

    waker = run_in_thread(make_waker)(10)
    waker.kick(threading.get_ident())  # no error


def test_the_lock_is_a_real_os_lock() -> None:
    # Taken by greenlets of different hubs at once: must not be gevent's.
    lock = MemoryBroker()._lock
    assert type(lock).__module__ in ("_thread", "builtins")


PATCHED_SCRIPT = """
from gevent import monkey
monkey.patch_all()

import json, sys, threading
import gevent
from flask_sse_stream import Event
from flask_sse_stream._broker import MemoryBroker

broker = MemoryBroker(queue_size=5000)
count = 1000
subscriptions = [broker.subscribe(["c"]) for _ in range(20)]

def read(subscription):
    got = []
    with gevent.Timeout(10):
        for event in subscription:
            got.append(event.data)
            if len(got) == 2 * count:
                break
    return got

readers = [gevent.spawn(read, s) for s in subscriptions]
gevent.sleep(0)

def publish(prefix):
    for n in range(count):
        broker.publish("c", Event(f"{prefix}{n}"))
    return threading.get_ident()

# A real OS thread (gevent's thread pool) and a greenlet publish at once.
in_pool = gevent.get_hub().threadpool.spawn(publish, "t")
in_greenlet = gevent.spawn(publish, "g")
results = [reader.get(timeout=15) for reader in readers]
in_pool.get(timeout=10)
in_greenlet.get(timeout=10)
ok = all(
    [d for d in got if d[0] == "t"] == [f"t{n}" for n in range(count)]
    and [d for d in got if d[0] == "g"] == [f"g{n}" for n in range(count)]
    for got in results
)
for subscription in subscriptions:
    subscription.close()
lock_type = type(broker._lock).__module__
print(json.dumps({"ok": ok, "patched": monkey.is_module_patched("threading"),
                  "lock": lock_type, "stats": broker.stats().subscriptions}))
"""


@pytest.mark.timeout(30)
def test_in_a_monkey_patched_process_a_pool_thread_and_a_greenlet_publish_together() -> None:
    # Our runner and gunicorn patch the process; the broker must still use
    # a real lock and tell real threads apart. Patching happens only in the
    # subprocess's own script, never in the pytest process.
    completed = subprocess.run(
        [sys.executable, "-c", PATCHED_SCRIPT],
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == {"ok": True, "patched": True, "lock": result["lock"], "stats": 0}
    assert result["lock"] in ("_thread", "builtins")


def test_many_short_lived_channels_leave_the_memory_at_baseline() -> None:
    """Issue 11, item 9: per-user channels are forgotten once their TTL is over.

    Before ``SSE_HISTORY_TTL`` each kept its history for the broker's
    lifetime (1.4 KB a channel in a worker).
    """
    ttl = 2.0
    broker = MemoryBroker(history_ttl=ttl)
    broker.publish("warm", Event("x"))
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for number in range(CHANNELS):
            channel = f"user-{number}"
            if number % 10:
                broker.publish(channel, Event(f"hello {number}"))
            else:
                with broker.subscribe([channel]):
                    broker.publish(channel, Event(f"hello {number}"))
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - baseline
        assert broker.stats().history > 1000  # the last TTL's channels are still there
        assert held > 1 << 20
        gevent.sleep(ttl * 1.1)  # the TTL is what is under test
        broker.expire()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert broker.stats().history == 0
    assert after < 512 << 10, f"{after / 1024:.0f} KiB still held"
    broker.close()
