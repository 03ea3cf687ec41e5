"""The Flask extension: :class:`SSE` and its ``stream`` decorator."""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import random
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypedDict, TypeVar, overload

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    has_request_context,
    request,
    stream_with_context,
)
from werkzeug.wrappers import Response as BaseResponse

from . import _config
from ._broker import Broker, MemoryBroker, Subscription
from ._cancel import find_socket
from ._channels import check_channel, last_event_id
from ._compress import Compression, choose, encodings
from ._config import Config
from ._errors import InvalidEventError
from ._event import Comment, Event, JSONDumps
from ._presence import MemoryStore, Presence, Store, Tracker
from ._publish import event_to_publish
from ._stream import CloseReason, EventStream, admitted_streams, heartbeats, open_streams
from ._transport import ENVIRON_KEY as TRANSPORT_KEY
from .datastar import is_datastar_event, to_event

__all__ = ["SSE", "Stats", "close_brokers", "come_back_later", "stream_headers"]

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
OnClose = Callable[[CloseReason], None]


class _Default:
    """A default found when the stream starts; its repr (in ``help()``) says where."""

    __slots__ = ("_where",)

    def __init__(self, where: str) -> None:
        self._where = where

    def __repr__(self) -> str:
        return f"<{self._where}>"


_HEARTBEAT_FROM_CONFIG: Final = _Default("SSE_HEARTBEAT_INTERVAL")
_RETRY_FROM_CONFIG: Final = _Default("SSE_RETRY")
_LAST_ID_FROM_REQUEST: Final = _Default("the request's Last-Event-ID")
IDENTITY_KEY: Final = "flask_sse_stream.identity"
"""Where ``_is_allowed`` keeps the identity the authorization hook returned."""
_COMPRESSION_FROM_CONFIG: Final = _Default("SSE_COMPRESSION")


class Stats(TypedDict):
    """What :meth:`SSE.stats` returns: counters of this process and application.

    The broker's counters (:class:`~flask_sse_stream.BrokerStats`) plus the
    streams'.
    """

    open_streams: int
    """Event streams open in this process now."""
    subscribers: dict[str, int]
    """Subscribers per channel."""
    published: int
    """Events published."""
    delivered: int
    """Events handed to subscribers live."""
    replayed: int
    """Events replayed to clients that reconnected with ``Last-Event-ID``."""
    resets: int
    """``sse-reset`` events sent because a last id could not be replayed from."""
    dropped_slow: int
    """Subscribers dropped because they fell ``SSE_QUEUE_SIZE`` events behind."""
    conflated: int
    """Events a lagging subscriber of a ``conflate`` channel skipped for a newer one of
    the same key (counted per subscriber), live or in a replay."""
    dropped: int
    """Events a lagging subscriber of a ``drop-oldest`` channel skipped (per subscriber)."""
    gaps: int
    """``sse-gap`` events sent to ``drop-oldest`` subscribers: one per run of skipped events."""
    queued: int
    """Events waiting for subscribers now."""
    history: int
    """Events held for replay now."""
    closed: dict[str, int]
    """Streams ended, by :class:`~flask_sse_stream.CloseReason` value."""
    heartbeats: dict[str, int]
    """Heartbeats sent, ``direct`` (beside the server) and through the ``handler``."""


def stream_headers() -> dict[str, str]:
    """The headers of every event stream response.

    ``X-Accel-Buffering: no`` stops nginx (and others that honour it) from
    buffering the stream; no hop-by-hop header is set, the server frames the
    body (RFC 9112 section 7).
    """
    return {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }


_OWN_ENCODING: Final = (Event, Comment)


def encoder(dumps: JSONDumps) -> Callable[[Any], bytes]:
    """Return the function that turns one stream item into bytes.

    An :class:`Event` or :class:`Comment` gives its own bytes; a ``str`` is
    the data of an event, a ``dict`` or ``list`` is sent as ``dumps(item)``.
    The bytes are always those of ``Event(item).encode()`` (or
    ``Event(dumps(item)).encode()``), errors included.
    """

    def encode(item: Any) -> bytes:
        if type(item) is not str:
            if isinstance(item, _OWN_ENCODING):
                return item.encode(dumps)
            if isinstance(item, dict | list):
                item = dumps(item)
                if type(item) is not str:
                    return Event(item).encode()
            elif isinstance(item, str):
                return (to_event(item) if is_datastar_event(item) else Event(item)).encode()
            else:
                raise InvalidEventError(
                    "a stream may yield an Event, a Comment, a str (the data), a dict "
                    f"or list (sent as JSON) or a datastar-py event, not {type(item).__name__}"
                )
        # One line of text is most of what streams send: its frame is a single
        # data line, and building an Event for it costs more than the rest of
        # the delivery (docs/benchmarks.md, lever 1).
        if "\r" not in item and "\n" not in item:
            try:
                return b"data: " + item.encode() + b"\n\n"
            except UnicodeEncodeError:
                pass  # Event's error says where the lone surrogate is
        return Event(item).encode()

    return encode


