"""The state machine of one event stream, with no I/O.

A stream is fed inputs (an item made, the producer about to wait, a
heartbeat due, the client gone, a drain, the outcome of a write) and
answers with what to write and whether to stop the producer. Sockets,
greenlets and Flask stay outside: :mod:`flask_sse_stream._stream` feeds the
inputs and carries out the outputs, which keeps every transition testable
by a table (``tests/test_core.py``), in the manner of h11's ``_state.py``.

A stream writes in one of two places:

* **through the server**: the server's handler greenlet asks for the next
  chunk (:meth:`StreamCore.handler_turn`) and writes what it is given;
* **beside the server**: while the handler waits inside the stream, the
  server writes nothing, and a transport the library owns (see
  :mod:`flask_sse_stream.transport`) may send a frame on the socket itself
  (:meth:`StreamCore.take_beside`). A frame that went out only in part
  leaves its rest to be sent, raw, before anything else.

The states (:class:`State`) and what moves them (:class:`Input`) are all in
:data:`TRANSITIONS`; an input a state does not list is a bug of the caller
and raises :class:`CoreError`.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from ._compress import Compressor

HEARTBEAT: Final = b":\n"
"""The comment sent on an idle stream."""


def chunk(data: bytes) -> bytes:
    """Frame ``data`` as one HTTP/1.1 chunk (RFC 9112 section 7.1)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


_HEARTBEAT_CHUNK: Final = chunk(HEARTBEAT)


class _Identity(enum.Enum):
    # Members are singletons, so identity hashing is exact, and it is C code:
    # Enum's own __hash__ is a Python call, paid twice per transition (the
    # table's two lookups), that is per item and per write.
    __hash__ = object.__hash__


class CloseReason(_Identity):
    """Why a stream ended."""

    FINISHED = "finished"
    """The producer returned."""
    ERROR = "error"
    """The producer raised; the exception was logged."""
    DISCONNECT = "disconnect"
    """The client closed the connection."""
    WRITE_FAILED = "write-failed"
    """A write to the client failed or timed out."""
    DRAIN = "drain"
    """The server is shutting down and asked the client to reconnect."""


class State(_Identity):
    """Where a stream is."""

    NEW = "new"
    """Nothing sent yet."""
    IDLE = "idle"
    """Open; everything made so far has been written."""
    PENDING = "pending"
    """Open; frames are made and not yet written."""
    PARTIAL = "partial"
    """Open; a frame went out beside the server in part, its rest goes first."""
    ENDING = "ending"
    """A reason to end is known: what is left goes out, then the stream closes."""
    CLOSED = "closed"
    """Nothing more is written."""


class Input(_Identity):
    """What can happen to a stream."""

    START = "start"  # the server asks for the first chunk
    ITEM = "item"  # the producer made an encoded frame
    HEARTBEAT_DUE = "heartbeat-due"  # the stream was silent for its interval
    HANDED = "handed"  # a chunk was handed to the server to write
    SENT = "sent"  # a write beside the server went out whole
    SENT_PART = "sent-part"  # ... went out in part
    REFUSED = "refused"  # ... did not go at all (the socket's buffer is full)
    RAW_SENT = "raw-sent"  # the rest of a partial frame went out
    RAW_SENT_QUEUED = "raw-sent-queued"  # ... and frames wait behind it
    FINISHED = "finished"  # the producer returned
    FAILED = "failed"  # the producer raised
    DRAIN = "drain"  # the server asks the client to come back later
    PEER_CLOSED = "peer-closed"  # the client went away
    WRITE_FAILED = "write-failed"  # a write failed or timed out
    EMPTIED = "emptied"  # the last chunk of an ending stream was handed over


S, In = State, Input

