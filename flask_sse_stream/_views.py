"""The blueprint: pub/sub channels over HTTP.

``GET <prefix>/?channel=a&channel=b`` streams the events published to the
channels, replaying what the client missed when it reconnects with
``Last-Event-ID`` (or sends ``lastEventId`` in the query). Errors are JSON:

* 400: no channel, or a malformed channel name;
* 403: the authorization hook refused a channel (the body names it);
* 503 with ``Retry-After``: ``SSE_MAX_CONNECTIONS`` streams are open, or
  the broker (Redis) cannot be reached.

``OPTIONS`` answers CORS preflights for the origins in ``SSE_CORS_ORIGINS``.
With ``SSE_METRICS``, ``GET <prefix>/metrics`` serves :meth:`SSE.stats` in
the Prometheus text format. ``GET <prefix>/presence`` (``SSE_PRESENCE``) and
the operator page at ``<prefix>/admin`` (``SSE_ADMIN``) are in
:mod:`flask_sse_stream._presence_views` and :mod:`flask_sse_stream._admin`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, abort, current_app, jsonify, request

from ._broker import BrokerUnavailableError
from ._channels import InvalidChannelError, check_channel, last_event_id
from ._metrics import prometheus_text

if TYPE_CHECKING:
    from ._config import Config
    from ._extension import SSE

__all__ = ["make_blueprint"]


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

    @blueprint.route("/", methods=["GET", "OPTIONS"], strict_slashes=False)
    def stream() -> Response:
        config = sse.config
        if request.method == "OPTIONS":
            return cors_headers(config, current_app.response_class(status=204), preflight=True)
        channels = list(dict.fromkeys(request.args.getlist("channel")))
        refusal = _refusal(sse, channels)
        if refusal is not None:
            return cors_headers(config, refusal)
        last_id = last_event_id(
            request.headers.get("Last-Event-ID"), request.args.get("lastEventId")
        )
        identity = identity_of_request(sse)
        try:
            subscription = sse.subscribe(channels, last_id=last_id)
        except BrokerUnavailableError:
            current_app.logger.warning("Broker unavailable; refused a stream", exc_info=True)
            response = error(503, "events are unavailable right now, retry later")
            response.headers["Retry-After"] = "5"
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
