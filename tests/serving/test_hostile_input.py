"""The predict route under hostile input: real uvicorn gateway, real MLServer, real PostgreSQL.

Each refusal is checked for its exact status, the field and rule it names, and the inference-log row it left
(read from PostgreSQL): a small summary of the refused body, never the body itself.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import httpx
import psycopg
import pytest

from riverbed.cli.stack import ServingStack
from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from serving.api_keys import create_api_key
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import api_records, install_trained_model, salary_band_features, salary_band_spec

pytestmark = pytest.mark.slow

SPEC = salary_band_spec()
PREDICT = "/v1/salary_band/predict"
LIMIT = 4 * 2**20  # the default max_body_bytes
UNAUTHENTICATED_PER_SECOND = 5


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServingStack]:
    home = tmp_path_factory.mktemp("hostile-home")
    name, dsn = create_database()
    settings = RiverbedSettings(home=home, inference_log_dsn=dsn, model_repository=home / "repository")
    install_trained_model(ModelRepository(settings.model_repository_dir), 1, trees=20, folder=home / "trained")
    serving = ServingStack(
        settings,
        ["salary_band"],
        ephemeral_ports=True,
        gateway_env={"RIVERBED_UNAUTHENTICATED_LOG_PER_SECOND": str(UNAUTHENTICATED_PER_SECOND)},
    )
    serving.start()
    try:
        yield serving
    finally:
        serving.stop()
        drop_database(name)


@pytest.fixture(scope="module")
def key(stack: ServingStack) -> Any:
    assert stack.dsn
    return create_api_key(stack.dsn, ["predict"], "app")


@pytest.fixture(scope="module")
def client(stack: ServingStack, key: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=60, headers={"Authorization": f"Bearer {key.key}"}) as http:
        yield http


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return api_records(salary_band_features(50), SPEC)


def _row(stack: ServingStack, request_id: str) -> dict[str, Any]:
    with psycopg.connect(stack.dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "select status, http_status, client_key_id, inputs, outputs, error from inference_log "
            "where request_id = %s",
            (request_id,),
        )
        row = cur.fetchone()
    assert row is not None, f"request {request_id} was not recorded"
    return row


def _summary(body: bytes, *, declared: int | None, complete: bool = True) -> list[dict[str, Any]]:
    return [
        {
            "refused_body": {
                "bytes": len(body),
                "declared_bytes": declared,
                "complete": complete,
                "sha256": hashlib.sha256(body).hexdigest(),
                "head": body[:256].decode("utf-8", "replace").replace("\x00", "\\u0000"),
            }
        }
    ]


def _post_bytes(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post(PREDICT, content=body, headers={"Content-Type": "application/json"})


def _refused(
    stack: ServingStack, key: Any, response: httpx.Response, body: bytes, status: int = 422
) -> tuple[dict, dict]:
    """The single problem of a refusal and its row, checked to hold the body's summary (never the body)."""
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["request_id"] == response.headers["X-Request-ID"] and "Traceback" not in response.text
    row = _row(stack, answer["request_id"])
    assert (row["status"], row["http_status"], row["client_key_id"]) == ("rejected", status, key.key_id)
    assert row["inputs"] == _summary(body, declared=len(body))
    assert row["outputs"] == []
    assert "\x00" not in row["error"]
    (problem,) = answer["problems"]
    assert problem["rule"] in row["error"] and problem["field"] in row["error"]
    return problem, row


# ------------------------------------------------------------------------------------------------------- size
def _raw_post(url: str, path: str, token: str, declared: int, sent: bytes) -> tuple[int, dict[str, str], bytes]:
    """POST over a plain socket declaring ``declared`` bytes but sending only ``sent``; the whole answer."""
    address = urlparse(url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {address.hostname}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head.encode() + sent)
        received = b""
        while chunk := sock.recv(65536):  # the gateway closes the connection after a 413
            received += chunk
    header_block, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_body_too_large_by_content_length_is_refused_unread(stack: ServingStack, key: Any) -> None:
    declared = 300 * 2**20
    status, headers, body = _raw_post(stack.gateway_url, PREDICT, key.key, declared, b'{"records": [' + b" " * 1000)
    assert status == 413
    answer = json.loads(body)
    assert answer["error"] == f"the request body ({declared} bytes) is larger than the limit of {LIMIT} bytes"
    assert answer["problems"] == [
        {"record": None, "field": "body", "value": declared, "rule": f"at most {LIMIT} bytes"}
    ]
    assert headers["connection"] == "close"
    row = _row(stack, headers["x-request-id"])
    assert (row["status"], row["http_status"]) == ("rejected", 413)
    assert row["inputs"] == _summary(b"", declared=declared, complete=False)  # not one byte was read
    assert str(LIMIT) in row["error"]


