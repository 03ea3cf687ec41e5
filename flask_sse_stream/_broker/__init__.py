"""Brokers: how published events reach the subscriptions of a channel.

:mod:`~flask_sse_stream._broker.base` holds the contract every broker
follows; :class:`MemoryBroker` is the in-process default;
:class:`RedisBroker` shares channels between processes and hosts through
one Redis (or a primary that Redis Sentinel fails over), and
:class:`ClusterBroker` through a Redis Cluster, channels spread over its
shards (both need the ``redis`` extra: ``pip install flask-sse-stream[redis]``,
and are imported on first use, so this package does not need redis-py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    RESET_EVENT,
    Broker,
    BrokerClosedError,
    BrokerStats,
    BrokerUnavailableError,
    Subscription,
)
from .memory import MemoryBroker, MemorySubscription

if TYPE_CHECKING:
    from .cluster import ClusterBroker, ClusterSubscription
    from .redis import RedisBroker, RedisSubscription

__all__ = [
    "RESET_EVENT",
    "Broker",
    "BrokerClosedError",
    "BrokerStats",
    "BrokerUnavailableError",
    "ClusterBroker",
    "ClusterSubscription",
    "MemoryBroker",
    "MemorySubscription",
    "RedisBroker",
    "RedisSubscription",
    "Subscription",
]

_FROM_REDIS = frozenset({"RedisBroker", "RedisSubscription"})
_FROM_CLUSTER = frozenset({"ClusterBroker", "ClusterSubscription"})


def __getattr__(name: str) -> Any:
    if name in _FROM_REDIS:
        from . import redis

        return getattr(redis, name)
    if name in _FROM_CLUSTER:
        from . import cluster

        return getattr(cluster, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
