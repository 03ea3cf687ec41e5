"""Server-Sent Events for Flask, served by gevent."""

from .broker import (
    RESET_EVENT,
    Broker,
    BrokerClosedError,
    BrokerStats,
    MemoryBroker,
    Subscription,
)
from .channels import InvalidChannelError
from .errors import ConfigError, InvalidEventError, SSEError
from .event import Comment, Event
from .extension import SSE
from .server import serve
from .stream import CloseReason

__version__ = "0.1.0"

__all__ = [
    "RESET_EVENT",
    "SSE",
    "Broker",
    "BrokerClosedError",
    "BrokerStats",
    "CloseReason",
    "Comment",
    "ConfigError",
    "Event",
    "InvalidChannelError",
    "InvalidEventError",
    "MemoryBroker",
    "SSEError",
    "Subscription",
    "serve",
]
