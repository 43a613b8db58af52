"""Audit routes under hostile input, audit reads on record, bounded exports, and MLServer's text kept from clients.

A real uvicorn gateway (in this process) over real PostgreSQL, in front of a scripted MLServer that scores
plausibly, refuses or crashes on demand.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import psycopg
import pytest

from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from riverbed.specs import load_specs
from serving.api_keys import create_api_key
from serving.audit_access import list_audit_access
from serving.audit_queries import AuditFilter, CursorError, decode_cursor, encode_cursor
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import (
    ScriptedMLServer,
    api_records,
    in_process_gateway,
    point_at_scripted_model,
    salary_band_features,
    salary_band_spec,
)

pytestmark = pytest.mark.slow

SPEC = salary_band_spec()
ONE_ROUTE = "/v1/audit/predictions/{request_id}"


@dataclass
class Gateway:
    url: str
    home: Path
    dsn: str
    mlserver: ScriptedMLServer
    keys: dict[str, str]
    key_ids: dict[str, str]
    request_ids: list[str]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("audit-hardening")
    name, dsn = create_database()
    try:
        with ScriptedMLServer() as mlserver:
            settings = RiverbedSettings(
                home=home, inference_log_dsn=dsn, mlserver_url=mlserver.url, model_repository=home / "repository"
            )
            repository = ModelRepository(settings.model_repository_dir)
            for spec in load_specs(settings.specs_dirs).values():  # every dataset is served (by the script)
                point_at_scripted_model(repository, spec)
            with in_process_gateway(settings) as url:
                created = {
                    "predict": create_api_key(dsn, ["predict"], "app"),
                    "audit": create_api_key(dsn, ["audit"], "auditor"),
                    "both": create_api_key(dsn, ["predict", "audit"], "ops"),
                }
                ids = []
                with httpx.Client(base_url=url, timeout=30) as http:
                    for record in api_records(salary_band_features(60), SPEC)[:6]:
                        response = http.post(
                            "/v1/salary_band/predict", json=record, headers=_auth(created["predict"].key)
                        )
                        assert response.status_code == 200, response.text
                        ids.append(response.json()["request_id"])
                yield Gateway(
                    url,
                    home,
                    dsn,
                    mlserver,
                    {role: key.key for role, key in created.items()},
                    {role: key.key_id for role, key in created.items()},
                    ids,
                )
    finally:
        drop_database(name)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30, headers=_auth(gateway.keys["audit"])) as http:
        yield http


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _problem(response: httpx.Response) -> dict:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "Traceback" not in response.text
    (problem,) = body["problems"]
    return problem


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# ------------------------------------------------------------------------------------------------------- cursors
def test_cursor_round_trips_and_is_bound_to_its_filters() -> None:
    flt = AuditFilter(dataset="salary_band")
    cursor = encode_cursor("2026-01-02T03:04:05.000006Z", "4f1c7c2e-0000-4000-8000-000000000001", flt)
    position, request_id = decode_cursor(cursor, flt)
    assert position.isoformat() == "2026-01-02T03:04:05.000006+00:00"
    assert request_id == "4f1c7c2e-0000-4000-8000-000000000001"
    with pytest.raises(CursorError, match="issued for other filters"):
        decode_cursor(cursor, AuditFilter(dataset="machine_failure"))
    with pytest.raises(CursorError, match="altered or corrupted"):
        decode_cursor(cursor, flt, key=b"another deployment's key")
    tag = cursor.split(".")[1]
    forged = _b64(json.dumps([1, "2026-01-02T03:04:05.000006Z", "x" * 50, flt.digest()]).encode())
    with pytest.raises(CursorError, match="altered or corrupted"):
        decode_cursor(f"{forged}.{tag}", flt)


def test_malformed_cursors_get_422_naming_the_cursor(gateway: Gateway, client: httpx.Client) -> None:
    listing = {"dataset": "salary_band", "status": "ok", "limit": 1}
    page = client.get("/v1/audit/predictions", params=listing)
    assert page.status_code == 200, page.text
    real = page.json()["next_cursor"]
    assert real
    payload, tag = real.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    junk = _b64(b'{"a": [1, 2]}')
    unsigned = _b64(json.dumps([1, "2026-01-01T00:00:00.000000Z", "x", "0" * 16]).encode())
    cases = {
        "random base64": (secrets.token_urlsafe(48), "malformed"),
        "base64 of junk JSON": (f"{junk}.{'A' * 22}", "altered or corrupted"),
        "base64 of a cursor-shaped list, unsigned": (f"{unsigned}.{'A' * 22}", "altered or corrupted"),
        "tampered payload": (f"{flipped}.{tag}", "altered or corrupted"),
        "not base64": ("!!!not-a-cursor!!!", "malformed"),
        "NUL": ("abc\x00def.AAAAAAAAAAAAAAAAAAAAAA", "malformed"),
        "another filter's cursor": (real, "issued for other filters"),
    }
    for name, (cursor, rule) in cases.items():
        params = {**listing, "cursor": cursor}
        if name == "another filter's cursor":
            params["status"] = "rejected"
        problem = _problem(client.get("/v1/audit/predictions", params=params))
        assert problem["field"] == "cursor", name
        assert rule in problem["rule"], (name, problem)
    too_long = _problem(client.get("/v1/audit/predictions", params={**listing, "cursor": "A" * 600}))
    assert too_long["field"] == "cursor" and "512" in too_long["rule"]
    assert client.get("/v1/audit/predictions", params={**listing, "cursor": real}).status_code == 200


# ------------------------------------------------------------------------------------------- ids, filters, times
def test_request_id_shape_is_checked(gateway: Gateway, client: httpx.Client) -> None:
    problem = _problem(client.get("/v1/audit/predictions/abc%00def"))
    assert problem["field"] == "request_id" and problem["rule"] == "contains a NUL character"
    problem = _problem(client.get(f"/v1/audit/predictions/{'a' * 129}"))
    assert problem["field"] == "request_id" and "128" in problem["rule"]
    problem = _problem(client.get("/v1/audit/predictions/not%20an%20id"))
    assert problem["field"] == "request_id" and problem["rule"].startswith("must be a request id")
    unknown = client.get(f"/v1/audit/predictions/{uuid.uuid4()}")
    assert unknown.status_code == 404 and "Traceback" not in unknown.text
    known = client.get(f"/v1/audit/predictions/{gateway.request_ids[0]}")
    assert known.status_code == 200 and known.json()["request"]["request_id"] == gateway.request_ids[0]


@pytest.mark.parametrize("route", ["/v1/audit/predictions", "/v1/audit/export"])
@pytest.mark.parametrize(
    ("params", "field", "rule"),
    [
        ({"dataset": "salary\x00band"}, "dataset", "contains a NUL character"),
        ({"model_version": "1\x00"}, "model_version", "contains a NUL character"),
        ({"label": "\x00"}, "label", "contains a NUL character"),
        ({"dataset": "x" * 257}, "dataset", "at most 256 characters"),
        ({"label": "y" * 5000}, "label", "at most 256 characters"),
        ({"status": "ok\x00"}, "status", "'ok', 'rejected' or 'failed'"),
        ({"since": "0000-01-01T00:00:00Z"}, "since", "must be an ISO 8601 date-time"),
        ({"until": "99999-01-01T00:00:00Z"}, "until", "must be an ISO 8601 date-time"),
        ({"since": "1700000000"}, "since", "must be an ISO 8601 date-time"),
        ({"since": "yesterday"}, "since", "must be an ISO 8601 date-time"),
        ({"since": "2026-01-01T00:00:00\x00Z"}, "since", "must be an ISO 8601 date-time"),
        ({"since": "2026-01-01T00:00:00"}, "since", "needs a UTC offset"),
        ({"since": "0001-01-01T00:00:00+05:00"}, "since", "out of range"),
        ({"until": "9999-12-31T23:00:00-05:00"}, "until", "out of range"),
        ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since", "must not be after 'until'"),
        ({"limit": "0"}, "limit", "greater than or equal to 1"),
        ({"limit": "abc"}, "limit", "valid integer"),
    ],
)
def test_malformed_filters_get_422_naming_the_parameter(
    client: httpx.Client, route: str, params: dict, field: str, rule: str
) -> None:
    problem = _problem(client.get(route, params=params))
    assert problem["field"] == field
    assert rule in problem["rule"], problem


def test_limits_and_formats_out_of_range(client: httpx.Client) -> None:
    problem = _problem(client.get("/v1/audit/predictions", params={"limit": 1001}))
    assert problem["field"] == "limit" and "1000" in problem["rule"]
    problem = _problem(client.get("/v1/audit/export", params={"limit": 1_000_001}))
    assert problem["field"] == "limit" and "1000000" in problem["rule"]
    problem = _problem(client.get("/v1/audit/export", params={"format": "xml"}))
    assert problem["field"] == "format" and "'csv' or 'parquet'" in problem["rule"]


# ----------------------------------------------------------------------------------------------------- exports
def test_exports_are_bounded_by_limit(gateway: Gateway, client: httpx.Client) -> None:
    csv = client.get("/v1/audit/export", params={"format": "csv", "status": "ok", "limit": 2})
    assert csv.status_code == 200, csv.text
    assert csv.headers["X-Export-Rows"] == "2"
    frame = pd.read_csv(io.StringIO(csv.text))
    assert list(frame["request_id"]) == gateway.request_ids[::-1][:2]  # the newest two
    parquet = client.get("/v1/audit/export", params={"format": "parquet", "status": "ok", "limit": 3})
    assert parquet.status_code == 200 and parquet.headers["X-Export-Rows"] == "3"
    assert list(pd.read_parquet(io.BytesIO(parquet.content))["request_id"]) == gateway.request_ids[::-1][:3]
    whole = client.get("/v1/audit/export", params={"format": "parquet", "status": "ok"})
    assert set(pd.read_parquet(io.BytesIO(whole.content))["request_id"]) >= set(gateway.request_ids)
    assert not list((gateway.home / "tmp").glob("riverbed-export-*"))  # nothing left on disk


# ------------------------------------------------------------------------------------------------ access log
def _access_rows(gateway: Gateway, request_id: str) -> list:
    return [row for row in list_audit_access(gateway.dsn, limit=1000) if row.request_id == request_id]


def test_every_audit_read_is_recorded_with_key_filters_and_row_count(gateway: Gateway, client: httpx.Client) -> None:
    auditor = gateway.key_ids["audit"]
    one = client.get(f"/v1/audit/predictions/{gateway.request_ids[1]}")
    assert one.status_code == 200
    (row,) = _access_rows(gateway, one.headers["X-Request-ID"])
    assert (row.key_id, row.route, row.filters, row.row_count) == (
        auditor,
        ONE_ROUTE,
        {"request_id": gateway.request_ids[1]},
        1,
    )
    missing_id = str(uuid.uuid4())
    missing = client.get(f"/v1/audit/predictions/{missing_id}")
    assert missing.status_code == 404
    (row,) = _access_rows(gateway, missing.headers["X-Request-ID"])
    assert (row.route, row.filters, row.row_count) == (ONE_ROUTE, {"request_id": missing_id}, 0)

    listing = client.get(
        "/v1/audit/predictions",
        params={"dataset": "salary_band", "status": "ok", "since": "2020-01-01T00:00:00+02:00", "limit": 4},
    )
    assert listing.status_code == 200 and listing.json()["count"] == 4
    (row,) = _access_rows(gateway, listing.headers["X-Request-ID"])
    assert row.key_id == auditor and row.route == "/v1/audit/predictions" and row.row_count == 4
    assert row.filters == {
        "dataset": "salary_band",
        "status": "ok",
        "since": "2019-12-31T22:00:00.000000Z",
        "limit": 4,
    }

    ops = client.get("/v1/audit/export", params={"format": "csv", "limit": 2}, headers=_auth(gateway.keys["both"]))
    assert ops.status_code == 200
    (row,) = _access_rows(gateway, ops.headers["X-Request-ID"])
    assert (row.key_id, row.route, row.filters, row.row_count) == (
        gateway.key_ids["both"],
        "/v1/audit/export",
        {"format": "csv", "limit": 2},
        2,
    )
    assert row.received_at.tzinfo is not None

    refused = client.get("/v1/audit/predictions", params={"dataset": "\x00"})
    assert refused.status_code == 422 and _access_rows(gateway, refused.headers["X-Request-ID"]) == []
    assert [r.request_id for r in list_audit_access(gateway.dsn, key_id=gateway.key_ids["both"])] == [
        ops.headers["X-Request-ID"]
    ]


def test_a_read_that_cannot_be_recorded_is_not_served(gateway: Gateway, client: httpx.Client) -> None:
    with psycopg.connect(gateway.dsn, autocommit=True) as conn:
        conn.execute("alter table audit_access_log rename to audit_access_log_away")
    try:
        for path in (
            "/v1/audit/predictions",
            f"/v1/audit/predictions/{gateway.request_ids[0]}",
            "/v1/audit/export?format=parquet",
        ):
            response = client.get(path)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["error"] == "the audit read was not served because it could not be recorded"
            assert gateway.request_ids[0] not in response.text
    finally:
        with psycopg.connect(gateway.dsn, autocommit=True) as conn:
            conn.execute("alter table audit_access_log_away rename to audit_access_log")
    assert client.get("/v1/audit/predictions").status_code == 200


def test_the_access_log_is_append_only(gateway: Gateway, client: httpx.Client) -> None:
    assert client.get("/v1/audit/predictions", params={"limit": 1}).status_code == 200
    with psycopg.connect(gateway.dsn, autocommit=True) as conn:
        for statement in (
            "update audit_access_log set row_count = 0",
            "delete from audit_access_log",
            "truncate audit_access_log",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
        assert conn.execute("select count(*) from audit_access_log").fetchone()[0] > 0


# ------------------------------------------------------------------------------------------ MLServer's own text
@pytest.mark.parametrize(
    ("mode", "status", "message"), [("refuse", 422, "could not score"), ("fail", 503, "unavailable")]
)
def test_mlserver_error_text_goes_to_the_log_not_the_client(
    gateway: Gateway, mode: str, status: int, message: str
) -> None:
    record = api_records(salary_band_features(5), SPEC)[0]
    gateway.mlserver.mode = mode
    try:
        response = httpx.post(
            f"{gateway.url}/v1/salary_band/predict", json=record, headers=_auth(gateway.keys["predict"]), timeout=30
        )
    finally:
        gateway.mlserver.mode = "ok"
    assert response.status_code == status, response.text
    body = response.json()
    request_id = response.headers["X-Request-ID"]
    assert message in body["error"] and request_id in body["error"] and body["request_id"] == request_id
    assert ScriptedMLServer.secret not in response.text and "mlserver-internal" not in response.text
    with psycopg.connect(gateway.dsn) as conn:
        stored = conn.execute(
            "select status, http_status, error, inputs from inference_log where request_id = %s", (request_id,)
        ).fetchone()
    assert stored is not None
    state, http_status, error, inputs = stored
    assert (state, http_status) == ("failed" if status >= 500 else "rejected", status)
    assert ScriptedMLServer.secret in error
    assert inputs[0]["age"] == record["age"]  # the validated values that were sent for scoring


# ----------------------------------------------------------------------------------------- property-based fuzz
def test_fuzzed_requests_never_get_a_5xx(gateway: Gateway) -> None:
    """Schemathesis generates requests from the gateway's own OpenAPI document (valid and invalid ones)."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    headers = _auth(gateway.keys["both"])
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=60,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(headers=headers, timeout=30)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.content[:300]!r}"
                )
            assert b"Traceback" not in response.content

        check()
    assert failures == []
