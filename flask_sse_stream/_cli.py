"""The ``flask-sse-stream`` command.

``flask-sse-stream serve module:app`` serves a Flask app on gevent. The
console script and ``python -m flask_sse_stream`` patch the process with
gevent before they import anything else (see ``__main__``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._server import serve

__all__ = ["AppImportError", "load_app", "main"]


class AppImportError(Exception):
    """``MODULE:APP`` does not name an importable module and a WSGI app in it."""


def load_app(target: str) -> Callable[..., Any]:
    """Import ``module:name`` (``name`` defaults to ``app``) from the current directory.

    ``module:factory()`` calls an application factory without arguments.

    :raises AppImportError: if the module cannot be found, has no such name,
        or the name is not a WSGI application. An error raised while the
        module itself is imported (a missing dependency, a bug) propagates
        unchanged, with its traceback.
    """
    module_name, _, name = target.partition(":")
    name = name or "app"
    attr_name = name.removesuffix("()")
    if not module_name or not attr_name.isidentifier():
        raise AppImportError(f"{target!r} is not MODULE:APP, e.g. examples.demo:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise AppImportError(
                f"cannot import {module_name!r}: there is no module {missing!r} "
                f"(looked in {os.getcwd()} and the installed packages)"
            ) from None
        raise
    attr = getattr(module, attr_name, None)
    if attr is None:
        raise AppImportError(f"module {module_name!r} has no attribute {attr_name!r}")
    app = attr() if name.endswith("()") else attr
    if not callable(app):
        raise AppImportError(f"{target!r} is not a WSGI application but a {type(app).__name__}")
    return app  # type: ignore[no-any-return]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flask-sse-stream", description="Serve Server-Sent Events from Flask on gevent."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="serve a Flask app with gevent's WSGIServer")
    run.add_argument("app", metavar="MODULE:APP", help="the app, e.g. examples.demo:app")
    run.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    run.add_argument("--port", type=int, default=5000, help="port to bind; 0 picks one")
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=5.0,
        help="seconds to let responses finish on SIGTERM/SIGINT (default 5)",
    )
    run.add_argument(
        "--drain-retry",
        type=int,
        default=1000,
        help="base reconnection delay in ms sent to clients on shutdown (default 1000)",
    )
    run.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to send a request's headers, and an idle kept-alive "
        "connection waits for the next (default 10; 0: for ever)",
    )
    run.add_argument("--no-access-log", action="store_true", help="do not log each request")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line; the process must already be patched by gevent."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        app = load_app(args.app)
    except AppImportError as exc:
        parser.error(str(exc))

    def ready(host: str, port: int) -> None:
        print(f"flask-sse-stream: serving {args.app} on http://{host}:{port}", flush=True)

    serve(
        app,
        args.host,
        args.port,
        drain_timeout=args.drain_timeout,
        drain_retry=args.drain_retry,
        request_timeout=args.request_timeout or None,
        access_log=not args.no_access_log,
        on_ready=ready,
    )
