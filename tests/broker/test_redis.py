"""What is particular to :class:`RedisBroker`: processes sharing Redis, and Redis failing.

Runs against a real ``redis-server`` in a gevent-patched pytest (see
``conftest.py``): ``python -m gevent.monkey --module pytest tests/broker -m redis``.
Two brokers with one key prefix stand for two worker processes; a
:class:`Publisher` in a plain (unpatched) subprocess stands for a Celery
worker. Failures are real: ``CLIENT KILL``, ``SHUTDOWN`` and a new server on
the same port, ``FLUSHALL``, a port nobody listens on.
"""

from __future__ import annotations

import gc
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from flask import Flask
from redis_server import RedisServer, find_redis_server, free_port

from flask_sse_stream import SSE, Event
from flask_sse_stream._broker import RESET_EVENT, Subscription
from flask_sse_stream._broker._redis_wire import pipeline
from flask_sse_stream._broker.redis import BrokerUnavailableError, RedisBroker
from flask_sse_stream._publisher import Publisher

from .conftest import take, wait_until

pytestmark = pytest.mark.redis

ID = re.compile(r"([0-9a-z]{1,8})-(0|[1-9a-z][0-9a-z]*)")
ROOT = Path(__file__).resolve().parents[2]

MakeRedis = Callable[..., RedisBroker]

# Channels the short-lived-channel test makes: 100,000 under `make soak`.
CHANNELS = int(os.environ.get("SOAK_CHANNELS", "10000"))


def sequence(event_id: str | None) -> int:
    assert event_id is not None
    match = ID.fullmatch(event_id)
    assert match is not None, event_id
    return int(match[2], 36)


def datas(events: list[Event]) -> list[Any]:
    return [event.data for event in events]


@pytest.fixture
def fresh_server() -> Iterator[RedisServer]:
    """A redis-server of this test alone (to restart it, or to count all its clients)."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary")
    with RedisServer(binary) as server:
        yield server


def _factory(server: RedisServer) -> Iterator[MakeRedis]:
    made: list[RedisBroker] = []
    prefix = f"t{uuid.uuid4().hex[:10]}:"

    def make(**options: Any) -> RedisBroker:
        options.setdefault("key_prefix", prefix)
        broker = RedisBroker(server.url, **options)
        made.append(broker)
        return broker

    yield make
    try:
        for broker in made:
            assert broker.stats().subscriptions == 0, "subscriptions left open"
    finally:
        for broker in made:
            broker.close()


@pytest.fixture
def make_redis(redis_server: RedisServer) -> Iterator[MakeRedis]:
    """Make RedisBrokers on the shared server; they share one fresh key prefix."""
    yield from _factory(redis_server)


@pytest.fixture
def make_fresh(fresh_server: RedisServer) -> Iterator[MakeRedis]:
    """Make RedisBrokers on this test's own server."""
    yield from _factory(fresh_server)


def pubsub_clients(server: RedisServer) -> list[dict[str, Any]]:
    return [c for c in server.client_list() if c.get("name") == "flask-sse-stream:pubsub"]


def pubsub_address(broker: RedisBroker) -> str:
    """The address Redis sees for ``broker``'s pub/sub connection."""
    wait_until(lambda: broker._link.up, what="the pub/sub connection")
    host, port = broker._link.conn._sock.getsockname()[:2]
    return f"{host}:{port}"


def kill_pubsub(server: RedisServer, broker: RedisBroker) -> None:
    assert server.client_kill(addr=pubsub_address(broker)) == 1


# Ids and sharing between processes.


