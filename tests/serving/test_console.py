"""The oversight console over HTTP: sessions, CSRF, roles, every page's exact values, the SHAP charts, hostile
input escaped, malformed input refused with a 4xx page, and console reads on record.

A real uvicorn gateway (in this process) over real PostgreSQL, in front of a scripted MLServer; rows with known
values (hostile text included) are written into the same hash chain by a second writer holding the chain key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import functools
import html
import logging
import re
import subprocess
import sys
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import markupsafe
import psycopg
import pytest

from riverbed.inference_log_schema import apply_migrations
from riverbed.model_catalog import get_model_version, record_gate_decision, record_trained
from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from riverbed.specs import load_specs
from serving.api_keys import create_api_key, revoke_api_key
from serving.audit_access import list_audit_access
from serving.audit_queries import cursor_key_for
from serving.console.lineage import NO_CATALOG_VERSION
from serving.console.queries import MONITORING_SQL, PREDICT_ROUTE, SAMPLE_SQL
from serving.console.sessions import REFUSALS, SESSION_COOKIE, issue_session, session_key_for
from serving.database_roles import provision_login_roles
from serving.inference_log import InferenceLogWriter, InferenceRecord, RequestStatus, format_time, load_chain_key
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import (
    ScriptedMLServer,
    in_process_gateway,
    point_at_scripted_model,
    salary_band_spec,
)

pytestmark = pytest.mark.slow

SPEC = salary_band_spec()
XSS = "<script>alert('x')</script>"
ATTR = '" onmouseover="alert(1)" x=\''
JS_URL = "javascript:alert(document.cookie)"
IMG = "<img src=x onerror=alert(1)>"
BASE_VALUE = -1.25
# Two decimals each, so shap's waterfall labels show them exactly (+0.81, -0.46 with a minus sign, ...).
CONTRIBUTIONS = {name: 0.0 for name in SPEC.feature_names} | {
    "age": 0.81,
    "education_num": -0.46,
    "capital_gain": 0.33,
    "hours_per_week": 0.12,
}
MLFLOW_UI = "http://mlflow.example:5000"
DAGSTER_UI = "http://dagster.example:3000"
LAKEFS_UI = "https://lakefs.example"
DATA_REPOSITORY = "riverbed-data"
# Lineage ids a compromised pipeline could have logged: each must stay inside its link's path segment.
HOSTILE_COMMITS = {"p<1>": JS_URL, "p2": ATTR, "p3": '"><script>alert(3)</script>'}
HOSTILE_DAGSTER_RUN = f"{JS_URL}/{ATTR}"
# The seeded requests: two days ago at 10:00 UTC (inside the monitoring page's windows, all on one day).
T0 = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).replace(hour=10, minute=0, second=0, microsecond=0)
UNTIL = format_time(T0 + dt.timedelta(hours=1))  # excludes the hostile, the refused and the oversight rows


@dataclass
class Console:
    url: str
    dsn: str
    home: Path
    keys: dict[str, str]
    key_ids: dict[str, str]
    hostile_id: str
    plain_ids: list[str]  # newest first
    rejected_id: str
    extra: dict[str, str] = field(default_factory=dict)


def _inputs(**overrides: object) -> dict[str, object]:
    record: dict[str, object] = {
        "age": 39,
        "workclass": "State-gov",
        "fnlwgt": 77516,
        "education": "Bachelors",
        "education_num": 13,
        "marital_status": "Never-married",
        "occupation": "Adm-clerical",
        "relationship": "Not-in-family",
        "race": "White",
        "sex": "Male",
        "capital_gain": 2174,
        "capital_loss": 0,
        "hours_per_week": 40,
        "native_country": "United-States",
    }
    record.update(overrides)
    return record


def _row(
    request_id: str, received_at: dt.datetime, label: str, record: dict[str, object], **extra: object
) -> InferenceRecord:
    sample_id = extra.pop("sample_id", f"adult-{request_id[:6]}")
    positive = 0.8 if label == ">50K" else 0.3
    fields: dict[str, object] = {
        "request_id": request_id,
        "received_at": received_at,
        "dataset": "salary_band",
        "route": PREDICT_ROUTE,
        "status": RequestStatus.OK,
        "http_status": 200,
        "client_key_id": "seed-key",
        "model_name": "riverbed-salary_band",
        "model_version": "7",
        "mlflow_run_id": "run0123456789abcdef",
        "training_set_commit_id": "c0ffee0123",
        "data_commit_ids": {"2026-10-01": "beef0001", "2026-10-02": "beef0002"},
        "dagster_run_id": "dagster-run-42",
        "inputs": [record],
        "outputs": [
            {
                "sample_id": sample_id,
                "label": label,
                "probabilities": {"<=50K": round(1 - positive, 6), ">50K": positive},
                "explanation": {"base_value": BASE_VALUE, "contributions": CONTRIBUTIONS, "top_features": []},
            }
        ],
        "labels": [label],
        "timings_ms": {"total_ms": 2.0},
    }
    fields.update(extra)
    return InferenceRecord(**fields)  # type: ignore[arg-type]


async def _seed_rows(dsn: str, settings: RiverbedSettings, spool: Path, rows: list[InferenceRecord]) -> None:
    writer = InferenceLogWriter(dsn, spool, chain_key=load_chain_key(settings, create=False))
    await writer.start()
    try:
        for row in rows:
            await writer.record(row)
    finally:
        await writer.stop()


def _seed_monitoring(dsn: str) -> None:
    today = dt.datetime.now(dt.UTC).date()
    rows = []
    for offset, (age_drift, alert, cbpe, realised) in enumerate(
        [(0.031, False, 0.861, 0.852), (0.274, True, 0.803, 0.771)]
    ):
        day = today - dt.timedelta(days=2 - offset)
        rows.append((day, 0, "univariate_drift", "age", age_drift, alert))
        rows.append((day, 0, "univariate_drift", "sex", 0.012, False))
        rows.append((day, 0, "cbpe", "roc_auc", cbpe, False))
        rows.append((day, 0, "realised", "roc_auc", realised, offset == 1))
    with psycopg.connect(dsn) as conn:
        conn.cursor().executemany(
            "insert into monitoring_results (dataset, day, chunk, kind, name, value, alert, rows) "
            "values ('salary_band', %s, %s, %s, %s, %s, %s, 100)",
            rows,
        )


def _seed_catalog(dsn: str) -> None:
    card = f"# Model card\n\n**Intended use**: {XSS} and [click]({JS_URL})\n\n- metric `roc_auc` 0.91\n\n<b>raw</b>"
    common = {"registered_model": "riverbed-salary_band", "dagster_run_id": "dr-1", "data_commit_ids": {"d": "c1"}}
    record_trained(
        dsn,
        dataset="salary_band",
        version=7,
        trained_reason="initial",
        mlflow_run_id="run-seven",
        metrics={"roc_auc": 0.9123},
        fairness={"sex": {"selection_rate[Female]": 0.11, "selection_rate[Male]": 0.31}},
        model_card_markdown=card,
        **common,
    )
    record_gate_decision(dsn, dataset="salary_band", version=7, passed=True, reasons=["beats nothing: first model"])
    record_trained(
        dsn,
        dataset="salary_band",
        version=8,
        trained_reason="drift",
        mlflow_run_id="run-eight",
        metrics={"roc_auc": 0.9234},
        fairness={},
        model_card_markdown="# Candidate 8",
        manual_approval=True,
        **common,
    )
    record_gate_decision(
        dsn, dataset="salary_band", version=8, passed=True, reasons=["roc_auc 0.9234 > 0.9123"], manual_approval=True
    )


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    home = tmp_path_factory.mktemp("console")
    name, dsn = create_database()
    try:
        # The gateway runs as its least-privileged role (as under `riverbed serve`): the console's reads and
        # actions must work with exactly the grants the migrations give it. Seeding uses the owner's DSN.
        apply_migrations(dsn)
        gateway_dsn = provision_login_roles(dsn, None, roles=["gateway"])["gateway"]
        with ScriptedMLServer() as mlserver:
            settings = RiverbedSettings(
                home=home,
                inference_log_dsn=gateway_dsn,
                mlserver_url=mlserver.url,
                model_repository=home / "repository",
                console_mlflow_url=MLFLOW_UI,
                console_dagster_url=DAGSTER_UI,
                console_lakefs_url=LAKEFS_UI,
                data_repository=DATA_REPOSITORY,
            )
            repository = ModelRepository(settings.model_repository_dir)
            for spec in load_specs(settings.specs_dirs).values():
                point_at_scripted_model(repository, spec)
            with in_process_gateway(settings) as url:
                created = {
                    "audit": create_api_key(dsn, ["audit"], "auditor"),
                    "review": create_api_key(dsn, ["audit", "review"], "reviewer"),
                    "predict": create_api_key(dsn, ["predict"], "app"),
                }
                hostile_id = "hostile-" + uuid.uuid4().hex[:8]
                plain = [f"plain-{i:02d}-{uuid.uuid4().hex[:6]}" for i in range(12)]
                rejected_id = "rejected-" + uuid.uuid4().hex[:8]
                rows = [
                    _row(
                        plain[i],
                        T0 + dt.timedelta(minutes=i),
                        ">50K" if i % 3 == 0 else "<=50K",
                        _inputs(sex="Female" if i % 2 else "Male"),
                    )
                    for i in range(12)
                ]
                rows.append(
                    _row(
                        hostile_id,
                        T0 + dt.timedelta(hours=1),
                        ">50K",
                        _inputs(workclass=XSS, occupation=ATTR, native_country=JS_URL),
                        sample_id=IMG,
                        mlflow_run_id=f"run-{XSS}",
                        model_version=ATTR,
                        training_set_commit_id=IMG,
                        data_commit_ids=HOSTILE_COMMITS,
                        dagster_run_id=HOSTILE_DAGSTER_RUN,
                    )
                )
                rows.append(
                    _row(
                        rejected_id,
                        T0 + dt.timedelta(hours=2),
                        "<=50K",
                        _inputs(),
                        status=RequestStatus.REJECTED,
                        http_status=422,
                        outputs=[],
                        labels=[],
                        error="age: must be at least 17",
                    )
                )
                asyncio.run(_seed_rows(dsn, settings, home / "seed-spool", rows))
                _seed_monitoring(dsn)
                _seed_catalog(dsn)
                yield Console(
                    url,
                    dsn,
                    home,
                    {role: key.key for role, key in created.items()},
                    {role: key.key_id for role, key in created.items()},
                    hostile_id,
                    list(reversed(plain)),
                    rejected_id,
                )
    finally:
        drop_database(name)


# ------------------------------------------------------------------------------------------------ helpers
_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


def _csrf(page: str) -> str:
    match = _CSRF.search(page)
    assert match, "no csrf_token field on the page"
    return match.group(1)


def _client(console: Console) -> httpx.Client:
    return httpx.Client(base_url=console.url, timeout=60, follow_redirects=False)


def _login(console: Console, role: str) -> httpx.Client:
    http = _client(console)
    form = http.get("/console/login")
    assert form.status_code == 200
    answer = http.post("/console/login", data={"api_key": console.keys[role], "csrf_token": _csrf(form.text)})
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/console/log"
    return http


@pytest.fixture
def reviewer(console: Console) -> Iterator[httpx.Client]:
    with contextlib.closing(_login(console, "review")) as http:
        yield http


@pytest.fixture
def auditor(console: Console) -> Iterator[httpx.Client]:
    with contextlib.closing(_login(console, "audit")) as http:
        yield http


def _refused(http: httpx.Client, response: httpx.Response, code: str) -> str:
    """The reason a login page shows after a refusal redirected there (303 -> /console/login?reason=<code>)."""
    assert response.status_code == 303, response.text[:1000]
    assert response.headers["location"] == f"/console/login?reason={code}"
    page = http.get(response.headers["location"])
    assert page.status_code == 200 and 'id="login-form"' in page.text
    match = re.search(r'<p id="form-error"[^>]*>(.*?)</p>', page.text, re.S)
    assert match, page.text[:2000]
    return html.unescape(match.group(1))


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text[:2000]
    assert response.headers["content-type"].startswith("text/html")
    assert "Traceback" not in response.text
    match = re.search(r'<p id="error-message"[^>]*>(.*?)</p>', response.text, re.S)
    assert match, response.text[:2000]
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1)))


def _svg_of(page: str, element_id: str) -> ET.Element:
    match = re.search(rf'<img id="{element_id}" src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, f"no {element_id} image"
    root = ET.fromstring(base64.b64decode(match.group(1)))
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def _texts(svg: ET.Element) -> list[str]:
    return ["".join(node.itertext()).strip() for node in svg.iter("{http://www.w3.org/2000/svg}text")]


def _lineage_links(page: str) -> dict[str, tuple[str, str]]:
    """The lineage list's links: element id (data commits: ``data-commit-<i>``) -> (href as the browser reads it,
    text). Asserts each href is quoted once and its attribute is not broken out of."""
    section = re.search(r'<ul id="lineage">(.*?)<h2>Outputs</h2>', page, re.S)
    assert section, "no lineage list"
    links: dict[str, tuple[str, str]] = {}
    commits = 0
    for attributes, text in re.findall(r"<a ([^>]*)>(.*?)</a>", section.group(1), re.S):
        parsed = re.fullmatch(r'(?:id="([^"]+)" )?href="([^"<>]*)" title="([^"<>]*)"', attributes)
        assert parsed, attributes  # exactly these attributes: nothing broke out of a quoted value
        element_id = parsed.group(1)
        if element_id is None:
            element_id, commits = f"data-commit-{commits}", commits + 1
        links[element_id] = (html.unescape(parsed.group(2)), html.unescape(text))
    return links


def _table_rows(page: str, table_id: str) -> list[list[str]]:
    match = re.search(rf'<table[^>]*\bid="{table_id}".*?</table>', page, re.S)
    assert match, f"no table {table_id}"
    rows = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", match.group(0), re.S):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        rows.append([html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in cells])
    return rows


# ------------------------------------------------------------------------------------------------ sessions
def test_login_sets_a_strict_http_only_session_cookie_without_the_key(console: Console) -> None:
    with _client(console) as http:
        form = http.get("/console/login")
        assert 'id="api_key"' in form.text and '<label for="api_key">' in form.text
        answer = http.post("/console/login", data={"api_key": console.keys["review"], "csrf_token": _csrf(form.text)})
        assert answer.status_code == 303
        cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE))
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "max-age", "path"} <= attributes
        assert "samesite=strict" in cookie.lower() and "path=/console" in cookie.lower()
        assert "max-age=28800" in cookie.lower()  # console_session_seconds: 8 h by default
        value = cookie.split(";")[0].split("=", 1)[1]
        secret = console.keys["review"].rsplit("_", 1)[1]
        assert secret not in value and console.keys["review"] not in value
        page = http.get("/console/log")
        assert page.status_code == 200
        assert f"key {console.key_ids['review']}" in page.text


def test_wrong_key_and_predict_only_key_are_refused(console: Console) -> None:
    with _client(console) as http:
        form = http.get("/console/login")
        wrong = http.post("/console/login", data={"api_key": "rb_nope_nope", "csrf_token": _csrf(form.text)})
        assert _refused(http, wrong, "invalid_key") == "invalid or revoked API key"
        assert f"{SESSION_COOKIE}=" not in wrong.headers.get("set-cookie", "")
        form = http.get("/console/login")
        predict = http.post("/console/login", data={"api_key": console.keys["predict"], "csrf_token": _csrf(form.text)})
        assert _refused(http, predict, "no_role") == "this API key has neither the 'audit' nor the 'review' role"
        assert f"{SESSION_COOKIE}=" not in predict.headers.get("set-cookie", "")
        assert http.get("/console/log").status_code == 303


def test_pages_need_a_session(console: Console) -> None:
    with _client(console) as http:
        for path in (
            "/console/log",
            f"/console/predictions/{console.hostile_id}",
            "/console/models",
            "/console/monitoring",
        ):
            page = http.get(path)
            assert _refused(http, page, "login") == "not logged in", path
            assert console.hostile_id not in page.text


def test_logout_ends_the_session_even_if_the_cookie_is_replayed(console: Console) -> None:
    with contextlib.closing(_login(console, "audit")) as http:
        stolen = http.cookies.get(SESSION_COOKIE)
        page = http.get("/console/log")
        out = http.post("/console/logout", data={"csrf_token": _csrf(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        assert _refused(http, http.get("/console/log"), "login") == "not logged in"
    with _client(console) as replay:
        replay.cookies.set(SESSION_COOKIE, stolen, path="/console")
        assert _refused(replay, replay.get("/console/log"), "logged_out") == "logged out: log in again"


def test_expired_forged_and_tampered_sessions_are_refused(console: Console) -> None:
    settings = RiverbedSettings(home=console.home)
    key = session_key_for(cursor_key_for(load_chain_key(settings, create=False)))
    expired = issue_session(key, console.key_ids["review"], -1, None)
    forged = issue_session(b"x" * 32, console.key_ids["review"], 3600, None)
    valid = issue_session(key, console.key_ids["review"], 3600, None)
    tampered = valid[:-2] + ("AA" if not valid.endswith("AA") else "BB")
    with _client(console) as http:
        for token, code in ((expired, "expired"), (forged, "forged"), (tampered, "forged"), ("x" * 600, "malformed")):
            http.cookies.set(SESSION_COOKIE, token, path="/console")
            assert _refused(http, http.get("/console/log"), code) == REFUSALS[code]
        http.cookies.set(SESSION_COOKIE, valid, path="/console")
        assert http.get("/console/log").status_code == 200


def test_a_revoked_keys_session_stops_at_once(console: Console) -> None:
    created = create_api_key(console.dsn, ["audit"], "to revoke")
    console.keys["revoked"] = created.key
    with contextlib.closing(_login(console, "revoked")) as http:
        assert http.get("/console/log").status_code == 200
        revoke_api_key(console.dsn, created.key_id)
        page = http.get("/console/log")
        assert _refused(http, page, "revoked") == "the API key of this session was revoked"


def test_every_post_needs_the_sessions_csrf_token(console: Console, reviewer: httpx.Client) -> None:
    target = f"/console/predictions/{console.plain_ids[0]}/flag"
    missing = reviewer.post(target, data={"note": "no token"})
    assert "CSRF" in _error(missing, 403)
    other = _login(console, "review")
    wrong = reviewer.post(
        target, data={"note": "other session's token", "csrf_token": _csrf(other.get("/console/log").text)}
    )
    assert "CSRF" in _error(wrong, 403)
    other.close()
    with _client(console) as http:  # login without the pre-login cookie
        refused = http.post("/console/login", data={"api_key": console.keys["review"], "csrf_token": "x"})
        assert _refused(http, refused, "form_expired").startswith("the login form expired")
        assert f"{SESSION_COOKIE}=" not in refused.headers.get("set-cookie", "")
    history = reviewer.get(f"/console/predictions/{console.plain_ids[0]}")
    assert "no token" not in history.text and "other session" not in history.text


# ------------------------------------------------------------------------------------------------ log page
def test_log_page_lists_the_newest_rows_with_exact_values_and_pages_by_cursor(
    console: Console, auditor: httpx.Client
) -> None:
    first = auditor.get("/console/log", params={"dataset": "salary_band", "limit": "5", "until": UNTIL})
    assert first.status_code == 200
    ids = re.findall(r'<tr class="log-row" data-request-id="([^"]+)"', first.text)
    assert ids == console.plain_ids[:5]
    rows = _table_rows(first.text, "log-table")
    assert rows[1][0] == format_time(T0 + dt.timedelta(minutes=11))  # the newest plain row
    assert rows[1][2:7] == ["salary_band", PREDICT_ROUTE, "ok (200)", "7", "<=50K"]
    next_url = html.unescape(re.search(r'<a id="next-page" href="([^"]+)"', first.text).group(1))
    second = auditor.get(next_url)
    assert re.findall(r'data-request-id="([^"]+)"', second.text) == console.plain_ids[5:10]
    third = auditor.get(html.unescape(re.search(r'<a id="next-page" href="([^"]+)"', second.text).group(1)))
    assert re.findall(r'data-request-id="([^"]+)"', third.text) == console.plain_ids[10:]
    assert 'id="next-page"' not in third.text


def test_log_filters_select_exactly(console: Console, auditor: httpx.Client) -> None:
    positive = auditor.get("/console/log", params={"label": ">50K", "until": UNTIL})
    assert re.findall(r'data-request-id="([^"]+)"', positive.text) == [console.plain_ids[11 - i] for i in (9, 6, 3, 0)]
    rejected = auditor.get("/console/log", params={"status": "rejected", "dataset": "salary_band"})
    assert re.findall(r'data-request-id="([^"]+)"', rejected.text) == [console.rejected_id]
    none = auditor.get("/console/log", params={"model_version": "999"})
    assert 'id="log-empty"' in none.text
    export = re.search(r'<a id="export-csv" href="([^"]+)"', rejected.text).group(1)
    assert html.unescape(export) == "/console/export?dataset=salary_band&status=rejected&format=csv"


def test_console_export_is_the_audit_export(console: Console, auditor: httpx.Client) -> None:
    answer = auditor.get("/console/export", params={"status": "rejected", "dataset": "salary_band", "format": "csv"})
    assert answer.status_code == 200 and answer.headers["x-export-rows"] == "1"
    assert console.rejected_id in answer.text and "age: must be at least 17" in answer.text
    reads = list_audit_access(console.dsn, key_id=console.key_ids["audit"], route="/v1/audit/export")
    assert reads[0].filters == {
        "dataset": "salary_band",
        "status": "rejected",
        "format": "csv",
        "limit": 1_000_000,
    }
    assert reads[0].row_count == 1


@pytest.mark.parametrize(
    ("params", "field", "rule"),
    [
        ({"cursor": "not-a-cursor"}, "cursor", "malformed"),
        ({"cursor": "A" * 600}, "cursor", "longer than 512"),
        ({"label": "a\x00b"}, "label", "NUL"),
        ({"since": "yesterday"}, "since", "ISO 8601"),
        ({"since": "2026-01-01T00:00:00"}, "since", "UTC offset"),
        ({"status": "maybe"}, "status", "must be one of"),
        ({"flagged": "perhaps"}, "flagged", "must be one of"),
        ({"limit": "5000"}, "limit", "from 1 to 200"),
        ({"limit": "-1"}, "limit", "whole number"),
        ({"dataset": "d" * 300}, "dataset", "longer than 256"),
    ],
)
def test_malformed_log_queries_get_a_4xx_page_naming_the_field(
    auditor: httpx.Client, params: dict[str, str], field: str, rule: str
) -> None:
    message = _error(auditor.get("/console/log", params=params), 422)
    assert message.startswith(f"{field}:") and rule in message


def test_a_cursor_from_other_filters_is_refused(console: Console, auditor: httpx.Client) -> None:
    first = auditor.get("/console/log", params={"limit": "2"})
    cursor = urllib_cursor(first.text)
    message = _error(auditor.get("/console/log", params={"limit": "2", "label": ">50K", "cursor": cursor}), 422)
    assert "issued for other filters" in message


def urllib_cursor(page: str) -> str:
    url = html.unescape(re.search(r'<a id="next-page" href="([^"]+)"', page).group(1))
    return urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["cursor"][0]


# ------------------------------------------------------------------------------------------------ one request
def test_request_page_shows_inputs_outputs_lineage_and_the_waterfall_from_logged_numbers(
    console: Console, auditor: httpx.Client
) -> None:
    request_id = console.plain_ids[-1]  # minute 0: label >50K, Male
    page = auditor.get(f"/console/predictions/{request_id}")
    assert page.status_code == 200
    inputs = dict(row for row in _table_rows(page.text, "inputs-table")[1:])
    assert inputs["age"] == "39" and inputs["education"] == "Bachelors" and inputs["sex"] == "Male"
    outputs = _table_rows(page.text, "outputs-table")
    assert outputs[1] == ["0", f"adult-{request_id[:6]}", ">50K", "<=50K: 0.200000; >50K: 0.800000"]
    top = _table_rows(page.text, "top-features")
    assert top[1:5] == [
        ["age", "39", "0.810000"],
        ["education_num", "13", "-0.460000"],
        ["capital_gain", "2174", "0.330000"],
        ["hours_per_week", "40", "0.120000"],
    ]
    links = _lineage_links(page.text)
    assert links == {
        "lineage-model-version": (
            "/console/models?dataset=salary_band#version-salary_band-7",
            "riverbed-salary_band version 7",
        ),
        "lineage-mlflow-run": (f"{MLFLOW_UI}/#/runs/run0123456789abcdef", "run0123456789abcdef"),
        "lineage-training-commit": (f"{LAKEFS_UI}/repositories/{DATA_REPOSITORY}/commits/c0ffee0123", "c0ffee0123"),
        "data-commit-0": (f"{LAKEFS_UI}/repositories/{DATA_REPOSITORY}/commits/beef0001", "beef0001"),
        "data-commit-1": (f"{LAKEFS_UI}/repositories/{DATA_REPOSITORY}/commits/beef0002", "beef0002"),
        "lineage-dagster-run": (f"{DAGSTER_UI}/runs/dagster-run-42", "dagster-run-42"),
    }
    partitions = re.findall(r'<li class="data-commit"><span class="partition">([^<]*)</span>', page.text)
    assert partitions == ["2026-10-01", "2026-10-02"]
    # the model version's link lands on its row of the Models page
    models = auditor.get("/console/models", params={"dataset": "salary_band"})
    assert '<tr class="model-version-row" id="version-salary_band-7">' in models.text
    texts = _texts(_svg_of(page.text, "waterfall-chart"))
    for shown in ("+0.81", "\u22120.46", "+0.33", "+0.12"):
        assert shown in texts, (shown, texts)
    # E[f(X)] (the logged base value) and f(x) = base + sum of the logged contributions, as the chart states them
    flat = re.sub(r"\s", "", "".join(texts))
    total = BASE_VALUE + sum(CONTRIBUTIONS.values())
    for value in (BASE_VALUE, total):
        assert f"={value:.2f}".replace("-", "\u2212") in flat, (value, flat)
    assert "39 = age" in texts


def test_request_page_of_a_refused_request_shows_its_error_and_no_chart(
    console: Console, reviewer: httpx.Client
) -> None:
    page = reviewer.get(f"/console/predictions/{console.rejected_id}")
    assert page.status_code == 200
    assert "rejected (422)" in page.text and "age: must be at least 17" in page.text
    assert 'id="waterfall-chart"' not in page.text and 'id="override-form"' not in page.text
    assert 'id="flag-form"' in page.text


@pytest.mark.parametrize(
    ("path", "status", "rule"),
    [
        ("/console/predictions/" + "a" * 200, 422, "longer than 128"),
        ("/console/predictions/bad%20id%3Cx%3E", 422, "must be a request id"),
        ("/console/predictions/no-such-request", 404, "no request 'no-such-request'"),
    ],
)
def test_malformed_or_unknown_request_ids_get_a_4xx_page(
    auditor: httpx.Client, path: str, status: int, rule: str
) -> None:
    assert rule in _error(auditor.get(path), status)


def test_record_index_is_bounded(console: Console, auditor: httpx.Client) -> None:
    assert "from 0 to 0" in _error(auditor.get(f"/console/predictions/{console.plain_ids[0]}?record=3"), 422)
    assert "whole number" in _error(auditor.get(f"/console/predictions/{console.plain_ids[0]}?record=x"), 422)


# ------------------------------------------------------------------------------------------------ safety
def test_hostile_values_are_escaped_everywhere_and_the_csp_forbids_inline_script(
    console: Console, reviewer: httpx.Client
) -> None:
    page = reviewer.get(f"/console/predictions/{console.hostile_id}")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    for hostile in (XSS, ATTR, IMG):
        assert hostile not in page.text
        assert str(markupsafe.escape(hostile)) in page.text
    assert "<script" not in page.text.lower() and "onerror=" not in page.text.replace("onerror=alert", "")
    assert 'href="javascript:' not in page.text and JS_URL in page.text  # shown as text only
    inputs = dict(row for row in _table_rows(page.text, "inputs-table")[1:])
    assert inputs["workclass"] == XSS and inputs["occupation"] == ATTR and inputs["native_country"] == JS_URL
    listing = reviewer.get("/console/log", params={"since": UNTIL, "until": format_time(T0 + dt.timedelta(minutes=90))})
    assert IMG not in listing.text and str(markupsafe.escape(IMG)) in listing.text and ATTR not in listing.text
    note = f"{XSS} {ATTR} {JS_URL}"
    posted = reviewer.post(
        f"/console/predictions/{console.hostile_id}/flag", data={"note": note, "csrf_token": _csrf(page.text)}
    )
    assert posted.status_code == 303
    after = reviewer.get(posted.headers["location"])
    history = _table_rows(after.text, "oversight-history")
    assert history[-1][1] == "flag" and history[-1][4] == note
    assert XSS not in after.text and 'href="javascript:' not in after.text


def test_hostile_lineage_ids_stay_inside_their_links_path_segment(console: Console, auditor: httpx.Client) -> None:
    page = auditor.get(f"/console/predictions/{console.hostile_id}")
    assert page.status_code == 200
    links = _lineage_links(page.text)
    commits = f"{LAKEFS_UI}/repositories/{DATA_REPOSITORY}/commits/"
    quote = functools.partial(urllib.parse.quote, safe="")
    assert links == {
        "lineage-mlflow-run": (f"{MLFLOW_UI}/#/runs/{quote(f'run-{XSS}')}", f"run-{XSS}"),
        "lineage-training-commit": (commits + quote(IMG), IMG),
        # sorted by partition: "p2" < "p3" < "p<1>"
        "data-commit-0": (commits + quote(ATTR), ATTR),
        "data-commit-1": (commits + quote(HOSTILE_COMMITS["p3"]), HOSTILE_COMMITS["p3"]),
        "data-commit-2": (commits + quote(JS_URL), JS_URL),
        "lineage-dagster-run": (f"{DAGSTER_UI}/runs/{quote(HOSTILE_DAGSTER_RUN)}", HOSTILE_DAGSTER_RUN),
    }
    for href, _ in links.values():
        parts = urllib.parse.urlsplit(href)
        assert parts.scheme in ("http", "https") and parts.netloc in ("mlflow.example:5000", "dagster.example:3000",
                                                                        "lakefs.example"), href  # fmt: skip
    assert "javascript:" not in "".join(re.findall(r'href="([^"]*)"', page.text))
    assert "<script" not in page.text.lower()
    # a logged model version that is not a catalog version number: text, with a title saying why
    model = re.search(
        r'<span id="lineage-model-version" class="lineage-text" title="([^"]*)">([^<]*)</span>', page.text
    )
    assert model and html.unescape(model.group(1)) == NO_CATALOG_VERSION
    assert html.unescape(model.group(2)) == f"riverbed-salary_band version {ATTR}"


def test_model_card_markdown_is_rendered_without_raw_html(console: Console, auditor: httpx.Client) -> None:
    page = auditor.get("/console/models")
    assert page.status_code == 200
    card = re.search(r'id="card-salary_band-7".*?<div class="model-card">(.*?)</div>', page.text, re.S).group(1)
    assert "<h3>Model card</h3>" in card and "<strong>Intended use</strong>" in card and "<code>roc_auc</code>" in card
    assert XSS not in card and str(markupsafe.escape(XSS)) in card
    assert "<b>raw</b>" not in card and "&lt;b&gt;raw&lt;/b&gt;" in card
    assert "<a " not in card and JS_URL in card


def test_oversized_and_nul_forms_are_refused_with_4xx(console: Console, reviewer: httpx.Client) -> None:
    page = reviewer.get(f"/console/predictions/{console.plain_ids[1]}")
    token = _csrf(page.text)
    target = f"/console/predictions/{console.plain_ids[1]}/flag"
    assert "larger than" in _error(reviewer.post(target, data={"note": "x" * 20000, "csrf_token": token}), 413)
    message = _error(reviewer.post(target, data={"note": "a\x00b", "csrf_token": token}), 422)
    assert message.startswith("note:") and "NUL" in message
    assert "note" in _error(reviewer.post(target, data={"note": "   ", "csrf_token": token}), 422)
    assert "4000" in _error(reviewer.post(target, data={"note": "y" * 4001, "csrf_token": token}), 422)
    assert _error(reviewer.post(target, content=b"note=x", headers={"content-type": "application/json"}), 415)
    assert "UTF-8" in _error(
        reviewer.post(
            target,
            content=b"note=%FF&csrf_token=" + token.encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        400,
    )
    history = reviewer.get(f"/console/predictions/{console.plain_ids[1]}")
    assert 'id="oversight-empty"' in history.text


# ------------------------------------------------------------------------------------------------ actions, roles
def test_audit_only_keys_see_no_action_forms_and_are_refused_403(console: Console, auditor: httpx.Client) -> None:
    page = auditor.get(f"/console/predictions/{console.plain_ids[2]}")
    assert 'id="flag-form"' not in page.text and 'id="override-form"' not in page.text
    token = _csrf(page.text)  # the logout form's token: a valid token for this session
    for path, data in (
        (f"/console/predictions/{console.plain_ids[2]}/flag", {"note": "n"}),
        (f"/console/predictions/{console.plain_ids[2]}/override", {"outcome": ">50K", "reason": "r"}),
        ("/console/datasets/salary_band/suspend", {"reason": "r"}),
        ("/console/models/salary_band/versions/8/approve", {"reason": "r"}),
    ):
        assert "'review' role" in _error(auditor.post(path, data={**data, "csrf_token": token}), 403)
    assert 'id="suspend-salary_band"' not in auditor.get("/console/datasets").text
    assert 'id="approve-salary_band-8"' not in auditor.get("/console/models").text
    assert 'id="oversight-empty"' in auditor.get(f"/console/predictions/{console.plain_ids[2]}").text


def test_reviewer_flags_and_overrides_and_the_log_filters_find_them(console: Console, reviewer: httpx.Client) -> None:
    target = console.plain_ids[3]
    page = reviewer.get(f"/console/predictions/{target}")
    token = _csrf(page.text)
    flagged = reviewer.post(f"/console/predictions/{target}/flag", data={"note": "odd age", "csrf_token": token})
    assert flagged.status_code == 303
    bad = reviewer.post(
        f"/console/predictions/{target}/override", data={"outcome": "maybe", "reason": "r", "csrf_token": token}
    )
    assert "outcome" in _error(bad, 422)
    done = reviewer.post(
        f"/console/predictions/{target}/override",
        data={"outcome": ">50K", "reason": "payslip seen", "csrf_token": token},
    )
    assert done.status_code == 303
    after = reviewer.get(done.headers["location"])
    assert "Override recorded in the inference log" in after.text
    history = _table_rows(after.text, "oversight-history")[1:]
    assert [(row[1], row[2], row[3], row[4]) for row in history] == [
        ("flag", console.key_ids["review"], "", "odd age"),
        ("override", console.key_ids["review"], ">50K", "payslip seen"),
    ]
    listing = reviewer.get("/console/log", params={"overridden": "true", "dataset": "salary_band"})
    assert re.findall(r'data-request-id="([^"]+)"', listing.text) == [target]


def test_reviewer_suspends_and_resumes_a_dataset(console: Console, reviewer: httpx.Client) -> None:
    page = reviewer.get("/console/datasets")
    token = _csrf(page.text)
    assert 'id="suspend-machine_failure"' in page.text
    done = reviewer.post(
        "/console/datasets/machine_failure/suspend", data={"reason": f"drill {XSS}", "csrf_token": token}
    )
    assert done.status_code == 303
    suspended = reviewer.get(done.headers["location"])
    state = dict((row[0], row[1]) for row in _table_rows(suspended.text, "datasets-table")[1:])
    assert state["machine_failure"].startswith(f"suspended by key {console.key_ids['review']}")
    assert state["machine_failure"].endswith(f"drill {XSS}") and XSS not in suspended.text
    assert 'id="resume-machine_failure"' in suspended.text
    again = reviewer.post(
        "/console/datasets/machine_failure/resume", data={"reason": "drill over", "csrf_token": token}
    )
    assert again.status_code == 303
    resumed = dict(
        (row[0], row[1]) for row in _table_rows(reviewer.get("/console/datasets").text, "datasets-table")[1:]
    )
    assert resumed["machine_failure"] == "serving"
    assert "not suspended" in _error(
        reviewer.post("/console/datasets/machine_failure/resume", data={"reason": "x", "csrf_token": token}), 409
    )
    assert _error(reviewer.post("/console/datasets/nope/suspend", data={"reason": "x", "csrf_token": token}), 404)


def test_models_page_and_approval_of_a_pending_candidate(console: Console, reviewer: httpx.Client) -> None:
    page = reviewer.get("/console/models?dataset=salary_band")
    rows = {row[1]: row for row in _table_rows(page.text, "models-table")[1:]}
    assert rows["riverbed-salary_band v8"][2:5] == ["", "pending_approval", "drift"]
    assert (
        rows["riverbed-salary_band v8"][5].startswith("passed")
        and "roc_auc 0.9234 > 0.9123" in rows["riverbed-salary_band v8"][5]
    )
    assert rows["riverbed-salary_band v8"][6] == "roc_auc 0.9234"
    seven, eight = (get_model_version(console.dsn, "salary_band", v) for v in (7, 8))
    assert seven is not None and eight is not None
    assert rows["riverbed-salary_band v7"][7:] == [format_time(seven.created_at), "not needed (automatic promotion)"]
    assert rows["riverbed-salary_band v8"][7:] == [format_time(eight.created_at), "awaiting a reviewer"]
    fairness = _table_rows(page.text, "fairness-salary_band-7-1")
    assert fairness[1:] == [["selection_rate[Female]", "0.1100"], ["selection_rate[Male]", "0.3100"]]
    assert 'id="approve-salary_band-8"' in page.text and 'id="approve-salary_band-7"' not in page.text
    token = _csrf(page.text)
    assert "reason" in _error(
        reviewer.post("/console/models/salary_band/versions/8/approve", data={"reason": "", "csrf_token": token}), 422
    )
    done = reviewer.post(
        "/console/models/salary_band/versions/8/approve", data={"reason": "looks right", "csrf_token": token}
    )
    assert done.status_code == 303, done.text
    after = reviewer.get(done.headers["location"])
    rows = {row[1]: row for row in _table_rows(after.text, "models-table")[1:]}
    assert rows["riverbed-salary_band v8"][3] == "approved"
    decided = get_model_version(console.dsn, "salary_band", 8)
    assert decided is not None and decided.review is not None
    assert rows["riverbed-salary_band v8"][7:] == [
        format_time(eight.created_at),
        f"approved by key {console.key_ids['review']} at {format_time(decided.review.decided_at)}: looks right",
    ]
    assert "Approve recorded in the inference log" in after.text
    text = html.unescape(re.sub(r"<[^>]+>", "", after.text))
    assert f"approved by key {console.key_ids['review']}: looks right" in text
    assert f'href="{MLFLOW_UI}/#/runs/run-eight"' in after.text and f'href="{DAGSTER_UI}/runs/dr-1"' in after.text
    second = reviewer.post("/console/models/salary_band/versions/8/reject", data={"reason": "no", "csrf_token": token})
    assert "already decided" in _error(second, 409)
    assert "not pending_approval" in _error(
        reviewer.post("/console/models/salary_band/versions/7/approve", data={"reason": "x", "csrf_token": token}), 409
    )
    assert "version" in _error(
        reviewer.post("/console/models/salary_band/versions/abc/approve", data={"reason": "x", "csrf_token": token}),
        422,
    )


def test_a_rejection_shows_the_reviewers_key_time_and_hostile_reason_escaped(
    console: Console, reviewer: httpx.Client
) -> None:
    record_trained(
        console.dsn,
        dataset="salary_band",
        version=9,
        trained_reason="performance",
        mlflow_run_id="run-nine",
        metrics={"roc_auc": 0.8801},
        fairness={},
        model_card_markdown="# Candidate 9",
        manual_approval=True,
        registered_model="riverbed-salary_band",
        dagster_run_id=None,
        data_commit_ids={"2026-11-01": JS_URL},
    )
    record_gate_decision(
        console.dsn,
        dataset="salary_band",
        version=9,
        passed=True,
        reasons=["roc_auc 0.8801 >= 0.85"],
        manual_approval=True,
    )
    page = reviewer.get("/console/models", params={"dataset": "salary_band"})
    reason = f"worse on a subgroup {XSS} {ATTR}"
    done = reviewer.post(
        "/console/models/salary_band/versions/9/reject", data={"reason": reason, "csrf_token": _csrf(page.text)}
    )
    assert done.status_code == 303, done.text
    after = reviewer.get(done.headers["location"])
    recorded = get_model_version(console.dsn, "salary_band", 9)
    assert recorded is not None and recorded.review is not None
    rows = {row[1]: row for row in _table_rows(after.text, "models-table")[1:]}
    assert rows["riverbed-salary_band v9"][3:5] == ["rejected_by_reviewer", "performance"]
    assert rows["riverbed-salary_band v9"][7:] == [
        format_time(recorded.created_at),
        f"rejected by key {console.key_ids['review']} at {format_time(recorded.review.decided_at)}: {reason}",
    ]
    assert XSS not in after.text and ATTR not in after.text
    card = re.search(r'id="card-salary_band-9".*?</section>', after.text, re.S).group(0)
    quoted = urllib.parse.quote(JS_URL, safe="")
    assert f'href="{LAKEFS_UI}/repositories/{DATA_REPOSITORY}/commits/{quoted}"' in card
    assert 'href="javascript:' not in after.text


def test_a_decision_whose_action_is_spooled_says_it_was_not_taken_and_must_be_made_again(
    console: Console, reviewer: httpx.Client
) -> None:
    record_trained(
        console.dsn,
        dataset="salary_band",
        version=10,
        trained_reason="schedule",
        mlflow_run_id="run-ten",
        metrics={"roc_auc": 0.93},
        fairness={},
        model_card_markdown="# Candidate 10",
        manual_approval=True,
        registered_model="riverbed-salary_band",
        dagster_run_id=None,
        data_commit_ids={},
    )
    record_gate_decision(
        console.dsn, dataset="salary_band", version=10, passed=True, reasons=["roc_auc 0.93"], manual_approval=True
    )
    token = _csrf(reviewer.get("/console/models", params={"dataset": "salary_band"}).text)
    # PostgreSQL refuses the approval's log row as if its disk were full: the writer spools it, while the
    # connection holding the decision's transaction still works (as in tests/serving/test_model_reviews.py).
    with psycopg.connect(console.dsn, autocommit=True) as conn:
        conn.execute(
            "create function test_console_disk_full() returns trigger language plpgsql as $$ begin "
            "raise exception 'could not extend file (test)' using errcode = '53100'; end $$"
        )
        conn.execute(
            "create trigger test_console_disk_full before insert on inference_log for each row "
            "when (new.route like '%/approve') execute function test_console_disk_full()"
        )
    try:
        refused = reviewer.post(
            "/console/models/salary_band/versions/10/approve", data={"reason": "fine", "csrf_token": token}
        )
    finally:
        with psycopg.connect(console.dsn, autocommit=True) as conn:
            conn.execute("drop trigger test_console_disk_full on inference_log")
            conn.execute("drop function test_console_disk_full()")
    message = _error(refused, 503)
    attempt = refused.headers["X-Request-ID"]
    assert message == (
        "inference_log: the inference log became unreachable while the approve was being recorded: it was not taken "
        "and salary_band version 10 is still pending_approval; decide again once the inference log is back "
        f"(the attempt's row {attempt} was spooled and will appear in the log, but the model catalog holds no "
        "decision)"
    )
    assert "do not repeat" not in refused.text
    assert get_model_version(console.dsn, "salary_band", 10).status == "pending_approval"  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while (ready := reviewer.get("/readyz")).status_code != 200:  # the spool is replayed
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.2)
    again = reviewer.post(
        "/console/models/salary_band/versions/10/approve", data={"reason": "fine", "csrf_token": token}
    )
    assert again.status_code == 303, again.text
    assert get_model_version(console.dsn, "salary_band", 10).status == "approved"  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ failed logins
def _rows_of(dsn: str, request_id: str) -> list[dict[str, object]]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "select route, status, http_status, client_key_id, dataset, error, inputs, outputs, "
            "row_to_json(l)::text as whole from inference_log l where request_id = %s",
            (request_id,),
        ).fetchall()
    columns = ("route", "status", "http_status", "client_key_id", "dataset", "error", "inputs", "outputs", "whole")
    return [dict(zip(columns, row, strict=True)) for row in found]


def test_every_failed_login_leaves_one_rejected_row_without_key_material(console: Console) -> None:
    revoked = create_api_key(console.dsn, ["audit"], "revoked for login")
    revoke_api_key(console.dsn, revoked.key_id)
    expired = create_api_key(console.dsn, ["review"], "expired for login")
    with psycopg.connect(console.dsn) as conn:
        conn.execute(
            "update api_keys set expires_at = now() - interval '1 second' where key_id = %s", (expired.key_id,)
        )
    wrong_secret = "Wr0ngSecretThatMustNotBeStored"
    wrong = f"rb_0123456789abcdef_{wrong_secret}"
    cases = [  # (api_key, with CSRF token, expected http_status, code, key id kept, what must not be stored)
        (wrong, True, 401, "invalid_key", "0123456789abcdef", wrong_secret),
        ("not-a-key-at-all", True, 401, "invalid_key", None, "not-a-key-at-all"),
        (revoked.key, True, 401, "invalid_key", revoked.key_id, revoked.key.rsplit("_", 1)[1]),
        (expired.key, True, 401, "key_expired", expired.key_id, expired.key.rsplit("_", 1)[1]),
        (console.keys["predict"], True, 403, "no_role", console.key_ids["predict"], console.keys["predict"]),
        (console.keys["review"], False, 403, "csrf", None, console.keys["review"].rsplit("_", 1)[1]),
    ]
    with _client(console) as http:
        for api_key, with_token, status, code, key_id, secret in cases:
            form = http.get("/console/login")
            data = {"api_key": api_key, **({"csrf_token": _csrf(form.text)} if with_token else {})}
            answer = http.post("/console/login", data=data)
            if code == "csrf":
                assert "CSRF" in _error(answer, 403)
                answered = "answered 403"
            else:
                assert answer.headers["location"] == f"/console/login?reason={code}"
                answered = f"answered 303 to /console/login?reason={code}"
            (row,) = _rows_of(console.dsn, answer.headers["x-request-id"])
            assert row["route"] == "/console/login" and row["status"] == "rejected" and row["http_status"] == status
            assert row["client_key_id"] == key_id and row["dataset"] is None
            assert row["inputs"] == [] and row["outputs"] == []
            message = REFUSALS.get(code, "missing or wrong CSRF token: reload the page and submit the form again")
            assert row["error"] == f"console login refused ({code}): {message}; {answered}"
            assert secret not in str(row["whole"]), code
        token = _csrf(http.get("/console/login").text)
        repeated = http.post(
            "/console/login",
            content=f"api_key={wrong_secret}&api_key=x&csrf_token={token}".encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert _error(repeated, 400) == "api_key: field 'api_key' is repeated"
        (row,) = _rows_of(console.dsn, repeated.headers["x-request-id"])
        assert (row["route"], row["status"], row["http_status"], row["client_key_id"]) == (
            "/console/login",
            "rejected",
            400,
            None,
        )
        assert row["error"] == "console login refused (bad_form): api_key: field 'api_key' is repeated; answered 400"
        assert wrong_secret not in str(row["whole"])
        metrics = http.get("/metrics").text
    for code, count in (("invalid_key", 3), ("key_expired", 1), ("no_role", 1), ("csrf", 1), ("bad_form", 1)):
        # at least: other tests of this module refuse logins too
        assert _metric(metrics, "riverbed_console_login_refusals_total", reason=code, row="logged") >= count


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric.startswith(name + "{"):
            shown = ",".join(sorted(metric[len(name) + 1 : -1].split(",")))
            if shown == wanted:
                return float(value)
    return 0.0


def test_a_login_flood_is_sampled_by_the_refusal_limiter(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One row per ``unauthenticated_log_per_second`` (burst of one): the rest are refused, counted, not logged."""
    name, dsn = create_database()
    try:
        apply_migrations(dsn)
        with ScriptedMLServer() as mlserver:
            settings = RiverbedSettings(
                home=tmp_path, inference_log_dsn=dsn, mlserver_url=mlserver.url, unauthenticated_log_per_second=0.001
            )
            repository = ModelRepository(settings.model_repository_dir)
            for spec in load_specs(settings.specs_dirs).values():
                point_at_scripted_model(repository, spec)
            with (
                caplog.at_level(logging.WARNING, logger="serving.gateway.refusals"),
                in_process_gateway(settings) as url,
                httpx.Client(base_url=url, timeout=60) as http,
            ):
                token = _csrf(http.get("/console/login").text)
                answers = [
                    http.post("/console/login", data={"api_key": f"rb_{i:016x}_guess{i}", "csrf_token": token})
                    for i in range(8)
                ]
                assert [a.headers["location"] for a in answers] == ["/console/login?reason=invalid_key"] * 8
                metrics = http.get("/metrics").text
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "select request_id, client_key_id from inference_log where route = '/console/login'"
            ).fetchall()
        assert rows == [(answers[0].headers["x-request-id"], f"{0:016x}")]
        assert _metric(metrics, "riverbed_console_login_refusals_total", reason="invalid_key", row="logged") == 1
        assert _metric(metrics, "riverbed_console_login_refusals_total", reason="invalid_key", row="sampled_out") == 7
        assert _metric(metrics, "riverbed_gateway_unlogged_refusals_total", reason="console_invalid_key") == 7
        # The WARNING names the answer the refused logins got, not a predict route's 401.
        warned = [r.getMessage() for r in caplog.records if r.name == "serving.gateway.refusals"]
        assert warned and warned[0].startswith("unauthenticated requests beyond 0.001 per second: ")
        assert all("answered 401" not in message for message in warned)
        assert (
            "console_invalid_key (answered 303 to /console/login?reason=invalid_key on POST /console/login)"
            in warned[0]
        )
    finally:
        drop_database(name)


