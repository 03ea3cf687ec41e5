"""Where a Redis broker runs its commands: its home hub, and a pool of connections there.

Every Redis command of a :class:`~flask_sse_stream._broker.RedisBroker` runs
in one gevent hub, the one of the thread that built the broker (its
*home*): redis-py's connections, and the greenlets that wait on them,
belong to that hub. A call from another OS thread is handed to the home hub
and waited for (:meth:`Home.run`).

In the home hub a small :class:`Pool` of connections runs the commands of
any number of greenlets. A greenlet killed in the middle of a command
leaves no half-read connection behind: the connection is closed (see
:func:`~flask_sse_stream._broker._redis_wire.pipeline`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import gevent
import gevent.lock
from redis.exceptions import RedisError

from ._redis_wire import Then, pipeline
from ._wakeup import allocate_lock, get_ident
from .base import BrokerUnavailableError

__all__ = ["Home", "Pool"]

T = TypeVar("T")


class Home:
    """The hub and thread that built a broker, where its Redis commands run.

    :param timeout: the broker's command timeout; a call handed over from
        another thread waits for three times that at most.
    """

    __slots__ = ("hub", "thread", "timeout")

    def __init__(self, timeout: float) -> None:
        self.thread: int = get_ident()
        self.hub = gevent.get_hub()
        self.timeout = timeout

    def run(self, function: Callable[..., T], *args: Any) -> T:
        """Call ``function(*args)`` in a greenlet of the home hub and return its result.

        :raises BrokerUnavailableError: if the home hub is gone or does not answer.
        """
        if get_ident() == self.thread:
            return function(*args)
        done = allocate_lock()
        done.acquire()
        outcome: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                outcome.append((True, function(*args)))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                done.release()

        try:
            self.hub.loop.run_callback_threadsafe(gevent.spawn, run)
        except Exception as exc:  # the home hub is gone
            raise BrokerUnavailableError(
                f"the thread that made the RedisBroker is gone: {exc}"
            ) from None
        if not done.acquire(timeout=3 * self.timeout):
            raise BrokerUnavailableError(
                f"the RedisBroker's thread did not answer within {3 * self.timeout} s"
            )
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def call(self, function: Callable[[], object]) -> None:
        """Call ``function()`` now in the home thread, else soon in the home hub.

        Does nothing if the home hub is gone (and whatever ``function``
        would have touched went with it).
        """
        if get_ident() == self.thread:
            function()
        else:
            try:
                self.hub.loop.run_callback_threadsafe(function)
            except Exception:
                pass


class Pool:
    """A few connections for commands, used by greenlets of the broker's home hub."""

    def __init__(self, make: Callable[[], Any], size: int, timeout: float, where: str) -> None:
        self._make = make
        self._idle: list[Any] = []
        self._created: list[Any] = []
        self._slots = gevent.lock.BoundedSemaphore(size)
        self._timeout = timeout
        self._where = where

    def execute(self, commands: Sequence[tuple[Any, ...]], then: Then | None = None) -> list[Any]:
        """Run ``commands`` (and what ``then`` adds) on a pooled connection; see :func:`pipeline`.

        :raises BrokerUnavailableError: if Redis cannot be reached in time.
        """
        if not self._slots.acquire(timeout=self._timeout):
            raise BrokerUnavailableError(
                f"no Redis connection came free within {self._timeout} s "
                f"(max_connections={len(self._created)})"
            )
        try:
            conn = self._take()
            try:
                return pipeline(conn, commands, then)
            finally:
                self._idle.append(conn)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailableError(f"Redis at {self._where} is unavailable: {exc}") from exc
        finally:
            self._slots.release()

    def _take(self) -> Any:
        if not self._idle:
            conn = self._make()
            self._created.append(conn)
            return conn
        conn = self._idle.pop()
        if conn.is_connected:
            # Readable while idle: the server closed it (a restart, CLIENT
            # KILL) or sent something unasked. Either way, start afresh.
            try:
                if conn.can_read(0):
                    conn.disconnect()
            except (RedisError, OSError):
                conn.disconnect()
        return conn

    def connections(self) -> list[Any]:
        """Every connection made so far (for tests and diagnostics)."""
        return list(self._created)

    def close(self) -> None:
        """Close every connection; the pool makes new ones if used again."""
        for conn in self._created:
            conn.disconnect()
        self._idle.clear()
        self._created.clear()
