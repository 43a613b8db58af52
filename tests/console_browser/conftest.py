"""Fixtures of the console's browser tests: one serving stack for the package, one fresh Chromium per test.

Chromium and chromedriver are Debian packages (``make system-packages``, ``.ci/run``): under ``CI=true`` their
absence FAILS the tests, elsewhere it skips them with a warning naming the package. After every test the page is
saved as ``test-artifacts/console/<test>.png`` and the browser console must hold no SEVERE entry (no JavaScript
error, failed load or Content-Security-Policy violation).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from riverbed.cli import processes
from tests.console_browser.harness import ConsoleStack, chromium, console_stack, screenshot, severe_console_entries
from tests.deploy.system_tools import require_tool


@pytest.fixture(scope="session")
def browser_programs() -> tuple[Path, Path]:
    """Debian's Chromium and its driver."""
    return require_tool("chromium"), require_tool("chromedriver")


@pytest.fixture(scope="session")
def reaper() -> Iterator[processes.GroupReaper]:
    """Kills chromedriver's process group (Chromium included) if this process dies without quitting them."""
    reaper = processes.GroupReaper(grace=2).start()
    try:
        yield reaper
    finally:
        reaper.close()


@pytest.fixture(scope="package")
def stack(browser_programs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleStack]:
    """MLServer and the gateway (console included), shared by the package's tests (~15 s to start)."""
    with console_stack(tmp_path_factory.mktemp("console-home")) as running:
        yield running


@pytest.fixture
def browser(
    request: pytest.FixtureRequest, browser_programs: tuple[Path, Path], reaper: processes.GroupReaper
) -> Iterator[WebDriver]:
    """A fresh headless Chromium (no cookies); afterwards a screenshot and the console check."""
    with chromium(*browser_programs, reaper) as driver:
        try:
            yield driver
        finally:
            screenshot(driver, re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name))
            severe = severe_console_entries(driver)
        assert severe == [], f"the browser console logged errors: {severe}"
