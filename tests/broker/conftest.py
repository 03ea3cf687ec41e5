"""Fixtures for the broker tests: one factory parametrised over broker kinds.

Every test that takes ``make_broker`` (or ``broker``) runs once per kind in
:data:`BROKER_KINDS`. To add a kind (the Redis broker), write a factory
with the signature of :func:`_memory` that takes what it needs from
``request`` (for Redis: ``request.getfixturevalue("redis_server")``, a
real ``redis-server`` on 127.0.0.1; each call a fresh key prefix, so two
brokers of one test are independent instances) and list it below.

At teardown each broker made must have no open subscription left (a leak
guard, like the stream guard of ``tests/conftest.py``), then it is closed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import gevent
import pytest

from flask_sse_stream import Event
from flask_sse_stream.broker import Broker, MemoryBroker, Subscription


class MakeBroker(Protocol):
    def __call__(self, history_size: int = 1000, queue_size: int = 1000) -> Broker: ...


def _memory(request: pytest.FixtureRequest, history_size: int, queue_size: int) -> Broker:
    return MemoryBroker(history_size=history_size, queue_size=queue_size)


_FACTORIES: dict[str, Callable[[pytest.FixtureRequest, int, int], Broker]] = {
    "memory": _memory,
}
BROKER_KINDS = list(_FACTORIES)


@pytest.fixture(params=BROKER_KINDS)
def make_broker(request: pytest.FixtureRequest) -> Iterator[MakeBroker]:
    """Make brokers of the parametrised kind; each is checked and closed at teardown."""
    factory = _FACTORIES[request.param]
    made: list[Broker] = []

    def make(history_size: int = 1000, queue_size: int = 1000) -> Broker:
        broker = factory(request, history_size, queue_size)
        made.append(broker)
        return broker

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
