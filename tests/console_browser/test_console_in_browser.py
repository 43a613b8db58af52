"""The oversight console in a real browser (headless Chromium) against a real gateway, MLServer and PostgreSQL.

Each test logs in through the form as a user would, acts through the pages, and checks the outcome twice: on the
page, and where it is recorded (the audit and oversight APIs, the model catalog, the gateway's answers). The
element ids are the console's documented contract (``serving/console``). After every test the browser console
must be free of errors, and a screenshot is kept under ``test-artifacts/console/``.
"""

from __future__ import annotations

import urllib.parse
import uuid
from typing import Any

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from riverbed.model_catalog import get_model_version, record_gate_decision, record_trained
from tests.console_browser.harness import (
    DATASET,
    ConsoleStack,
    data_uri_payload,
    element,
    log_in,
    no_alert,
    open_console,
    screenshot,
    submit,
    wait_for,
)
from tests.serving.gateway_fixtures import salary_band_spec

pytestmark = pytest.mark.slow  # one stack (~15 s) and a browser per test: about a minute in all

SPEC = salary_band_spec()
SCRIPT_PAYLOAD = "<script>alert('xss-script')</script>"
HOSTILE_SAMPLE_ID = f"{SCRIPT_PAYLOAD}<img src=x id=xss-sample onerror=\"alert('xss-sample')\">"
HOSTILE_NOTE = f"\"'><img src=x id=xss-note onerror=\"alert('xss-note')\">{SCRIPT_PAYLOAD}<b id=xss-bold>b</b>"
INJECTED_IDS = ("xss-sample", "xss-note", "xss-bold", "xss-card", "xss-filter")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sent(stack: ConsoleStack) -> dict[str, Any]:
    """Predictions made over HTTP before any page is opened: six single records (sample ids ``applicant-<n>``),
    one batch of ten, and one invalid record (a recorded 422)."""
    singles = []
    for index, record in enumerate(stack.records[:6]):
        response = stack.predict({**record, "sample_id": f"applicant-{index}", "top_k": 5})
        assert response.status_code == 200, response.text
        singles.append(response.json())
    batch = stack.predict({"records": stack.records[10:20]})
    assert batch.status_code == 200, batch.text
    first_feature = SPEC.numeric_features[0]
    rejected = stack.predict({**stack.records[0], first_feature: -5})
    assert rejected.status_code == 422, rejected.text
    return {"singles": singles, "batch": batch.json(), "rejected_id": rejected.headers["X-Request-ID"]}


