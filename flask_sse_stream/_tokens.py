"""Token streams in the OpenAI chat-completions format, for LLM-style ``POST`` streams.

A client ``POST``s a JSON body and reads the answer as an event stream with
``fetch()`` (``EventSource`` cannot ``POST``): one ``data: {...}`` event per
``chat.completion.chunk``, then ``data: [DONE]``. :func:`completion_chunks`
turns any iterable of text tokens (a model client's stream) into those
items, for a stream view to yield::

    @app.post("/v1/chat/completions")
    @sse.stream(retry=None)
    def completions():
        body = request.get_json()
        return completion_chunks(model_call(body["messages"]), model=body["model"])

When the client goes away (the user pressed stop, or closed the tab) the
stream stops the producer at once, wherever it waits, and
:func:`completion_chunks` closes the token iterator: the model call's own
``finally`` runs then, not when the garbage collector gets to it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["DONE", "completion_chunks"]

DONE = "[DONE]"
"""The data of the last event of an OpenAI-style stream."""


def completion_chunks(
    tokens: Iterable[str], *, model: str, id: str | None = None
) -> Iterator[dict[str, Any] | str]:
    """Yield OpenAI ``chat.completion.chunk`` objects for ``tokens``, then :data:`DONE`.

    The first chunk carries the ``assistant`` role, one chunk follows per
    token (its ``delta.content``), the last has ``finish_reason: "stop"``.
    Every chunk has the same ``id`` (``chatcmpl-`` and a random hex string
    when none is given), ``created`` time and ``model``.

    ``tokens`` is closed when this generator is, however it ends.
    """
    chunk_id = id if id is not None else f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    iterator = iter(tokens)
    try:
        yield chunk({"role": "assistant", "content": ""})
        for token in iterator:
            yield chunk({"content": token})
        yield chunk({}, "stop")
        yield DONE
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
