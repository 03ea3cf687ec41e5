"""The stream's state machine, walked transition by transition (no I/O).

Every (state, input) pair of ``TRANSITIONS`` has a row below that reaches
the state, feeds the input through the machine's own methods and checks
where it lands; every pair the table leaves out is refused.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from flask_sse_stream._core import (
    HEARTBEAT,
    TRANSITIONS,
    CloseReason,
    CoreError,
    Input,
    State,
    StreamCore,
    TurnKind,
    chunk,
)

Step = Callable[[StreamCore], object]

PREAMBLE = b"retry: 10\n\n"
EVENT = b"data: x\n\n"


def started(core: StreamCore) -> None:
    core.start(PREAMBLE)


def pending(core: StreamCore) -> None:
    started(core)
    core.item(EVENT)


def partial(core: StreamCore) -> None:
    pending(core)
    frame = core.take_beside()
    assert frame is not None
    assert core.sent(frame, 3)


def ending(core: StreamCore) -> None:
    started(core)
    core.finished()


def ending_with_rest(core: StreamCore) -> None:
    partial(core)
    core.finished()


def closed(core: StreamCore) -> None:
    started(core)
    core.peer_closed()


REACH: dict[str, Step] = {
    "new": lambda core: None,
    "idle": started,
    "pending": pending,
    "partial": partial,
    "ending": ending,
    "ending-with-rest": ending_with_rest,
    "closed": closed,
}


def beside(count: Callable[[bytes], int]) -> Step:
    """Take a frame for beside the server (a heartbeat if nothing else) and send ``count``."""

    def step(core: StreamCore) -> None:
        if core.state is State.IDLE:
            core.beat_due = True
        frame = core.take_beside()
        assert frame is not None
        core.sent(frame, count(frame))

    return step


def handed(core: StreamCore) -> None:
    if core.state is State.IDLE:
        core.beat_due = True
    assert core.handler_turn().kind is TurnKind.WRITE


def raw_sent_queued(core: StreamCore) -> None:
    core.item(EVENT)
    core.raw_sent()


FEED: dict[Input, Step] = {
    Input.START: started,
    Input.ITEM: lambda core: core.item(EVENT),
    Input.HEARTBEAT_DUE: lambda core: core.heartbeat_due(),
    Input.HANDED: handed,
    Input.SENT: beside(len),
    Input.SENT_PART: beside(lambda frame: 1),
    Input.REFUSED: beside(lambda frame: 0),
    Input.RAW_SENT: lambda core: core.raw_sent(),
    Input.RAW_SENT_QUEUED: raw_sent_queued,
    Input.FINISHED: lambda core: core.finished(),
    Input.FAILED: lambda core: core.failed(),
    Input.DRAIN: lambda core: core.drain(b"retry: 1\n\n"),
    Input.PEER_CLOSED: lambda core: core.peer_closed(),
    Input.WRITE_FAILED: lambda core: core.write_failed(),
    Input.EMPTIED: lambda core: core.handler_turn(),
}

S, In = State, Input
ROWS: list[tuple[str, Input, State]] = [
    ("new", In.START, S.IDLE),
    ("new", In.PEER_CLOSED, S.CLOSED),
    ("idle", In.ITEM, S.PENDING),
    ("idle", In.HEARTBEAT_DUE, S.IDLE),
    ("idle", In.HANDED, S.IDLE),
    ("idle", In.SENT, S.IDLE),
    ("idle", In.SENT_PART, S.PARTIAL),
    ("idle", In.REFUSED, S.PARTIAL),
    ("idle", In.FINISHED, S.ENDING),
    ("idle", In.FAILED, S.ENDING),
    ("idle", In.DRAIN, S.ENDING),
    ("idle", In.PEER_CLOSED, S.CLOSED),
    ("idle", In.WRITE_FAILED, S.CLOSED),
    ("pending", In.ITEM, S.PENDING),
    ("pending", In.HEARTBEAT_DUE, S.PENDING),
    ("pending", In.HANDED, S.IDLE),
    ("pending", In.SENT, S.IDLE),
    ("pending", In.SENT_PART, S.PARTIAL),
    ("pending", In.REFUSED, S.PARTIAL),
    ("pending", In.FINISHED, S.ENDING),
    ("pending", In.FAILED, S.ENDING),
    ("pending", In.DRAIN, S.ENDING),
    ("pending", In.PEER_CLOSED, S.CLOSED),
    ("pending", In.WRITE_FAILED, S.CLOSED),
    ("partial", In.ITEM, S.PARTIAL),
    ("partial", In.HEARTBEAT_DUE, S.PARTIAL),
    ("partial", In.RAW_SENT, S.IDLE),
    ("partial", In.RAW_SENT_QUEUED, S.PENDING),
    ("partial", In.FINISHED, S.ENDING),
    ("partial", In.FAILED, S.ENDING),
    ("partial", In.DRAIN, S.ENDING),
    ("partial", In.PEER_CLOSED, S.CLOSED),
    ("partial", In.WRITE_FAILED, S.CLOSED),
    ("ending", In.ITEM, S.ENDING),
    ("ending", In.HEARTBEAT_DUE, S.ENDING),
    ("ending", In.FINISHED, S.ENDING),
    ("ending", In.FAILED, S.ENDING),
    ("ending", In.DRAIN, S.ENDING),
    ("ending-with-rest", In.RAW_SENT, S.ENDING),
    ("ending-with-rest", In.RAW_SENT_QUEUED, S.ENDING),
    ("ending", In.EMPTIED, S.CLOSED),
    ("ending", In.PEER_CLOSED, S.CLOSED),
    ("ending", In.WRITE_FAILED, S.CLOSED),
    ("closed", In.ITEM, S.CLOSED),
    ("closed", In.HEARTBEAT_DUE, S.CLOSED),
    ("closed", In.FINISHED, S.CLOSED),
    ("closed", In.FAILED, S.CLOSED),
    ("closed", In.DRAIN, S.CLOSED),
    ("closed", In.PEER_CLOSED, S.CLOSED),
    ("closed", In.WRITE_FAILED, S.CLOSED),
    ("closed", In.RAW_SENT, S.CLOSED),
    ("closed", In.RAW_SENT_QUEUED, S.CLOSED),
]
del S, In


def state_of(recipe: str) -> State:
    core = StreamCore()
    REACH[recipe](core)
    return core.state


@pytest.mark.parametrize(("recipe", "event", "expected"), ROWS)
def test_each_transition_lands_where_the_table_says(
    recipe: str, event: Input, expected: State
) -> None:
    core = StreamCore()
    REACH[recipe](core)
    assert TRANSITIONS[core.state][event] is expected
    FEED[event](core)
    assert core.state is expected


def test_the_rows_cover_the_whole_table() -> None:
    covered = {(state_of(recipe), event) for recipe, event, _ in ROWS}
    table = {(state, event) for state, moves in TRANSITIONS.items() for event in moves}
    assert covered == table


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (state, event)
        for state in State
        for event in Input
        if event not in TRANSITIONS[state] and event is not Input.START
    ],
)
def test_an_input_the_table_leaves_out_is_refused(state: State, event: Input) -> None:
    core = StreamCore()
    core.state = state
    with pytest.raises(CoreError, match=event.value):
        core._move(event)


def test_a_second_start_is_refused() -> None:
    core = StreamCore()
    started(core)
    with pytest.raises(CoreError, match="'start' is not allowed in state 'idle'"):
        core.start(PREAMBLE)


# What the machine says to do, beyond where it lands.


def test_the_preamble_is_the_first_chunk_and_then_the_handler_waits() -> None:
    core = StreamCore()
    assert core.start(PREAMBLE) == PREAMBLE
    assert core.handler_turn().kind is TurnKind.WAIT


def test_frames_made_before_the_handlers_turn_go_out_as_one_chunk() -> None:
    core = StreamCore(max_frames=3)
    started(core)
    for n in range(3):
        assert not core.full
        core.item(b"data: %d\n\n" % n)
    assert core.full  # the producer waits now
    turn = core.handler_turn()
    assert (turn.kind, turn.data) == (TurnKind.WRITE, b"data: 0\n\ndata: 1\n\ndata: 2\n\n")
    assert not core.full


def test_a_heartbeat_is_owed_only_to_an_idle_stream() -> None:
    core = StreamCore()
    started(core)
    assert core.heartbeat_due()
    assert core.handler_turn() == (TurnKind.WRITE, HEARTBEAT)
    core.item(EVENT)
    assert not core.heartbeat_due()  # the event will do
    assert core.handler_turn() == (TurnKind.WRITE, EVENT)


def test_a_frame_beside_the_server_is_one_chunk_of_all_pending_frames() -> None:
    core = StreamCore()
    pending(core)
    core.item(EVENT)
    frame = core.take_beside()
    assert frame == chunk(EVENT + EVENT)
    assert not core.sent(frame, len(frame))
    assert core.take_beside() is None
    assert core.handler_turn().kind is TurnKind.WAIT


def test_a_partial_write_owes_its_rest_before_anything_else() -> None:
    core = StreamCore()
    pending(core)
    frame = core.take_beside()
    assert frame is not None
    assert core.sent(frame, 4)  # the rest is owed
    core.item(b"data: later\n\n")
    assert core.heartbeat_due() is False  # refused: the rest goes first
    assert core.take_beside() is None  # nothing may overtake the rest
    assert core.handler_turn() == (TurnKind.RAW, frame[4:])
    assert core.handler_turn() == (TurnKind.RAW, frame[4:])  # until it is sent
    core.raw_sent()
    assert core.state is State.PENDING
    assert core.handler_turn() == (TurnKind.WRITE, b"data: later\n\n")


def test_a_heartbeat_refused_while_due_is_owed_whole() -> None:
    core = StreamCore()
    started(core)
    assert core.heartbeat_due()
    frame = core.take_beside()
    assert frame == chunk(HEARTBEAT)
    assert core.sent(frame, 0)  # the socket's buffer was full
    assert core.state is State.PARTIAL
    assert core.heartbeat_due() is False  # due again: refused, the frame is owed
    assert core.handler_turn() == (TurnKind.RAW, chunk(HEARTBEAT))
    core.raw_sent()
    assert core.state is State.IDLE
    assert core.handler_turn().kind is TurnKind.WAIT  # one heartbeat, not two


def test_an_ending_after_a_partial_write_sends_the_rest_then_the_last_chunk() -> None:
    core = StreamCore()
    partial(core)
    rest = core.rest
    assert core.drain(b"retry: 1\n\n")  # the producer must stop
    assert core.handler_turn() == (TurnKind.RAW, rest)
    core.raw_sent()
    assert core.handler_turn() == (TurnKind.WRITE, b"retry: 1\n\n")
    assert core.state is State.CLOSED
    assert core.handler_turn().kind is TurnKind.STOP
    assert core.reason is CloseReason.DRAIN


@pytest.mark.parametrize(
    ("end", "reason", "stops"),
    [
        (lambda core: core.finished(), CloseReason.FINISHED, None),
        (lambda core: core.failed(), CloseReason.ERROR, None),
        (lambda core: core.drain(b""), CloseReason.DRAIN, True),
        (lambda core: core.peer_closed(), CloseReason.DISCONNECT, True),
        (lambda core: core.write_failed(), CloseReason.WRITE_FAILED, True),
    ],
)
def test_the_first_reason_to_end_is_kept_and_says_whether_to_stop_the_producer(
    end: Step, reason: CloseReason, stops: bool | None
) -> None:
    core = StreamCore()
    started(core)
    assert end(core) is stops
    assert core.reason is reason
    core.peer_closed()
    core.finished()
    assert core.reason is reason


def test_an_ending_stream_writes_what_the_producer_made_then_stops() -> None:
    core = StreamCore()
    pending(core)
    core.finished()
    core.item(b"data: last\n\n")  # made just before it returned
    assert core.handler_turn() == (TurnKind.WRITE, EVENT + b"data: last\n\n")
    assert core.handler_turn().kind is TurnKind.STOP


def test_an_ending_stream_with_nothing_left_stops_at_once() -> None:
    core = StreamCore()
    ending(core)
    assert core.handler_turn().kind is TurnKind.STOP
    assert core.state is State.CLOSED


def test_a_closed_stream_drops_what_was_pending_and_writes_nothing_more() -> None:
    core = StreamCore()
    pending(core)
    assert core.drain(b"retry: 1\n\n")
    assert core.write_failed() is False  # stopped already, by the drain
    assert core.handler_turn().kind is TurnKind.STOP
    core.item(EVENT)
    assert core.take_beside() is None
    assert core.heartbeat_due() is False


@pytest.mark.parametrize("size", [0, 1, 15, 16, 4096, 1 << 20])
def test_a_chunk_is_framed_as_rfc_9112_says(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    framed = chunk(data)
    head, _, rest = framed.partition(b"\r\n")
    assert int(head, 16) == size
    assert rest == data + b"\r\n"
