"""The public API is ``flask_sse_stream.__all__`` and the few modules users name."""

from __future__ import annotations

import pkgutil

import flask_sse_stream

PUBLIC_MODULES = {
    "flask_sse_stream.__main__",  # python -m flask_sse_stream
    "flask_sse_stream.datastar",  # read_signals() and datastar-py's events, for Datastar pages
    "flask_sse_stream.gunicorn",  # -k flask_sse_stream.gunicorn.GeventWorker
    "flask_sse_stream.gunicorn_conf",  # -c python:flask_sse_stream.gunicorn_conf
    "flask_sse_stream.testing",  # parsing streams in users' tests
}


def test_every_other_module_has_a_private_name() -> None:
    modules = {
        info.name
        for info in pkgutil.walk_packages(flask_sse_stream.__path__, "flask_sse_stream.")
        if not any(part.startswith("_") for part in info.name.split(".")[1:])
        or info.name.endswith(".__main__")
    }
    assert modules == PUBLIC_MODULES


def test_every_name_of_all_resolves_and_dir_lists_it() -> None:
    for name in flask_sse_stream.__all__:
        assert getattr(flask_sse_stream, name) is not None
    assert set(flask_sse_stream.__all__) <= set(dir(flask_sse_stream))