# ------------------------------------------------------------------------------------------------ monitoring
def test_monitoring_page_shows_drift_performance_mix_fairness_and_global_shap(
    console: Console, auditor: httpx.Client
) -> None:
    page = auditor.get("/console/monitoring", params={"dataset": "salary_band", "days": "90"})
    assert page.status_code == 200
    drift = _table_rows(page.text, "drift-table")
    assert drift[0] == ["Day · chunk", "age", "sex"]
    assert [row[1:] for row in drift[1:]] == [["0.031", "0.012"], ["0.274 ⚠", "0.012"]]
    performance = _table_rows(page.text, "performance-table")
    assert [row[1:] for row in performance[1:]] == [["0.861", "0.852"], ["0.803", "0.771 ⚠"]]
    # 12 plain rows (4 >50K) + the hostile row (>50K); the refused row and the oversight actions are not sampled
    mix = {row[0]: row[1] for row in _table_rows(page.text, "prediction-mix")[1:]}
    assert mix == {"<=50K": "8", ">50K": "5"}
    fairness = _table_rows(page.text, "live-fairness")[1:]
    by_group = {(row[1], row[2]): row[3:] for row in fairness}
    assert by_group[("sex", "Female")] == ["6", "2", "0.333"] and by_group[("sex", "Male")] == ["7", "3", "0.429"]
    shap_table = dict(row for row in _table_rows(page.text, "global-shap-table")[1:])
    assert shap_table["age"] == "0.810000" and shap_table["education_num"] == "0.460000"
    texts = _texts(_svg_of(page.text, "global-shap-chart"))
    assert "+0.81" in texts and "+0.46" in texts and "age" in texts


