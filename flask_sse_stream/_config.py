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
                                    before the client is dropped (seen by
                                    the heartbeat loop, so within 4/3 of
                                    it). ``0`` or ``None``: never.
``SSE_BUFFER_SIZE``        ``64``   Encoded events that may wait for a slow
                                    client before the producer is paused.
``SSE_HISTORY_SIZE``       ``1000`` Events kept per channel to replay to a client
                                    that reconnects with ``Last-Event-ID``.
``SSE_HISTORY_TTL``        ``3600`` Seconds a channel's history is kept once
                                    it has no subscriber and no publish; then
                                    it is dropped (in Redis: the keys
                                    expire) and a client that comes back
                                    with an id of it gets ``sse-reset``.
                                    ``0`` or ``None``: kept for ever.
``SSE_QUEUE_SIZE``         ``1000`` Events a subscriber may fall behind before it
                                    is dropped (it reconnects and replays), or
                                    before its channel's slow-consumer policy
                                    drops or conflates events.
``SSE_SLOW_CONSUMER``      ``"disconnect"``
                                    What a subscriber that falls behind gets:
                                    ``"disconnect"``, ``"drop-oldest"`` or
                                    ``"conflate"``, for every channel, or a
                                    mapping of channel names and patterns to
                                    policies (``{"ticker:*": "conflate"}``).
``SSE_MAX_CONNECTIONS``    ``None`` Open streams per process; past it a new
                                    stream is told to come back later (a
                                    200 stream with a jittered ``retry:``
                                    and an ``sse-unavailable`` event).
                                    ``None``: no limit.
``SSE_CORS_ORIGINS``       ``()``   Origins allowed to open the blueprint's
                                    streams cross-origin: a list, or ``"*"``.
``SSE_CORS_CREDENTIALS``   False    Let those origins send cookies
                                    (``withCredentials``); not with ``"*"``.
``SSE_METRICS``            False    Serve ``sse.stats()`` in Prometheus text
                                    format at the blueprint's ``/metrics``.
``SSE_BROKER_URL``         ``None`` ``redis://host:port/db`` (or ``rediss://``,
                                    ``unix://``) to share events between
                                    processes through Redis;
                                    ``redis+sentinel://h:26379,.../service``
                                    behind Redis Sentinel;
                                    ``redis+cluster://h:7000,...`` across a
                                    Redis Cluster; ``None``: the in-process
                                    broker.
``SSE_KEY_PREFIX``         ``sse:`` Prefix of every Redis key the broker uses.
``SSE_PRESENCE``           False    Track who is on the blueprint's channels
                                    (``True``), and also send ``sse-join`` /
                                    ``sse-leave`` on the channels matching a
                                    list of patterns such as ``["room:*"]``.
``SSE_PRESENCE_GRACE``     ``5``    Seconds an identity may be gone before its
                                    ``sse-leave`` is sent (a reload or a
                                    reconnect in between is neither a leave
                                    nor a join).
``SSE_PRESENCE_TTL``       ``15``   Seconds after which a worker that died
                                    without cleaning up drops out of
                                    presence (Redis); renewed a third of it
                                    apart.
``SSE_ADMIN``              False    Serve the operator page at the blueprint's
                                    ``/admin``, behind ``@sse.admin_check``.
``SSE_COMPRESSION``        ``None`` ``"gzip"``, ``"br"`` or a list of them in order
                                    of preference: compress streams for clients
                                    whose ``Accept-Encoding`` allows it, flushed
                                    chunk by chunk. ``None``: never.
``SSE_COMPRESSION_LEVEL``  ``None`` gzip's level (1-9) or brotli's quality
                                    (0-11); ``None``: 6 for gzip, 5 for br.
``SSE_COMPRESSION_WINDOW`` ``None`` Window bits (gzip 9-15, br 10-24): memory
                                    per stream against ratio; ``None``: 12
                                    for gzip, 14 for br.
``SSE_COMPRESSION_MEM_LEVEL`` None  gzip's ``memLevel`` (1-9), the size of its
                                    hash tables; ``None``: 4.
=========================  =======  ==============================================

The keys are read once, by :meth:`SSE.init_app`; change them before that.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._compress import Compression, encodings
from ._errors import ConfigError

__all__ = ["DEFAULTS", "Config"]

