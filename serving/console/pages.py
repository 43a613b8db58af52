"""The console's routes: login / logout, inference log, one request (with its SHAP waterfall), models,
monitoring, datasets, and the oversight actions' forms.

Every page needs a session (:mod:`serving.console.sessions`); keys with ``audit`` or ``review`` read, only
``review`` acts (its forms are not shown to other keys, and their POSTs are refused 403). Every read that shows
inference-log or catalog content is first recorded in ``audit_access_log`` exactly as the audit API records its
reads (key id, route, filters, row count, request id); a read that cannot be recorded is not shown (503).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hmac
import math
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from riverbed.model_catalog import ReviewDecision, list_model_versions_async
from riverbed.names import CONSOLE_PATH
from serving.api_keys import ApiKey, ApiKeyRefused, KeyExpiredError, KeyStoreUnavailableError
from serving.audit_access import record_audit_access
from serving.audit_queries import (
    MAX_CURSOR_LENGTH,
    MAX_FILTER_LENGTH,
    AuditFilter,
    check_request_id,
    fetch_predictions,
    get_prediction,
)
from serving.console import charts, login_refusals, queries
from serving.console.lineage import dagster_run_link, data_commit_link, lineage_links, mlflow_run_link, version_slug
from serving.console.markdown import render_markdown
from serving.console.sessions import (
    CONSOLE_ROLES,
    LOGIN_COOKIE,
    REFUSALS,
    SESSION_COOKIE,
    ConsoleSession,
    csrf_token,
    issue_session,
    read_login_nonce,
)
from serving.console.web import (
    HERE,
    SECURITY_HEADERS,
    ConsolePageError,
    ConsoleRoute,
    check_query_text,
    logged_out,
    login_page,
    parse_choice,
    parse_int,
    parse_time,
    read_form,
    redirect,
    render,
    require_review,
    require_session,
    session_key,
    set_cookie,
)
from serving.gateway.deps import MAX_TOKEN_LENGTH, KeyCheck, gateway_of
from serving.gateway.middleware import clock_of, request_id_of
from serving.gateway.routes import audit
from serving.gateway.state import GatewayState
from serving.inference_log import RequestStatus
from serving.model_decisions import decide_model_version
from serving.oversight import (
    OversightAction,
    actions_for,
    flag_prediction,
    override_prediction,
    resume_dataset,
    suspend_dataset,
    suspension_of,
)

router = APIRouter(prefix=CONSOLE_PATH, route_class=ConsoleRoute, include_in_schema=False)

LOG_ROUTE = f"{CONSOLE_PATH}/log"
PREDICTION_ROUTE = f"{CONSOLE_PATH}/predictions/{{request_id}}"
MODELS_ROUTE = f"{CONSOLE_PATH}/models"
MONITORING_ROUTE = f"{CONSOLE_PATH}/monitoring"
DATASETS_ROUTE = f"{CONSOLE_PATH}/datasets"
DEFAULT_PAGE_ROWS = 50
MAX_PAGE_ROWS = 200
MAX_MONITORING_DAYS = 90
MAX_RECORD_INDEX = 100_000
STATUS_CHOICES = ("ok", "rejected", "failed")
BOOL_CHOICES = ("true", "false")
_ACTIONS = frozenset({"flag", "override", "suspend", "resume", "approve", "reject"})
_ACTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_STATIC = {"console.css": "text/css; charset=utf-8"}


# ------------------------------------------------------------------------------------------------ helpers
class _Charts:
    """The newest drawn waterfalls by (request id, record): a logged row never changes, so neither does its chart."""

    def __init__(self, capacity: int) -> None:
        self._charts: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._capacity = capacity

    def get(self, key: tuple[str, int]) -> str | None:
        chart = self._charts.get(key)
        if chart is not None:
            self._charts.move_to_end(key)
        return chart

    def put(self, key: tuple[str, int], chart: str) -> str:
        self._charts[key] = chart
        self._charts.move_to_end(key)
        while len(self._charts) > self._capacity:
            self._charts.popitem(last=False)
        return chart


_WATERFALLS = _Charts(128)  # about 50 KB each


async def _record_read(
    request: Request, session: ConsoleSession, route: str, filters: dict[str, Any], row_count: int
) -> None:
    """Record the read before it is shown (raises AuditAccessNotRecorded -> 503 page)."""
    gateway = gateway_of(request)
    await record_audit_access(
        gateway.writer.pool,
        key_id=session.key_id,
        route=route,
        filters=filters,
        row_count=row_count,
        request_id=request_id_of(request),
        received_at=clock_of(request).received_at,
    )


def _flash(request: Request, session: ConsoleSession) -> str | None:
    """The confirmation of the action that redirected here: ``done`` and ``action`` in the query, tagged for this
    session by :func:`_back_to` (a crafted link cannot make a page claim an action was recorded)."""
    done = request.query_params.get("done", "")
    action = request.query_params.get("action", "")
    if done not in _ACTIONS or not _ACTION_ID.fullmatch(action):
        return None
    expected = _flash_tag(request, session, done, action)
    if not hmac.compare_digest(request.query_params.get("tag", "").encode(), expected.encode()):
        return None
    return f"{done.capitalize()} recorded in the inference log (action {action})."


def _flash_tag(request: Request, session: ConsoleSession, done: str, action: str) -> str:
    return csrf_token(session_key(gateway_of(request)), f"flash|{session.nonce}|{done}|{action}")


def _quote(text: Any) -> str:
    return urllib.parse.quote(str(text), safe="")


def _svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _api_key(session: ConsoleSession) -> ApiKey:
    return ApiKey(key_id=session.key_id, name=session.key_name, roles=session.roles)


# ------------------------------------------------------------------------------------------------ session
@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    media_type = _STATIC.get(name)
    if media_type is None:
        raise ConsolePageError(404, "no such file")
    content = await asyncio.to_thread((HERE / "static" / name).read_bytes)
    headers = {**SECURITY_HEADERS, "Cache-Control": "public, max-age=3600"}
    return Response(content, media_type=media_type, headers=headers)


@router.get("")
@router.get("/")
async def console_home(request: Request) -> Response:
    await require_session(request)
    return redirect(LOG_ROUTE)


@router.get("/login")
async def login_form(request: Request) -> Response:
    return login_page(request, REFUSALS.get(request.query_params.get("reason", "")))


def _login_again(code: str) -> Response:
    """Back to the login form, saying why (post/redirect/get: no error status for the browser to log)."""
    return redirect(f"{CONSOLE_PATH}/login?reason={code}")


async def _refuse_login(
    gateway: GatewayState, request: Request, code: str, http_status: int, key_id: str | None = None
) -> Response:
    """Record the refused login (:mod:`serving.console.login_refusals`), then send the browser back to the form."""
    await login_refusals.record_login_refusal(
        gateway,
        request,
        code=code,
        http_status=http_status,
        message=REFUSALS[code],
        answered=f"303 to {CONSOLE_PATH}/login?reason={code}",
        key_id=key_id,
    )
    return _login_again(code)


@router.post("/login")
async def login(request: Request) -> Response:
    gateway = gateway_of(request)
    key = session_key(gateway)
    nonce = read_login_nonce(key, request.cookies.get(LOGIN_COOKIE))
    if nonce is None:
        return await _refuse_login(gateway, request, "form_expired", 403)
    try:
        form = await read_form(request, None, csrf_nonce=nonce)
    except ConsolePageError as refused:  # no CSRF token, a wrong one, or a malformed form: shown as an error page
        code = login_refusals.CSRF_REFUSED if refused.status == 403 else login_refusals.FORM_REFUSED
        message = f"{refused.field}: {refused.message}" if refused.field else refused.message
        await login_refusals.record_login_refusal(
            gateway, request, code=code, http_status=refused.status, message=message, answered=f"{refused.status}"
        )
        raise
    token = form.get("api_key", "").strip()
    if not token:
        return await _refuse_login(gateway, request, "empty_key", 401)
    key_id = login_refusals.key_id_of(token)
    if len(token) > MAX_TOKEN_LENGTH or not token.isprintable() or not token.isascii():
        return await _refuse_login(gateway, request, "invalid_key", 401, key_id)
    try:
        api_key = await gateway.authenticator.verify(token)
    except KeyStoreUnavailableError as unavailable:
        await login_refusals.record_login_refusal(
            gateway,
            request,
            code=login_refusals.KEY_STORE_UNAVAILABLE,
            http_status=503,
            message=unavailable.message,
            answered="503",
            key_id=key_id,
        )
        raise ConsolePageError(503, unavailable.message) from None
    except KeyExpiredError:
        return await _refuse_login(gateway, request, "key_expired", 401, key_id)
    except ApiKeyRefused:
        return await _refuse_login(gateway, request, "invalid_key", 401, key_id)
    if api_key.roles.isdisjoint(CONSOLE_ROLES):
        return await _refuse_login(gateway, request, "no_role", 403, api_key.key_id)
    charts.warm_up()  # import shap / matplotlib in the background before the first chart is asked for
    lifetime = gateway.settings.console_session_seconds
    response = redirect(LOG_ROUTE)
    set_cookie(
        request,
        response,
        SESSION_COOKIE,
        issue_session(key, api_key.key_id, lifetime, api_key.expires_at),
        int(lifetime),
    )
    response.delete_cookie(LOGIN_COOKIE, path=CONSOLE_PATH)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = await require_session(request)
    await read_form(request, session)
    logged_out().add(session.nonce, session.expires_at)
    response = redirect(f"{CONSOLE_PATH}/login")
    response.delete_cookie(SESSION_COOKIE, path=CONSOLE_PATH, httponly=True, samesite="strict")
    return response


# ------------------------------------------------------------------------------------------------ log
def _log_filter(request: Request) -> tuple[AuditFilter, dict[str, str]]:
    """The audit filter of the log page's query, and the same filters as text (for links)."""
    params = request.query_params
    dataset = check_query_text("dataset", params.get("dataset"), MAX_FILTER_LENGTH)
    since = parse_time("since", params.get("since"))
    until = parse_time("until", params.get("until"))
    model_version = check_query_text("model_version", params.get("model_version"), MAX_FILTER_LENGTH)
    label = check_query_text("label", params.get("label"), MAX_FILTER_LENGTH)
    status = parse_choice("status", params.get("status"), STATUS_CHOICES)
    flagged = parse_choice("flagged", params.get("flagged"), BOOL_CHOICES)
    overridden = parse_choice("overridden", params.get("overridden"), BOOL_CHOICES)
    selection = AuditFilter(
        dataset=dataset,
        since=since,
        until=until,
        model_version=model_version,
        label=label,
        status=RequestStatus(status) if status else None,
        flagged=None if flagged is None else flagged == "true",
        overridden=None if overridden is None else overridden == "true",
    )
    selection.validate()
    text = {
        name: value
        for name, value in (
            ("dataset", dataset),
            ("since", params.get("since") if since else None),
            ("until", params.get("until") if until else None),
            ("model_version", model_version),
            ("label", label),
            ("status", status),
            ("flagged", flagged),
            ("overridden", overridden),
        )
        if value
    }
    return selection, text


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _log_row(row: Mapping[str, Any]) -> dict[str, Any]:
    outputs = _list(row.get("outputs"))
    sample_ids = [str(o.get("sample_id")) for o in outputs if isinstance(o, dict) and o.get("sample_id") is not None]
    return {
        "request_id": row["request_id"],
        "received_at": row["received_at"],
        "dataset": row.get("dataset"),
        "route": row.get("route"),
        "status": row.get("status"),
        "http_status": row.get("http_status"),
        "model_version": row.get("model_version"),
        "labels": ", ".join(str(label) for label in row.get("labels") or []),
        "sample_ids": ", ".join(sample_ids[:5]) + (" …" if len(sample_ids) > 5 else ""),
        "client_key_id": row.get("client_key_id"),
    }


