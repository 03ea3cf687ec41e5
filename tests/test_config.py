"""Reading and checking the SSE_* configuration keys."""

from __future__ import annotations

from typing import Any

import pytest

from flask_sse_stream import ConfigError
from flask_sse_stream._compress import Compression
from flask_sse_stream._config import DEFAULTS, Config


def test_defaults() -> None:
    config = Config.from_mapping({})
    assert config == Config(
        heartbeat_interval=15.0,
        retry=3000,
        write_timeout=30.0,
        buffer_size=64,
        history_size=1000,
        history_ttl=3600.0,
        queue_size=1000,
        slow_consumer=(("*", "disconnect"),),
        max_connections=None,
        cors_origins=frozenset(),
        cors_credentials=False,
        metrics=False,
        broker_url=None,
        key_prefix="sse:",
        presence=False,
        presence_events=(),
        presence_grace=5.0,
        presence_ttl=15.0,
        admin=False,
    )
    assert set(DEFAULTS) == {
        "SSE_HEARTBEAT_INTERVAL",
        "SSE_RETRY",
        "SSE_WRITE_TIMEOUT",
        "SSE_BUFFER_SIZE",
        "SSE_HISTORY_SIZE",
        "SSE_HISTORY_TTL",
        "SSE_QUEUE_SIZE",
        "SSE_SLOW_CONSUMER",
        "SSE_MAX_CONNECTIONS",
        "SSE_CORS_ORIGINS",
        "SSE_CORS_CREDENTIALS",
        "SSE_METRICS",
        "SSE_BROKER_URL",
        "SSE_KEY_PREFIX",
        "SSE_PRESENCE",
        "SSE_PRESENCE_GRACE",
        "SSE_PRESENCE_TTL",
        "SSE_ADMIN",
        "SSE_COMPRESSION",
        "SSE_COMPRESSION_LEVEL",
        "SSE_COMPRESSION_WINDOW",
        "SSE_COMPRESSION_MEM_LEVEL",
    }


@pytest.mark.parametrize(
    ("key", "value", "attribute", "expected"),
    [
        ("SSE_HEARTBEAT_INTERVAL", 0, "heartbeat_interval", None),
        ("SSE_HEARTBEAT_INTERVAL", None, "heartbeat_interval", None),
        ("SSE_HEARTBEAT_INTERVAL", 0.5, "heartbeat_interval", 0.5),
        ("SSE_RETRY", None, "retry", None),
        ("SSE_RETRY", 0, "retry", 0),
        ("SSE_WRITE_TIMEOUT", 0, "write_timeout", None),
        ("SSE_MAX_CONNECTIONS", 10, "max_connections", 10),
        ("SSE_CORS_ORIGINS", "*", "cors_origins", None),
        (
            "SSE_CORS_ORIGINS",
            ["https://a.example", "http://b.example:8080"],
            "cors_origins",
            frozenset({"https://a.example", "http://b.example:8080"}),
        ),
        ("SSE_METRICS", True, "metrics", True),
        ("SSE_BROKER_URL", "redis://h:6379/0", "broker_url", "redis://h:6379/0"),
        ("SSE_KEY_PREFIX", "app1:", "key_prefix", "app1:"),
        ("SSE_COMPRESSION", "gzip", "compression", (Compression.default("gzip"),)),
        (
            "SSE_COMPRESSION",
            ["br", "gzip", "br"],
            "compression",
            (Compression.default("br"), Compression.default("gzip")),
        ),
        ("SSE_COMPRESSION", None, "compression", ()),
        ("SSE_COMPRESSION_WINDOW", 15, "compression_window", 15),
        ("SSE_SLOW_CONSUMER", "conflate", "slow_consumer", (("*", "conflate"),)),
        (
            "SSE_SLOW_CONSUMER",
            {"ticker:*": "conflate", "logs:*": "drop-oldest"},
            "slow_consumer",
            (("ticker:*", "conflate"), ("logs:*", "drop-oldest")),
        ),
    ],
)
def test_accepted_values(key: str, value: Any, attribute: str, expected: Any) -> None:
    assert getattr(Config.from_mapping({key: value}), attribute) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SSE_HISTORY_SIZE", 0),
        ("SSE_QUEUE_SIZE", "10"),
        ("SSE_MAX_CONNECTIONS", 0),
        ("SSE_MAX_CONNECTIONS", True),
        ("SSE_CORS_ORIGINS", "https://a.example"),
        ("SSE_CORS_ORIGINS", ["https://a.example/path"]),
        ("SSE_CORS_ORIGINS", ["a.example"]),
        ("SSE_CORS_CREDENTIALS", "yes"),
        ("SSE_METRICS", 1),
        ("SSE_BROKER_URL", "localhost:6379"),
        ("SSE_BROKER_URL", "memcached://x"),
        ("SSE_KEY_PREFIX", ""),
        ("SSE_COMPRESSION", "deflate"),
        ("SSE_COMPRESSION", []),
        ("SSE_COMPRESSION", True),
        ("SSE_COMPRESSION_LEVEL", "6"),
        ("SSE_COMPRESSION_WINDOW", 25),
        ("SSE_COMPRESSION_MEM_LEVEL", True),
        ("SSE_SLOW_CONSUMER", "latest"),
        ("SSE_SLOW_CONSUMER", {"ticker:*": "conflated"}),
        ("SSE_SLOW_CONSUMER", {"": "conflate"}),
        ("SSE_SLOW_CONSUMER", ["conflate"]),
    ],
)
def test_refused_values_name_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=key):
        Config.from_mapping({key: value})


@pytest.mark.parametrize(
    ("encoding", "key", "value"),
    [
        ("gzip", "SSE_COMPRESSION_LEVEL", 10),  # brotli's qualities go to 11, gzip's to 9
        ("gzip", "SSE_COMPRESSION_WINDOW", 16),
        ("br", "SSE_COMPRESSION_WINDOW", 9),
        ("gzip", "SSE_COMPRESSION_MEM_LEVEL", 0),
    ],
)
def test_tuning_is_checked_for_each_coding(encoding: str, key: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"{key}.*for {encoding}"):
        Config.from_mapping({"SSE_COMPRESSION": encoding, key: value})


def test_tuning_applies_to_every_coding() -> None:
    config = Config.from_mapping({"SSE_COMPRESSION": ["br", "gzip"], "SSE_COMPRESSION_LEVEL": 3})
    assert [(c.encoding, c.level) for c in config.compression] == [("br", 3), ("gzip", 3)]
    assert config.compressions("gzip") == (Compression("gzip", 3, 12, 4),)


def test_wildcard_origins_with_credentials_are_refused() -> None:
    with pytest.raises(ConfigError, match="list the origins"):
        Config.from_mapping({"SSE_CORS_ORIGINS": "*", "SSE_CORS_CREDENTIALS": True})