def test_chunked_body_without_length_stops_at_the_limit(stack: ServingStack, client: httpx.Client) -> None:
    payload = b'{"records": [' + b'{"age": 39, "sex": "Male"}, ' * (6 * 2**20 // 28)
    assert len(payload) > LIMIT + 2**20

    def stream() -> Iterator[bytes]:  # a generator: httpx sends it chunked, with no Content-Length
        for start in range(0, len(payload), 65536):
            yield payload[start : start + 65536]

    response = client.post(PREDICT, content=stream(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    assert response.json()["problems"][0]["rule"] == f"at most {LIMIT} bytes"
    assert f"larger than the limit of {LIMIT} bytes" in response.json()["error"]
    (summary,) = _row(stack, response.headers["X-Request-ID"])["inputs"]
    read = summary["refused_body"]["bytes"]
    assert LIMIT < read <= LIMIT + 2**20  # reading stopped at the limit (plus at most one chunk)
    assert summary == _summary(payload[:read], declared=None, complete=False)[0]


def test_too_many_records_is_413_with_a_small_row(stack: ServingStack, key: Any, client: httpx.Client, records) -> None:
    body = json.dumps({"records": [records[0]] * 1001}).encode()
    response = _post_bytes(client, body)
    problem, _ = _refused(stack, key, response, body, status=413)
    assert problem == {"record": None, "field": "records", "value": 1001, "rule": "at most 1000 records"}


# ------------------------------------------------------------------------------------------- structure, strings
def test_deep_nesting_is_refused_naming_the_record_and_field(
    stack: ServingStack, key: Any, client: httpx.Client, records
) -> None:
    nested: Any = 1
    for _ in range(20):
        nested = [nested]
    body = json.dumps({"records": [records[0], {**records[1], "age": nested}]}).encode()
    problem, _ = _refused(stack, key, _post_bytes(client, body), body)
    assert problem["record"] == 1
    assert problem["field"] == "age" + ".0" * 13  # the first array below the 16th level
    assert problem["rule"] == "nested deeper than 16 levels"


def test_absurd_nesting_is_refused_without_parsing(stack: ServingStack, key: Any, client: httpx.Client) -> None:
    body = b'{"age": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    problem, _ = _refused(stack, key, _post_bytes(client, body), body)
    assert problem == {"record": None, "field": "body", "value": None, "rule": "nested deeper than 16 levels"}


def test_over_long_string_is_refused(stack: ServingStack, key: Any, client: httpx.Client, records) -> None:
    body = json.dumps({"record": {**records[0], "sample_id": "s" * 1025}}).encode()
    problem, _ = _refused(stack, key, _post_bytes(client, body), body)
    assert problem["record"] is None and problem["field"] == "sample_id"
    assert problem["rule"] == "string longer than 1024 characters"
    assert problem["value"] == "s" * 64 + "…"


@pytest.mark.parametrize(
    ("field", "literal", "rule"),
    [
        ("age", "NaN", "must be a finite number"),
        ("hours_per_week", "Infinity", "must be a finite number"),
        ("capital_loss", "-Infinity", "must be a finite number"),
        ("fnlwgt", "1e999", "must be a finite number"),
        ("fnlwgt", "123456789012345678901234567890", "integer larger than 2^53"),
        ("capital_gain", str(2**53 + 1), "integer larger than 2^53"),
        ("age", "9" * 5000, "integer larger than 2^53"),
    ],
)
def test_non_finite_and_huge_numbers_are_refused_naming_the_field(
    stack: ServingStack, key: Any, client: httpx.Client, records, field: str, literal: str, rule: str
) -> None:
    batch = [records[0], {**records[1], field: "PLACEHOLDER"}]
    body = json.dumps({"records": batch}).encode().replace(b'"PLACEHOLDER"', literal.encode())
    problem, _ = _refused(stack, key, _post_bytes(client, body), body)
    assert (problem["record"], problem["field"]) == (1, field)
    assert problem["rule"].startswith(rule)


@pytest.mark.parametrize("field", ["sex", "sample_id"])
@pytest.mark.parametrize("form", ["raw", "escaped"])
def test_nul_is_refused_naming_the_field_and_recorded(
    stack: ServingStack, key: Any, client: httpx.Client, records, field: str, form: str
) -> None:
    nul = b"\x00" if form == "raw" else b"\\u0000"
    rest = {name: value for name, value in records[0].items() if name != field}
    body = json.dumps({field: "MARK", **rest}).encode().replace(b"MARK", b"Ma" + nul + b"le")  # first: in the head
    problem, row = _refused(stack, key, _post_bytes(client, body), body)
    assert problem == {"record": None, "field": field, "value": "Ma\\u0000le", "rule": "contains a NUL character"}
    head = row["inputs"][0]["refused_body"]["head"]
    assert "\x00" not in head and "Ma\\u0000le" in head  # a raw NUL is written as the six characters \u0000
    assert row["error"] == f"invalid request: field '{field}': contains a NUL character"


def test_not_json_is_refused_with_a_small_row(stack: ServingStack, key: Any, client: httpx.Client) -> None:
    body = b'{"age": 39, "sex": "M\xffale"'
    problem, _ = _refused(stack, key, _post_bytes(client, body), body)
    assert problem["field"] == "body" and problem["rule"].startswith("invalid JSON")


# --------------------------------------------------------------------------------------------- accepted rows
def test_an_accepted_row_keeps_the_values_scored_not_the_raw_text(
    stack: ServingStack, key: Any, client: httpx.Client, records
) -> None:
    record = {name: value for name, value in records[2].items() if name != "workclass"}
    sent = {
        **record,
        "age": str(record["age"]),  # text, coerced to an integer
        "fnlwgt": float(record["fnlwgt"]),  # a whole float, coerced to an integer
        "sample_id": "kept-1",
        "event_time": "2026-10-05T12:00:00+02:00",
    }
    response = client.post(PREDICT, json=sent)
    assert response.status_code == 200, response.text
    row = _row(stack, response.json()["request_id"])
    assert row["status"] == "ok" and row["error"] is None
    (stored,) = row["inputs"]
    expected = {name: records[2][name] for name in SPEC.feature_names}
    expected["workclass"] = None  # missing optional feature: scored as missing
    assert stored == {**expected, "sample_id": "kept-1", "event_time": "2026-10-05T12:00:00+02:00"}
    assert type(stored["age"]) is int and type(stored["fnlwgt"]) is int


# ------------------------------------------------------------------------------------------- unauthenticated
def _unlogged(client: httpx.Client, reason: str) -> float:
    match = re.search(
        rf'^riverbed_gateway_unlogged_refusals_total\{{reason="{reason}"\}} (\S+)$', client.get("/metrics").text, re.M
    )
    return float(match.group(1)) if match else 0.0


def test_unauthenticated_flood_is_rate_limited_in_the_log(stack: ServingStack, records) -> None:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as anonymous:
        before = _unlogged(anonymous, "missing_key")
        started = time.monotonic()
        ids = []
        for _ in range(40):
            response = anonymous.post(PREDICT, json=records[0])
            assert response.status_code == 401
            ids.append(response.headers["X-Request-ID"])
        elapsed = time.monotonic() - started
        with psycopg.connect(stack.dsn) as conn:
            logged = conn.execute(
                "select count(*) from inference_log where request_id = any(%s) and http_status = 401", (ids,)
            ).fetchone()[0]
        assert 1 <= logged <= UNAUTHENTICATED_PER_SECOND + math.ceil(elapsed * UNAUTHENTICATED_PER_SECOND) + 1
        assert logged < 40
        assert _unlogged(anonymous, "missing_key") - before == 40 - logged
