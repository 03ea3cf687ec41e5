"""Presence on the blueprint: counting its streams, and ``GET <prefix>/presence``.

``GET <prefix>/presence?channel=room`` answers, as JSON, who is subscribed
to the channel (``members``, each identity once) and how many streams are
open on it (``connections``), across every worker with Redis. It is behind
the same checks as subscribing: 400 for a malformed channel, 403 when the
authorization hook refuses it; 404 while ``SSE_PRESENCE`` is off.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Final

from flask import Blueprint, Response, has_request_context, jsonify, request

from ._broker import BrokerUnavailableError, Subscription
from ._channels import InvalidChannelError, check_channel
from ._presence import ANONYMOUS, identity_key
from ._stream import CloseReason
from ._views import cors_headers, error

if TYPE_CHECKING:
    from ._extension import SSE

__all__ = ["add_presence_routes", "identity_of_request", "track"]

LEAVE_KEY: Final = "flask_sse_stream.presence_leave"
"""Where a counted stream's request keeps the function that uncounts it."""


def identity_of_request(sse: SSE) -> str | None:
    """The identity key of this request's stream, or ``None`` when presence is off.

    Call it before subscribing: an identity that is not JSON-able raises here.
    """
    if not sse.config.presence:
        return None
    identity = sse._identity()
    return ANONYMOUS if identity is None else identity_key(identity)


def track(sse: SSE, channels: list[str], key: str, subscription: Subscription) -> None:
    """Count this request's stream on ``channels`` until it ends."""
    leave = sse._state().tracker.enter(channels, key)
    request.environ[LEAVE_KEY] = leave
    # The stream's end calls it (_stream_ended); this is for a stream that
    # never started, whose on_close does not run.
    weakref.finalize(subscription, leave)


def _stream_ended(reason: CloseReason) -> None:
    leave = request.environ.get(LEAVE_KEY) if has_request_context() else None
    if leave is not None:
        leave()


def add_presence_routes(blueprint: Blueprint, sse: SSE) -> None:
    """Add ``/presence`` to the blueprint, and uncount each stream at its end."""
    sse.on_close(_stream_ended)

    @blueprint.get("/presence")
    def presence() -> Response:
        config = sse.config
        if not config.presence:
            return cors_headers(config, error(404, "presence is off (SSE_PRESENCE)"))
        channels = request.args.getlist("channel")
        if len(channels) != 1:
            return cors_headers(config, error(400, "name one ?channel= to ask about"))
        (channel,) = channels
        try:
            check_channel(channel)
        except InvalidChannelError as exc:
            return cors_headers(config, error(400, str(exc)))
        if not sse._is_allowed(channel):
            return cors_headers(
                config, error(403, "not allowed to subscribe to this channel", channel=channel)
            )
        try:
            answer = sse.presence(channel)
        except BrokerUnavailableError:
            response = error(503, "presence is unavailable right now, retry later")
            response.headers["Retry-After"] = "5"
            return cors_headers(config, response)
        response = jsonify(
            channel=channel, members=list(answer.members), connections=answer.connections
        )
        response.headers["Cache-Control"] = "no-store"
        return cors_headers(config, response)