@dataclass(slots=True)
class _AppState:
    """What :class:`SSE` keeps per application, in ``app.extensions["sse"]``."""

    extension: SSE
    config: Config
    closed: Counter[str] = field(default_factory=Counter)
    _broker: Broker | None = None
    _broker_pid: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _encoder: tuple[JSONDumps, Callable[[Any], bytes]] | None = None
    _tracker: Tracker | None = None
    _tracker_of: Broker | None = None
    _compressions: dict[Any, tuple[Compression, ...]] = field(default_factory=dict)

    def compressions(self, compress: Any) -> tuple[Compression, ...]:
        """The codings a stream may use: the config's, or a view's ``compress=``."""
        if isinstance(compress, _Default):
            return self.config.compression
        key = compress if compress is None or isinstance(compress, str) else tuple(compress)
        found = self._compressions.get(key)
        if found is None:
            found = self._compressions[key] = self.config.compressions(compress)
        return found

    def item_encoder(self, dumps: JSONDumps) -> Callable[[Any], bytes]:
        """The :func:`encoder` for ``dumps``, built once per application.

        Built again when ``dumps`` changes (``app.json`` replaced after
        ``init_app``); two threads racing here each build a correct one.
        """
        cached = self._encoder
        if cached is None or cached[0] != dumps:
            cached = self._encoder = (dumps, encoder(dumps))
        return cached[1]

    @property
    def broker(self) -> Broker:
        """This process's broker, made on first use.

        Not in ``init_app``: an app built before gunicorn forks its workers
        (``--preload``) or before gevent patches the process would otherwise
        share one broker, and one Redis connection, between processes.
        """
        broker = self._broker
        if broker is None or self._broker_pid != os.getpid():
            with self._lock:
                if self._broker is None or self._broker_pid != os.getpid():
                    self._broker = make_broker(self.config)
                    self._broker_pid = os.getpid()
                broker = self._broker
        return broker

    @property
    def tracker(self) -> Tracker:
        """This process's presence tracker, made with its broker (``SSE_PRESENCE``)."""
        broker = self.broker
        tracker = self._tracker
        if tracker is None or self._tracker_of is not broker:
            with self._lock:
                if self._tracker is None or self._tracker_of is not broker:
                    self._tracker = make_tracker(self.config, broker)
                    self._tracker_of = broker
                tracker = self._tracker
        return tracker


def make_tracker(config: Config, broker: Broker) -> Tracker:
    """The presence tracker for ``broker``: counts in Redis with the Redis broker."""
    store: Store
    renew_every = None
    if config.broker_url is None:
        store = MemoryStore()
    else:
        from ._broker._presence_redis import RedisStore

        execute = broker.execute  # type: ignore[attr-defined]
        store = RedisStore(execute, config.key_prefix, config.presence_ttl)
        renew_every = config.presence_ttl / 3
    return Tracker(
        store,
        broker,
        events=config.presence_events,
        grace=config.presence_grace,
        renew_every=renew_every,
    )


_brokers: weakref.WeakSet[Any] = weakref.WeakSet()


def make_broker(config: Config) -> Broker:
    """Build the broker ``SSE_BROKER_URL`` names (the in-process one when unset)."""
    url = config.broker_url
    slow_consumer = dict(config.slow_consumer)
    broker: Broker
    if url is None:
        broker = MemoryBroker(
            history_size=config.history_size,
            queue_size=config.queue_size,
            history_ttl=config.history_ttl,
            slow_consumer=slow_consumer,
        )
    elif url.startswith("redis+cluster://"):
        from ._broker.cluster import ClusterBroker  # needs the redis extra

        # No SSE_HISTORY_TTL in a cluster yet: its histories are kept (CHANGES.md).
        broker = ClusterBroker(
            url,
            history_size=config.history_size,
            queue_size=config.queue_size,
            key_prefix=config.key_prefix,
            slow_consumer=slow_consumer,
        )
    else:
        from ._broker.redis import RedisBroker  # needs the redis extra

        broker = RedisBroker(
            url,
            history_size=config.history_size,
            queue_size=config.queue_size,
            key_prefix=config.key_prefix,
            history_ttl=config.history_ttl,
            slow_consumer=slow_consumer,
        )
    _brokers.add(broker)
    return broker