@router.get("/log")
async def log_page(request: Request) -> Response:
    session = await require_session(request)
    gateway = gateway_of(request)
    selection, filters = _log_filter(request)
    limit = parse_int("limit", request.query_params.get("limit"), DEFAULT_PAGE_ROWS, 1, MAX_PAGE_ROWS)
    cursor = check_query_text("cursor", request.query_params.get("cursor"), MAX_CURSOR_LENGTH)
    rows, next_cursor = await fetch_predictions(
        gateway.writer.pool, selection, limit=limit, cursor=cursor, cursor_key=gateway.cursor_key
    )
    recorded = {**selection.as_json(), "limit": limit, **({"cursor": cursor} if cursor else {})}
    await _record_read(request, session, LOG_ROUTE, recorded, len(rows))
    query = {**filters, **({"limit": str(limit)} if limit != DEFAULT_PAGE_ROWS else {})}
    return render(
        request,
        "log.html",
        {
            "rows": [_log_row(row) for row in rows],
            "filters": filters,
            "limit": limit,
            "first_url": f"{LOG_ROUTE}?{urllib.parse.urlencode(query)}",
            "next_url": f"{LOG_ROUTE}?{urllib.parse.urlencode({**query, 'cursor': next_cursor})}"
            if next_cursor
            else None,
            "export_csv": f"{CONSOLE_PATH}/export?{urllib.parse.urlencode({**filters, 'format': 'csv'})}",
            "export_parquet": f"{CONSOLE_PATH}/export?{urllib.parse.urlencode({**filters, 'format': 'parquet'})}",
            "paged": cursor is not None,
        },
        session=session,
    )


