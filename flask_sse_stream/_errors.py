"""The exceptions raised by flask-sse-stream."""

from __future__ import annotations

__all__ = ["ConfigError", "InvalidEventError", "SSEError"]


class SSEError(Exception):
    """Base class of every error raised by flask-sse-stream."""


class InvalidEventError(SSEError, ValueError):
    """An event, comment or field value cannot be sent as written.

    Raised when an :class:`~flask_sse_stream.Event` or
    :class:`~flask_sse_stream.Comment` is built, before anything touches a
    socket, so a bad value never reaches a client half-written. The message
    names the field and says what is allowed.
    """


class ConfigError(SSEError, ValueError):
    """An ``SSE_*`` configuration value or a stream option is not allowed.

    The message names the key and the values it takes.
    """
