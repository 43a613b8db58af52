"""Regenerate the README's screenshot of the console's request page (``docs/images/console-request.png``).

A real stack, as the browser tests start it (a trained salary_band model served by MLServer behind the gateway,
logging to a scratch database on the machine's PostgreSQL), one explained prediction made over HTTP and flagged by
a reviewer through ``/v1``, then the request page in headless Chromium, logged in as that reviewer::

    uv run --frozen python -m tests.console_browser.readme_screenshot
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

from riverbed.cli import processes
from riverbed.settings import PROJECT_ROOT
from tests.console_browser.harness import (
    DATASET,
    chromium,
    console_stack,
    element,
    log_in,
    open_console,
    screenshot,
    severe_console_entries,
    wait_for,
)

logger = logging.getLogger("readme_screenshot")
TARGET = PROJECT_ROOT / "docs" / "images" / "console-request.png"
SAMPLE_ID = "applicant-1042"
NOTE = "Applicant disputes the band: payroll shows a raise in March. Checking with HR."


def make_screenshot(target: Path = TARGET) -> Path:
    """Start the stack, make and flag one prediction, and save its request page as ``target``."""
    browser, driver_program = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver_program is None:
        raise SystemExit("needs Debian's chromium and chromium-driver: run `make system-packages` as root")
    reaper = processes.GroupReaper(grace=2).start()
    try:
        with tempfile.TemporaryDirectory(prefix="riverbed-screenshot-") as home, console_stack(Path(home)) as stack:
            response = stack.predict({**stack.records[3], "sample_id": SAMPLE_ID, "top_k": 5})
            response.raise_for_status()
            request_id = response.json()["request_id"]
            with stack.client("review") as http:
                http.post(f"/v1/predictions/{request_id}/flag", json={"note": NOTE}).raise_for_status()
            with chromium(Path(browser), Path(driver_program), reaper) as driver:
                log_in(driver, stack, "review")
                open_console(driver, stack, f"/predictions/{request_id}")
                chart = element(driver, "#waterfall-chart")
                wait_for(driver, lambda d: d.execute_script("return arguments[0].naturalWidth > 0", chart), "chart")
                path = screenshot(driver, target.stem, target.parent, full_page=True)
                errors = severe_console_entries(driver)
                if errors:
                    raise SystemExit(f"the browser console logged errors on the {DATASET} request page: {errors}")
    finally:
        reaper.close()
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logger.info("wrote %s", make_screenshot())
