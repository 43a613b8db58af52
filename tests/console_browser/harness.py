"""A real serving stack and a real headless Chromium for the oversight console's browser tests.

Plain context managers and helpers, so the fixtures (``conftest.py``) and the README screenshot script
(``readme_screenshot.py``) build exactly the same thing:

- :func:`console_stack`: a trained salary_band model in a model repository, then ``ServingStack`` (the embedded
  defaults of ``riverbed serve``: real MLServer computing the predictions and exact SHAP contributions, the gateway
  as a uvicorn process) logging to a scratch database on the machine's PostgreSQL; keys made with
  :func:`serving.api_keys.create_api_key`, the function behind ``riverbed apikey create``.
- :func:`chromium`: Debian's ``chromium`` driven through Debian's ``chromedriver`` by Selenium. The driver's path is
  given to :class:`~selenium.webdriver.chrome.service.Service`, so Selenium Manager never runs (and ``SE_OFFLINE``
  forbids it to download anything if it did). ``chromedriver`` runs in its own process group, which
  :class:`~riverbed.cli.processes.GroupReaper` kills, Chromium included, if the test process dies without quitting.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from riverbed.cli import processes
from riverbed.cli.stack import ServingStack
from riverbed.model_repository import ModelRepository
from riverbed.settings import PROJECT_ROOT, RiverbedSettings
from serving.api_keys import create_api_key
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import api_records, install_trained_model, salary_band_features, salary_band_spec

DATASET = "salary_band"
ARTIFACTS_DIR = PROJECT_ROOT / "test-artifacts" / "console"  # git-ignored; CI keeps it as the run's artifacts
WINDOW = (1280, 1000)
WAIT_SECONDS = 20.0
PAGE_LOAD_SECONDS = 90.0  # the first chart after a gateway start imports shap and matplotlib (20+ s under load)

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a browser or a driver


# ------------------------------------------------------------------------------------------------ the stack
@dataclass
class ConsoleStack:
    """The running stack, its keys (by what they may do) and the records the tests send."""

    serving: ServingStack
    dsn: str
    keys: dict[str, str] = field(default_factory=dict)  # "predict", "audit" (audit only), "review" (audit+review)
    key_ids: dict[str, str] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gateway_url(self) -> str:
        return self.serving.gateway_url

    @property
    def console_url(self) -> str:
        return self.serving.console_url

    def client(self, role: str) -> httpx.Client:
        """An HTTP client of the gateway authenticated with the key of ``role``."""
        return httpx.Client(
            base_url=self.gateway_url, headers={"Authorization": f"Bearer {self.keys[role]}"}, timeout=30
        )

    def predict(self, body: dict[str, Any]) -> httpx.Response:
        with self.client("predict") as http:
            return http.post(f"/v1/{DATASET}/predict", json=body)

    def logged(self, request_id: str) -> dict[str, Any]:
        """The inference-log row of ``request_id`` as the audit API returns it."""
        with self.client("audit") as http:
            response = http.get(f"/v1/audit/predictions/{request_id}")
        assert response.status_code == 200, response.text
        row: dict[str, Any] = response.json()["request"]
        return row

    def oversight(self, target_kind: str, target_id: str) -> list[dict[str, Any]]:
        """The recorded oversight actions on one target, as the audit API lists them (oldest first)."""
        with self.client("audit") as http:
            response = http.get("/v1/oversight", params={"target_kind": target_kind, "target_id": target_id})
        assert response.status_code == 200, response.text
        body = response.json()
        actions: list[dict[str, Any]] = body["actions"] if isinstance(body, dict) else body
        return actions


@contextlib.contextmanager
def console_stack(home: Path, *, trees: int = 30) -> Iterator[ConsoleStack]:
    """MLServer and the gateway serving a freshly trained salary_band model, logging to a scratch database."""
    name, dsn = create_database("riverbed_console")
    try:
        settings = RiverbedSettings(home=home, inference_log_dsn=dsn, model_repository=home / "repository")
        install_trained_model(ModelRepository(settings.model_repository_dir), 1, trees=trees, folder=home / "trained")
        serving = ServingStack(settings, [DATASET], ephemeral_ports=True).start()
        try:
            stack = ConsoleStack(serving=serving, dsn=dsn)
            for role, roles, label in (
                ("predict", ["predict"], "console test application"),
                ("audit", ["audit"], "console test auditor"),
                ("review", ["audit", "review"], "console test reviewer"),
            ):
                created = create_api_key(dsn, roles, label)
                stack.keys[role], stack.key_ids[role] = created.key, created.key_id
            stack.records = api_records(salary_band_features(60), salary_band_spec())
            yield stack
        finally:
            serving.stop()
    finally:
        drop_database(name)


# ------------------------------------------------------------------------------------------------ the browser
@contextlib.contextmanager
def chromium(browser: Path, driver_program: Path, reaper: processes.GroupReaper | None = None) -> Iterator[WebDriver]:
    """Headless Chromium (``browser``) driven through ``driver_program``; the browser's console is logged."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for argument in (
        "--headless=new",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",  # no calls home: the page's own requests only
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    if os.geteuid() == 0:  # Chromium refuses to run as root with its sandbox
        options.add_argument("--no-sandbox")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    profile = Path(tempfile.mkdtemp(prefix="riverbed-chromium-"))
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(
        executable_path=str(driver_program),
        log_output=str(profile / "chromedriver.log"),
        popen_kw={"process_group": 0},  # chromedriver and the Chromium it starts: one group to kill
    )
    driver: WebDriver | None = None
    try:
        driver = webdriver.Chrome(service=service, options=options)
        if reaper is not None:
            reaper.watch(service.process.pid)
        driver.set_page_load_timeout(PAGE_LOAD_SECONDS)
        driver.set_script_timeout(WAIT_SECONDS)
        yield driver
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):  # the browser may already be gone; the group is killed below
                driver.quit()
        process: subprocess.Popen[bytes] | None = getattr(service, "process", None)
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # anything of chromedriver's group still running
            with contextlib.suppress(Exception):
                process.wait(timeout=10)
            if reaper is not None:
                reaper.forget(process.pid)
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: WebDriver, condition: Callable[[Any], Any], what: str) -> Any:
    """Wait for ``condition`` (an expected condition or a callable taking the driver); fails naming ``what``."""
    return WebDriverWait(driver, WAIT_SECONDS).until(condition, message=f"waited {WAIT_SECONDS:.0f} s for {what}")


