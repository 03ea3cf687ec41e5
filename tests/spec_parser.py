"""An event-stream reader written straight from the WHATWG HTML standard.

Section "Server-sent events", subsections "Parsing an event stream" and
"Interpreting an event stream". It is deliberately slow and literal: it
decodes the whole body first and walks it one character at a time, keeping
the standard's own buffers (data buffer, event type buffer, last event ID
buffer) under their own names. The tests use it as an independent oracle for
both the encoder (flask_sse_stream._event) and the fast parser
(flask_sse_stream.testing); it shares no code with either.

One choice the standard leaves open: a ``retry`` field with an empty value
"consists of only ASCII digits" vacuously but is no base-ten integer; like
browsers, we ignore it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LF = "\n"
CR = "\r"
ASCII_DIGITS = "0123456789"


@dataclass
class SpecEvent:
    """A dispatched event: its type, data, lastEventId, and the reconnection
    time set while its block was read (None if it set none)."""

    type: str
    data: str
    last_event_id: str
    retry: int | None


@dataclass
class SpecStream:
    """What reading a whole stream leaves behind."""

    events: list[SpecEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    reconnection_time: int | None = None
    last_event_id: str = ""


class _Reader:
    """The standard's processing model, one method per step it names."""

    def __init__(self) -> None:
        self.result = SpecStream()
        self.data_buffer = ""
        self.event_type_buffer = ""
        self.last_event_id_buffer = ""
        self.retry_in_block: int | None = None

    def dispatch(self) -> None:
        # 1. The last event ID string takes the buffer's value.
        self.result.last_event_id = self.last_event_id_buffer
        # 2. No data: reset the buffers, dispatch nothing.
        if self.data_buffer == "":
            self.data_buffer = ""
            self.event_type_buffer = ""
            self.retry_in_block = None
            return
        # 3. Drop the one trailing LF.
        if self.data_buffer[-1] == LF:
            self.data_buffer = self.data_buffer[:-1]
        # 4-5. The type is the event type buffer, or "message" if it is empty.
        event_type = self.event_type_buffer if self.event_type_buffer != "" else "message"
        self.result.events.append(
            SpecEvent(event_type, self.data_buffer, self.result.last_event_id, self.retry_in_block)
        )
        # 6. Reset the data and event type buffers.
        self.data_buffer = ""
        self.event_type_buffer = ""
        self.retry_in_block = None

    def process_field(self, name: str, value: str) -> None:
        if name == "event":
            self.event_type_buffer = value
        elif name == "data":
            self.data_buffer = self.data_buffer + value + LF
        elif name == "id":
            if "\u0000" not in value:
                self.last_event_id_buffer = value
        elif name == "retry":
            only_digits = value != ""
            for char in value:
                if char not in ASCII_DIGITS:
                    only_digits = False
            if only_digits:
                self.result.reconnection_time = int(value, 10)
                self.retry_in_block = self.result.reconnection_time
        # Otherwise the field is ignored.

    def process_line(self, line: str) -> None:
        if line == "":
            self.dispatch()
        elif line[0] == ":":
            # Ignored by the standard; kept to compare heartbeats.
            self.result.comments.append(line[2:] if line[1:2] == " " else line[1:])
        elif ":" in line:
            colon = line.index(":")
            name = line[:colon]
            value = line[colon + 1 :]
            if value[:1] == " ":
                value = value[1:]
            self.process_field(name, value)
        else:
            self.process_field(line, "")


def read_stream(body: bytes) -> SpecStream:
    """Read a whole event-stream body as a browser would."""
    # "Streams must be decoded using the UTF-8 decode algorithm", which
    # replaces invalid bytes with U+FFFD and removes one leading BOM.
    text = body.decode("utf-8", errors="replace")
    if text[:1] == "\ufeff":
        text = text[1:]
    reader = _Reader()
    # Lines end with CRLF, a lone LF or a lone CR.
    line = ""
    previous = ""
    for char in text:
        if char == CR:
            reader.process_line(line)
            line = ""
        elif char == LF:
            if previous != CR:
                reader.process_line(line)
            line = ""
        else:
            line += char
        previous = char
    # "Once the end of the file is reached, any pending data must be
    # discarded": the unfinished line and the undispatched event are dropped.
    return reader.result
