"""The blueprint: pub/sub channels over HTTP.

``GET <prefix>/?channel=a&channel=b`` streams the events published to the
channels, replaying what the client missed when it reconnects with
``Last-Event-ID`` (or sends ``lastEventId`` in the query). Errors are JSON:

* 400: no channel, a malformed channel name, or a query string that is not
  UTF-8;
* 403: the authorization hook refused a channel (the body names it).

When the stream cannot be served *now* (``SSE_MAX_CONNECTIONS`` streams are
open, or the broker cannot be reached) the answer is a 200 stream with a
jittered ``retry:`` and one ``sse-unavailable`` event saying why, then the
end (:func:`~flask_sse_stream._extension.come_back_later`): the browser
reconnects by itself and replays what it missed. A 503 would make
``EventSource`` give up for good.

``OPTIONS`` answers CORS preflights for the origins in ``SSE_CORS_ORIGINS``.
With ``SSE_METRICS``, ``GET <prefix>/metrics`` serves :meth:`SSE.stats` in
the Prometheus text format. ``GET <prefix>/presence`` (``SSE_PRESENCE``) and
the operator page at ``<prefix>/admin`` (``SSE_ADMIN``) are in
:mod:`flask_sse_stream._presence_views` and :mod:`flask_sse_stream._admin`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, abort, current_app, jsonify, request

from ._broker import BrokerUnavailableError
from ._channels import InvalidChannelError, check_channel, last_event_id
from ._extension import come_back_later
from ._metrics import prometheus_text

if TYPE_CHECKING:
    from ._config import Config
    from ._extension import SSE

__all__ = ["make_blueprint"]

LOG_EVERY = 10.0
"""Seconds between two log records of streams refused while the broker is down."""


def error(status: int, message: str, **fields: Any) -> Response:
    """A JSON error response."""
    response = jsonify(error=message, **fields)
    response.status_code = status
    return response


def cors_headers(config: Config, response: Response, *, preflight: bool = False) -> Response:
    """Add the CORS headers ``SSE_CORS_ORIGINS`` allows for this request's origin."""
    origin = request.headers.get("Origin")
    if origin is None or config.cors_origins == frozenset():
        return response
    if config.cors_origins is None:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin in config.cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.vary.add("Origin")
        if config.cors_credentials:
            response.headers["Access-Control-Allow-Credentials"] = "true"
    else:
        return response
    if preflight:
        response.headers["Access-Control-Allow-Methods"] = "GET"
        response.headers["Access-Control-Allow-Headers"] = "Last-Event-ID, Cache-Control"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


def _refusal(sse: SSE, channels: list[str]) -> Response | None:
    """The error response for a request the blueprint cannot serve, if any."""
    if not channels:
        return error(400, "name at least one ?channel= to subscribe to")
    try:
        for name in channels:
            check_channel(name)
    except InvalidChannelError as exc:
        return error(400, str(exc))
    for name in channels:
        if not sse._is_allowed(name):
            return error(403, "not allowed to subscribe to this channel", channel=name)
    return sse._refuse_if_full()


def make_blueprint(sse: SSE) -> Blueprint:
    """Build the blueprint of one :class:`SSE` (see :attr:`SSE.blueprint`)."""
    from ._admin import add_admin_routes
    from ._presence_views import add_presence_routes, identity_of_request, track

    blueprint = Blueprint("sse", __name__)
    # One record per LOG_EVERY seconds of an outage, with the count refused
    # meanwhile: reconnecting clients must not grow the log.
    outage = {"logged": -LOG_EVERY, "refused": 0}

    @blueprint.route("/", methods=["GET", "OPTIONS"], strict_slashes=False)
    def stream() -> Response:
        config = sse.config
        if request.method == "OPTIONS":
            return cors_headers(config, current_app.response_class(status=204), preflight=True)
        try:
            args = request.args
        except UnicodeDecodeError:
            return cors_headers(config, error(400, "the query string must be UTF-8"))
        channels = list(dict.fromkeys(args.getlist("channel")))
        refusal = _refusal(sse, channels)
        if refusal is not None:
            return cors_headers(config, refusal)
        last_id = last_event_id(request.headers.get("Last-Event-ID"), args.get("lastEventId"))
        identity = identity_of_request(sse)
        try:
            subscription = sse.subscribe(channels, last_id=last_id)
        except BrokerUnavailableError as exc:
            outage["refused"] += 1
            now = time.monotonic()
            if now - outage["logged"] >= LOG_EVERY:
                current_app.logger.warning(
                    "Broker unavailable (%s); refused %d stream(s) in the last %.0f s, "
                    "their clients will retry",
                    exc,
                    outage["refused"],
                    min(now - outage["logged"], LOG_EVERY),
                )
                outage["logged"], outage["refused"] = now, 0
            response = come_back_later(
                "unavailable", config.retry, "events are unavailable right now, retrying later"
            )
            return cors_headers(config, response)
        response = sse.response(subscription)
        if identity is not None and response.status_code == 200 and request.method == "GET":
            track(sse, channels, identity, subscription)
        return cors_headers(config, response)

    @blueprint.get("/metrics")
    def metrics() -> Response:
        if not sse.config.metrics:
            abort(404)
        return current_app.response_class(
            prometheus_text(sse.stats()), content_type="text/plain; version=0.0.4"
        )

    add_presence_routes(blueprint, sse)
    add_admin_routes(blueprint, sse)
    return blueprint
