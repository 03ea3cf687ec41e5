"""The distributions: what `python -m build` makes is complete and works when installed.

The sdist and wheel are built once per run, in a temporary folder, from the
project (or from an unpacked sdist: distributions build and test from one).
The wheel is installed into a new virtualenv, with nothing but its own
dependencies, and serves a stream from there; the sdist's own tests run
from a copy unpacked beside it.
"""

from __future__ import annotations

import email.parser
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from e2e.helpers import HOST, free_port, wait_for

from flask_sse_stream import __version__
from flask_sse_stream.testing import iter_events

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.dist, pytest.mark.timeout(600)]

# Run from an unpacked sdist, the sdist's tests (below) are a part of the
# suite, not this module again.
SDIST_TESTS = [
    "tests/test_event.py",
    "tests/test_config.py",
    "tests/test_channels.py",
    "tests/test_extension.py",
    "tests/test_testing.py",
    "tests/test_docs.py",
]


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--quiet", "--outdir", str(out), str(ROOT)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dists(sdist, wheel)


def sdist_names(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as tar:
        top = f"flask_sse_stream-{__version__}/"
        return {m.name.removeprefix(top) for m in tar.getmembers() if m.isfile()}


def tracked_files() -> list[str] | None:
    """The files git tracks in the project, or None outside a git checkout of it.

    An sdist unpacked inside some other checkout is not one.
    """
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout.strip()
        if Path(top).resolve() != ROOT:
            return None
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [name for name in out.decode().split("\0") if name]


def test_sdist_holds_every_file_of_the_tests_docs_and_examples(dists: Dists) -> None:
    tracked = tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout (an unpacked sdist): nothing to compare with")
    wanted = {
        name
        for name in tracked
        if name.startswith(("flask_sse_stream/", "tests/", "docs/", "examples/"))
        or name in {"LICENSE", "CHANGES.md", "README.md", "Makefile", "pyproject.toml"}
    }
    # The sdist leaves out the benchmarks' recorded results (large, and not
    # needed to run anything).
    missing = sorted(wanted - sdist_names(dists.sdist))
    assert not missing, f"not in the sdist: {missing}"


def test_wheel_metadata_names_the_license_the_extras_and_no_test_tools(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as whl:
        names = set(whl.namelist())
        info = f"flask_sse_stream-{__version__}.dist-info"
        metadata = email.parser.Parser().parsestr(whl.read(f"{info}/METADATA").decode())
    assert "flask_sse_stream/py.typed" in names
    assert f"{info}/licenses/LICENSE" in names
    assert not any(name.startswith("tests/") for name in names)
    assert metadata["License-Expression"] == "BSD-3-Clause"
    assert sorted(metadata.get_all("Provides-Extra") or []) == ["brotli", "gunicorn", "redis"]
    requires = " ".join(metadata.get_all("Requires-Dist") or [])
    for tool in ("pytest", "ruff", "mypy", "playwright", "sphinx"):
        assert tool not in requires.lower()
    assert "Development Status :: 4 - Beta" in (metadata.get_all("Classifier") or [])


APP = textwrap.dedent(
    """
    import flask_sse_stream
    from flask import Flask
    from flask_sse_stream import SSE

    app = Flask(__name__)
    sse = SSE(app)

    @app.get("/health")
    def health():
        return {"module": flask_sse_stream.__file__}

    @app.get("/count")
    @sse.stream
    def count():
        for n in range(3):
            yield {"n": n}
    """
)


@pytest.fixture(scope="module")
def clean_venv(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv with the wheel and only what it depends on."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [venv / "bin/python", "-m", "pip", "install", "--quiet", str(dists.wheel)],
        check=True,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    return venv


@pytest.fixture
def wheel_server(clean_venv: Path, tmp_path: Path) -> Iterator[int]:
    (tmp_path / "app.py").write_text(APP)
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [
            clean_venv / "bin/flask-sse-stream",
            "serve",
            "app:app",
            "--host",
            HOST,
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        assert process.poll() is None, (tmp_path / "server.log").read_text()
        try:
            return requests.get(f"http://{HOST}:{port}/health", timeout=1).ok
        except requests.ConnectionError:
            return False

    try:
        wait_for(ready, timeout=30, interval=0.05, message="the wheel's server never answered")
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        log.close()


def test_the_wheel_in_a_clean_venv_serves_a_stream(clean_venv: Path, wheel_server: int) -> None:
    base = f"http://{HOST}:{wheel_server}"
    module = requests.get(f"{base}/health", timeout=5).json()["module"]
    assert Path(module).is_relative_to(clean_venv)
    with requests.get(f"{base}/count", stream=True, timeout=10) as response:
        assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        events = list(iter_events(response))
    assert [json.loads(e.data) for e in events if e.data] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_the_sdist_tests_pass_from_the_unpacked_sdist(dists: Dists, tmp_path: Path) -> None:
    with tarfile.open(dists.sdist) as tar:
        tar.extractall(tmp_path, filter="data")
    unpacked = tmp_path / f"flask_sse_stream-{__version__}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # `python -m` puts the unpacked folder first on sys.path: its package
    # is the one under test, not this checkout's.
    where = subprocess.run(
        [sys.executable, "-c", "import flask_sse_stream; print(flask_sse_stream.__file__)"],
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(unpacked)
    collect = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--collect-only"],
        check=False,
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
    )
    assert collect.returncode == 0, collect.stdout + collect.stderr
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *SDIST_TESTS],
        check=False,
        cwd=unpacked,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert " passed" in run.stdout.splitlines()[-1]
