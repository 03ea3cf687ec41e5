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
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from flask.json.provider import DefaultJSONProvider
from redis import BlockingConnectionPool
from redis.connection import Connection
from redis.exceptions import RedisError

from ._broker._cluster_wire import (
    CLUSTER_SCHEME,
    Address,
    ClusterKeys,
    ClusterStore,
    Topology,
    cluster_settings,
)
from ._broker._local import base36, check_sizes, check_ttl
from ._broker._policy import check_key
from ._broker._redis_wire import (
    Keys,
    Store,
    Then,
    close_sentinels,
    connection_factory,
    encode,
    pipeline,
    replicas_to_wait,
    where,
)
from ._broker.base import BrokerUnavailableError
from ._channels import check_channel
from ._event import JSONDumps
from ._publish import event_to_publish

__all__ = ["Publisher"]

# redis-py's pool has no annotations; strict mypy would flag every call.
_BlockingPool: Any = BlockingConnectionPool
_Connection: Any = Connection


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

    :param url: the Redis URL the web app uses (``SSE_BROKER_URL``), a
        ``redis+sentinel://`` or ``redis+cluster://`` one included.
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
        at once (per primary, in a cluster); a thread that finds none free
        waits for one up to ``timeout``.
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
        # A Redis Cluster keeps histories without expiry for now (CHANGES.md).
        ttl = check_ttl(history_ttl)
        self._dumps = json_dumps
        self._prefix = key_prefix
        self._cluster: ClusterStore | None = None
        self._clock = 0
        self._clock_lock = threading.Lock()
        if url.startswith(CLUSTER_SCHEME + "://"):
            self._cluster = _cluster_store(url, key_prefix, history_size, timeout, max_connections)
            self._where = "a Redis Cluster"
            return
        keys = Keys(key_prefix)
        connection_class, kwargs = connection_factory(
            url, timeout=timeout, socket_timeout=timeout, name="flask-sse-stream:publisher"
        )
        self._where = where(kwargs)
        self._kwargs = kwargs
        self._pool = _BlockingPool(
            connection_class=connection_class,
            max_connections=max_connections,
            timeout=timeout,
            **kwargs,
        )
        self._node = _NodePool(self._pool, self._where)
        self._store = Store(
            self._node.execute,
            keys,
            history_size,
            ttl,
            replicas=replicas_to_wait(url),
            timeout=timeout,
        )

    def __repr__(self) -> str:
        return f"<Publisher {self._where} prefix={self._prefix!r}>"

    def publish(
        self,
        data: Any,
        *,
        channel: str,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        key: str | None = None,
    ) -> str:
        """Send an event to every subscriber of ``channel``; return its id.

        The arguments are those of ``sse.publish`` (``key`` included; ``data`` may be a whole
        :class:`Event` or a datastar-py event). Blocks until Redis has
        stored and published the event (one round trip).

        :raises InvalidEventError: if a field cannot be sent.
        :raises InvalidChannelError: if ``channel`` is not a valid name.
        :raises BrokerUnavailableError: if Redis cannot be reached in time;
            the event may or may not have been published.
        """
        check_channel(channel)
        check_key(key)
        stored = event_to_publish(data, event=event, id=id, retry=retry, dumps=self._dumps)
        if self._cluster is not None:
            with self._clock_lock:
                floor = self._clock + 1
            epoch, n = self._cluster.publish(channel, encode(stored, self._dumps, key), floor)
            with self._clock_lock:
                self._clock = max(self._clock, n)
        else:
            epoch, n = self._store.publish(channel, encode(stored, self._dumps, key))
        return stored.id if stored.id is not None else f"{epoch}-{base36(n)}"

    def close(self) -> None:
        """Close the connections; the publisher reconnects if used again."""
        if self._cluster is not None:
            self._cluster.topology.close()
        else:
            self._node.close()
            close_sentinels(self._kwargs)

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _NodePool:
    """Blocking, thread-safe connections to one cluster node."""

    def __init__(self, pool: Any, where: str) -> None:
        self._pool = pool
        self._where = where

    def execute(self, commands: Sequence[tuple[Any, ...]], then: Then | None = None) -> list[Any]:
        try:
            conn = self._pool.get_connection()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailableError(f"Redis at {self._where} is unavailable: {exc}") from exc
        try:
            return pipeline(conn, commands, then)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailableError(f"Redis at {self._where} is unavailable: {exc}") from exc
        finally:
            self._pool.release(conn)

    def close(self) -> None:
        self._pool.disconnect()


def _cluster_store(
    url: str, key_prefix: str, history_size: int, timeout: float, max_connections: int
) -> ClusterStore:
    settings = cluster_settings(url, timeout=timeout, socket_timeout=timeout)

    def executor(address: Address) -> _NodePool:
        pool = _BlockingPool(
            connection_class=Connection,
            host=address[0],
            port=address[1],
            max_connections=max_connections,
            timeout=timeout,
            client_name="flask-sse-stream:publisher",
            **settings.connection,
        )
        return _NodePool(pool, f"{address[0]}:{address[1]}")

    def connect(address: Address) -> Any:
        return _Connection(host=address[0], port=address[1], **settings.connection)

    topology = Topology(settings.seeds, executor, connect)
    return ClusterStore(
        topology,
        ClusterKeys(key_prefix),
        history_size,
        replicas=settings.replicas,
        timeout=timeout,
    )
