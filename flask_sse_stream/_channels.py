"""What a stream request asks for: channel names and the last event id.

Both come from the client, so both are checked before they reach a broker, a
header or a log line: a channel name must match :data:`CHANNEL_PATTERN`; a
last event id that is too long or not printable ASCII is replaced by
:data:`UNKNOWN_ID`, which no broker ever issued, so the client gets the
reset event instead of a replay, and its text is never echoed.
"""

from __future__ import annotations

import re

from ._errors import SSEError

__all__ = [
    "CHANNEL_PATTERN",
    "MAX_ID_LENGTH",
    "UNKNOWN_ID",
    "InvalidChannelError",
    "check_channel",
    "last_event_id",
]

CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
"""1 to 128 letters, digits and ``_ . : @ -``, starting with a letter or digit."""

MAX_ID_LENGTH = 256
"""Longer ``Last-Event-ID`` values are treated as unknown."""

UNKNOWN_ID = "?"
"""Stands for an id the client sent that cannot be ours."""

_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]+")


class InvalidChannelError(SSEError, ValueError):
    """A channel name is empty, too long or has characters outside :data:`CHANNEL_PATTERN`."""


def check_channel(name: str) -> str:
    """Return ``name`` if it is a valid channel name, else raise InvalidChannelError."""
    if not isinstance(name, str) or CHANNEL_PATTERN.fullmatch(name) is None:
        raise InvalidChannelError(
            "a channel name is 1 to 128 letters, digits and '_ . : @ -', starting with a "
            f"letter or digit; got {str(name)[:64]!r}"
        )
    return name


def last_event_id(header: str | None, query: str | None) -> str | None:
    """Return the id a reconnecting client last saw, or ``None`` on a first visit.

    ``header`` is the ``Last-Event-ID`` header, which browsers send when they
    reconnect; it wins over ``query``, the ``lastEventId`` query parameter,
    which a page can set on its first load (or a polyfill on every request).
    An empty value means none.
    """
    value = header or query or None
    if value is None:
        return None
    if len(value) > MAX_ID_LENGTH or _PRINTABLE_ASCII.fullmatch(value) is None:
        return UNKNOWN_ID
    return value
