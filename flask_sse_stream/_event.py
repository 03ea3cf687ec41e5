"""The event-stream wire format: immutable, validated events and their bytes.

This module does no I/O. It follows the WHATWG HTML standard, section
"Server-sent events", whose names it uses: an event has ``data``, an
``event`` type, an ``id`` and a ``retry`` time; a line that starts with a
colon is a *comment*.

What the encoder guarantees, whatever text it is given:

* one :class:`Event` is exactly one event on the wire. ``data`` is split on
  ``\\r\\n``, ``\\r`` and ``\\n`` (the stream's only line breaks; never on
  the other characters :meth:`str.splitlines` knows) and each piece becomes
  its own ``data:`` line, so the receiver rebuilds the same text. An empty
  string still dispatches an (empty) event;
* ``event`` and ``id`` cannot hold a line break and ``id`` cannot hold NUL
  (browsers ignore such an id), so no text can start a new field or event;
* the output is UTF-8 with no byte order mark.

Where we differ from a bare reading of the standard, on purpose:

* ``data=None`` writes no ``data`` field at all: the frame only sets the id
  or the reconnection time and dispatches nothing in the browser;
* an ``id`` may be given as an ``int``; it is stored as its decimal text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._errors import InvalidEventError

__all__ = ["Comment", "Event", "JSONDumps", "encode"]

JSONDumps = Callable[[Any], str]
"""A function that turns a value into JSON text, such as ``app.json.dumps``."""

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _utf8(name: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEventError(
            f"{name} holds a lone surrogate at index {exc.start}, which is not "
            "valid Unicode and cannot be sent as UTF-8; decode the source with "
            "errors='replace' or remove it"
        ) from None


def _lines(prefix: bytes, name: str, text: str) -> bytes:
    """Encode ``text`` as one ``prefix`` line per line of text."""
    if "\r" not in text and "\n" not in text:
        return prefix + _utf8(name, text) + b"\n"
    return b"".join(prefix + _utf8(name, line) + b"\n" for line in _LINE_BREAK.split(text))


_WHY_FORBIDDEN = {
    "\r": "it would end the field and let the rest be read as another field or event",
    "\n": "it would end the field and let the rest be read as another field or event",
    "\0": "browsers ignore an id that holds NUL, so it would never be sent back",
}


def _single_line(name: str, value: str, forbidden: str) -> bytes:
    for char in forbidden:
        if char in value:
            raise InvalidEventError(
                f"{name} must not contain {char!r}: {_WHY_FORBIDDEN[char]}; got {value[:80]!r}"
            )
    return _utf8(name, value)


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event.

    :param data: the payload. A ``str`` is sent as it is, line breaks
        included. Any other value except ``None`` is sent as JSON (through the
        Flask app's JSON provider when the event is streamed by a view).
        ``None`` sends no data field, so nothing is dispatched in the browser.
    :param event: the event type; the browser dispatches it to
        ``addEventListener(event)`` instead of ``onmessage``.
    :param id: the id the browser sends back as ``Last-Event-ID`` when it
        reconnects. An empty string resets it.
    :param retry: the reconnection time, in milliseconds, for the browser.
    :raises InvalidEventError: at once, if a field cannot be sent as written.
    """

    data: Any
    event: str | None = None
    id: str | None = None
    retry: int | None = None
    _head: bytes = field(init=False, repr=False, compare=False)
    _wire: bytes | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        head = b""
        if self.id is not None:
            if isinstance(self.id, int) and not isinstance(self.id, bool):
                # int() first: an IntEnum's str() may be its name.
                object.__setattr__(self, "id", str(int(self.id)))
            if not isinstance(self.id, str):
                raise InvalidEventError(f"id must be a str or an int, not {type(self.id).__name__}")
            head += b"id: " + _single_line("id", self.id, "\r\n\0") + b"\n"
        if self.event is not None:
            if not isinstance(self.event, str):
                raise InvalidEventError(f"event must be a str, not {type(self.event).__name__}")
            head += b"event: " + _single_line("event", self.event, "\r\n") + b"\n"
        if self.retry is not None:
            if isinstance(self.retry, bool) or not isinstance(self.retry, int):
                raise InvalidEventError(
                    "retry must be a whole number of milliseconds (an int), "
                    f"not {type(self.retry).__name__}"
                )
            if self.retry < 0:
                raise InvalidEventError(f"retry must be 0 or more milliseconds, got {self.retry}")
            head += b"retry: %d\n" % self.retry
        object.__setattr__(self, "_head", head)
        wire = None
        if self.data is None:
            wire = head + b"\n"
        elif isinstance(self.data, str):
            wire = head + _lines(b"data: ", "data", self.data) + b"\n"
        elif isinstance(self.data, bytes | bytearray | memoryview):
            raise InvalidEventError(
                "data must be text (a str) or a value to send as JSON, not "
                f"{type(self.data).__name__}; decode it first, e.g. data.decode('utf-8')"
            )
        object.__setattr__(self, "_wire", wire)

    def encode(self, dumps: JSONDumps = json.dumps) -> bytes:
        """Return the event's bytes on the wire, blank line included.

        :param dumps: turns non-``str`` data into JSON text; only called the
            first time, the bytes are kept.
        """
        if self._wire is None:
            text = dumps(self.data)
            if not isinstance(text, str):
                raise InvalidEventError(f"the JSON encoder returned {type(text).__name__}, not str")
            wire = self._head + _lines(b"data: ", "data", text) + b"\n"
            object.__setattr__(self, "_wire", wire)
            return wire
        return self._wire


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment: ignored by browsers, useful to keep a connection alive.

    Text with line breaks becomes one comment line per line.

    :raises InvalidEventError: if the text is not valid Unicode.
    """

    text: str = ""
    _wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InvalidEventError(f"a comment must be a str, not {type(self.text).__name__}")
        wire = _lines(b": ", "comment", self.text) if self.text else b":\n"
        object.__setattr__(self, "_wire", wire)

    def encode(self, dumps: JSONDumps = json.dumps) -> bytes:
        """Return the comment's bytes on the wire."""
        return self._wire


def encode(item: Event | Comment, dumps: JSONDumps = json.dumps) -> bytes:
    """Return the bytes of an :class:`Event` or :class:`Comment`."""
    return item.encode(dumps)
