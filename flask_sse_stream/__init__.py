"""Server-Sent Events for Flask, served by gevent."""

from .errors import ConfigError, InvalidEventError, SSEError
from .event import Comment, Event
from .extension import SSE
from .server import serve
from .stream import CloseReason

__version__ = "0.1.0"

__all__ = [
    "SSE",
    "CloseReason",
    "Comment",
    "ConfigError",
    "Event",
    "InvalidEventError",
    "SSEError",
    "serve",
]
