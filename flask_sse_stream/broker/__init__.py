"""Brokers: how published events reach the subscriptions of a channel.

:mod:`~flask_sse_stream.broker.base` holds the contract every broker
follows; :class:`MemoryBroker` is the in-process default.
"""

from .base import RESET_EVENT, Broker, BrokerClosedError, BrokerStats, Subscription
from .memory import MemoryBroker, MemorySubscription

__all__ = [
    "RESET_EVENT",
    "Broker",
    "BrokerClosedError",
    "BrokerStats",
    "MemoryBroker",
    "MemorySubscription",
    "Subscription",
]