# ------------------------------------------------------------------------------------------------ helpers
def shown_request_ids(driver: WebDriver) -> list[str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#log-table tr.log-row")
    return [str(row.get_attribute("data-request-id")) for row in rows]


def api_request_ids(stack: ConsoleStack, **filters: Any) -> list[str]:
    with stack.client("audit") as http:
        response = http.get("/v1/audit/predictions", params={"dataset": DATASET, **filters})
    assert response.status_code == 200, response.text
    return [row["request_id"] for row in response.json()["predictions"]]


def filter_log(driver: WebDriver, **values: str) -> None:
    """Fill the log's filter form (``label="..."``, ``status="rejected"``...) and submit it."""
    for name, value in values.items():
        control = element(driver, f"#filter-{name.replace('_', '-')}")
        if control.tag_name == "select":
            Select(control).select_by_value(value)
        else:
            control.clear()
            control.send_keys(value)
    submit(driver, "#filter-submit")


def injected_elements(driver: WebDriver) -> list[str]:
    """Ids of elements a hostile value would have created, found in the page (none when escaped)."""
    return [name for name in INJECTED_IDS if driver.find_elements(By.ID, name)]


def unlabelled_controls(driver: WebDriver) -> list[str]:
    """Form controls a screen reader could not name: no <label>, aria-label or aria-labelledby (and buttons
    without text)."""
    found: list[str] = driver.execute_script(
        """
        const named = (e) => (e.labels && Array.from(e.labels).some((l) => l.textContent.trim()))
            || (e.getAttribute('aria-label') || '').trim() || e.getAttribute('aria-labelledby');
        const controls = Array.from(document.querySelectorAll('input, select, textarea'))
            .filter((e) => !['hidden', 'submit', 'button', 'reset', 'image'].includes(e.type) && !named(e));
        const buttons = Array.from(document.querySelectorAll('button, input[type=submit]'))
            .filter((b) => !(b.textContent.trim() || (b.value || '').trim()
                || (b.getAttribute('aria-label') || '').trim()));
        return controls.concat(buttons).map((e) => e.outerHTML.slice(0, 160));
        """
    )
    return found


def press(driver: WebDriver, *keys: str) -> None:
    """Keys to whatever has the focus (as a user types them)."""
    ActionChains(driver).send_keys(*keys).perform()


def tab_to(driver: WebDriver, element_id: str, most: int = 60) -> None:
    """Press Tab until the element ``element_id`` has the focus (fails if it never gets it)."""
    for _ in range(most):
        if driver.switch_to.active_element.get_attribute("id") == element_id:
            return
        press(driver, Keys.TAB)
    pytest.fail(f"#{element_id} never received the focus after {most} Tab presses")


def top_logged_features(row: dict[str, Any], count: int, record: int = 0) -> list[str]:
    contributions: dict[str, float] = row["outputs"][record]["explanation"]["contributions"]
    return sorted(contributions, key=lambda name: abs(contributions[name]), reverse=True)[:count]


# ------------------------------------------------------------------------------------------------ tests
def test_log_in_filter_the_log_and_log_out(stack: ConsoleStack, sent: dict[str, Any], browser: WebDriver) -> None:
    open_console(browser, stack, "")  # no session: the console asks for a key
    assert browser.current_url.startswith(f"{stack.console_url}/login") and element(browser, "#login-form")
    log_in(browser, stack, "audit")
    assert stack.key_ids["audit"] in element(browser, "#whoami").text
    session = browser.get_cookie("riverbed_console")
    assert session is not None and session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert "riverbed_console" not in browser.execute_script("return document.cookie")  # out of a script's reach

    filter_log(browser, dataset=DATASET, limit="3")  # keyset pages: the same rows, in the same order, as the API
    first_page = shown_request_ids(browser)
    element(browser, "#next-page").click()
    wait_for(browser, lambda d: shown_request_ids(d) != first_page, "the next page")
    assert first_page + shown_request_ids(browser) == api_request_ids(stack, limit=6)

    filter_log(browser, status="rejected", limit="50")
    assert shown_request_ids(browser) == api_request_ids(stack, status="rejected", limit=50)
    assert sent["rejected_id"] in shown_request_ids(browser)

    label = sent["singles"][0]["predictions"][0]["label"]
    filter_log(browser, status="", label=label)
    shown = shown_request_ids(browser)
    assert shown == api_request_ids(stack, label=label, limit=50)
    expected = {body["request_id"] for body in sent["singles"] if body["predictions"][0]["label"] == label}
    assert expected <= set(shown) and sent["rejected_id"] not in shown
    assert urllib.parse.parse_qs(urllib.parse.urlparse(browser.current_url).query)["label"] == [label]
    screenshot(browser, "log-filtered")

    submit(browser, "#logout-submit")
    assert browser.current_url.startswith(f"{stack.console_url}/login")
    open_console(browser, stack, "/log")  # the session is gone: back to the login form
    assert browser.current_url.startswith(f"{stack.console_url}/login") and element(browser, "#login-form")
    assert browser.find_elements(By.ID, "log-table") == []


def test_request_page_draws_the_waterfall_of_the_logged_contributions(
    stack: ConsoleStack, sent: dict[str, Any], browser: WebDriver
) -> None:
    request_id = sent["singles"][1]["request_id"]
    log_in(browser, stack, "audit")
    element(browser, f"#log-table tr.log-row[data-request-id='{request_id}'] a.request-link").click()
    wait_for(browser, lambda d: d.current_url == f"{stack.console_url}/predictions/{request_id}", "the request page")
    assert element(browser, "#request-id").text == request_id

    chart = element(browser, "#waterfall-chart")
    wait_for(browser, lambda d: d.execute_script("return arguments[0].complete", chart), "the chart to load")
    assert browser.execute_script("return arguments[0].naturalWidth", chart) > 0
    media_type, image = data_uri_payload(str(chart.get_attribute("src")))
    if media_type == "image/svg+xml":
        assert b"<svg" in image and image.count(b"<path") >= 5  # bars, axes and text drawn by shap/matplotlib
    else:
        assert media_type == "image/png" and image.startswith(b"\x89PNG")

    row = stack.logged(request_id)
    cells = _table_cells(browser, "#top-features")
    shown = [row_cells[0].text.strip() for row_cells in cells]
    assert len(shown) >= 3
    assert shown == top_logged_features(row, len(shown))
    logged = row["outputs"][0]["explanation"]["contributions"]
    assert [float(row_cells[-1].text) for row_cells in cells] == pytest.approx(
        [logged[name] for name in shown], abs=1e-6
    )
    assert row["outputs"][0]["label"] in element(browser, "#outputs-table").text
    assert "applicant-1" in element(browser, "#outputs-table").text + element(browser, "#inputs-table").text
    lineage = element(browser, "#lineage").text
    assert row["mlflow_run_id"] in lineage and row["dagster_run_id"] in lineage
    assert browser.find_elements(By.ID, "flag-form") == []  # the audit role reads; only review acts
    assert browser.find_elements(By.ID, "override-form") == []
    screenshot(browser, "request-page", full_page=True)


def _table_cells(driver: WebDriver, table_css: str) -> list[list[Any]]:
    rows = element(driver, table_css).find_elements(By.CSS_SELECTOR, "tbody tr")
    return [row.find_elements(By.CSS_SELECTOR, "th, td") for row in rows]


def test_flag_and_override_a_prediction(stack: ConsoleStack, sent: dict[str, Any], browser: WebDriver) -> None:
    served = sent["singles"][2]
    request_id, label = served["request_id"], served["predictions"][0]["label"]
    outcome = next(name for name in SPEC.target.classes if name != label)
    note = f"applicant disputes the band {uuid.uuid4().hex[:6]}"
    reason = f"payroll record shows {outcome}"
    log_in(browser, stack, "review")
    open_console(browser, stack, f"/predictions/{request_id}")
    assert browser.find_elements(By.CSS_SELECTOR, "#oversight-empty")

    element(browser, "#flag-note").send_keys(note)
    submit(browser, "#flag-submit")
    assert "flag" in element(browser, "#flash-message").text.lower()
    Select(element(browser, "#override-outcome")).select_by_value(outcome)
    element(browser, "#override-reason").send_keys(reason)
    submit(browser, "#override-submit")
    assert "overrid" in element(browser, "#flash-message").text.lower()

    history = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#oversight-history tr.oversight-row")]
    assert len(history) == 2 and note in history[0] and reason in history[1] and outcome in history[1]
    actions = stack.oversight("prediction", request_id)
    assert [(a["action"], a["note"], a["outcome"]) for a in actions] == [
        ("flag", note, None),
        ("override", reason, outcome),
    ]
    assert {a["actor_key_id"] for a in actions} == {stack.key_ids["review"]}
    screenshot(browser, "request-flagged-and-overridden", full_page=True)

    open_console(browser, stack, "/log")
    filter_log(browser, flagged="true", limit="50")
    assert request_id in shown_request_ids(browser)
    assert shown_request_ids(browser) == api_request_ids(stack, flagged="true", limit=50)
    filter_log(browser, flagged="", overridden="true")
    assert request_id in shown_request_ids(browser)
    assert sent["singles"][3]["request_id"] not in shown_request_ids(browser)


def test_suspend_and_resume_a_dataset(stack: ConsoleStack, browser: WebDriver) -> None:
    reason = f"bias complaint under investigation {uuid.uuid4().hex[:6]}"
    log_in(browser, stack, "review")
    open_console(browser, stack, "/datasets")
    try:
        element(browser, f"#suspend-reason-{DATASET}").send_keys(reason)
        submit(browser, f"#suspend-submit-{DATASET}")
        state = element(browser, f"#dataset-{DATASET} td.suspension-state").text
        assert "suspended" in state.lower() and reason in state
        screenshot(browser, "dataset-suspended")

        refused = stack.predict(stack.records[30])
        assert refused.status_code == 503, refused.text
        assert stack.key_ids["review"] in refused.text and reason in refused.text
        refused_id = refused.headers["X-Request-ID"]
        row = stack.logged(refused_id)
        assert row["http_status"] == 503 and row["dataset"] == DATASET

        open_console(browser, stack, "/log")
        assert refused_id in shown_request_ids(browser)  # newest first: the refusal is on the first page
        open_console(browser, stack, f"/predictions/{refused_id}")
        assert "503" in element(browser, "#request-summary").text

        open_console(browser, stack, "/datasets")
        element(browser, f"#resume-{DATASET} textarea").send_keys("investigation closed: no bias found")
        submit(browser, f"#resume-{DATASET} button")
        assert "suspended" not in element(browser, f"#dataset-{DATASET} td.suspension-state").text.lower()
    finally:  # the other tests need the dataset served, whatever happened above
        with stack.client("review") as http:
            http.post(f"/v1/datasets/{DATASET}/resume", json={"reason": "test clean-up"})
    served = stack.predict(stack.records[30])
    assert served.status_code == 200, served.text
    actions = stack.oversight("dataset", DATASET)
    assert [a["action"] for a in actions][-2:] == ["suspend", "resume"]
    assert actions[-2]["note"] == reason and actions[-2]["actor_key_id"] == stack.key_ids["review"]


def test_approve_a_pending_candidate(stack: ConsoleStack, browser: WebDriver) -> None:
    version = 2
    record_trained(
        stack.dsn,
        dataset=DATASET,
        registered_model=f"riverbed-{DATASET}",
        version=version,
        trained_reason="drift",
        mlflow_run_id=uuid.uuid4().hex,
        dagster_run_id=str(uuid.uuid4()),
        data_commit_ids={"2026-11-01": uuid.uuid4().hex},
        metrics={"roc_auc": 0.91, "accuracy": 0.86, "f1": 0.71},
        fairness={"sex": {"selection_rate[Female]": 0.11, "selection_rate[Male]": 0.27}},
        model_card_markdown="# Candidate v2\n\nRetrained on drift. <img src=x id=xss-card onerror=alert(1)>",
        manual_approval=True,
    )
    pending = record_gate_decision(
        stack.dsn, dataset=DATASET, version=version, passed=True, reasons=["roc_auc 0.91 >= 0.89"], manual_approval=True
    )
    assert pending.status == "pending_approval"
    reason = "fairness figures reviewed with compliance"

    log_in(browser, stack, "review")
    open_console(browser, stack, f"/models?dataset={DATASET}")
    row_css = f"#version-{DATASET}-{version}"
    assert "pending_approval" in element(browser, row_css).text
    assert injected_elements(browser) == []  # the model card's markup is text, not an element
    element(browser, f"#approve-reason-{DATASET}-{version}").send_keys(reason)
    submit(browser, f"#approve-submit-{DATASET}-{version}")

    assert "approved" in element(browser, row_css).text
    assert browser.find_elements(By.ID, f"approve-{DATASET}-{version}") == []  # decided: no second decision
    screenshot(browser, "model-approved", full_page=True)
    recorded = get_model_version(stack.dsn, DATASET, version)
    assert recorded is not None and recorded.status == "approved" and recorded.review is not None
    assert (recorded.review.decision, recorded.review.reason) == ("approve", reason)
    assert recorded.review.key_id == stack.key_ids["review"]
    (action,) = stack.oversight("model_version", f"{DATASET}:{version}")
    assert (action["action"], action["note"], action["action_id"]) == ("approve", reason, recorded.review.action_id)


def test_login_and_a_flag_by_keyboard_alone_with_every_field_labelled(
    stack: ConsoleStack, sent: dict[str, Any], browser: WebDriver
) -> None:
    open_console(browser, stack, "/login")
    assert unlabelled_controls(browser) == []
    tab_to(browser, "api_key")
    press(browser, stack.keys["review"])
    press(browser, Keys.ENTER)
    wait_for(browser, lambda d: d.current_url.startswith(f"{stack.console_url}/log"), "the log after Enter")
    assert unlabelled_controls(browser) == []

    request_id = sent["singles"][4]["request_id"]
    open_console(browser, stack, f"/predictions/{request_id}")
    assert unlabelled_controls(browser) == []
    note = "flagged without a mouse"
    tab_to(browser, "flag-note")
    press(browser, note)
    tab_to(browser, "flag-submit")
    press(browser, Keys.ENTER)
    assert "flag" in element(browser, "#flash-message").text.lower()
    assert [(a["action"], a["note"]) for a in stack.oversight("prediction", request_id)] == [("flag", note)]

    for path in ("/datasets", f"/models?dataset={DATASET}", f"/monitoring?dataset={DATASET}"):
        open_console(browser, stack, path)
        assert unlabelled_controls(browser) == [], path


def test_hostile_sample_id_note_and_filter_render_as_text(stack: ConsoleStack, browser: WebDriver) -> None:
    hostile = stack.predict({**stack.records[40], "sample_id": HOSTILE_SAMPLE_ID})
    assert hostile.status_code == 200, hostile.text
    request_id = hostile.json()["request_id"]
    log_in(browser, stack, "review")

    open_console(browser, stack, f"/predictions/{request_id}")
    assert HOSTILE_SAMPLE_ID in element(browser, "body").text
    element(browser, "#flag-note").send_keys(HOSTILE_NOTE)
    submit(browser, "#flag-submit")
    assert HOSTILE_NOTE in element(browser, "#oversight-history").text
    assert no_alert(browser) and injected_elements(browser) == []
    assert browser.execute_script("return document.querySelectorAll('script:not([src])').length") == 0
    screenshot(browser, "hostile-values-as-text", full_page=True)

    open_console(browser, stack, "/log")
    assert no_alert(browser) and injected_elements(browser) == []
    hostile_filter = '"><b id=xss-filter>x</b>'
    open_console(browser, stack, f"/log?label={urllib.parse.quote(hostile_filter)}")
    assert element(browser, "#filter-label").get_attribute("value") == hostile_filter
    assert no_alert(browser) and injected_elements(browser) == []
    assert [(a["action"], a["note"]) for a in stack.oversight("prediction", request_id)] == [("flag", HOSTILE_NOTE)]
