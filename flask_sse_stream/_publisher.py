"""Publishing without a Flask app: from a Celery or RQ worker, a cron job, a script.

::

    from flask_sse_stream import Publisher

    publisher = Publisher("redis://localhost:6379/0")
    event_id = publisher.publish({"done": 42}, channel="jobs", event="progress")

A :class:`Publisher` writes to the same Redis keys, with the same script, as
the :class:`~flask_sse_stream._broker.RedisBroker` of the web processes, so
every subscriber of the channel, on every worker, gets the event, with the
same bytes as ``sse.publish`` would send, and clients that reconnect replay
it. It needs no gevent and no monkey-patching: it is plain blocking redis-py,
safe to share between threads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from flask.json.provider import DefaultJSONProvider
from redis import BlockingConnectionPool
from redis.exceptions import RedisError

from ._broker._local import base36, check_sizes, check_ttl
from ._broker._redis_wire import Keys, Store, connection_factory, encode, pipeline, where
from ._broker.base import BrokerUnavailableError
from ._channels import check_channel
from ._event import Event, JSONDumps

__all__ = ["Publisher"]

# redis-py's pool has no annotations; strict mypy would flag every call.
_BlockingPool: Any = BlockingConnectionPool


def flask_json_dumps(value: Any) -> str:
    """Encode ``value`` as ``app.json.dumps`` does with Flask's default JSON provider.

    Sorted keys, ASCII only, and Flask's handling of dates, UUIDs,
    decimals and dataclasses: the same text, hence the same event bytes.
    """
    return json.dumps(
        value,
        default=DefaultJSONProvider.default,
        ensure_ascii=DefaultJSONProvider.ensure_ascii,
        sort_keys=DefaultJSONProvider.sort_keys,
    )


class Publisher:
    """Publishes events to the subscribers of a :class:`~flask_sse_stream._broker.RedisBroker`.

    :param url: the Redis URL the web app uses (``SSE_BROKER_URL``).
    :param key_prefix: the web app's key prefix.
    :param history_size: the web app's ``SSE_HISTORY_SIZE``: how many events
        each channel's stream keeps for replay.
    :param history_ttl: the web app's ``SSE_HISTORY_TTL``: seconds a channel's
        history is kept once it has no publish and no subscriber; ``None``:
        for ever.
    :param json_dumps: turns data that is not a ``str`` into JSON text. The
        default encodes as a Flask app with the default JSON provider does;
        pass your app's ``app.json.dumps`` if you changed it.
    :param timeout: seconds to connect, or to wait for a reply, before
        :class:`~flask_sse_stream._broker.BrokerUnavailableError`.
    :param max_connections: connections kept for the threads that publish
        at once; a thread that finds none free waits for one up to ``timeout``.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "sse:",
        history_size: int = 1000,
        history_ttl: float | None = 3600,
        json_dumps: JSONDumps = flask_json_dumps,
        timeout: float = 5.0,
        max_connections: int = 10,
    ) -> None:
        check_sizes(history_size, 1)
        keys = Keys(key_prefix)
        self._dumps = json_dumps
        connection_class, kwargs = connection_factory(
            url, timeout=timeout, socket_timeout=timeout, name="flask-sse-stream:publisher"
        )
        self._where = where(kwargs)
        self._pool = _BlockingPool(
            connection_class=connection_class,
            max_connections=max_connections,
            timeout=timeout,
            **kwargs,
        )
        self._store = Store(self._execute, keys, history_size, check_ttl(history_ttl))

    def __repr__(self) -> str:
        return f"<Publisher {self._where} prefix={self._store.keys.prefix!r}>"

    def publish(
        self,
        data: Any,
        *,
        channel: str,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> str:
        """Send an event to every subscriber of ``channel``; return its id.

        The arguments are those of ``sse.publish``. Blocks until Redis has
        stored and published the event (one round trip).

        :raises InvalidEventError: if a field cannot be sent.
        :raises InvalidChannelError: if ``channel`` is not a valid name.
        :raises BrokerUnavailableError: if Redis cannot be reached in time;
            the event may or may not have been published.
        """
        check_channel(channel)
        if not isinstance(data, str):
            data = self._dumps(data)
        stored = Event(data, event=event, id=id, retry=retry)
        epoch, n = self._store.publish(channel, encode(stored, self._dumps))
        return stored.id if stored.id is not None else f"{epoch}-{base36(n)}"

    def _execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        try:
            conn = self._pool.get_connection()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailableError(f"Redis at {self._where} is unavailable: {exc}") from exc
        try:
            return pipeline(conn, commands)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailableError(f"Redis at {self._where} is unavailable: {exc}") from exc
        finally:
            self._pool.release(conn)

    def close(self) -> None:
        """Close the connections; the publisher reconnects if used again."""
        self._pool.disconnect()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
