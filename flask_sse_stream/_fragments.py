"""HTML fragments as event data: server-rendered templates for htmx and friends.

An event's data may be any text, line breaks included: :class:`~flask_sse_stream.Event`
sends one ``data:`` line per line and the browser joins them with ``\\n``, so a
rendered template arrives exactly as it was rendered (CRLF and lone CR become
LF, as the event-stream format requires). :func:`render_fragment` renders one
wherever the code runs: in a view, in a stream's generator (it runs in the
view's contexts), or outside any request, given the application.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, has_app_context, render_template
from jinja2 import Template

__all__ = ["render_fragment"]


def render_fragment(
    template_name_or_list: str | Template | list[str | Template],
    /,
    *,
    app: Flask | None = None,
    **context: Any,
) -> str:
    """Render a template to send as an event's data; ``flask.render_template`` anywhere.

    In a view, a stream or an application context it is exactly
    ``render_template``. Outside any (a greenlet or thread of your own, a
    script), pass ``app``: its application context is pushed for the
    rendering only, so ``url_for`` and the app's template globals work::

        def ticker(app):
            while True:
                html = render_fragment("load.html", app=app, load=os.getloadavg())
                sse.publish(html, channel="dashboard", event="load", app=app)
                gevent.sleep(1)

    Rendered inside a request, the template sees that request (and its
    ``session`` and ``g``); an event you publish goes to every subscriber, so
    render nothing private to the publishing user into it.

    :raises RuntimeError: outside any application context, without ``app``.
    """
    if has_app_context() and (app is None or current_app._get_current_object() is app):  # type: ignore[attr-defined]
        return render_template(template_name_or_list, **context)
    if app is None:
        raise RuntimeError(
            "render_fragment() found no application: call it in a view or a stream, "
            "inside 'with app.app_context():', or pass app=app"
        )
    with app.app_context():
        return render_template(template_name_or_list, **context)
