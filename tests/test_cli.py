"""The command line and ``serve()``, in the (unpatched) test process.

The runner itself, patched and serving, is exercised in tests/e2e.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from gevent import monkey

from flask_sse_stream import serve
from flask_sse_stream._cli import AppImportError, load_app, main

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory holding small app modules, forgotten afterwards."""
    (tmp_path / "cli_app.py").write_text(
        "from flask import Flask\n"
        "app = Flask('cli_app')\n"
        "other = Flask('other')\n"
        "NOT_AN_APP = 3\n"
        "def create_app():\n"
        "    return Flask('made')\n"
    )
    (tmp_path / "cli_broken.py").write_text("import cli_missing_dependency\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in ("cli_app", "cli_broken"):
        sys.modules.pop(name, None)


def test_serve_refuses_to_run_in_an_unpatched_process() -> None:
    assert not monkey.is_module_patched("socket")
    with pytest.raises(RuntimeError, match="patch_all") as info:
        serve(Flask(__name__), port=0)
    assert "flask-sse-stream serve" in str(info.value)


def test_serve_refuses_before_it_binds_a_port() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RuntimeError):
        serve(Flask(__name__), port=port)
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # still free


@pytest.mark.usefixtures("app_dir")
@pytest.mark.parametrize(
    ("target", "name"),
    [("cli_app", "cli_app"), ("cli_app:app", "cli_app"), ("cli_app:other", "other")],
)
def test_load_app_imports_module_and_name(target: str, name: str) -> None:
    app = load_app(target)
    assert isinstance(app, Flask)
    assert app.name == name


@pytest.mark.usefixtures("app_dir")
def test_load_app_calls_a_factory() -> None:
    app = load_app("cli_app:create_app()")
    assert isinstance(app, Flask)
    assert app.name == "made"


@pytest.mark.usefixtures("app_dir")
@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("cli_nowhere:app", "cannot import 'cli_nowhere': there is no module 'cli_nowhere'"),
        ("cli_nowhere.sub:app", "there is no module 'cli_nowhere'"),
        ("cli_app.sub:app", "cannot import 'cli_app.sub'"),
        ("cli_app:nothing", "module 'cli_app' has no attribute 'nothing'"),
        ("cli_app:NOT_AN_APP", "is not a WSGI application but a int"),
        (":app", "is not MODULE:APP"),
        ("cli_app:not-a-name", "is not MODULE:APP"),
    ],
)
def test_load_app_explains_what_is_wrong(target: str, message: str) -> None:
    with pytest.raises(AppImportError) as info:
        load_app(target)
    assert message in str(info.value)


@pytest.mark.usefixtures("app_dir")
def test_an_import_error_inside_the_app_module_is_not_hidden() -> None:
    with pytest.raises(ModuleNotFoundError, match="cli_missing_dependency"):
        load_app("cli_broken:app")


@pytest.mark.usefixtures("app_dir")
def test_main_exits_with_a_usage_error_for_a_bad_app(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "cli_app:nothing"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: flask-sse-stream" in err
    assert "error: module 'cli_app' has no attribute 'nothing'" in err


@pytest.mark.usefixtures("app_dir")
def test_main_serves_through_serve_which_refuses_unpatched() -> None:
    # Everything up to serve() works; serve() itself is what needs patching.
    with pytest.raises(RuntimeError, match="patched by gevent"):
        main(["serve", "cli_app:app", "--port", "0"])


@pytest.mark.parametrize(
    "argv",
    [[], ["serve"], ["serve", "cli_app:app", "--port", "many"], ["run", "cli_app:app"]],
)
def test_main_rejects_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_the_entry_point_patches_before_flask_is_imported() -> None:
    """``python -m flask_sse_stream`` imports the package first: it must stay light."""
    import subprocess
    import sys

    code = (
        "import sys, flask_sse_stream\n"
        "assert 'flask' not in sys.modules and 'gevent' not in sys.modules, sorted(sys.modules)\n"
        "import flask_sse_stream.__main__\n"
        "from gevent import monkey\n"
        "assert monkey.is_module_patched('socket')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
