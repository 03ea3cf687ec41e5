"""What ``publish()`` sends: the one event built from its arguments.

Shared by :meth:`SSE.publish <flask_sse_stream.SSE.publish>` and
:meth:`Publisher.publish <flask_sse_stream.Publisher.publish>`.
"""

from __future__ import annotations

from typing import Any

from ._event import Event, JSONDumps
from .datastar import is_datastar_event, to_event

__all__ = ["event_to_publish"]


def event_to_publish(
    data: Any, *, event: str | None, id: str | None, retry: int | None, dumps: JSONDumps
) -> Event:
    """The event that ``publish(data, event=..., id=..., retry=...)`` sends.

    ``data`` is a ``str``, a value to send as JSON through ``dumps``, or a
    whole event (an :class:`Event` or a datastar-py event), whose own fields
    are used; giving ``event``, ``id`` or ``retry`` beside one is a
    ``TypeError``. The data of the result is text (or ``None``).
    """
    if isinstance(data, Event) or is_datastar_event(data):
        if event is not None or id is not None or retry is not None:
            raise TypeError(
                "publish() takes event, id and retry from the event it is given: "
                "set them on the event instead"
            )
        given = data if isinstance(data, Event) else to_event(data)
        if given.data is None or isinstance(given.data, str):
            return given
        data, event, id, retry = given.data, given.event, given.id, given.retry
    if not isinstance(data, str):
        data = dumps(data)
    return Event(data, event=event, id=id, retry=retry)
