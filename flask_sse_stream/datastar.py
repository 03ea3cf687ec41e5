"""Datastar (https://data-star.dev) streams, with the events of datastar-py.

Datastar drives a page from ``datastar-patch-elements`` and
``datastar-patch-signals`` events. Build them with datastar-py's
``ServerSentEventGenerator`` and yield them from a stream view, or publish
them to a channel; read the page's signals with :func:`read_signals`::

    from datastar_py import ServerSentEventGenerator as DS
    from flask_sse_stream.datastar import read_signals

    @app.post("/search")
    @sse.stream
    def search():
        signals = read_signals() or {}
        for hit in find(signals.get("query", "")):
            yield DS.patch_elements(f'<li id="hit-{hit.id}">{escape(hit.title)}</li>',
                                    selector="#hits", mode="append")
        yield DS.patch_signals({"searching": False})

    sse.publish(DS.patch_signals({"online": 12}), channel="presence")

datastar-py returns each event as finished event-stream text. The stream
(and ``publish``) reads it back into a checked :class:`~flask_sse_stream.Event`
with :func:`to_event` instead of sending it as it is, so that the
library's guarantee holds for it too: one event on the wire, never a second
one or a stray field made of text such as an ``event_id`` or a ``selector``
that holds a line break (datastar-py does not check those).

This module does not import datastar-py; it recognises its events by type
once datastar-py is imported (``pip install datastar-py``).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest

from ._errors import InvalidEventError
from ._event import Event

__all__ = ["is_datastar_event", "read_signals", "to_event"]

_HEAD_FIELDS = ("event", "id", "retry")


def is_datastar_event(item: object) -> bool:
    """Tell whether ``item`` is an event made by datastar-py (a ``DatastarEvent``)."""
    module = sys.modules.get("datastar_py.sse")
    kind = getattr(module, "DatastarEvent", None)
    return kind is not None and isinstance(item, kind)


def to_event(text: str) -> Event:
    """Read one event's event-stream text, as datastar-py writes it, into an :class:`Event`.

    The text must be exactly one event: ``event``, ``id`` and ``retry``
    fields at most once each, then ``data`` lines, then the blank line that
    ends it, with ``\\n`` line breaks.

    :raises InvalidEventError: for anything else, such as a field value
        that held a line break and so would have started another field or
        event.
    """
    if not text.endswith("\n\n") or "\r" in text:
        raise InvalidEventError(
            "a Datastar event must be one event ending in a blank line, with \\n line "
            f"breaks only; got {text[:80]!r}"
        )
    head: dict[str, str] = {}
    data: list[str] = []
    for line in text[:-2].split("\n"):
        name, colon, value = line.partition(":")
        if not colon or not name:
            raise InvalidEventError(
                "a Datastar event held a blank or unnamed line, which would end it or be "
                f"ignored: did a field value hold a line break? got {text[:200]!r}"
            )
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name in _HEAD_FIELDS and name not in head and not data:
            head[name] = value
        else:
            raise InvalidEventError(
                f"a Datastar event held an unexpected {name!r} line: did a field value "
                f"hold a line break? got {text[:200]!r}"
            )
    retry = head.get("retry")
    if retry is not None and not (retry.isascii() and retry.isdigit()):
        raise InvalidEventError(f"a Datastar event's retry must be digits, got {retry!r}")
    return Event(
        "\n".join(data) if data else None,
        event=head.get("event"),
        id=head.get("id"),
        retry=None if retry is None else int(retry),
    )


def read_signals() -> dict[str, Any] | None:
    """The signals the page sent with this request, as Datastar sends them.

    Datastar marks its requests with a ``Datastar-Request`` header and sends
    the signals as JSON: in the ``datastar`` query parameter for ``GET``
    and ``DELETE``, as an ``application/json`` body otherwise. Returns ``None`` for a request
    that is not Datastar's or that carries no signals.

    :raises werkzeug.exceptions.BadRequest: (a 400) if the signals are not a
        JSON object.
    """
    if "Datastar-Request" not in request.headers:
        return None
    if request.method in ("GET", "DELETE"):
        text = request.args.get("datastar")
        if not text:
            return None
        try:
            signals = json.loads(text)
        except ValueError:
            raise BadRequest("the datastar query parameter is not JSON") from None
    else:
        if not request.is_json or not request.get_data(cache=True):
            return None  # e.g. a form Datastar posts as it is
        signals = request.get_json()
    if not isinstance(signals, dict):
        raise BadRequest("Datastar signals must be a JSON object")
    return signals
