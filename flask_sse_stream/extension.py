"""The Flask extension: :class:`SSE` and its ``stream`` decorator."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, TypeVar, overload

from flask import Flask, Response, current_app, g, has_request_context
from flask.globals import request_ctx
from werkzeug.wrappers import Response as BaseResponse

from . import config as _config
from .cancel import find_socket
from .config import Config
from .errors import InvalidEventError
from .event import Comment, Event, JSONDumps
from .stream import CloseReason, EventStream

__all__ = ["SSE", "stream_headers"]

F = TypeVar("F", bound=Callable[..., Any])
OnClose = Callable[[CloseReason], None]


class _Default:
    def __repr__(self) -> str:
        return "<from config>"


_FROM_CONFIG: Final = _Default()


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


def encoder(dumps: JSONDumps) -> Callable[[Any], bytes]:
    """Return the function that turns one stream item into bytes."""

    def encode(item: Any) -> bytes:
        if isinstance(item, Event | Comment):
            return item.encode(dumps)
        if isinstance(item, str):
            return Event(item).encode()
        if isinstance(item, dict | list):
            return Event(dumps(item)).encode()
        raise InvalidEventError(
            "a stream may yield an Event, a Comment, a str (the data) or a dict "
            f"or list (sent as JSON), not {type(item).__name__}"
        )

    return encode


@dataclass(slots=True)
class _AppState:
    """What :class:`SSE` keeps per application, in ``app.extensions["sse"]``."""

    extension: SSE
    config: Config


def _flask_context_factory() -> Callable[[], Any]:
    """Return a context manager that pushes copies of the view's contexts.

    The view returns before its generator runs, and Flask then pops its
    contexts; the producer greenlet pushes copies that share ``g``,
    ``request`` and ``session``. As with :func:`flask.copy_current_request_context`,
    teardown functions run again when the stream ends.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    shared_g = g._get_current_object()
    req = request_ctx.copy() if has_request_context() else None

    @contextmanager
    def context() -> Iterator[None]:
        app_ctx = app.app_context()
        app_ctx.g = shared_g
        with app_ctx:
            if req is None:
                yield
            else:
                with req:
                    yield

    return context


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
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read the ``SSE_*`` configuration of ``app`` and register with it."""
        for key, value in _config.DEFAULTS.items():
            app.config.setdefault(key, value)
        app.extensions["sse"] = _AppState(self, Config.from_mapping(app.config))

    def _state(self) -> _AppState:
        state = current_app.extensions.get("sse")
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
        heartbeat: float | _Default | None = _FROM_CONFIG,
        retry: int | _Default | None = _FROM_CONFIG,
        status: int = 200,
    ) -> Response:
        """Return a streaming response that sends what ``source`` yields.

        Call it inside a request; ``@sse.stream`` calls it for you. The
        options override ``SSE_HEARTBEAT_INTERVAL`` and ``SSE_RETRY``.
        """
        state = self._state()
        cfg = state.config
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
        environ = request_ctx.request.environ if has_request_context() else {}
        callbacks = tuple(self._on_close)

        def on_close(reason: CloseReason) -> None:
            for callback in callbacks:
                callback(reason)

        body = EventStream(
            source,
            encode=encoder(app.json.dumps),
            preamble=preamble,
            heartbeat=interval,
            sock=find_socket(environ),
            write_timeout=cfg.write_timeout,
            buffer_size=cfg.buffer_size,
            context=_flask_context_factory(),
            on_close=on_close if callbacks else None,
            logger=app.logger,
        )
        return Response(body, status=status, headers=stream_headers(), direct_passthrough=True)

    @overload
    def stream(self, view: F) -> F: ...

    @overload
    def stream(
        self,
        view: None = None,
        *,
        heartbeat: float | _Default | None = ...,
        retry: int | _Default | None = ...,
    ) -> Callable[[F], F]: ...

    def stream(
        self,
        view: F | None = None,
        *,
        heartbeat: float | _Default | None = _FROM_CONFIG,
        retry: int | _Default | None = _FROM_CONFIG,
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
        """
        # Check the options when decorating, not on the first request.
        if not isinstance(heartbeat, _Default):
            _config.seconds("heartbeat", heartbeat)
        if not isinstance(retry, _Default):
            _config.milliseconds("retry", retry)

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
                return self.response(result, heartbeat=heartbeat, retry=retry)

            return wrapper  # type: ignore[return-value]

        if view is not None:
            return decorate(view)
        return decorate
