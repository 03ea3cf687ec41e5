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
    "ClusterBroker",
    "Comment",
    "ConfigError",
    "Event",
    "InvalidChannelError",
    "InvalidEventError",
    "MemoryBroker",
    "Presence",
    "Publisher",
    "RedisBroker",
    "SSEError",
    "Stats",
    "Subscription",
    "completion_chunks",
    "render_fragment",
    "serve",
]

_HOMES = {
    "RESET_EVENT": "._broker",
    "Broker": "._broker",
    "BrokerClosedError": "._broker",
    "BrokerStats": "._broker",
    "MemoryBroker": "._broker",
    "Subscription": "._broker",
    "BrokerUnavailableError": "._broker",
    "RedisBroker": "._broker.redis",
    "ClusterBroker": "._broker.cluster",
    "Presence": "._presence",
    "Publisher": "._publisher",
    "InvalidChannelError": "._channels",
    "ConfigError": "._errors",
    "InvalidEventError": "._errors",
    "SSEError": "._errors",
    "Comment": "._event",
    "Event": "._event",
    "SSE": "._extension",
    "Stats": "._extension",
    "serve": "._server",
    "CloseReason": "._stream",
    "completion_chunks": "._tokens",
    "render_fragment": "._fragments",
}

if TYPE_CHECKING:
    from ._broker import (
        RESET_EVENT,
        Broker,
        BrokerClosedError,
        BrokerStats,
        BrokerUnavailableError,
        MemoryBroker,
        Subscription,
    )
    from ._broker.cluster import ClusterBroker
    from ._broker.redis import RedisBroker
    from ._channels import InvalidChannelError
    from ._errors import ConfigError, InvalidEventError, SSEError
    from ._event import Comment, Event
    from ._extension import SSE, Stats
    from ._fragments import render_fragment
    from ._presence import Presence
    from ._publisher import Publisher
    from ._server import serve
    from ._stream import CloseReason
    from ._tokens import completion_chunks


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