def test_monitoring_parameters_are_checked(auditor: httpx.Client) -> None:
    assert "from 1 to 90" in _error(auditor.get("/console/monitoring", params={"days": "365"}), 422)
    assert "no dataset" in _error(auditor.get("/console/monitoring", params={"dataset": "<x>"}), 404)


# ------------------------------------------------------------------------------------------------ record, indexes
def test_console_reads_are_recorded_like_audit_reads(console: Console) -> None:
    created = create_api_key(console.dsn, ["audit"], "recorded")
    console.keys["recorded"] = created.key
    with contextlib.closing(_login(console, "recorded")) as http:
        http.get("/console/log", params={"status": "rejected", "dataset": "salary_band", "limit": "10"})
        page = http.get(f"/console/predictions/{console.rejected_id}")
        request_id = page.headers["x-request-id"]
        http.get("/console/monitoring", params={"dataset": "salary_band", "days": "3"})
    reads = list(reversed(list_audit_access(console.dsn, key_id=created.key_id)))
    assert [(r.route, r.filters, r.row_count) for r in reads] == [
        ("/console/log", {"dataset": "salary_band", "status": "rejected", "limit": 10}, 1),
        ("/console/predictions/{request_id}", {"request_id": console.rejected_id}, 1),
        ("/console/monitoring", {"dataset": "salary_band", "days": 3}, 13 + 8),  # sampled requests + results
    ]
    assert reads[1].request_id == request_id


