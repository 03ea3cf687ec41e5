"""Server-Sent Events for Flask, served by gevent.

The public names load on first use, so that ``python -m flask_sse_stream``
and the ``flask-sse-stream`` command can patch the process with gevent
before Flask, Werkzeug or any socket module is imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = [
    "RESET_EVENT",
    "SSE",
    "Broker",
    "BrokerClosedError",
    "BrokerStats",
    "BrokerUnavailableError",
    "CloseReason",
    "Comment",
    "ConfigError",
    "Event",
    "InvalidChannelError",
    "InvalidEventError",
    "MemoryBroker",
    "Publisher",
    "RedisBroker",
    "SSEError",
    "Stats",
    "Subscription",
    "serve",
]

_HOMES = {
    "RESET_EVENT": ".broker",
    "Broker": ".broker",
    "BrokerClosedError": ".broker",
    "BrokerStats": ".broker",
    "MemoryBroker": ".broker",
    "Subscription": ".broker",
    "BrokerUnavailableError": ".broker",
    "RedisBroker": ".broker.redis",
    "Publisher": ".publisher",
    "InvalidChannelError": ".channels",
    "ConfigError": ".errors",
    "InvalidEventError": ".errors",
    "SSEError": ".errors",
    "Comment": ".event",
    "Event": ".event",
    "SSE": ".extension",
    "Stats": ".extension",
    "serve": ".server",
    "CloseReason": ".stream",
}

if TYPE_CHECKING:
    from .broker import (
        RESET_EVENT,
        Broker,
        BrokerClosedError,
        BrokerStats,
        BrokerUnavailableError,
        MemoryBroker,
        Subscription,
    )
    from .broker.redis import RedisBroker
    from .channels import InvalidChannelError
    from .errors import ConfigError, InvalidEventError, SSEError
    from .event import Comment, Event
    from .extension import SSE, Stats
    from .publisher import Publisher
    from .server import serve
    from .stream import CloseReason


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
