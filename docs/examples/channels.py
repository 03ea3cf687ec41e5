from flask import Flask, request, session

from flask_sse_stream import SSE

app = Flask(__name__)
app.config.update(
    SECRET_KEY="change me",
    SSE_HISTORY_SIZE=500,  # events kept per channel for reconnecting clients
    SSE_MAX_CONNECTIONS=5000,
    SSE_METRICS=True,
)
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")
# The browser: new EventSource("/events?channel=chat&channel=user-42")


@sse.authorize
def may_subscribe(channel: str) -> bool:
    if channel.startswith("user-"):
        return channel == f"user-{session.get('user_id')}"
    return True


@app.post("/chat")
def post_message():
    event_id = sse.publish({"text": request.form["text"]}, channel="chat", event="message")
    return {"id": event_id}


@app.get("/me/stream")
@sse.stream
def my_stream():
    # A view can stream a subscription too; a reconnecting browser's
    # Last-Event-ID is read from the request.
    return sse.subscribe([f"user-{session.get('user_id')}", "chat"])
