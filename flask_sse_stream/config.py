"""The ``SSE_*`` configuration keys, their defaults, and how they are checked.

=========================  =======  ==============================================
Key                        Default  Meaning
=========================  =======  ==============================================
``SSE_HEARTBEAT_INTERVAL`` ``15``   Seconds a stream may stay silent before a
                                    heartbeat comment is sent. ``0`` or ``None``
                                    turns heartbeats off.
``SSE_RETRY``              ``3000`` Milliseconds the browser waits before it
                                    reconnects, sent when a stream opens.
                                    ``None`` sends a comment instead.
``SSE_WRITE_TIMEOUT``      ``30``   Seconds one write to a client may block
                                    before the client is dropped. ``0`` or
                                    ``None``: never.
``SSE_BUFFER_SIZE``        ``64``   Encoded events that may wait for a slow
                                    client before the producer is paused.
=========================  =======  ==============================================

The keys are read once, by :meth:`SSE.init_app`; change them before that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["DEFAULTS", "Config"]

DEFAULTS: Mapping[str, Any] = {
    "SSE_HEARTBEAT_INTERVAL": 15,
    "SSE_RETRY": 3000,
    "SSE_WRITE_TIMEOUT": 30,
    "SSE_BUFFER_SIZE": 64,
}


def seconds(name: str, value: Any) -> float | None:
    """Check a duration in seconds; ``0`` and ``None`` mean "off"."""
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{name} must be a number of seconds (0 or None: off), got {value!r}")
    return float(value)


def milliseconds(name: str, value: Any) -> int | None:
    """Check a duration in whole milliseconds; ``None`` means "not set"."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a whole number of milliseconds or None, got {value!r}")
    return value


def positive_int(name: str, value: Any) -> int:
    """Check a count that must be 1 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number of 1 or more, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Config:
    """The checked ``SSE_*`` settings of one application."""

    heartbeat_interval: float | None
    retry: int | None
    write_timeout: float | None
    buffer_size: int

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> Config:
        """Read and check the keys; missing keys take their defaults."""

        def get(key: str) -> Any:
            return config.get(key, DEFAULTS[key])

        return cls(
            heartbeat_interval=seconds("SSE_HEARTBEAT_INTERVAL", get("SSE_HEARTBEAT_INTERVAL")),
            retry=milliseconds("SSE_RETRY", get("SSE_RETRY")),
            write_timeout=seconds("SSE_WRITE_TIMEOUT", get("SSE_WRITE_TIMEOUT")),
            buffer_size=positive_int("SSE_BUFFER_SIZE", get("SSE_BUFFER_SIZE")),
        )