DEFAULTS: Mapping[str, Any] = {
    "SSE_HEARTBEAT_INTERVAL": 15,
    "SSE_RETRY": 3000,
    "SSE_WRITE_TIMEOUT": 30,
    "SSE_BUFFER_SIZE": 64,
    "SSE_HISTORY_SIZE": 1000,
    "SSE_HISTORY_TTL": 3600,
    "SSE_QUEUE_SIZE": 1000,
    "SSE_SLOW_CONSUMER": "disconnect",
    "SSE_MAX_CONNECTIONS": None,
    "SSE_CORS_ORIGINS": (),
    "SSE_CORS_CREDENTIALS": False,
    "SSE_METRICS": False,
    "SSE_BROKER_URL": None,
    "SSE_KEY_PREFIX": "sse:",
    "SSE_PRESENCE": False,
    "SSE_PRESENCE_GRACE": 5,
    "SSE_PRESENCE_TTL": 15,
    "SSE_ADMIN": False,
    "SSE_COMPRESSION": None,
    "SSE_COMPRESSION_LEVEL": None,
    "SSE_COMPRESSION_WINDOW": None,
    "SSE_COMPRESSION_MEM_LEVEL": None,
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


def optional_positive_int(name: str, value: Any) -> int | None:
    """Check a limit that may be ``None`` (no limit)."""
    return None if value is None else positive_int(name, value)


def flag(name: str, value: Any) -> bool:
    """Check an on/off setting."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


def origins(name: str, value: Any) -> frozenset[str] | None:
    """Check a list of origins such as ``["https://example.com"]``; ``"*"``: any."""
    if value == "*":
        return None
    if isinstance(value, str) or not all(
        isinstance(origin, str)
        and origin.startswith(("http://", "https://"))
        and origin.count("/") == 2
        for origin in value
    ):
        raise ConfigError(
            f'{name} must be "*" or a list of origins like ["https://example.com"] '
            f"(scheme, host and port, no path), got {value!r}"
        )
    return frozenset(value)


def broker_url(name: str, value: Any) -> str | None:
    """Check a broker URL: ``None`` (in-process) or a Redis URL."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(
        ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")
    ):
        raise ConfigError(
            f"{name} must be None (the in-process broker) or a Redis URL such as "
            f"'redis://localhost:6379/0', got {str(value)[:80]!r}"
        )
    return value


def slow_consumer(name: str, value: Any) -> tuple[tuple[str, str], ...]:
    """Check slow-consumer policies: one for every channel, or a mapping of patterns to them."""
    from ._broker._policy import Policies

    try:
        policies = Policies(value)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return tuple(policies.rules.items())


def text(name: str, value: Any) -> str:
    """Check a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    return value


def presence(name: str, value: Any) -> tuple[bool, tuple[str, ...]]:
    """Check ``SSE_PRESENCE``: off, on, or on with join/leave events on some channels.

    Returns whether presence is tracked and the :mod:`fnmatch` patterns of
    the channels that get ``sse-join`` and ``sse-leave`` events.
    """
    if isinstance(value, bool):
        return value, ()
    if (
        isinstance(value, str)
        or not isinstance(value, list | tuple | set | frozenset)
        or not all(isinstance(pattern, str) and pattern for pattern in value)
    ):
        raise ConfigError(
            f"{name} must be False, True (track every channel) or a list of channel "
            f'patterns that also get join and leave events, like ["room:*"], got {value!r}'
        )
    return True, tuple(value)


def positive_seconds(name: str, value: Any) -> float:
    """Check a duration in seconds that must be more than 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{name} must be a number of seconds above 0, got {value!r}")
    return float(value)


def nonnegative_seconds(name: str, value: Any) -> float:
    """Check a duration in seconds that may be 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{name} must be a number of seconds, 0 or more, got {value!r}")
    return float(value)


def tuning(name: str, value: Any, high: int) -> int | None:
    """Check a compression setting's number (each coding checks its own range)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise ConfigError(
            f"{name} must be None (the default) or a whole number from 0 to {high}, got {value!r}"
        )
    return value