def test_console_queries_are_served_by_indexes(console: Console) -> None:
    with psycopg.connect(console.dsn) as conn:
        conn.execute("set enable_seqscan = off")
        since = dt.datetime.now(dt.UTC) - dt.timedelta(days=14)
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "explain " + SAMPLE_SQL, ("salary_band", since, dt.datetime.now(dt.UTC), PREDICT_ROUTE, 1000)
            )
        )
        # either keyset index walks the window newest first and stops at the LIMIT: no sort, no scan of the log
        assert "Index Scan using inference_log_" in plan and "keyset" in plan and "Sort" not in plan, plan
        plan = "\n".join(
            row[0] for row in conn.execute("explain " + MONITORING_SQL, ("salary_band", since.date(), 20000))
        )
        assert "monitoring_results" in plan and "Seq Scan" not in plan, plan


def test_the_gateway_imports_neither_shap_nor_matplotlib_until_a_chart_is_drawn() -> None:
    code = (
        "import sys, serving.gateway.main as m; m.create_app(); import serving.console.pages; "
        "print(sorted(n for n in ('shap', 'matplotlib', 'numba') if n in sys.modules))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert completed.stdout.strip() == "[]"


def test_unknown_console_pages_get_a_404_page(auditor: httpx.Client) -> None:
    assert _error(auditor.get("/console/no/such/page"), 404) == "no such console page"
    css = auditor.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert _error(auditor.get("/console/static/../sessions.py"), 404)


def test_hostile_filter_values_are_echoed_escaped_in_the_form(auditor: httpx.Client) -> None:
    page = auditor.get("/console/log", params={"label": ATTR, "model_version": XSS})
    assert page.status_code == 200 and 'id="log-empty"' in page.text
    assert ATTR not in page.text and XSS not in page.text
    assert f'name="label" type="text" maxlength="256" value="{markupsafe.escape(ATTR)}"' in page.text
    assert f'value="{markupsafe.escape(XSS)}"' in page.text
    for params in ({"done": "approve", "action": "<x>"}, {"done": "approve", "action": "a1", "tag": "forged"}):
        page = auditor.get("/console/models", params=params)  # a crafted link cannot claim a recorded action
        assert page.status_code == 200 and 'id="flash-message"' not in page.text


def test_fuzzed_console_requests_never_get_a_5xx(console: Console, reviewer: httpx.Client) -> None:
    """Random query parameters, path ids and form fields (valid CSRF token, so the handlers run): 4xx or 200."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    text = st.text(st.characters(codec="utf-8"), max_size=300)
    names = st.sampled_from(
        ["dataset", "since", "until", "model_version", "label", "status", "flagged", "overridden", "limit", "cursor",
         "days", "record", "format", "done", "action", "tag"]
    )  # fmt: skip
    token = _csrf(reviewer.get("/console/datasets").text)
    failures: list[str] = []

    def check(response: httpx.Response, what: str) -> None:
        if response.status_code >= 500 or b"Traceback" in response.content:
            failures.append(f"{what} -> {response.status_code}: {response.text[:300]}")

    @settings(max_examples=80, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        page=st.sampled_from(["/console/log", "/console/monitoring", "/console/models", "/console/datasets"]),
        params=st.dictionaries(names, text, max_size=5),
        request_id=text,
        form=st.dictionaries(st.sampled_from(["note", "reason", "outcome", "api_key", "x"]), text, max_size=4),
        target=st.sampled_from(["flag", "override"]),
    )
    def run(page: str, params: dict[str, str], request_id: str, form: dict[str, str], target: str) -> None:
        check(reviewer.get(page, params=params), f"GET {page} {params!r}")
        quoted = urllib.parse.quote(request_id, safe="")
        check(reviewer.get(f"/console/predictions/{quoted}", params=params), f"GET prediction {request_id!r}")
        posted = reviewer.post(f"/console/predictions/{quoted}/{target}", data={**form, "csrf_token": token})
        check(posted, f"POST {target} {request_id!r} {form!r}")

    run()
    assert failures == []