@router.get("/export")
async def export(request: Request) -> Response:
    """The audit API's export (same route handler, limits and record in the access log), for a console session."""
    session = await require_session(request)
    if not session.can_audit:
        raise ConsolePageError(403, "this API key lacks the 'audit' role: exports need it")
    gateway = gateway_of(request)
    selection, _ = _log_filter(request)
    export_format = parse_choice("format", request.query_params.get("format"), ("csv", "parquet")) or "csv"
    return await audit.audit_export(
        gateway=gateway,
        key=KeyCheck(_api_key(session)),
        own_request_id=request_id_of(request),
        clock=clock_of(request),
        format=audit.ExportFormat(export_format),
        dataset=selection.dataset,
        since=selection.since,
        until=selection.until,
        model_version=selection.model_version,
        label=selection.label,
        status=audit.StatusFilter(selection.status.value) if selection.status else None,
        flagged=selection.flagged,
        overridden=selection.overridden,
    )


# ------------------------------------------------------------------------------------------------ one request
def _records(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per logged record: its inputs, label, probabilities, explanation and top features."""
    inputs = _list(row.get("inputs"))
    outputs = _list(row.get("outputs"))
    records = []
    for index in range(max(len(inputs), len(outputs))):
        record_inputs = inputs[index] if index < len(inputs) and isinstance(inputs[index], dict) else {}
        output = outputs[index] if index < len(outputs) and isinstance(outputs[index], dict) else {}
        explanation = output.get("explanation") if isinstance(output.get("explanation"), dict) else None
        contributions = explanation.get("contributions") if explanation else None
        top: list[dict[str, Any]] = []
        if isinstance(contributions, dict):
            ranked = sorted(
                (
                    (name, value)
                    for name, value in contributions.items()
                    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                ),
                key=lambda pair: -abs(pair[1]),
            )
            top = [{"feature": n, "value": record_inputs.get(n), "contribution": v} for n, v in ranked[:10]]
        records.append(
            {
                "index": index,
                "inputs": sorted(record_inputs.items()),
                "sample_id": output.get("sample_id"),
                "label": output.get("label"),
                "probabilities": sorted((output.get("probabilities") or {}).items())
                if isinstance(output.get("probabilities"), dict)
                else [],
                "explanation": explanation,
                "top_features": top,
                "record_inputs": record_inputs,
            }
        )
    return records


@router.get("/predictions/{request_id}")
async def prediction_page(request: Request, request_id: str) -> Response:
    session = await require_session(request)
    gateway = gateway_of(request)
    if len(request_id) > 128:
        raise ConsolePageError(422, "longer than 128 characters", field="request_id")
    check_request_id(request_id)
    chosen = parse_int("record", request.query_params.get("record"), 0, 0, MAX_RECORD_INDEX)
    row = await get_prediction(gateway.writer.pool, request_id)
    await _record_read(request, session, PREDICTION_ROUTE, {"request_id": request_id}, 0 if row is None else 1)
    if row is None:
        raise ConsolePageError(404, f"no request {request_id!r} in the inference log", field="request_id")
    history = await actions_for(gateway, "prediction", request_id)
    records = _records(row)
    if records and chosen >= len(records):
        raise ConsolePageError(422, f"must be from 0 to {len(records) - 1}", field="record")
    record = records[chosen] if records else None
    chart: str | None = None
    chart_error: str | None = None
    if record is not None and record["explanation"] is not None:
        cached = _WATERFALLS.get((request_id, chosen))
        try:
            if cached is None:
                svg = await asyncio.to_thread(
                    charts.waterfall_svg,
                    record["explanation"].get("base_value"),
                    record["explanation"].get("contributions") or {},
                    record["record_inputs"],
                )
                cached = _WATERFALLS.put((request_id, chosen), _svg_data_uri(svg))
            chart = cached
        except charts.ChartError as error:
            chart_error = str(error)
    spec = gateway.specs.get(str(row.get("dataset")))
    return render(
        request,
        "prediction.html",
        {
            "row": row,
            "records": records,
            "record": record,
            "chosen": chosen,
            "chart": chart,
            "chart_error": chart_error,
            "lineage": lineage_links(gateway.settings, row),
            "history": history,
            "outcomes": list(spec.target.classes) if spec is not None else [],
            "flash": _flash(request, session),
            "served": row.get("status") == "ok",
        },
        session=session,
    )


def _back_to(request: Request, session: ConsoleSession, path: str, done: str, action_id: str) -> Response:
    """Post/redirect/get: back to the page, which confirms the recorded action (see :func:`_flash`)."""
    tag = _flash_tag(request, session, done, action_id)
    return redirect(f"{path}?{urllib.parse.urlencode({'done': done, 'action': action_id, 'tag': tag})}")


async def _reviewer_form(request: Request) -> tuple[ConsoleSession, dict[str, str]]:
    """An action's session and form: a session, then its CSRF token, then the review role (403 without it)."""
    session = await require_session(request)
    form = await read_form(request, session)
    require_review(session)
    return session, form


async def _act_on_prediction(
    request: Request,
    request_id: str,
    done: str,
    perform: Callable[[GatewayState, str, str, dict[str, str]], Awaitable[OversightAction]],
) -> Response:
    """Flag or override: ``perform(gateway, own request id, key id, form)``, then back to the request's page."""
    session, form = await _reviewer_form(request)
    check_request_id(request_id)
    action = await perform(gateway_of(request), request_id_of(request), session.key_id, form)
    return _back_to(request, session, f"{CONSOLE_PATH}/predictions/{_quote(request_id)}", done, action.action_id)


@router.post("/predictions/{request_id}/flag")
async def flag(request: Request, request_id: str) -> Response:
    def perform(gateway: GatewayState, own_id: str, key_id: str, form: dict[str, str]) -> Awaitable[OversightAction]:
        return flag_prediction(
            gateway, request_id=own_id, key_id=key_id, target_request_id=request_id, note=form.get("note", "")
        )

    return await _act_on_prediction(request, request_id, "flag", perform)


@router.post("/predictions/{request_id}/override")
async def override(request: Request, request_id: str) -> Response:
    def perform(gateway: GatewayState, own_id: str, key_id: str, form: dict[str, str]) -> Awaitable[OversightAction]:
        return override_prediction(
            gateway,
            request_id=own_id,
            key_id=key_id,
            target_request_id=request_id,
            outcome=form.get("outcome", ""),
            reason=form.get("reason", ""),
        )

    return await _act_on_prediction(request, request_id, "override", perform)


# ------------------------------------------------------------------------------------------------ models
@router.get("/models")
async def models_page(request: Request) -> Response:
    session = await require_session(request)
    gateway = gateway_of(request)
    dataset = check_query_text("dataset", request.query_params.get("dataset"), MAX_FILTER_LENGTH)
    async with gateway.writer.pool.connection() as conn:
        versions = await list_model_versions_async(conn, dataset, 100)
    await _record_read(request, session, MODELS_ROUTE, {"dataset": dataset} if dataset else {}, len(versions))
    shown = [
        {
            "record": version,
            "card": render_markdown(version.model_card_markdown),
            "slug": _slug(version),
            "mlflow_run": mlflow_run_link(gateway.settings, version.mlflow_run_id),
            "dagster_run": dagster_run_link(gateway.settings, version.dagster_run_id),
            "data_commits": [
                (partition, data_commit_link(gateway.settings, commit))
                for partition, commit in sorted(version.data_commit_ids.items())
            ],
        }
        for version in versions
    ]
    return render(
        request,
        "models.html",
        {"versions": shown, "dataset": dataset, "flash": _flash(request, session)},
        session=session,
    )


def _slug(version: Any) -> str:
    return version_slug(version.dataset, version.version)


async def _review_model(request: Request, dataset: str, version: str, decision: ReviewDecision) -> Response:
    session, form = await _reviewer_form(request)
    if not version.isascii() or not version.isdigit() or not 1 <= int(version) <= 2**31 - 1:
        raise ConsolePageError(422, "must be a whole number from 1 to 2147483647", field="version")
    _, action = await decide_model_version(
        gateway_of(request),
        request_id=request_id_of(request),
        key_id=session.key_id,
        dataset=dataset,
        version=int(version),
        decision=decision,
        reason=form.get("reason", ""),
    )
    return _back_to(request, session, MODELS_ROUTE, decision, action.action_id)


@router.post("/models/{dataset}/versions/{version}/approve")
async def approve(request: Request, dataset: str, version: str) -> Response:
    return await _review_model(request, dataset, version, "approve")


@router.post("/models/{dataset}/versions/{version}/reject")
async def reject(request: Request, dataset: str, version: str) -> Response:
    return await _review_model(request, dataset, version, "reject")


# ------------------------------------------------------------------------------------------------ monitoring
@router.get("/monitoring")
async def monitoring_page(request: Request) -> Response:
    session = await require_session(request)
    gateway = gateway_of(request)
    names = sorted(gateway.specs)
    dataset = check_query_text("dataset", request.query_params.get("dataset"), MAX_FILTER_LENGTH) or (
        names[0] if names else None
    )
    if dataset is None or dataset not in gateway.specs:
        raise ConsolePageError(404, f"no dataset {dataset!r} is served here", field="dataset")
    days = parse_int("days", request.query_params.get("days"), 14, 1, MAX_MONITORING_DAYS)
    spec = gateway.specs[dataset]
    now = dt.datetime.now(dt.UTC)
    since = now - dt.timedelta(days=days)
    results = await queries.monitoring_results(gateway.writer.pool, dataset, since.date())
    sample = await queries.log_sample(gateway.writer.pool, spec, since, now)
    await _record_read(
        request, session, MONITORING_ROUTE, {"dataset": dataset, "days": days}, sample.requests + results.rows
    )
    chart: str | None = None
    chart_error: str | None = None
    if sample.shap_rows:
        try:
            chart = _svg_data_uri(
                await asyncio.to_thread(charts.mean_abs_bar_svg, sample.shap_features, sample.shap_rows)
            )
        except charts.ChartError as error:
            chart_error = str(error)
    return render(
        request,
        "monitoring.html",
        {
            "dataset": dataset,
            "days": days,
            "results": results,
            "sample": sample,
            "sample_limit": queries.SAMPLE_ROWS,
            "chart": chart,
            "chart_error": chart_error,
            "positive_class": spec.target.positive_class,
        },
        session=session,
    )


# ------------------------------------------------------------------------------------------------ datasets
@router.get("/datasets")
async def datasets_page(request: Request) -> Response:
    session = await require_session(request)
    gateway = gateway_of(request)
    rows = [{"name": name, "suspension": suspension_of(gateway, name)} for name in sorted(gateway.specs)]
    return render(request, "datasets.html", {"rows": rows, "flash": _flash(request, session)}, session=session)


@router.post("/datasets/{dataset}/{action}")
async def dataset_action(request: Request, dataset: str, action: str) -> Response:
    session, form = await _reviewer_form(request)
    if action not in ("suspend", "resume"):
        raise ConsolePageError(404, "no such action: use suspend or resume", field="action")
    perform = suspend_dataset if action == "suspend" else resume_dataset
    recorded = await perform(
        gateway_of(request),
        request_id=request_id_of(request),
        key_id=session.key_id,
        dataset=dataset,
        reason=form.get("reason", ""),
    )
    return _back_to(request, session, DATASETS_ROUTE, action, recorded.action_id)


@router.get("/{path:path}")
async def not_found(request: Request, path: str) -> Response:
    await require_session(request)
    raise ConsolePageError(404, "no such console page")
