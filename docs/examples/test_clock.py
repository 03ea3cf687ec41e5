from itertools import islice

from flask_sse_stream.testing import iter_events


def test_clock_ticks(app):
    response = app.test_client().get("/clock", buffered=False)
    try:
        events = list(islice(iter_events(response), 2))
    finally:
        response.close()  # ends the stream: the view's generator is closed
    assert [event.event for event in events] == ["tick", "tick"]
    assert "now" in events[0].json()