TRANSITIONS: Final[dict[State, dict[Input, State]]] = {
    S.NEW: {
        In.START: S.IDLE,
        In.PEER_CLOSED: S.CLOSED,
    },
    S.IDLE: {
        In.ITEM: S.PENDING,
        In.HEARTBEAT_DUE: S.IDLE,  # a heartbeat is owed
        In.HANDED: S.IDLE,  # the heartbeat, through the server
        In.SENT: S.IDLE,  # the heartbeat, beside it
        In.SENT_PART: S.PARTIAL,
        In.REFUSED: S.PARTIAL,  # the heartbeat's frame is owed, whole
        In.FINISHED: S.ENDING,
        In.FAILED: S.ENDING,
        In.DRAIN: S.ENDING,
        In.PEER_CLOSED: S.CLOSED,
        In.WRITE_FAILED: S.CLOSED,
    },
    S.PENDING: {
        In.ITEM: S.PENDING,
        In.HEARTBEAT_DUE: S.PENDING,  # the frames themselves will do
        In.HANDED: S.IDLE,
        In.SENT: S.IDLE,
        In.SENT_PART: S.PARTIAL,
        In.REFUSED: S.PARTIAL,  # the frame is owed, whole
        In.FINISHED: S.ENDING,
        In.FAILED: S.ENDING,
        In.DRAIN: S.ENDING,
        In.PEER_CLOSED: S.CLOSED,
        In.WRITE_FAILED: S.CLOSED,
    },
    S.PARTIAL: {
        In.ITEM: S.PARTIAL,  # queued behind the rest
        In.HEARTBEAT_DUE: S.PARTIAL,  # refused: the rest goes first, and is a write
        In.RAW_SENT: S.IDLE,
        In.RAW_SENT_QUEUED: S.PENDING,
        In.FINISHED: S.ENDING,  # the rest still goes first
        In.FAILED: S.ENDING,
        In.DRAIN: S.ENDING,
        In.PEER_CLOSED: S.CLOSED,
        In.WRITE_FAILED: S.CLOSED,
    },
    S.ENDING: {
        In.ITEM: S.ENDING,  # made before the producer stopped: still sent
        In.HEARTBEAT_DUE: S.ENDING,  # the last chunk is on its way
        In.FINISHED: S.ENDING,
        In.FAILED: S.ENDING,
        In.DRAIN: S.ENDING,
        In.RAW_SENT: S.ENDING,  # the rest of a partial frame, before the end
        In.RAW_SENT_QUEUED: S.ENDING,
        In.EMPTIED: S.CLOSED,
        In.PEER_CLOSED: S.CLOSED,
        In.WRITE_FAILED: S.CLOSED,
    },
    S.CLOSED: {
        # Whatever still arrives (a producer's last item, a late heartbeat,
        # a drain, the server's failed write) changes nothing.
        In.ITEM: S.CLOSED,
        In.HEARTBEAT_DUE: S.CLOSED,
        In.FINISHED: S.CLOSED,
        In.FAILED: S.CLOSED,
        In.DRAIN: S.CLOSED,
        In.PEER_CLOSED: S.CLOSED,
        In.WRITE_FAILED: S.CLOSED,
    },
}
del S, In

# Inputs that give the stream a reason to end, and that reason.
_REASONS: Final = {
    Input.FINISHED: CloseReason.FINISHED,
    Input.FAILED: CloseReason.ERROR,
    Input.DRAIN: CloseReason.DRAIN,
    Input.PEER_CLOSED: CloseReason.DISCONNECT,
    Input.WRITE_FAILED: CloseReason.WRITE_FAILED,
}

# Reasons that come from outside the producer: it must be stopped.
STOPS_PRODUCER: Final = frozenset(
    {CloseReason.DRAIN, CloseReason.DISCONNECT, CloseReason.WRITE_FAILED}
)


class CoreError(RuntimeError):
    """An input the stream's current state does not allow: a bug of the caller."""


class Turn(NamedTuple):
    """What the handler does on its turn (:meth:`StreamCore.handler_turn`)."""

    kind: TurnKind
    data: bytes = b""