def element(driver: WebDriver, css: str) -> WebElement:
    """The visible element matched by ``css`` (waits for it)."""
    found: WebElement = wait_for(driver, expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css)), css)
    return found


def open_console(driver: WebDriver, stack: ConsoleStack, path: str) -> None:
    """Load ``/console<path>`` and wait until the document has loaded."""
    driver.get(f"{stack.console_url}{path}")
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete", f"{path} to load")


def log_in(driver: WebDriver, stack: ConsoleStack, role: str) -> None:
    """Log in through the form with the key of ``role``; lands on the inference log."""
    open_console(driver, stack, "/login")
    field_ = element(driver, "#api_key")
    field_.clear()
    field_.send_keys(stack.keys[role])
    element(driver, "#login-submit").click()
    wait_for(driver, lambda d: d.current_url.startswith(f"{stack.console_url}/log"), "the inference log page")
    element(driver, "#whoami")


def _left_the_document(found: WebElement) -> Callable[[WebDriver], bool]:
    """Like ``expected_conditions.staleness_of``, also for Chromium's answer while a navigation replaces the
    document ("Node with given id does not belong to the document"), which staleness_of lets escape as an error."""

    def gone(_driver: WebDriver) -> bool:
        try:
            found.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as error:
            if "does not belong to the document" in str(error):
                return True
            raise
        return False

    return gone


def submit(driver: WebDriver, button_css: str) -> None:
    """Click a form's submit button and wait for the page the POST redirects to."""
    button = element(driver, button_css)
    button.click()
    wait_for(driver, _left_the_document(button), f"the page after {button_css}")
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete", "the next page")


def no_alert(driver: WebDriver) -> bool:
    """True when no JavaScript dialog (alert, confirm, prompt) is open."""
    try:
        driver.switch_to.alert  # noqa: B018 - the property raises when there is no dialog
    except NoAlertPresentException:
        return True
    return False


def severe_console_entries(driver: WebDriver) -> list[dict[str, Any]]:
    """The browser console's SEVERE entries since the last call (JavaScript errors, failed loads, CSP
    violations)."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def screenshot(driver: WebDriver, name: str, folder: Path = ARTIFACTS_DIR, *, full_page: bool = False) -> Path:
    """Save the window as ``<folder>/<name>.png``; ``full_page`` first grows the window to the page's height."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    if full_page:  # the window's height includes the browser's own frame: grow it until the page fits
        for _ in range(3):
            page, viewport, window = driver.execute_script(
                "return [document.documentElement.scrollHeight, window.innerHeight, window.outerHeight]"
            )
            if page <= viewport:
                break
            driver.set_window_size(WINDOW[0], min(int(window) + int(page) - int(viewport), 6000))
            time.sleep(0.2)  # the resize repaints asynchronously
    driver.save_screenshot(str(path))
    if full_page:
        driver.set_window_size(*WINDOW)
    return path


def data_uri_payload(uri: str) -> tuple[str, bytes]:
    """The media type and the decoded bytes of a base64 ``data:`` URI."""
    header, _, payload = uri.partition(",")
    assert header.startswith("data:") and header.endswith(";base64"), header[:80]
    return header[len("data:") : -len(";base64")], base64.b64decode(payload)
