from flask import Flask, abort, g, request

from flask_sse_stream import SSE, CloseReason, Comment, Event

app = Flask(__name__)
app.config["SSE_HEARTBEAT_INTERVAL"] = 10
sse = SSE(app)
closed: list[CloseReason] = []


@app.get("/count")
@sse.stream(heartbeat=5, retry=2000)
def count():
    yield Comment("counting")  # a comment: EventSource ignores it
    for n in range(int(request.args.get("to", 3))):
        yield Event(str(n), event="count", id=str(n))
    yield {"done": True}  # a dict or list is sent as JSON


@app.get("/report/<int:report_id>")
@sse.stream
def report(report_id):
    # Checks run here, before the stream starts: a refusal is a normal response.
    if report_id != 1:
        abort(404)
    g.report_id = report_id
    return report_progress()


def report_progress():
    try:
        for percent in (0, 50, 100):
            yield Event({"report": g.report_id, "percent": percent}, event="progress")
    finally:
        g.pop("report_id")  # runs when the stream ends, also when the client goes away


@sse.on_close
def count_closed(reason: CloseReason) -> None:
    closed.append(reason)
