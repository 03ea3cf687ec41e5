"""The app-less :class:`Publisher`, and what the Redis broker does in a plain process.

These run in the ordinary (unpatched) pytest process, as a Celery or RQ
worker would: blocking redis-py against a real ``redis-server``. What the
subscribers of a :class:`RedisBroker` get from a publisher is in
``test_redis.py`` (it needs a gevent-patched process).
"""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from gevent import monkey
from redis_server import RedisServer, free_port

from flask_sse_stream import Event, InvalidChannelError, InvalidEventError
from flask_sse_stream._broker._redis_wire import decode, decode_keyed
from flask_sse_stream._broker.redis import BrokerUnavailableError, RedisBroker
from flask_sse_stream._publisher import Publisher, flask_json_dumps


@pytest.fixture
def prefix() -> str:
    return f"p{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def publisher(redis_server: RedisServer, prefix: str) -> Iterator[Publisher]:
    with Publisher(redis_server.url, key_prefix=prefix) as publisher:
        yield publisher


@pytest.mark.skipif(monkey.is_module_patched("socket"), reason="needs an unpatched process")
def test_the_redis_broker_refuses_a_process_gevent_has_not_patched() -> None:
    with pytest.raises(RuntimeError, match=r"monkey\.patch_all\(\)") as caught:
        RedisBroker("redis://127.0.0.1:6379/0")
    message = str(caught.value)
    assert "gunicorn -k gevent" in message
    assert "flask-sse-stream serve" in message
    assert "Publisher" in message


def test_ids_are_epoch_dash_one_base36_sequence(publisher: Publisher) -> None:
    ids = [publisher.publish(str(n), channel="abc"[n % 3]) for n in range(40)]
    epochs = {event_id.split("-")[0] for event_id in ids}
    assert len(epochs) == 1
    assert [int(event_id.split("-")[1], 36) for event_id in ids] == list(range(1, 41))
    assert publisher.publish("mine", channel="a", id="given") == "given"


def test_the_event_is_stored_in_the_channel_stream_and_published(
    publisher: Publisher, redis_server: RedisServer, prefix: str
) -> None:
    with redis_server.client() as client:
        pubsub = client.pubsub()
        pubsub.subscribe(f"{prefix}news")
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        event_id = publisher.publish({"b": 1, "a": 2}, channel="news", event="update", retry=50)
        message = pubsub.get_message(timeout=5)
        pubsub.close()
        epoch, n = event_id.split("-")
        assert message["channel"] == f"{prefix}news"
        published_epoch, published_n, blob = message["data"].split(" ", 2)
        assert (published_epoch, published_n) == (epoch, str(int(n, 36)))
        ((entry_id, fields),) = client.xrange(f"{prefix}stream:news")
        assert entry_id == f"{int(n, 36)}-0"
        assert fields == {"e": blob}
        assert client.hget(f"{prefix}state", "epoch") == epoch
        stored = decode(blob.encode(), event_id)
        assert (stored.data, stored.event, stored.retry, stored.id) == (
            '{"a": 2, "b": 1}',
            "update",
            50,
            event_id,
        )


def test_the_history_is_trimmed_and_the_trim_point_recorded(
    redis_server: RedisServer, prefix: str
) -> None:
    with Publisher(redis_server.url, key_prefix=prefix, history_size=10) as publisher:
        ids = [publisher.publish(str(n), channel="c") for n in range(1000)]
    with redis_server.client() as client:
        kept = client.xrange(f"{prefix}stream:c")
        meta = client.get(f"{prefix}meta:c")
    # MAXLEN ~: Redis trims whole nodes, so it keeps at least 10, and not all.
    assert 10 <= len(kept) < 1000
    assert [entry_id for entry_id, _ in kept] == [f"{n}-0" for n in range(1001 - len(kept), 1001)]
    epoch, trimmed = meta.split(" ")
    assert epoch == ids[0].split("-")[0]
    assert int(trimmed) == 1000 - len(kept)


def test_with_no_history_nothing_is_kept_but_the_trim_point(
    redis_server: RedisServer, prefix: str
) -> None:
    with Publisher(redis_server.url, key_prefix=prefix, history_size=0) as publisher:
        for n in range(5):
            publisher.publish(str(n), channel="c")
    with redis_server.client() as client:
        assert client.exists(f"{prefix}stream:c") == 0
        assert client.get(f"{prefix}meta:c").endswith(" 5")


def test_threads_share_one_publisher(publisher: Publisher) -> None:
    ids: list[str] = []
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            for n in range(100):
                ids.append(publisher.publish(str(n), channel="t"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors
    assert sorted(int(event_id.split("-")[1], 36) for event_id in ids) == list(range(1, 801))


def test_bad_input_is_refused_before_redis_is_asked() -> None:
    publisher = Publisher(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    with pytest.raises(InvalidChannelError):
        publisher.publish("x", channel="no spaces")
    with pytest.raises(InvalidEventError):
        publisher.publish("x", channel="c", event="two\nlines")
    with pytest.raises(InvalidEventError):
        publisher.publish("x", channel="c", retry=-1)
    with pytest.raises(BrokerUnavailableError, match="unavailable"):
        publisher.publish("x", channel="c")
    publisher.close()


def test_the_default_json_is_what_a_default_flask_app_writes() -> None:
    app = Flask(__name__)
    values: list[Any] = [
        {"b": [1, 2.5, None], "a": "é"},
        datetime.date(2024, 5, 6),
        uuid.UUID(int=7),
        [True, {"z": {"y": 1, "x": 2}}],
    ]
    for value in values:
        assert flask_json_dumps(value) == app.json.dumps(value)


def test_the_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="history_size"):
        Publisher("redis://", history_size=-1)
    with pytest.raises(ValueError, match="not a Redis URL"):
        Publisher("localhost:6379")
    with pytest.raises(TypeError, match="key_prefix"):
        Publisher("redis://", key_prefix=3)  # type: ignore[arg-type]


def test_a_whole_event_or_a_datastar_event_is_published_with_its_own_fields(
    publisher: Publisher, redis_server: RedisServer, prefix: str
) -> None:
    from datastar_py import ServerSentEventGenerator as DS

    from flask_sse_stream import Event

    publisher.publish(Event({"n": 1}, event="json", retry=5), channel="whole")
    event_id = publisher.publish(DS.patch_signals({"online": 3}), channel="whole")
    with pytest.raises(TypeError, match="set them on the event"):
        publisher.publish(Event("x"), channel="whole", id="twice")
    with redis_server.client() as client:
        blobs = [fields["e"] for _, fields in client.xrange(f"{prefix}stream:whole")]
    first, second = (decode(blob.encode(), "0") for blob in blobs)
    assert (first.data, first.event, first.retry) == ('{"n": 1}', "json", 5)
    assert (second.data, second.event) == ('signals {"online":3}', "datastar-patch-signals")
    assert event_id.split("-")[1] == "2"


def test_a_key_is_stored_with_the_event_and_a_bad_one_refused(
    publisher: Publisher, redis_server: RedisServer, prefix: str
) -> None:
    event_id = publisher.publish({"price": 1}, channel="ticker", key="AAPL")
    publisher.publish("no key", channel="ticker")
    with redis_server.client() as client:
        (_, keyed), (_, plain) = client.xrange(f"{prefix}stream:ticker")
    assert decode_keyed(keyed["e"].encode(), event_id) == (
        Event('{"price": 1}', id=event_id),
        "AAPL",
    )
    assert decode_keyed(plain["e"].encode(), "x")[1] is None
    with pytest.raises(InvalidEventError, match="key"):
        publisher.publish("x", channel="ticker", key="a\nb")