def close_brokers() -> int:
    """Close every broker this process made for an app; return how many.

    Our runner and our gunicorn worker call it when they stop, after the
    streams are drained: the Redis broker's connections and greenlets end
    with the process's work, not with whatever exits it.
    """
    brokers = [broker for broker in list(_brokers) if broker is not None]
    for broker in brokers:
        broker.close()
    _brokers.clear()
    return len(brokers)


UNAVAILABLE_EVENT: Final = "sse-unavailable"
"""The event a stream that cannot be served now carries, before it ends."""


def come_back_later(reason: str, retry: int | None, message: str) -> Response:
    """A 200 event stream that tells the browser to come back later, and ends.

    ``EventSource`` gives up for good on any other status than 200; this
    answer keeps it: a ``retry:`` of ``retry`` milliseconds plus up to as
    much again at random (so refused clients come back spread out), then
    one ``sse-unavailable`` event whose data is
    ``{"reason": reason, "message": message, "retry": delay}``, then the
    end. It carries no ``id``, so the browser's ``Last-Event-ID`` is kept
    and the next stream replays what was missed meanwhile. ``Retry-After``
    says the same to clients that read headers.
    """
    base = retry or 1000
    delay = base + int(random.random() * base)
    body = Event(
        json.dumps({"reason": reason, "message": message, "retry": delay}),
        event=UNAVAILABLE_EVENT,
        retry=delay,
    ).encode()
    response = Response(body, status=200, headers=stream_headers())
    response.headers["Retry-After"] = str(max(1, -(-delay // 1000)))
    return response


def _hold() -> Iterator[str]:
    """Push the current request's contexts again, and keep them pushed until closed.

    :func:`flask.stream_with_context` pushes them when the iterator it
    returns first goes on from where the view left it (Flask 3.1), or when
    it is made (3.2); either way they are pushed once the one item of the
    wrapped iterator is out, and popped, with teardown, when it ends.
    """
    held = stream_with_context(iter(("",)))
    next(held)
    return held


def read_body() -> None:
    """Read the request's body now, before the stream starts (it stays in ``request``).

    A stream watches the client's socket to see it close; body bytes still
    unread there would make it readable, which is not a close, and the
    watch would be spent on them. A ``POST`` view's generator then still
    calls ``request.get_json()`` as usual, from the cached body.
    """
    # From the environ: request.content_length and request.headers build
    # objects, ~6 us per stream opened for a check that is nearly always no.
    environ = request.environ
    if (
        environ.get("CONTENT_LENGTH", "0") not in ("", "0")
        or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    ):
        request.get_data(cache=True)


class _OnClose:
    """A stream's ``on_close``: count the reason, warn of a dropped subscriber, call back.

    An object, not a closure over four cells: it lives as long as its
    stream, and is a third of the size.
    """

    __slots__ = ("_callbacks", "_closed", "_logger", "_source")

    def __init__(
        self,
        closed: Counter[str],
        source: Iterable[Any],
        logger: logging.Logger,
        callbacks: tuple[OnClose, ...],
    ) -> None:
        self._closed = closed
        self._source = source
        self._logger = logger
        self._callbacks = callbacks

    def __call__(self, reason: CloseReason) -> None:
        self._closed[reason.value] += 1
        source = self._source
        if getattr(source, "dropped", False):
            self._logger.warning(
                "Dropped a slow subscriber of %s: it fell SSE_QUEUE_SIZE events behind; "
                "it will reconnect and replay",
                ", ".join(getattr(source, "channels", ())),
            )
        for callback in self._callbacks:
            callback(reason)


class _ViewContexts:
    """Runs a stream's producer in the view's Flask contexts, with public API only.

    Made in the view. Flask pops the view's contexts as soon as the view
    returns, before the body is iterated. The stream keeps a copy of the
    view's :mod:`contextvars` context (a mapping: nothing else is copied),
    where ``request``, ``session``, ``g`` and ``current_app`` are the view's
    own; on first use :func:`flask.stream_with_context` pushes them again
    there and holds them pushed (:func:`_hold`) until the stream ends
    (:meth:`end`), when teardown functions run again and see what ended it.
    With only an application context (no request), the producer sees it,
    and its ``g``, without a push.

    Pushing in the serving greenlet's own context instead, in the view,
    would save the copy and a ``Context.run`` per chunk, but it costs more
    memory per idle stream than it saves (docs/design.md), and a body may be
    iterated in another context, or several interleaved in one (the test
    client), where a push must not outlive its own context.
    """

    __slots__ = ("_copy", "_held", "_push")

    def __init__(self) -> None:
        self._copy = contextvars.copy_context()
        self._push = has_request_context()
        self._held: Iterator[str] | None = None

    def run(self, func: Callable[[], T]) -> T:
        """Call ``func()`` in the view's contexts; in one greenlet at a time."""
        return self._copy.run(self._pushed, func)

    def run_in(self) -> Callable[..., Any]:
        """Push the view's contexts if not yet; return the copy's ``Context.run``."""
        if self._push:
            self._copy.run(self._pushed, _nothing)
        return self._copy.run

    def _pushed(self, func: Callable[[], T]) -> T:
        if self._push:
            # After the view's own pop: pushed before it, in a copy, the
            # contexts would be reset by Flask in the wrong context.
            self._push = False
            self._held = _hold()
        # A plain call, not func(*args): CPython 3.11 runs it in the same C
        # frame, so a parked stream saves less C stack.
        return func()

    def end(self, error: BaseException | None) -> None:
        """Pop the view's contexts again, if pushed: teardown runs and sees ``error``.

        ``None`` for a producer that finished, ``GeneratorExit`` for a
        stream stopped before its end (as :func:`flask.stream_with_context`
        tells teardown), or the producer's exception. Call it once, after
        the producer's cleanup.
        """
        held, self._held = self._held, None
        if held is not None:
            self._copy.run(_end, held, error)


def _nothing() -> None:
    pass


def _end(held: Iterator[str], error: BaseException | None) -> None:
    if error is None:
        next(held, None)  # runs to its end: the push's ``with`` exits cleanly
    elif isinstance(error, GeneratorExit):
        held.close()  # type: ignore[attr-defined]
    else:
        try:
            held.throw(error)  # type: ignore[attr-defined]
        except BaseException as raised:
            if raised is not error:
                raise


class SSE:
    """Server-Sent Events for a Flask application.

    ::

        sse = SSE(app)          # or: sse = SSE(); sse.init_app(app)

        @app.get("/clock")
        @sse.stream
        def clock():
            while True:
                yield Event({"now": time.time()}, event="tick")
                gevent.sleep(1)

    The object keeps no application; everything per application lives in
    ``app.extensions["sse"]``, so one ``SSE`` can serve several apps.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._on_close: list[OnClose] = []
        self._authorize: Callable[[str], Any] | None = None
        self._identify: Callable[[], Any] | None = None
        self._admin_check: Callable[[], bool] | None = None
        self._blueprint: Blueprint | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the ``SSE_*`` configuration of ``app`` and register with it.

        :raises RuntimeError: if an ``SSE`` is already registered with ``app``.
        :raises ConfigError: if an ``SSE_*`` key has a value that cannot be used.
        """
        if "sse" in app.extensions:
            raise RuntimeError(
                "SSE is already registered with this Flask app (app.extensions['sse']). "
                "Build one SSE per app and call init_app(app) once, then import that "
                "instance where you need it: registering again would reset its counters "
                "and leave its broker open."
            )
        for key, value in _config.DEFAULTS.items():
            app.config.setdefault(key, value)
        app.extensions["sse"] = _AppState(self, Config.from_mapping(app.config))

    @property
    def config(self) -> Config:
        """The checked ``SSE_*`` settings of the current application."""
        return self._state().config

    @property
    def broker(self) -> Broker:
        """The broker of the current application."""
        return self._state().broker

    @property
    def blueprint(self) -> Blueprint:
        """The pub/sub blueprint: ``app.register_blueprint(sse.blueprint, url_prefix="/events")``.

        ``GET /events?channel=a&channel=b`` streams those channels; see
        :mod:`flask_sse_stream._views`.
        """
        if self._blueprint is None:
            from ._views import make_blueprint

            self._blueprint = make_blueprint(self)
        return self._blueprint

    def publish(
        self,
        data: Any,
        *,
        channel: str,
        event: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        app: Flask | None = None,
        key: str | None = None,
    ) -> str:
        """Send an event to every subscriber of ``channel``; return its id.

        ``data`` is a ``str`` or anything the app's JSON provider encodes, or
        a whole event: an :class:`Event` or a datastar-py event, whose own
        fields are used (then ``event``, ``id`` and ``retry`` must not be
        given). The broker assigns an id when none is given. Works in a view,
        or in a greenlet or thread given the application (``app=app``) or
        inside ``with app.app_context():``; the event is encoded once and
        every subscriber gets the same bytes.

        ``key`` says what the event is the latest value of (``key="AAPL"``):
        on a channel whose ``SSE_SLOW_CONSUMER`` policy is ``"conflate"``, a
        subscriber that falls behind gets only the newest event per key.
        Without one, the channel is one key.

        :raises InvalidEventError: if a field (or the key) cannot be sent.
        :raises InvalidChannelError: if ``channel`` is not a valid name.
        """
        check_channel(channel)
        state = self._state(app)
        dumps = (app or current_app).json.dumps
        item = event_to_publish(data, event=event, id=id, retry=retry, dumps=dumps)
        published = state.broker.publish(channel, item, key)
        assert published.id is not None
        return published.id

    def subscribe(
        self,
        channels: Sequence[str],
        *,
        last_id: str | _Default | None = _LAST_ID_FROM_REQUEST,
    ) -> Subscription:
        """Subscribe to ``channels``; iterate the result to receive their events.

        ::

            @app.get("/me/stream")
            @sse.stream
            def my_stream():
                for event in sse.subscribe([f"user-{current_user.id}"]):
                    yield event

        ``channels`` is a list of names, as for :meth:`Broker.subscribe
        <flask_sse_stream.Broker.subscribe>`; one channel is a list of one.

        Inside a request, ``last_id`` defaults to the client's
        ``Last-Event-ID`` (or ``lastEventId`` query parameter), so a
        reconnecting browser gets what it missed first; pass ``None`` to start
        from now. An id the broker no longer has (or never had) yields one
        ``sse-reset`` event first: the page should refetch its state.
        """
        if isinstance(channels, str):
            raise TypeError(
                f"subscribe() takes a list of channel names: sse.subscribe([{channels!r}]), "
                f"not sse.subscribe({channels!r})"
            )
        channels = list(channels)
        if not channels:
            raise TypeError("subscribe() needs at least one channel name")
        for name in channels:
            check_channel(name)
        if isinstance(last_id, _Default):
            last_id = (
                last_event_id(
                    request.headers.get("Last-Event-ID"),
                    request.args.get("lastEventId"),
                )
                if has_request_context()
                else None
            )
        return self._state().broker.subscribe(channels, last_id)

    def authorize(self, callback: Callable[[str], Any]) -> Callable[[str], Any]:
        """Register ``callback(channel)`` to decide, per request, who may subscribe.

        It runs in the request context of a blueprint stream (and of the
        blueprint's ``/presence``), once per requested channel; a false
        value answers 403 naming the channel. Without one, every valid
        channel is allowed. A true value other than ``True`` is the
        stream's identity for presence, unless ``@sse.identify`` gives one
        (see :meth:`presence`). Usable as a decorator.
        """
        self._authorize = callback
        return callback

    def identify(self, callback: Callable[[], Any]) -> Callable[[], Any]:
        """Register ``callback() -> identity`` to say whom a blueprint stream belongs to.

        It runs in the request context of each blueprint stream, after the
        authorization, when ``SSE_PRESENCE`` is on. The identity is any
        short JSON-able value, such as ``{"id": 7, "name": "Ada"}``; ``None``
        means anonymous (counted, not listed). Usable as a decorator.
        """
        self._identify = callback
        return callback

    def admin_check(self, callback: Callable[[], bool]) -> Callable[[], bool]:
        """Register ``callback() -> bool``: may this request see the operator page?

        It runs in the request context of the blueprint's ``/admin`` pages,
        which ``SSE_ADMIN = True`` turns on; without a check they answer 403.
        Usable as a decorator.
        """
        self._admin_check = callback
        return callback

    def presence(self, channel: str) -> Presence:
        """Who is subscribed to ``channel`` through the blueprint right now.

        Each identity once, however many tabs, workers and hosts it has
        open, and the number of connections (anonymous ones included).
        With the Redis broker it covers every worker and host sharing the
        ``SSE_KEY_PREFIX``; a worker that died without cleaning up drops
        out within ``SSE_PRESENCE_TTL`` seconds. Waits for Redis.

        :raises RuntimeError: if ``SSE_PRESENCE`` is off.
        :raises InvalidChannelError: if ``channel`` is not a valid name.
        :raises BrokerUnavailableError: if Redis cannot be reached in time.
        """
        check_channel(channel)
        state = self._state()
        if not state.config.presence:
            raise RuntimeError(
                "presence is off: set SSE_PRESENCE = True (or a list of channel patterns "
                "that also get join and leave events) before init_app"
            )
        return state.tracker.presence(channel)

    def _is_allowed(self, channel: str) -> bool:
        """Ask the authorization hook whether this request may subscribe to ``channel``."""
        if self._authorize is None:
            return True
        verdict = self._authorize(channel)
        if verdict and verdict is not True and has_request_context():
            request.environ.setdefault(IDENTITY_KEY, verdict)
        return bool(verdict)

    def _identity(self) -> Any:
        """This request's identity: ``@sse.identify``'s, else the authorization's."""
        if self._identify is not None:
            return self._identify()
        return request.environ.get(IDENTITY_KEY)

    def _refuse_if_full(self) -> Response | None:
        """The answer for a new stream past ``SSE_MAX_CONNECTIONS``, or ``None``.

        Streams count from when their response is made, so a burst of
        requests cannot overshoot the limit. The answer is
        :func:`come_back_later`: a 200 stream with a jittered ``retry:`` and
        one ``sse-unavailable`` event (reason ``"full"``), after which the
        browser reconnects by itself; never a 503, on which ``EventSource``
        gives up for good.
        """
        cfg = self._state().config
        if cfg.max_connections is None or admitted_streams() < cfg.max_connections:
            return None
        return come_back_later("full", cfg.retry, "too many open streams, retrying later")

    def stats(self) -> Stats:
        """Counters for monitoring, of the current process and application.

        ``open_streams``; ``subscribers`` per channel; events ``published``,
        ``delivered`` live and ``replayed`` to reconnecting clients;
        ``resets`` sent instead of a replay; subscribers ``dropped_slow``
        because they fell ``SSE_QUEUE_SIZE`` events behind; events
        ``conflated`` and ``dropped`` by the slow-consumer policies, and the
        ``gaps`` announced; events
        ``queued`` for subscribers and held in ``history`` now; streams
        ``closed`` by :class:`CloseReason`; ``heartbeats`` sent by this
        process's streams, ``direct`` (written beside the server, see
        the design notes) and through the ``handler``. See :class:`Stats`.
        """
        state = self._state()
        broker = state.broker.stats()
        return {
            "open_streams": len(open_streams()),
            "subscribers": dict(broker.subscribers),
            "published": broker.published,
            "delivered": broker.delivered,
            "replayed": broker.replayed,
            "resets": broker.resets,
            "dropped_slow": broker.dropped_slow,
            "conflated": broker.conflated,
            "dropped": broker.dropped,
            "gaps": broker.gaps,
            "queued": broker.queued,
            "history": broker.history,
            "closed": {reason.value: state.closed[reason.value] for reason in CloseReason},
            "heartbeats": {way: heartbeats[way] for way in ("direct", "handler")},
        }

    def _state(self, app: Flask | None = None) -> _AppState:
        state = (app or current_app).extensions.get("sse")
        if state is None:
            raise RuntimeError(
                "SSE is not registered with this Flask app: call sse.init_app(app) "
                "(or build it as SSE(app)) before serving streams."
            )
        return state  # type: ignore[no-any-return]

    def on_close(self, callback: OnClose) -> OnClose:
        """Register ``callback(reason)`` to run whenever a stream ends.

        It runs in the stream's application and request contexts, after the
        producer's own ``finally`` clauses, with a :class:`CloseReason`
        (``DISCONNECT`` when the client went away). Usable as a decorator.
        """
        self._on_close.append(callback)
        return callback

    def response(
        self,
        source: Iterable[Any],
        *,
        heartbeat: float | _Default | None = _HEARTBEAT_FROM_CONFIG,
        retry: int | _Default | None = _RETRY_FROM_CONFIG,
        status: int = 200,
        compress: str | Sequence[str] | _Default | None = _COMPRESSION_FROM_CONFIG,
    ) -> Response:
        """Return a streaming response that sends what ``source`` yields.

        Call it inside a request; ``@sse.stream`` calls it for you. The
        options override ``SSE_HEARTBEAT_INTERVAL``, ``SSE_RETRY`` and
        ``SSE_COMPRESSION``.
        """
        state = self._state()
        cfg = state.config
        refusal = self._refuse_if_full()
        if refusal is not None:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # e.g. a subscription made for this stream
            return refusal
        interval = (
            cfg.heartbeat_interval
            if isinstance(heartbeat, _Default)
            else _config.seconds("heartbeat", heartbeat)
        )
        retry_ms = (
            cfg.retry if isinstance(retry, _Default) else _config.milliseconds("retry", retry)
        )
        preamble = Event(None, retry=retry_ms).encode() if retry_ms is not None else b":\n\n"
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        environ = request.environ if has_request_context() else {}
        if environ:
            read_body()
        headers = stream_headers()
        offered = state.compressions(compress)
        compression = None
        if offered:
            headers["Vary"] = "Accept-Encoding"  # the body depends on it, either way
            if has_request_context():
                compression = choose(offered, request.accept_encodings.quality)
            if compression is not None:
                headers["Content-Encoding"] = compression.encoding
        on_close = _OnClose(state.closed, source, app.logger, tuple(self._on_close))
        body = EventStream(
            source,
            encode=state.item_encoder(app.json.dumps),
            preamble=preamble,
            heartbeat=interval,
            sock=find_socket(environ),
            transport=environ.get(TRANSPORT_KEY),
            write_timeout=cfg.write_timeout,
            buffer_size=cfg.buffer_size,
            context=_ViewContexts(),
            on_close=on_close,
            logger=app.logger,
            compressor=None if compression is None else compression.new(),
        )
        return Response(body, status=status, headers=headers, direct_passthrough=True)

    @overload
    def stream(self, view: F) -> F: ...

    @overload
    def stream(
        self,
        view: None = None,
        *,
        heartbeat: float | _Default | None = ...,
        retry: int | _Default | None = ...,
        compress: str | Sequence[str] | _Default | None = ...,
    ) -> Callable[[F], F]: ...

    def stream(
        self,
        view: F | None = None,
        *,
        heartbeat: float | _Default | None = _HEARTBEAT_FROM_CONFIG,
        retry: int | _Default | None = _RETRY_FROM_CONFIG,
        compress: str | Sequence[str] | _Default | None = _COMPRESSION_FROM_CONFIG,
    ) -> F | Callable[[F], F]:
        """Turn a view that yields events into an event stream.

        The view may be a generator function, or a function that returns an
        iterable (do checks such as ``abort(403)`` there, before the stream
        starts) or a finished response (for example ``204`` to tell a browser
        to stop reconnecting). Each item may be an :class:`Event`, a
        :class:`Comment`, a ``str`` (the event's data) or a ``dict``/``list``
        (sent as JSON through the app's JSON provider).

        Use as ``@sse.stream`` or ``@sse.stream(heartbeat=5, retry=2000)``
        (seconds, milliseconds; ``None`` turns either off).
        ``compress="gzip"``, ``"br"``, ``["br", "gzip"]`` or ``None``
        overrides ``SSE_COMPRESSION`` for this view.
        """
        # Check the options when decorating, not on the first request.
        if not isinstance(heartbeat, _Default):
            _config.seconds("heartbeat", heartbeat)
        if not isinstance(retry, _Default):
            _config.milliseconds("retry", retry)
        if not isinstance(compress, _Default):
            for encoding in encodings("compress", compress):
                Compression.default(encoding).checked()  # br without a binding fails here

        def decorate(view: F) -> F:
            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                result = view(*args, **kwargs)
                if isinstance(result, BaseResponse):
                    return result
                if not isinstance(result, Iterable) or isinstance(result, str | bytes | dict):
                    raise TypeError(
                        f"the stream view {view.__qualname__} returned "
                        f"{type(result).__name__}; it must yield events (be a generator) "
                        "or return an iterable of them"
                    )
                return self.response(result, heartbeat=heartbeat, retry=retry, compress=compress)

            return wrapper  # type: ignore[return-value]

        if view is not None:
            return decorate(view)
        return decorate
