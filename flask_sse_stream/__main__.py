"""``python -m flask_sse_stream`` and the ``flask-sse-stream`` console script.

gevent patches the process here, before the app is imported, so that every
socket, sleep and lock in the app and its libraries cooperates.
"""

from gevent import monkey

monkey.patch_all()

from ._cli import main  # noqa: E402 - must come after patching

__all__ = ["main"]

if __name__ == "__main__":
    main()
