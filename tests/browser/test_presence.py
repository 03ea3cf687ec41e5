"""Presence in headless Chromium: the demo's member list and the operator page.

Two windows name themselves in the demo (``examples/demo.py``) and each
lists both; when one closes, the other shows it leave after the grace
period. The operator page (``/events/admin``) shows the chat channel with
its members, live. ``PRESENCE_SCREENSHOTS=docs pytest tests/browser`` saves
the screenshots the docs show (``docs/presence.png``, ``docs/admin.png``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e.helpers import HOST, Server

from .servers import start_runner
from .test_demo import DEMO, open_demo, send, wait_count

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_runner(DEMO, tmp_path_factory.mktemp("presence-demo"), ready_path="/")
    yield server
    server.stop()


def name_myself(page: Any, name: str) -> None:
    """Type a name and leave the field, as a person would: the page reconnects as ``name``."""
    page.get_by_test_id("name").fill(name)
    page.get_by_test_id("name").press("Tab")


def wait_members(page: Any, names: list[str]) -> None:
    page.wait_for_function(
        """(names) => JSON.stringify([...document.querySelectorAll('[data-testid=member]')]
            .map((e) => e.textContent)) === JSON.stringify(names)""",
        arg=names,
    )


def save(page: Any, tmp_path: Path, name: str) -> None:
    shot = tmp_path / name
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("PRESENCE_SCREENSHOTS")
    if target:
        shutil.copyfile(shot, Path(target) / name)


def test_the_demo_lists_who_is_in_the_room_and_the_operator_page_shows_it(
    browser: Any, page: Any, demo: Server, tmp_path: Path
) -> None:
    other = browser.new_context(viewport={"width": 900, "height": 640})
    admin_context = browser.new_context(viewport={"width": 1000, "height": 560})
    try:
        alice, bob = page, other.new_page()
        open_demo(alice, demo)
        name_myself(alice, "alice")
        wait_members(alice, ["alice"])
        open_demo(bob, demo)
        name_myself(bob, "bob")
        for window in (alice, bob):
            wait_members(window, ["alice", "bob"])
            assert window.get_by_test_id("member-count").text_content() == "2"
        send(alice, "alice", "Who else is here?")
        send(bob, "bob", "Me, on another tab.")
        wait_count(alice, 2)
        # A second tab of bob's is still one member.
        bob_again = other.new_page()
        open_demo(bob_again, demo)
        name_myself(bob_again, "bob")
        wait_members(bob_again, ["alice", "bob"])

        admin = admin_context.new_page()
        admin.goto(f"http://{HOST}:{demo.port}/events/admin")
        admin.wait_for_function(
            """() => [...document.querySelectorAll('[data-channel=chat] [data-testid=member]')]
                .map((e) => e.textContent).join(',') === 'alice,bob'"""
        )
        assert admin.get_by_test_id("state").text_content() == "open"
        row = admin.locator("[data-channel=chat] td")
        assert row.nth(1).text_content() == "3"  # subscribers: three tabs
        assert row.nth(2).text_content() == "3"  # connections
        assert row.nth(4).text_content() == "4"  # history: two joins, two messages
        assert admin.get_by_test_id("worker").count() == 1
        admin.wait_for_function(  # a second snapshot gives the rates
            "document.querySelector('[data-testid=total] td:nth-child(5)').textContent !== '\u2013'"
        )
        save(alice, tmp_path, "presence.png")
        save(admin, tmp_path, "admin.png")

        # Bob closes both tabs; after the grace period alice sees him leave, once.
        other.close()
        wait_members(alice, ["alice"])
        alice.get_by_text("bob left").wait_for()
        assert alice.get_by_text("bob joined").count() == 1
        assert alice.get_by_text("bob left").count() == 1
        admin.wait_for_function(
            """() => [...document.querySelectorAll('[data-channel=chat] [data-testid=member]')]
                .map((e) => e.textContent).join(',') === 'alice'"""
        )
    finally:
        other.close()
        admin_context.close()