def compressions(
    value: Any,
    *,
    level: Any = None,
    window: Any = None,
    mem_level: Any = None,
    name: str = "SSE_COMPRESSION",
) -> tuple[Compression, ...]:
    """Check a compression setting and the ``SSE_COMPRESSION_*`` keys that tune it."""
    out = []
    for encoding in encodings(name, value):
        default = Compression.default(encoding)
        out.append(
            Compression(
                encoding,
                default.level if level is None else level,
                default.window if window is None else window,
                default.mem_level if mem_level is None else mem_level,
            ).checked()
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Config:
    """The checked ``SSE_*`` settings of one application."""

    heartbeat_interval: float | None
    retry: int | None
    write_timeout: float | None
    buffer_size: int
    history_size: int = 1000
    history_ttl: float | None = 3600.0
    queue_size: int = 1000
    slow_consumer: tuple[tuple[str, str], ...] = (("*", "disconnect"),)
    """``(pattern, policy)`` pairs, in order (a channel's own name first)."""
    max_connections: int | None = None
    cors_origins: frozenset[str] | None = frozenset()
    """Allowed origins; ``None`` means any origin."""
    cors_credentials: bool = False
    metrics: bool = False
    broker_url: str | None = None
    key_prefix: str = "sse:"
    presence: bool = False
    """Whether the blueprint tracks who is on its channels."""
    presence_events: tuple[str, ...] = ()
    """Patterns of the channels that get ``sse-join`` and ``sse-leave``."""
    presence_grace: float = 5.0
    presence_ttl: float = 15.0
    admin: bool = False
    compression: tuple[Compression, ...] = ()
    """The codings streams may be compressed with, in order of preference."""
    compression_level: int | None = None
    compression_window: int | None = None
    compression_mem_level: int | None = None

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> Config:
        """Read and check the keys; missing keys take their defaults."""

        def get(key: str) -> Any:
            return config.get(key, DEFAULTS[key])

        tracked, events = presence("SSE_PRESENCE", get("SSE_PRESENCE"))

        return cls(
            heartbeat_interval=seconds("SSE_HEARTBEAT_INTERVAL", get("SSE_HEARTBEAT_INTERVAL")),
            retry=milliseconds("SSE_RETRY", get("SSE_RETRY")),
            write_timeout=seconds("SSE_WRITE_TIMEOUT", get("SSE_WRITE_TIMEOUT")),
            buffer_size=positive_int("SSE_BUFFER_SIZE", get("SSE_BUFFER_SIZE")),
            history_size=positive_int("SSE_HISTORY_SIZE", get("SSE_HISTORY_SIZE")),
            history_ttl=seconds("SSE_HISTORY_TTL", get("SSE_HISTORY_TTL")),
            queue_size=positive_int("SSE_QUEUE_SIZE", get("SSE_QUEUE_SIZE")),
            slow_consumer=slow_consumer("SSE_SLOW_CONSUMER", get("SSE_SLOW_CONSUMER")),
            max_connections=optional_positive_int(
                "SSE_MAX_CONNECTIONS", get("SSE_MAX_CONNECTIONS")
            ),
            cors_origins=origins("SSE_CORS_ORIGINS", get("SSE_CORS_ORIGINS")),
            cors_credentials=flag("SSE_CORS_CREDENTIALS", get("SSE_CORS_CREDENTIALS")),
            metrics=flag("SSE_METRICS", get("SSE_METRICS")),
            broker_url=broker_url("SSE_BROKER_URL", get("SSE_BROKER_URL")),
            key_prefix=text("SSE_KEY_PREFIX", get("SSE_KEY_PREFIX")),
            presence=tracked,
            presence_events=events,
            presence_grace=nonnegative_seconds("SSE_PRESENCE_GRACE", get("SSE_PRESENCE_GRACE")),
            presence_ttl=positive_seconds("SSE_PRESENCE_TTL", get("SSE_PRESENCE_TTL")),
            admin=flag("SSE_ADMIN", get("SSE_ADMIN")),
            compression=compressions(
                get("SSE_COMPRESSION"),
                level=get("SSE_COMPRESSION_LEVEL"),
                window=get("SSE_COMPRESSION_WINDOW"),
                mem_level=get("SSE_COMPRESSION_MEM_LEVEL"),
            ),
            compression_level=tuning("SSE_COMPRESSION_LEVEL", get("SSE_COMPRESSION_LEVEL"), 11),
            compression_window=tuning("SSE_COMPRESSION_WINDOW", get("SSE_COMPRESSION_WINDOW"), 24),
            compression_mem_level=tuning(
                "SSE_COMPRESSION_MEM_LEVEL", get("SSE_COMPRESSION_MEM_LEVEL"), 9
            ),
        ).checked()

    def compressions(self, value: Any) -> tuple[Compression, ...]:
        """The codings a view's ``compress=`` names, tuned by the ``SSE_COMPRESSION_*`` keys."""
        return compressions(
            value,
            level=self.compression_level,
            window=self.compression_window,
            mem_level=self.compression_mem_level,
            name="compress",
        )

    def checked(self) -> Config:
        """Refuse combinations of values that are each fine alone."""
        if self.cors_origins is None and self.cors_credentials:
            raise ConfigError(
                'SSE_CORS_ORIGINS = "*" cannot be used with SSE_CORS_CREDENTIALS: browsers '
                "refuse it, and it would let any site read your users' streams; list the "
                "origins instead"
            )
        return self
