"""Our runner's own behaviour: draining on SIGTERM, and the command line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import h11
import pytest

from .helpers import ROOT, RawClient, start_server, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]

DRAIN_TIMEOUT = 3.0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_drains_open_streams_then_the_process_exits(
    log_dir: Path, sig: signal.Signals
) -> None:
    server = start_server("runner", log_dir, drain_timeout=DRAIN_TIMEOUT)
    try:
        streams = [RawClient(server.port) for _ in range(3)]
        idle = RawClient(server.port)
        for i, client in enumerate(streams):
            client.request(f"/blocked?token=drain-{i}")
        for client in streams:
            assert client.response().status_code == 200
            assert client.chunk() == b"retry: 1000\n\n"
        # A keep-alive connection with no request in flight.
        idle.request("/health")
        assert idle.response().status_code == 200
        while not isinstance(idle.next_event(), h11.EndOfMessage):
            pass
        wait_for(lambda: len(server.state()["started"]) == 3, 5)
        signalled = time.monotonic()
        server.signal(sig)
        for client in streams:
            last = client.chunk(timeout=DRAIN_TIMEOUT)
            assert last is not None
            assert last.startswith(b"retry: ")
            assert 1000 <= int(last.removeprefix(b"retry: ").removesuffix(b"\n\n")) <= 2000
            assert client.chunk(timeout=DRAIN_TIMEOUT) is None  # the terminating chunk
            client.wait_closed(timeout=DRAIN_TIMEOUT)
        idle.wait_closed(timeout=DRAIN_TIMEOUT)
        returncode = server.process.wait(DRAIN_TIMEOUT + 2)
        exited_after = time.monotonic() - signalled
    finally:
        for client in [*streams, idle]:
            client.close()
        server.stop()
    assert returncode == 0, server.log()
    # Every connection closed, nothing left to wait for: no need to sit out the timeout.
    assert exited_after < DRAIN_TIMEOUT, exited_after
    assert "Traceback" not in server.log()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flask_sse_stream", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("tests.e2e.no_such_module:app", "cannot import 'tests.e2e.no_such_module'"),
        ("tests.e2e.apps:no_such_app", "has no attribute 'no_such_app'"),
        ("tests.e2e.apps:BLOCK", "is not a WSGI application"),
        (":app", "MODULE:APP"),
    ],
)
def test_the_command_explains_a_bad_module_or_app(target: str, message: str) -> None:
    result = run_cli("serve", target, "--port", "0")
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_the_command_shows_the_traceback_of_an_app_that_fails_to_import() -> None:
    # The module exists, so its own import error is the user's bug: show it whole.
    result = run_cli("serve", "tests.e2e.broken_app:app", "--port", "0")
    assert result.returncode == 1, result
    assert "Traceback" in result.stderr
    assert "ModuleNotFoundError: No module named 'this_dependency_is_missing'" in result.stderr


def test_the_app_argument_is_required() -> None:
    result = run_cli("serve")
    assert result.returncode == 2
    assert "MODULE:APP" in result.stderr