class TurnKind(enum.Enum):
    """The kinds of :class:`Turn`."""

    WRITE = "write"
    """Return ``data`` to the server, which frames and writes it."""
    RAW = "raw"
    """Send ``data`` on the socket as it is (the rest of a frame), then ask again."""
    WAIT = "wait"
    """Nothing to write: wait for an input, then ask again."""
    STOP = "stop"
    """The stream is over: end the iteration."""


# The hot paths (per item, per write, per subscriber an event is delivered
# to) name members through these module globals: on CPython 3.11 EnumType
# defines __getattr__, which sends every attribute lookup on an Enum class,
# ``State.IDLE`` included, through a slow hook (~60 ns, against ~10 ns for a
# global; 0.3 us per event on S3, measured).
NEW: Final = State.NEW
IDLE: Final = State.IDLE
PENDING: Final = State.PENDING
ENDING: Final = State.ENDING
CLOSED: Final = State.CLOSED
WRITE: Final = TurnKind.WRITE
WAIT: Final = TurnKind.WAIT
RAW: Final = TurnKind.RAW
_START, _ITEM, _HANDED = Input.START, Input.ITEM, Input.HANDED
_SENT, _SENT_PART, _REFUSED = Input.SENT, Input.SENT_PART, Input.REFUSED
_RAW_SENT, _RAW_SENT_QUEUED = Input.RAW_SENT, Input.RAW_SENT_QUEUED
_HEARTBEAT_DUE, _EMPTIED = Input.HEARTBEAT_DUE, Input.EMPTIED

_WAIT: Final = Turn(WAIT)
_STOP: Final = Turn(TurnKind.STOP)