def test_ids_are_one_sequence_for_every_broker_and_publisher_of_a_prefix(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    one, two = make_redis(), make_redis()
    publisher = Publisher(redis_server.url, key_prefix=one.key_prefix)
    ids: list[str | None] = []
    for number in range(30):
        ids.append(one.publish("a", Event(str(number))).id)
        ids.append(two.publish("b", Event(str(number))).id)
        ids.append(publisher.publish(str(number), channel="c"))
    publisher.close()
    assert len({event_id.split("-")[0] for event_id in ids if event_id}) == 1
    assert [sequence(event_id) for event_id in ids] == list(range(1, 91))


@pytest.mark.timeout(30)
def test_an_event_published_in_one_worker_reaches_subscribers_in_every_worker(
    make_redis: MakeRedis,
) -> None:
    workers = [make_redis() for _ in range(3)]
    subscriptions = [w.subscribe(["news"]) for w in workers for _ in range(5)]
    published = [workers[n % 3].publish("news", Event(f"n{n}")).id for n in range(60)]
    for subscription in subscriptions:
        got = take(subscription, 60)
        assert [event.id for event in got] == published
        assert datas(got) == [f"n{n}" for n in range(60)]
        subscription.close()


@pytest.mark.timeout(30)
def test_a_client_replays_on_another_worker_what_it_missed(make_redis: MakeRedis) -> None:
    first, second = make_redis(), make_redis()
    with first.subscribe(["a", "b"]) as subscription:
        for number in range(10):
            first.publish("ab"[number % 2], Event(str(number)))
        seen = take(subscription, 4)
    last_id = seen[-1].id
    for number in range(10, 15):
        second.publish("ab"[number % 2], Event(str(number)))
    with second.subscribe(["b", "a"], last_id=last_id) as again:
        assert not again.reset
        first.publish("a", Event("15"))
        assert datas(take(again, 12)) == [str(number) for number in range(4, 16)]


@pytest.mark.timeout(60)
def test_a_publisher_in_a_plain_process_reaches_subscribers(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    # The Celery/RQ case: blocking redis-py, no gevent patching.
    broker = make_redis()
    count = 300
    subscriptions = [broker.subscribe(["jobs"]) for _ in range(3)]
    script = (
        "import sys, json\n"
        "from gevent import monkey\n"
        "from flask_sse_stream._publisher import Publisher\n"
        "assert not monkey.is_module_patched('socket')\n"
        f"with Publisher({redis_server.url!r}, key_prefix={broker.key_prefix!r}) as p:\n"
        f"    ids = [p.publish({{'n': n}}, channel='jobs', event='job') for n in range({count})]\n"
        "print(json.dumps(ids))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    got = [take(subscription, count, timeout=30) for subscription in subscriptions]
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()
    ids = json.loads(out)
    for events in got:
        assert [event.id for event in events] == ids
        assert [event.data for event in events] == [f'{{"n": {n}}}' for n in range(count)]
        assert all(event.event == "job" for event in events)
    for subscription in subscriptions:
        subscription.close()


@pytest.mark.timeout(30)
def test_publish_and_subscribe_from_real_os_threads(make_redis: MakeRedis) -> None:
    # gevent's thread pool runs real OS threads, each with its own hub.
    broker = make_redis()
    pool = gevent.get_hub().threadpool
    count = 200
    on_thread = pool.spawn(lambda: broker.subscribe(["t"])).get(timeout=10)
    here = broker.subscribe(["t"])

    def read_in_thread() -> list[str]:
        with gevent.Timeout(15):
            return datas(take(on_thread, count))

    reader = pool.spawn(read_in_thread)

    def publish() -> int:
        for number in range(count):
            broker.publish("t", Event(str(number)))
        return threading.get_ident()

    publisher = pool.spawn(publish)
    expected = [str(number) for number in range(count)]
    assert datas(take(here, count)) == expected
    assert reader.get(timeout=15) == expected
    assert publisher.get(timeout=15) != threading.get_ident()
    here.close()
    pool.spawn(on_thread.close).get(timeout=10)


def test_the_publisher_sends_the_bytes_sse_publish_sends(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    app = Flask(__name__)
    sse = SSE(app)
    broker = make_redis()
    data = {"b": [1, 2], "a": "é", "when": __import__("datetime").date(2024, 5, 6)}
    with app.app_context(), sse.subscribe(["x"], last_id=None) as local:
        sse.publish(data, channel="x", event="e", id="fixed-1", retry=100)
        expected = take(local, 1)[0].encode(app.json.dumps)
    with broker.subscribe(["x"]) as subscription:
        publisher = Publisher(redis_server.url, key_prefix=broker.key_prefix)
        publisher.publish(data, channel="x", event="e", id="fixed-1", retry=100)
        publisher.close()
        assert take(subscription, 1)[0].encode(app.json.dumps) == expected


def test_non_text_data_published_through_the_broker_comes_back_as_it_was(
    make_redis: MakeRedis,
) -> None:
    broker = make_redis()
    with broker.subscribe(["c"]) as subscription:
        broker.publish("c", Event({"k": [1, None, "é"]}, event="t", retry=7))
        broker.publish("c", Event(None, id="only-an-id"))
        broker.publish("c", Event("line one\nline two\r\n", event=""))
        one, two, three = take(subscription, 3)
    assert (one.data, one.event, one.retry) == ({"k": [1, None, "é"]}, "t", 7)
    assert (two.data, two.id) == (None, "only-an-id")
    assert (three.data, three.event) == ("line one\nline two\r\n", "")


# Connections.


@pytest.mark.timeout(60)
def test_1000_subscriptions_on_100_channels_use_one_pubsub_connection(
    make_fresh: MakeRedis, fresh_server: RedisServer
) -> None:
    broker = make_fresh(max_connections=4)
    subscriptions = [broker.subscribe([f"room-{n % 100}"]) for n in range(1000)]
    clients = pubsub_clients(fresh_server)
    assert len(clients) == 1
    assert clients[0]["sub"] == "100"
    everyone = fresh_server.client_list()
    ours = [c for c in everyone if c.get("name", "").startswith("flask-sse-stream:")]
    assert len(ours) <= 1 + 4
    assert len(everyone) <= len(ours) + 1  # + the client asking
    # Every subscription works over that one connection.
    for n in range(100):
        broker.publish(f"room-{n}", Event(str(n)))
    for index, subscription in enumerate(subscriptions):
        assert datas(take(subscription, 1)) == [str(index % 100)]
    # A channel is released in Redis when its last local subscription leaves.
    for subscription in subscriptions[:900]:
        subscription.close()
    assert pubsub_clients(fresh_server)[0]["sub"] == "100"
    for subscription in subscriptions[900:]:
        subscription.close()
    wait_until(lambda: pubsub_clients(fresh_server)[0]["sub"] == "0", what="UNSUBSCRIBE")
    assert broker.stats().subscribers == {}


# Redis failing.


def _publish_sequence(publish: Callable[[int], None], count: int, rate: float) -> None:
    """Publish 0..count-1 at ``rate`` per second, retrying each until Redis takes it."""
    started = time.monotonic()
    for number in range(count):
        deadline = time.monotonic() + 20
        while True:
            try:
                publish(number)
                break
            except BrokerUnavailableError:
                assert time.monotonic() < deadline, "Redis never came back"
                gevent.sleep(0.02)  # pacing retries, not synchronising
        # Pacing: hold the rate, whatever each publish took.
        gevent.sleep(max(0.0, started + (number + 1) / rate - time.monotonic()))


def _read_sequences(
    subscriptions: list[Subscription], count: int
) -> list[gevent.Greenlet[Any, list[Event]]]:
    def read(subscription: Subscription) -> list[Event]:
        got: list[Event] = []
        with gevent.Timeout(40, AssertionError(f"{len(got)} events only")):
            for event in subscription:
                got.append(event)
                if event.event != RESET_EVENT and event.data == str(count - 1):
                    return got
        return got

    return [gevent.spawn(read, subscription) for subscription in subscriptions]


@pytest.mark.timeout(60)
def test_client_kill_of_the_pubsub_connection_while_publishing_loses_nothing(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    broker = make_redis()
    publisher = make_redis()  # another worker
    subscriptions = [broker.subscribe(["a"]) for _ in range(5)] + [
        broker.subscribe(["a", "b"]) for _ in range(5)
    ]
    count, rate = 250, 100.0
    readers = _read_sequences(subscriptions, count)
    sender = gevent.spawn(
        _publish_sequence, lambda n: publisher.publish("a", Event(str(n))), count, rate
    )
    for when in (0.5, 1.2, 1.9):
        wait_until(
            lambda w=when: sender.dead or broker._link.position >= w * rate, what="publishing"
        )
        kill_pubsub(redis_server, broker)
    sender.get(timeout=30)
    assert broker._link.reconnects == 3
    for reader in readers:
        got = reader.get(timeout=30)
        assert [event.event for event in got if event.event == RESET_EVENT] == []
        assert datas(got) == [str(n) for n in range(count)]
        ids = [sequence(event.id) for event in got]
        assert ids == sorted(set(ids))
    for subscription in subscriptions:
        subscription.close()


@pytest.mark.timeout(30)
def test_the_gap_after_a_lost_connection_is_filled_from_the_stream_in_order(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    broker = make_redis()
    other = make_redis()
    with broker.subscribe(["a", "b"]) as both, broker.subscribe(["b"]) as only_b:
        other.publish("a", Event("before"))
        assert datas(take(both, 1)) == ["before"]
        kill_pubsub(redis_server, broker)
        # Redis dropped the connection at once: all of these are in the gap.
        for number in range(20):
            other.publish("ab"[number % 2], Event(str(number)))
        got = take(both, 20)
        assert datas(got) == [str(n) for n in range(20)]
        assert [sequence(e.id) for e in got] == sorted(sequence(e.id) for e in got)
        assert datas(take(only_b, 10)) == [str(n) for n in range(1, 20, 2)]
        other.publish("b", Event("after"))
        assert datas(take(both, 1)) == ["after"]


@pytest.mark.timeout(30)
def test_a_gap_longer_than_the_history_gets_the_reset_event(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    broker = make_redis(history_size=5)
    other = make_redis(history_size=5)
    with broker.subscribe(["busy"]) as busy, broker.subscribe(["quiet"]) as quiet:
        other.publish("busy", Event("before"))
        assert datas(take(busy, 1)) == ["before"]
        kill_pubsub(redis_server, broker)
        for number in range(20):
            other.publish("busy", Event(str(number)))
        other.publish("quiet", Event("q"))
        reset = take(busy, 1)[0]
        assert reset.event == RESET_EVENT
        # Only the channel whose history fell short is reset.
        assert datas(take(quiet, 1)) == ["q"]
        other.publish("busy", Event("after"))
        assert datas(take(busy, 1)) == ["after"]
    # The reset names the position: replaying from it gives what followed.
    with broker.subscribe(["busy"], last_id=reset.id) as again:
        assert not again.reset
        assert datas(again.get_batch(10)) == ["after"]


@pytest.mark.timeout(60)
def test_a_redis_restart_while_publishing_loses_nothing_and_says_reset(
    make_fresh: MakeRedis, fresh_server: RedisServer
) -> None:
    # A restart without persistence loses every key: a new epoch starts, so
    # ids of the old one are unknown. Each subscriber gets one reset event
    # (naming the new epoch's start) and then every event of the new epoch.
    broker = make_fresh()
    publisher = Publisher(fresh_server.url, key_prefix=broker.key_prefix, timeout=1)
    subscriptions = [broker.subscribe(["a"]) for _ in range(5)] + [
        broker.subscribe(["b", "a"]) for _ in range(5)
    ]
    count, rate = 250, 100.0
    readers = _read_sequences(subscriptions, count)
    sent: list[str] = []

    def publish(number: int) -> None:
        sent.append(publisher.publish(str(number), channel="a"))

    sender = gevent.spawn(_publish_sequence, publish, count, rate)
    wait_until(lambda: len(sent) >= 100, what="publishing")
    fresh_server.restart()
    sender.get(timeout=40)
    publisher.close()
    epochs = {event_id.split("-")[0] for event_id in sent}
    assert len(epochs) == 2
    for reader in readers:
        got = reader.get(timeout=30)
        resets = [event for event in got if event.event == RESET_EVENT]
        assert len(resets) == 1
        assert resets[0].id is not None
        assert resets[0].id.endswith("-0")
        assert resets[0].id.split("-")[0] != sent[0].split("-")[0]
        assert [event.data for event in got if event.event != RESET_EVENT] == [
            str(n) for n in range(count)
        ]
    for subscription in subscriptions:
        subscription.close()


@pytest.mark.timeout(30)
def test_flushall_while_connected_starts_a_new_epoch_with_a_reset(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    broker = make_redis()
    other = make_redis()
    with broker.subscribe(["c"]) as subscription:
        old = other.publish("c", Event("old")).id
        assert datas(take(subscription, 1)) == ["old"]
        with redis_server.client() as client:
            client.flushall()
        new = other.publish("c", Event("new")).id
        assert old is not None
        assert new is not None
        assert new.split("-")[0] != old.split("-")[0]
        reset, event = take(subscription, 2)
        assert reset.event == RESET_EVENT
        assert reset.id == new.split("-")[0] + "-0"
        assert (event.data, event.id) == ("new", new)
    with broker.subscribe(["c"], last_id=old) as stale:
        assert stale.reset


@pytest.mark.timeout(60)
# A kill that lands inside redis-py's connect() leaves the new socket to the
# garbage collector (redis-py closes it only on OSError): it is closed, with
# a ResourceWarning, and the connection never held it.
@pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")
def test_a_killed_greenlet_never_leaves_a_half_read_connection_in_the_pool(
    make_redis: MakeRedis,
) -> None:
    broker = make_redis(max_connections=4, history_size=10)
    big = "x" * 200_000  # many recv() and send() calls: a kill lands mid-command
    rng = random.Random(7)

    def work(number: int, payload: str) -> None:
        if number % 3 == 0:
            assert broker._pool.execute([("ECHO", f"{number}:{payload}")]) == [
                f"{number}:{payload}".encode()
            ]
        elif number % 3 == 1:
            broker.publish(f"k{number % 5}", Event(payload))
        else:
            broker._store.snapshot([f"k{n}" for n in range(5)], 0)

    killed = 0
    number = 0
    # How many kills land mid-command depends on the machine's speed: go on
    # until enough have (the bound only stops a machine where none ever do).
    while number < 200 or (killed < 100 and number < 2000):
        victim = gevent.spawn(work, number, big)
        # Bystanders share the pool and must finish unharmed.
        bystanders = [gevent.spawn(work, number + k, "small") for k in (1, 2)]
        gevent.sleep(rng.random() * 0.003)
        if not victim.dead:
            killed += 1
        victim.kill(block=True, timeout=5)
        gevent.joinall(bystanders, raise_error=True, timeout=10)
        number += 1
    for number in range(100):
        try:
            with gevent.Timeout(rng.random() * 0.003):
                work(number, big)
        except gevent.Timeout:
            killed += 1
    assert killed >= 100  # the kills did land in the middle of commands
    # A killed greenlet holds its exception, whose traceback holds the socket
    # of a killed connect(): a cycle. Collect it here, where its
    # ResourceWarning is expected, not in a later test or at exit.
    del victim, bystanders
    gc.collect()
    # No connection left in the pool holds unread bytes, and each answers
    # exactly its own question.
    idle = [conn for conn in broker._pool._idle if conn.is_connected]
    assert idle
    for index, conn in enumerate(idle):
        assert not conn.can_read(0)
        token = f"token-{index}-{uuid.uuid4().hex}"
        assert pipeline(conn, [("ECHO", token)]) == [token.encode()]
    # And through the pool, from many greenlets at once.
    tokens = [f"t{n}" for n in range(200)]
    echoes = [gevent.spawn(broker._pool.execute, [("ECHO", t)]) for t in tokens]
    gevent.joinall(echoes, raise_error=True, timeout=10)
    assert [g.value for g in echoes] == [[t.encode()] for t in tokens]
    first = broker.publish("after", Event("a")).id
    second = broker.publish("after", Event("b")).id
    assert sequence(second) == sequence(first) + 1


# Its reader reconnects all the time; closing the broker may kill it inside
# redis-py's connect(), which leaves the new socket to the garbage collector.
@pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")
def test_publish_and_subscribe_to_a_dead_redis_raise_a_clear_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    broker = RedisBroker(url, timeout=0.5, max_backoff=0.1)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1"):
        broker.publish("c", Event("lost?"))
    with pytest.raises(BrokerUnavailableError, match="did not confirm"):
        broker.subscribe(["c"])
    assert time.monotonic() - started < 3
    assert broker.stats().subscriptions == 0
    assert broker.stats().subscribers == {}
    with Publisher(url, timeout=0.5) as publisher, pytest.raises(BrokerUnavailableError):
        publisher.publish("lost?", channel="c")
    broker.close()
    # The killed reader's exception holds that socket in a cycle, and the hub
    # holds the reader until it has run the callbacks the kill left: let it
    # run them, then collect here, where the ResourceWarning is expected.
    del broker
    gevent.idle()
    gc.collect()


def test_redis_refusing_a_command_is_a_clear_error(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    broker = make_redis()
    with redis_server.client() as client:
        client.set(f"{broker.key_prefix}state", "not a hash")
    with pytest.raises(BrokerUnavailableError, match="refused to publish to 'c'"):
        broker.publish("c", Event("x"))
    with pytest.raises(BrokerUnavailableError, match="refused"):
        broker._store.snapshot(["c"], 0)
    assert broker.stats().subscriptions == 0


@pytest.mark.timeout(30)
def test_subscribing_while_the_link_is_down_waits_for_it(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    broker = make_redis(max_backoff=0.3)
    other = make_redis()
    with broker.subscribe(["c"]) as first:
        kill_pubsub(redis_server, broker)
        with broker.subscribe(["c", "d"]) as second:
            other.publish("d", Event("d"))
            other.publish("c", Event("c"))
            assert datas(take(second, 2)) == ["d", "c"]
            assert datas(take(first, 1)) == ["c"]


@pytest.mark.timeout(30)
def test_a_pubsub_connection_that_goes_silent_is_replaced(
    make_redis: MakeRedis, redis_server: RedisServer
) -> None:
    # CLIENT PAUSE: Redis keeps the connections open but answers nothing,
    # as a dead network path would. The health-check PINGs go unanswered,
    # the read times out (3 intervals), and the reader reconnects.
    broker = make_redis(health_check_interval=0.2, timeout=2)
    other = make_redis()
    with broker.subscribe(["c"]) as subscription:
        other.publish("c", Event("0"))
        assert datas(take(subscription, 1)) == ["0"]
        with redis_server.client() as client:
            client.client_pause(3000)
        wait_until(lambda: not broker._link.up, what="the silence to be noticed")
        other.publish("c", Event("1"))  # Redis runs it when the pause ends
        assert datas(take(subscription, 1)) == ["1"]
        wait_until(lambda: broker._link.up, what="the reconnection")
        assert broker._link.reconnects >= 1


def test_the_constructor_checks_its_arguments() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="history_size"):
            RedisBroker("redis://", history_size=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue_size"):
        RedisBroker("redis://", queue_size=0)
    with pytest.raises(ValueError, match="max_connections"):
        RedisBroker("redis://", max_connections=0)
    with pytest.raises(ValueError, match="timeout"):
        RedisBroker("redis://", timeout=0)
    with pytest.raises(ValueError, match="not a Redis URL"):
        RedisBroker("http://localhost")
    with pytest.raises(TypeError, match="key_prefix"):
        RedisBroker("redis://", key_prefix=None)  # type: ignore[arg-type]


FORK_SCRIPT = """
from gevent import monkey
monkey.patch_all()

import json, os, sys
import gevent
from flask_sse_stream import Event
from flask_sse_stream._broker.redis import RedisBroker

broker = RedisBroker(sys.argv[1], key_prefix=sys.argv[2])
subscription = broker.subscribe(["c"])
broker.publish("c", Event("0"))
assert next(subscription).data == "0"
pid = os.fork()
if pid == 0:
    try:
        broker.publish("c", Event("from the child"))
        code = 1
    except RuntimeError as exc:
        code = 0 if "fork" in str(exc) else 2
    # The child's hub runs a while: the parent's reader, copied here, must
    # not read the parent's messages off the shared socket.
    gevent.sleep(0.5)
    os._exit(code)
for n in range(1, 50):
    broker.publish("c", Event(str(n)))
    gevent.sleep(0.01)
got = [next(subscription).data for _ in range(49)]
_, status = os.waitpid(pid, 0)
subscription.close()
broker.close()
print(json.dumps({"child": os.WEXITSTATUS(status), "got": got}))
"""


@pytest.mark.timeout(30)
def test_a_forked_child_refuses_the_parents_broker_and_steals_nothing(
    redis_server: RedisServer,
) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, redis_server.url, f"f{uuid.uuid4().hex[:8]}:"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result == {"child": 0, "got": [str(n) for n in range(1, 50)]}
    assert "Traceback" not in completed.stderr


def test_many_short_lived_channels_leave_no_keys_behind(
    make_fresh: MakeRedis, fresh_server: RedisServer
) -> None:
    """Issue 11, item 9: every channel's keys expire (before: they lived for ever)."""
    ttl = 1.0
    broker = make_fresh(history_ttl=ttl)
    broker.publish("warm", Event("x"))
    with fresh_server.client() as client:
        wait_until(lambda: client.dbsize() == 2, 10, "the warm-up channel to expire")
        assert set(client.keys()) == {f"{broker.key_prefix}state", f"{broker.key_prefix}marks"}
        with broker.subscribe(["kept"]) as kept:
            broker.publish("kept", Event("kept"))
            for number in range(CHANNELS):
                channel = f"user-{number}"
                if number % 100:
                    broker.publish(channel, Event(f"hello {number}"))
                else:
                    with broker.subscribe([channel]):
                        broker.publish(channel, Event(f"hello {number}"))
            assert client.dbsize() > 1000  # the last TTL's channels are still there
            # Redis deletes expired keys a few times a second, a sample at a time.
            wait_until(lambda: client.dbsize() <= 4, 60, "the channels' keys to expire")
            assert take(kept, 1)[0].data == "kept"
            # The subscribed channel's history is kept past its TTL.
            assert client.exists(f"{broker.key_prefix}stream:kept") == 1
        wait_until(lambda: client.dbsize() == 2, 10, "the last channel to expire")
