import time

import gevent
from flask import Flask

from flask_sse_stream import SSE, Event

app = Flask(__name__)
sse = SSE(app)


@app.get("/clock")
@sse.stream
def clock():
    while True:
        yield Event({"now": time.time()}, event="tick")
        gevent.sleep(1)