class StreamCore:
    """The state of one stream; see :data:`TRANSITIONS`.

    :param max_frames: how many frames may wait (``buffer_size``);
        :attr:`full` says when the producer should wait.
    :param compressor: compresses every chunk as it leaves the machine,
        whoever writes it, in the order they go out (``_compress.py``); a
        partial write's rest is already compressed and goes out as it is.
    """

    __slots__ = (
        "_end",
        "_frames",
        "_rest",
        "beat_due",
        "compressor",
        "max_frames",
        "reason",
        "state",
    )

    def __init__(self, max_frames: int = 64, compressor: Compressor | None = None) -> None:
        self.compressor = compressor
        self.state = NEW
        self.reason: CloseReason | None = None
        self.beat_due = False
        self.max_frames = max_frames
        self._frames: list[bytes] = []
        self._rest = b""
        self._end = b""

    def _move(self, event: Input) -> State:
        try:
            state = self.state = TRANSITIONS[self.state][event]
        except KeyError:
            raise CoreError(
                f"{event.value!r} is not allowed in state {self.state.value!r}"
            ) from None
        return state

    def _end_for(self, event: Input) -> bool:
        """Move by ``event`` and take its reason if the stream has none yet.

        Returns ``True`` if the producer must be stopped: the stream had no
        reason to end before, and this one comes from outside the producer.
        """
        self._move(event)
        if self.reason is not None:
            return False
        reason = self.reason = _REASONS[event]
        return reason in STOPS_PRODUCER

    def _closed(self, event: Input) -> bool:
        stop = self._end_for(event)
        # Nothing more goes out on this connection.
        self._frames.clear()
        self._rest = self._end = b""
        self.beat_due = False
        return stop

    # Inputs.

    @property
    def full(self) -> bool:
        """Whether the producer should wait until the frames are written."""
        return len(self._frames) >= self.max_frames

    @property
    def rest(self) -> bytes:
        """The rest of a frame sent beside the server in part; owed before anything else."""
        return self._rest

    def start(self, preamble: bytes) -> bytes:
        """The first chunk: ``preamble``, for the server to write."""
        self._move(_START)
        return preamble if self.compressor is None else self.compressor.flush(preamble)

    def item(self, frame: bytes) -> bool:
        """The producer made ``frame`` (whole events, encoded); ``True`` if now :attr:`full`."""
        frames = self._frames
        if self.state is not PENDING:  # PENDING stays PENDING: the hot path
            self._move(_ITEM)
            if self.state is CLOSED:
                return False
        frames.append(frame)
        return len(frames) >= self.max_frames

    def heartbeat_due(self) -> bool:
        """The stream was silent for its interval; ``True`` if a heartbeat is owed now."""
        self._move(_HEARTBEAT_DUE)
        if self.state is IDLE:
            self.beat_due = True
        return self.beat_due

    def finished(self) -> None:
        """The producer returned: what it made goes out, then the stream ends."""
        self._end_for(Input.FINISHED)

    def failed(self) -> None:
        """The producer raised: what it made goes out, then the stream ends."""
        self._end_for(Input.FAILED)

    def drain(self, last: bytes) -> bool:
        """End after what is made and ``last``; ``True`` if the producer must stop."""
        stop = self._end_for(Input.DRAIN)
        if stop:
            self._end = last
            self.beat_due = False
        return stop

    def peer_closed(self) -> bool:
        """The client went away; ``True`` if the producer must stop."""
        return self._closed(Input.PEER_CLOSED)

    def write_failed(self) -> bool:
        """A write failed or timed out; ``True`` if the producer must stop."""
        return self._closed(Input.WRITE_FAILED)

    # Writing beside the server.

    def take_beside(self) -> bytes | None:
        """A chunk-framed frame to send beside the server now, or ``None``.

        Only while the handler waits inside the stream. Report the outcome
        with :meth:`sent`.
        """
        compressor = self.compressor
        if self.state is PENDING:
            data = b"".join(self._frames)
            self._frames.clear()
            return chunk(data if compressor is None else compressor.flush(data))
        if self.state is IDLE and self.beat_due:
            self.beat_due = False
            if compressor is None:
                return _HEARTBEAT_CHUNK
            return chunk(compressor.flush(HEARTBEAT))
        return None

    def sent(self, frame: bytes, count: int) -> bool:
        """``count`` bytes of ``frame`` (from :meth:`take_beside`) went out.

        Returns ``True`` if the rest is owed: it goes out as it is, before
        anything else (a :data:`TurnKind.RAW` turn), since the frame's
        chunk header is already on the wire or the frame is framed already.
        """
        if count >= len(frame):
            self._move(_SENT)
            return False
        self._move(_SENT_PART if count else _REFUSED)
        self._rest = frame[count:]
        return True

    # The handler's turn.

    def handler_turn(self) -> Turn:
        """What the server's handler greenlet does next."""
        if self._rest:
            return Turn(RAW, self._rest)
        state = self.state
        compressor = self.compressor
        if state is PENDING:
            data = b"".join(self._frames)
            self._frames.clear()
            self._move(_HANDED)
            self.beat_due = False
            return Turn(WRITE, data if compressor is None else compressor.flush(data))
        if state is IDLE:
            if self.beat_due:
                self.beat_due = False
                self._move(_HANDED)
                beat = HEARTBEAT if compressor is None else compressor.flush(HEARTBEAT)
                return Turn(WRITE, beat)
            return _WAIT
        if state is ENDING:
            data = b"".join(self._frames) + self._end
            self._frames.clear()
            self._end = b""
            self._move(_EMPTIED)
            if compressor is not None:
                data = compressor.finish(data)  # the trailer: the client sees a whole stream
            return Turn(WRITE, data) if data else _STOP
        return _STOP  # CLOSED; NEW never asks

    def raw_sent(self) -> None:
        """The rest of a partial frame (a :data:`TurnKind.RAW` turn) went out."""
        self._rest = b""
        self.beat_due = False
        self._move(_RAW_SENT_QUEUED if self._frames else _RAW_SENT)
