"""Human oversight actions end to end: flag, override, suspend and resume over HTTP and the CLI, each a chained row
of the inference log, visible in the audit API, the exports, `riverbed audit show`, with the chain still verifying.

A real uvicorn gateway (in this process) over real PostgreSQL, in front of a scripted MLServer; a second gateway on
the same database stands in for another gateway process (its own listener connection) and for a restart.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from riverbed.cli.main import app as riverbed_app
from riverbed.settings import RiverbedSettings, get_settings
from serving.inference_log import verify_chain_from_settings
from serving.oversight import MAX_NOTE_LENGTH
from tests.serving.gateway_fixtures import (
    api_records,
    in_process_gateway,
    salary_band_features,
)
from tests.serving.review_stack import SPEC, Stack, review_stack, wait_ready
from tests.serving.tcp_proxy import CuttableProxy

pytestmark = pytest.mark.slow

PREDICT = "/v1/salary_band/predict"
HOSTILE_NOTE = "<script>alert(\"x\")</script><img src=x onerror=alert(1)> & 'quoted' \u241b ünïcode"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with review_stack(tmp_path_factory, "oversight") as running:
        yield running


@contextlib.contextmanager
def second_gateway(stack: Stack, home: Path) -> Iterator[str]:
    """Another gateway on the same database and chain key (its own writer, listener and memory)."""
    settings = RiverbedSettings(
        home=home,
        inference_log_dsn=stack.dsn,
        mlserver_url=stack.mlserver_url,
        model_repository=stack.settings.model_repository_dir,
        audit_chain_key_file=stack.settings.audit_chain_key_path,
    )
    with in_process_gateway(settings) as url:
        wait_ready(url)
        yield url


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        yield http


def _predict(client: httpx.Client, stack: Stack, base: str | None = None) -> str:
    record = api_records(salary_band_features(5), SPEC)[0]
    response = client.post(f"{base or ''}{PREDICT}", json=record, headers=_auth(stack.keys.predict))
    assert response.status_code == 200, response.text
    return str(response.headers["X-Request-ID"])


def _audit_row(client: httpx.Client, stack: Stack, request_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/audit/predictions/{request_id}", headers=_auth(stack.keys.audit))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _problem_fields(response: httpx.Response) -> list[str]:
    return [problem["field"] for problem in response.json()["problems"]]


def _chain_ok(stack: Stack) -> None:
    report = verify_chain_from_settings(stack.dsn, stack.settings)
    assert report.ok, report.problems
    assert report.rows_checked >= 1


# --------------------------------------------------------------------------------------------------------- flag
def test_flag_is_a_chained_log_row_visible_in_the_audit_api_history_and_export(
    client: httpx.Client, stack: Stack
) -> None:
    target = _predict(client, stack)
    first = client.post(f"/v1/predictions/{target}/flag", json={"note": HOSTILE_NOTE}, headers=_auth(stack.keys.review))
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == "application/json"
    action = first.json()
    assert action["action_id"] == first.headers["X-Request-ID"]
    assert {k: action[k] for k in ("action", "target_kind", "target_id", "dataset", "actor_key_id", "outcome")} == {
        "action": "flag",
        "target_kind": "prediction",
        "target_id": target,
        "dataset": "salary_band",
        "actor_key_id": stack.keys.review_id,
        "outcome": None,
    }
    assert action["note"] == HOSTILE_NOTE  # stored verbatim; JSON carries it as a string, never as markup
    # On the wire: a JSON string, its quotes escaped (the body is JSON, never HTML).
    assert f'"note":{json.dumps(HOSTILE_NOTE, ensure_ascii=False)}' in first.content.decode("utf-8")

    # The action's own row in the audit API: route, status, reviewer, the action's fields as its inputs.
    own = _audit_row(client, stack, action["action_id"])["request"]
    assert own["route"] == "/v1/predictions/{request_id}/flag"
    assert (own["status"], own["http_status"], own["client_key_id"], own["dataset"]) == (
        "ok",
        200,
        stack.keys.review_id,
        "salary_band",
    )
    assert own["inputs"] == [
        {
            "oversight": {
                "action": "flag",
                "target_kind": "prediction",
                "target_id": target,
                "note": HOSTILE_NOTE,
                "outcome": None,
            }
        }
    ]
    assert own["labels"] == []

    # A second flag is a second action; history oldest first, in the target's audit view too.
    second = client.post(f"/v1/predictions/{target}/flag", json={"note": "again"}, headers=_auth(stack.keys.review))
    assert second.status_code == 200, second.text
    assert second.json()["action_id"] != action["action_id"]
    history = client.get(
        "/v1/oversight", params={"target_kind": "prediction", "target_id": target}, headers=_auth(stack.keys.audit)
    )
    assert history.status_code == 200, history.text
    assert [(a["action_id"], a["note"]) for a in history.json()["actions"]] == [
        (action["action_id"], HOSTILE_NOTE),
        (second.json()["action_id"], "again"),
    ]
    assert [a["note"] for a in _audit_row(client, stack, target)["oversight"]] == [HOSTILE_NOTE, "again"]

    # Audit filters: the flagged prediction is listed with flagged=true, not with flagged=false.
    unflagged = _predict(client, stack)
    flagged_ids = _listed_ids(client, stack, {"flagged": "true", "dataset": "salary_band"})
    assert target in flagged_ids and unflagged not in flagged_ids
    assert flagged_ids.count(target) == 1  # two flags, one row
    others = _listed_ids(client, stack, {"flagged": "false", "dataset": "salary_band"})
    assert unflagged in others and target not in others

    # The CSV and Parquet exports hold the action row (exports keep the stored form: this note, with U+241B inside
    # but not first, is stored as it is).
    export = client.get(
        "/v1/audit/export", params={"format": "csv", "dataset": "salary_band"}, headers=_auth(stack.keys.audit)
    )
    assert export.status_code == 200, export.text
    rows = {row["request_id"]: row for row in csv.DictReader(io.StringIO(export.text))}
    exported = rows[action["action_id"]]
    assert exported["route"] == "/v1/predictions/{request_id}/flag"
    assert exported["client_key_id"] == stack.keys.review_id
    assert json.loads(exported["inputs"]) == own["inputs"]
    parquet = client.get(
        "/v1/audit/export", params={"format": "parquet", "dataset": "salary_band"}, headers=_auth(stack.keys.audit)
    )
    assert parquet.status_code == 200, parquet.text
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(parquet.content)).to_pylist()
    in_parquet = {row["request_id"]: row for row in table}[action["action_id"]]
    assert in_parquet["route"] == "/v1/predictions/{request_id}/flag"
    assert in_parquet["client_key_id"] == stack.keys.review_id
    assert json.loads(in_parquet["inputs"]) == own["inputs"]  # the note needs no escaping: exported verbatim
    _chain_ok(stack)


def _listed_ids(client: httpx.Client, stack: Stack, params: dict[str, str]) -> list[str]:
    response = client.get("/v1/audit/predictions", params={**params, "limit": 1000}, headers=_auth(stack.keys.audit))
    assert response.status_code == 200, response.text
    return [row["request_id"] for row in response.json()["predictions"]]


# ----------------------------------------------------------------------------------------------------- override
def test_override_records_the_reviewers_outcome_and_is_filtered(client: httpx.Client, stack: Stack) -> None:
    target = _predict(client, stack)
    bad = client.post(
        f"/v1/predictions/{target}/override",
        json={"outcome": "maybe", "reason": "r"},
        headers=_auth(stack.keys.review),
    )
    assert bad.status_code == 422
    assert _problem_fields(bad) == ["outcome"]
    assert "<=50K" in bad.json()["problems"][0]["rule"] and ">50K" in bad.json()["problems"][0]["rule"]

    done = client.post(
        f"/v1/predictions/{target}/override",
        json={"outcome": ">50K", "reason": "payslip shows a higher salary"},
        headers=_auth(stack.keys.review),
    )
    assert done.status_code == 200, done.text
    action = done.json()
    assert (action["action"], action["outcome"], action["note"]) == (
        "override",
        ">50K",
        "payslip shows a higher salary",
    )
    own = _audit_row(client, stack, action["action_id"])["request"]
    assert own["route"] == "/v1/predictions/{request_id}/override"
    assert own["labels"] == [">50K"]
    assert target in _listed_ids(client, stack, {"overridden": "true"})
    assert target not in _listed_ids(client, stack, {"overridden": "false", "dataset": "salary_band"})
    assert target not in _listed_ids(client, stack, {"flagged": "true"})

    # A refused prediction cannot be overridden (nothing was served): 409.
    refused = client.post(PREDICT, json={"age": "old"}, headers=_auth(stack.keys.predict))
    assert refused.status_code == 422
    conflict = client.post(
        f"/v1/predictions/{refused.headers['X-Request-ID']}/override",
        json={"outcome": ">50K", "reason": "r"},
        headers=_auth(stack.keys.review),
    )
    assert conflict.status_code == 409, conflict.text
    assert _problem_fields(conflict) == ["request_id"]
    _chain_ok(stack)


# ---------------------------------------------------------------------------------------------------------- roles
def test_actions_need_the_review_role_and_listing_audit_or_review(client: httpx.Client, stack: Stack) -> None:
    target = _predict(client, stack)
    for key in (stack.keys.predict, stack.keys.audit):
        refused = client.post(f"/v1/predictions/{target}/flag", json={"note": "n"}, headers=_auth(key))
        assert refused.status_code == 403, refused.text
        assert "review" in refused.json()["error"]
        suspend = client.post("/v1/datasets/salary_band/suspend", json={"reason": "r"}, headers=_auth(key))
        assert suspend.status_code == 403
    assert client.post(f"/v1/predictions/{target}/flag", json={"note": "n"}).status_code == 401
    assert client.get("/v1/oversight", headers=_auth(stack.keys.predict)).status_code == 403
    for key in (stack.keys.audit, stack.keys.review):
        assert client.get("/v1/oversight", headers=_auth(key)).status_code == 200
    # None of the refused attempts is an action; each is a rejected row of the log.
    history = client.get(
        "/v1/oversight", params={"target_kind": "prediction", "target_id": target}, headers=_auth(stack.keys.audit)
    )
    assert history.json()["actions"] == []
    rejected = _rows(stack.dsn, "route = %s and http_status = 403", ("/v1/predictions/{request_id}/flag",))
    assert len(rejected) >= 2 and {row[0] for row in rejected} == {"rejected"}


def _rows(dsn: str, where: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        query = f"select status, http_status, error, client_key_id from inference_log where {where}"
        return conn.execute(query, params).fetchall()


# -------------------------------------------------------------------------------------------------- hostile input
@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"note": "a\u0000b"}, 422, "note"),
        ({"note": "x" * 1_000_000}, 422, "note"),
        ({"note": "x" * (MAX_NOTE_LENGTH + 1)}, 422, "note"),
        ({"note": "   "}, 422, "note"),
        ({"note": 5}, 422, "note"),
        ({}, 422, "note"),
        ({"note": "n", "extra": 1}, 422, "extra"),
        ([{"note": "n"}], 422, "body"),
        ({"note": "n", "x": json.loads("[" * 40 + "]" * 40)}, 422, "x" + ".0" * 15),  # the path where it is too deep
    ],
    ids=["nul", "1MB", "too-long", "blank", "number", "missing", "extra-field", "not-object", "deep"],
)
def test_hostile_flag_bodies_are_refused_naming_the_field(
    client: httpx.Client, stack: Stack, body: Any, status: int, field: str
) -> None:
    target = _predict(client, stack)
    response = client.post(f"/v1/predictions/{target}/flag", json=body, headers=_auth(stack.keys.review))
    assert response.status_code == status, response.text
    assert _problem_fields(response)[0] == field
    own = _rows(stack.dsn, "request_id = %s", (response.headers["X-Request-ID"],))
    assert own and own[0][:2] == ("rejected", status) and own[0][3] == stack.keys.review_id


def test_malformed_ids_unknown_targets_and_cursors(client: httpx.Client, stack: Stack) -> None:
    review = _auth(stack.keys.review)
    cases = [
        ("/v1/predictions/a%20b/flag", {"note": "n"}, 422, "request_id"),
        ("/v1/predictions/%00/flag", {"note": "n"}, 422, "request_id"),
        (f"/v1/predictions/{'a' * 300}/flag", {"note": "n"}, 422, "request_id"),
        (f"/v1/predictions/{uuid.uuid4()}/flag", {"note": "n"}, 404, "request_id"),
        ("/v1/datasets/nope/suspend", {"reason": "r"}, 404, "dataset"),
        ("/v1/datasets/bad%20name/suspend", {"reason": "r"}, 422, "dataset"),
        ("/v1/datasets/salary_band/suspend", {"reason": ""}, 422, "reason"),
    ]
    for path, body, status, field in cases:
        response = client.post(path, json=body, headers=review)
        assert response.status_code == status, (path, response.text)
        assert _problem_fields(response) == [field], path
    # An action row is not a prediction: it cannot be flagged.
    flagged = client.post(f"/v1/predictions/{_predict(client, stack)}/flag", json={"note": "n"}, headers=review)
    action_row = flagged.json()["action_id"]
    again = client.post(f"/v1/predictions/{action_row}/flag", json={"note": "n"}, headers=review)
    assert again.status_code == 422 and _problem_fields(again) == ["request_id"]
    # Listing: malformed filters and cursors.
    audit = _auth(stack.keys.audit)
    for params, field in [
        ({"target_kind": "planet"}, "target_kind"),
        ({"target_id": "x"}, "target_kind"),
        ({"target_kind": "prediction", "target_id": "a b"}, "target_id"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": "1.0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAA"}, "cursor"),
    ]:
        response = client.get("/v1/oversight", params=params, headers=audit)
        assert response.status_code == 422, response.text
        assert _problem_fields(response) == [field]
    # A valid cursor pages (oldest first, by chain position); it is bound to its filters.
    target = _predict(client, stack)
    ids = [
        client.post(f"/v1/predictions/{target}/flag", json={"note": f"n{i}"}, headers=review).json()["action_id"]
        for i in range(3)
    ]
    scope = {"target_kind": "prediction", "target_id": target, "limit": 2}
    page = client.get("/v1/oversight", params=scope, headers=audit).json()
    assert [a["action_id"] for a in page["actions"]] == ids[:2] and page["next_cursor"]
    following = client.get("/v1/oversight", params={**scope, "cursor": page["next_cursor"]}, headers=audit).json()
    assert [a["action_id"] for a in following["actions"]] == ids[2:] and following["next_cursor"] is None
    page = client.get("/v1/oversight", params={"limit": 1}, headers=audit).json()
    foreign = client.get(
        "/v1/oversight", params={"limit": 1, "cursor": page["next_cursor"], "action": "flag"}, headers=audit
    )
    assert foreign.status_code == 422 and _problem_fields(foreign) == ["cursor"]
    bad_filter = client.get("/v1/audit/predictions", params={"flagged": "perhaps"}, headers=audit)
    assert bad_filter.status_code == 422 and _problem_fields(bad_filter) == ["flagged"]


def test_an_oversized_body_is_refused_413(client: httpx.Client, stack: Stack) -> None:
    target = _predict(client, stack)
    response = client.post(
        f"/v1/predictions/{target}/flag",
        content=b'{"note": "' + b"x" * stack.settings.max_body_bytes + b'"}',
        headers={**_auth(stack.keys.review), "Content-Type": "application/json"},
    )
    assert response.status_code == 413, response.text
    assert _problem_fields(response) == ["body"]
    assert response.json()["problems"][0]["rule"] == f"at most {stack.settings.max_body_bytes} bytes"


# ----------------------------------------------------------------------------------------------------- suspension
def _wait_status(url: str, stack: Stack, expected: int, within: float) -> tuple[httpx.Response, float]:
    record = api_records(salary_band_features(5), SPEC)[0]
    began = time.monotonic()
    while True:
        response = httpx.post(f"{url}{PREDICT}", json=record, headers=_auth(stack.keys.predict), timeout=10)
        elapsed = time.monotonic() - began
        if response.status_code == expected or elapsed > within:
            return response, elapsed
        time.sleep(0.05)


def test_suspension_refuses_and_records_in_every_gateway_and_survives_a_restart(
    client: httpx.Client, stack: Stack, tmp_path: Path
) -> None:
    review = _auth(stack.keys.review)
    reason = "drift on <b>age</b>: investigating"
    with second_gateway(stack, tmp_path / "other") as other:
        assert _wait_status(other, stack, 200, 5)[0].status_code == 200
        not_suspended = client.post("/v1/datasets/salary_band/resume", json={"reason": "r"}, headers=review)
        assert not_suspended.status_code == 409 and _problem_fields(not_suspended) == ["dataset"]

        suspended = client.post("/v1/datasets/salary_band/suspend", json={"reason": reason}, headers=review)
        assert suspended.status_code == 200, suspended.text
        action_id = suspended.json()["action_id"]
        # This gateway refuses at once; the other within about a second (LISTEN/NOTIFY).
        here, _ = _wait_status(stack.url, stack, 503, 0.0)
        assert here.status_code == 503
        body = here.json()
        assert body["reason"] == "dataset_suspended"
        assert stack.keys.review_id in body["error"] and reason in body["error"] and action_id in body["error"]
        there, elapsed = _wait_status(other, stack, 503, 3.0)
        assert there.status_code == 503 and elapsed < 1.5, (there.text, elapsed)
        # Each refused request is a rejected row naming the suspension.
        refused = _rows(stack.dsn, "request_id = %s", (here.headers["X-Request-ID"],))
        assert refused[0][:2] == ("rejected", 503)
        assert stack.keys.review_id in refused[0][2] and reason in refused[0][2]
        assert refused[0][3] is not None  # the predict key's id
        # The refused request's audit row is reachable like any other.
        assert _audit_row(client, stack, here.headers["X-Request-ID"])["request"]["status"] == "rejected"

    # A gateway started while the dataset is suspended reads it at start-up.
    with second_gateway(stack, tmp_path / "restarted") as restarted:
        first = httpx.post(
            f"{restarted}{PREDICT}",
            json=api_records(salary_band_features(5), SPEC)[0],
            headers=_auth(stack.keys.predict),
            timeout=10,
        )
        assert first.status_code == 503 and first.json()["reason"] == "dataset_suspended"
        # Resumed through the restarted gateway: both serve again.
        resumed = httpx.post(
            f"{restarted}/v1/datasets/salary_band/resume", json={"reason": "fixed"}, headers=review, timeout=10
        )
        assert resumed.status_code == 200, resumed.text
        assert _wait_status(restarted, stack, 200, 0.0)[0].status_code == 200
        back, elapsed = _wait_status(stack.url, stack, 200, 3.0)
        assert back.status_code == 200 and elapsed < 1.5
    again = client.post("/v1/datasets/salary_band/resume", json={"reason": "twice"}, headers=review)
    assert again.status_code == 409
    history = client.get(
        "/v1/oversight", params={"target_kind": "dataset", "target_id": "salary_band"}, headers=review
    ).json()["actions"]
    assert [(a["action"], a["note"]) for a in history][-2:] == [("suspend", reason), ("resume", "fixed")]
    _chain_ok(stack)


# ---------------------------------------------------------------------------------------------------------- CLI
def test_review_cli_against_a_running_gateway(
    client: httpx.Client, stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runner = CliRunner()
    monkeypatch.setenv("RIVERBED_HOME", str(stack.settings.home))
    monkeypatch.setenv("RIVERBED_INFERENCE_LOG_DSN", stack.dsn)
    monkeypatch.setenv("RIVERBED_API_KEY", stack.keys.review)
    get_settings.cache_clear()
    try:
        target = _predict(client, stack)
        gateway = ["--gateway", stack.url]
        flagged = runner.invoke(riverbed_app, ["review", "flag", target, "--note", "odd result", *gateway, "--json"])
        assert flagged.exit_code == 0, flagged.output
        action = json.loads(flagged.output)
        assert (action["action"], action["target_id"], action["note"]) == ("flag", target, "odd result")

        overridden = runner.invoke(
            riverbed_app, ["review", "override", target, "--outcome", "<=50K", "--reason", "checked", *gateway]
        )
        assert overridden.exit_code == 0, overridden.output
        assert "override of prediction" in overridden.output

        refused = runner.invoke(
            riverbed_app, ["review", "override", target, "--outcome", "x", "--reason", "r", *gateway]
        )
        assert refused.exit_code == 1
        assert "refused (422)" in refused.output and "outcome" in refused.output

        unknown = runner.invoke(riverbed_app, ["review", "suspend", "nope", "--reason", "r", *gateway])
        assert unknown.exit_code == 1 and "refused (404)" in unknown.output

        suspended = runner.invoke(riverbed_app, ["review", "suspend", "salary_band", "--reason", "cli test", *gateway])
        assert suspended.exit_code == 0, suspended.output
        assert _wait_status(stack.url, stack, 503, 0.0)[0].status_code == 503
        resumed = runner.invoke(riverbed_app, ["review", "resume", "salary_band", "--reason", "done", *gateway])
        assert resumed.exit_code == 0, resumed.output
        assert _wait_status(stack.url, stack, 200, 0.0)[0].status_code == 200

        history = runner.invoke(riverbed_app, ["review", "history", "--request-id", target, *gateway, "--json"])
        assert history.exit_code == 0, history.output
        assert [a["action"] for a in json.loads(history.output)["actions"]] == ["flag", "override"]

        wrong_key = runner.invoke(
            riverbed_app, ["review", "flag", target, "--note", "n", *gateway, "--api-key", stack.keys.predict]
        )
        assert wrong_key.exit_code == 1 and "refused (403)" in wrong_key.output
        no_gateway = runner.invoke(riverbed_app, ["review", "flag", target, "--note", "n"])
        assert no_gateway.exit_code == 2 and "no running gateway" in no_gateway.output

        # `riverbed audit show` shows the action's row, and `audit verify` still verifies the chain.
        shown = runner.invoke(riverbed_app, ["audit", "show", action["action_id"]])
        assert shown.exit_code == 0, shown.output
        row = json.loads(shown.output)["request"]
        assert row["route"] == "/v1/predictions/{request_id}/flag"
        assert row["inputs"][0]["oversight"]["note"] == "odd result"
        target_shown = runner.invoke(riverbed_app, ["audit", "show", target])
        assert target_shown.exit_code == 0, target_shown.output
        assert [(a["action"], a["note"]) for a in json.loads(target_shown.output)["oversight"]] == [
            ("flag", "odd result"),
            ("override", "checked"),
        ]
        query = ["audit", "query", "--dataset", "salary_band", "--limit", "1000", "--json"]
        flagged_rows = runner.invoke(riverbed_app, [*query, "--flagged"])
        assert flagged_rows.exit_code == 0, flagged_rows.output
        assert target in [row["request_id"] for row in json.loads(flagged_rows.output)["predictions"]]
        not_overridden = runner.invoke(riverbed_app, [*query, "--not-overridden"])
        assert not_overridden.exit_code == 0, not_overridden.output
        listed = [row["request_id"] for row in json.loads(not_overridden.output)["predictions"]]
        assert target not in listed and len(listed) >= 1
        verified = runner.invoke(riverbed_app, ["audit", "verify"])
        assert verified.exit_code == 0, verified.output
        assert "chain intact" in verified.output
    finally:
        get_settings.cache_clear()


# ------------------------------------------------------------------------------------------- database privileges
@pytest.mark.asyncio
async def test_the_gateway_role_indexes_actions_only_through_chained_log_rows(
    migrated_dsn: str, tmp_path: Path, make_record: Any
) -> None:
    """The index is filled by the trigger (as the log's owner): the gateway's role appends the log row and never
    writes the index itself; the index is append-only; a suspend row notifies the gateways; an action row without
    its fields is refused (quarantined), not indexed."""
    from serving.inference_log import Durability, InferenceLogWriter

    gateway_dsn = f"{migrated_dsn} options='-c role=riverbed_gateway'"
    payload = {"action": "suspend", "target_kind": "dataset", "target_id": "salary_band", "note": "n", "outcome": None}
    action = make_record(
        route="/v1/datasets/{dataset}/suspend",
        dataset="salary_band",
        client_key_id="rk",
        inputs=[{"oversight": payload}],
    )
    broken = make_record(route="/v1/predictions/{request_id}/flag", inputs=[{"note": "no oversight field"}])
    listener = await psycopg.AsyncConnection.connect(migrated_dsn, autocommit=True)
    writer = InferenceLogWriter(gateway_dsn, tmp_path / "spool")
    await writer.start()
    try:
        await listener.execute("listen riverbed_oversight")
        assert await writer.record(action) == Durability.COMMITTED
        heard = [n.payload async for n in listener.notifies(timeout=5, stop_after=1)]
        assert heard == ["salary_band"]
        assert await writer.record(broken) == Durability.QUARANTINED
    finally:
        await writer.stop()
        await listener.close()
    with psycopg.connect(migrated_dsn, autocommit=True) as conn:
        indexed = conn.execute(
            "select o.action_id, o.seq = l.seq, o.action, o.target_id, o.actor_key_id, o.note "
            "from oversight_actions o join inference_log l on l.request_id = o.action_id"
        ).fetchall()
        assert indexed == [(action.request_id, True, "suspend", "salary_band", "rk", "n")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute("delete from oversight_actions")
    with psycopg.connect(gateway_dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "insert into oversight_actions (action_id, seq, action, target_kind, target_id, note, recorded_at) "
                "values ('forged', 999, 'resume', 'dataset', 'salary_band', 'x', now())"
            )
        assert conn.execute("select count(*) from oversight_actions").fetchone() == (1,)


def test_concurrent_resumes_resume_once(client: httpx.Client, stack: Stack) -> None:
    """Suspend and resume are decided one after another (an advisory lock per dataset): of concurrent resumes of
    one suspension exactly one is recorded, the others find the dataset served (409)."""
    from concurrent.futures import ThreadPoolExecutor

    review = _auth(stack.keys.review)
    assert client.post("/v1/datasets/salary_band/suspend", json={"reason": "race"}, headers=review).status_code == 200

    def resume(index: int) -> int:
        with httpx.Client(base_url=stack.url, timeout=30) as http:
            response = http.post("/v1/datasets/salary_band/resume", json={"reason": f"r{index}"}, headers=review)
            return response.status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        statuses = sorted(pool.map(resume, range(6)))
    assert statuses == [200, 409, 409, 409, 409, 409]
    history = client.get(
        "/v1/oversight", params={"target_kind": "dataset", "target_id": "salary_band"}, headers=review
    ).json()["actions"]
    assert [a["action"] for a in history][-2:] == ["suspend", "resume"]
    assert _wait_status(stack.url, stack, 200, 0.0)[0].status_code == 200


# ------------------------------------------------------------------------------------- suspensions fail closed
@contextlib.contextmanager
def _proxied_gateway(stack: Stack, home: Path, proxy: CuttableProxy) -> Iterator[str]:
    """A gateway whose database connections go through ``proxy`` (cut to make the database unreachable). It may
    start during an outage: no wait for /readyz here."""
    settings = RiverbedSettings(
        home=home,
        inference_log_dsn=proxy.dsn(stack.dsn),
        mlserver_url=stack.mlserver_url,
        model_repository=stack.settings.model_repository_dir,
        audit_chain_key_file=stack.settings.audit_chain_key_path,
    )
    with in_process_gateway(settings) as url:
        yield url


def _post_predict(url: str, stack: Stack) -> httpx.Response:
    record = api_records(salary_band_features(5), SPEC)[0]
    return httpx.post(f"{url}{PREDICT}", json=record, headers=_auth(stack.keys.predict), timeout=30)


def _once_keys_verify(url: str, stack: Stack) -> httpx.Response:
    """The first predict answer that is not the key store's 503 (a restarted gateway reconnects with a backoff)."""
    deadline = time.monotonic() + 30
    while (response := _post_predict(url, stack)).json().get("reason") == "key_store_unavailable":
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)
    return response


def _eventually(check: Any, within: float = 20.0) -> Any:
    deadline = time.monotonic() + within
    while not (result := check()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)
    return result


@contextlib.contextmanager
def _suspensions_unreadable(stack: Stack) -> Iterator[None]:
    """The database is reachable, but the suspensions cannot be read (their index locked): the window right after an
    outage, before a gateway has re-read them, held open. API keys are still verified."""
    with psycopg.connect(stack.dsn) as locker:
        locker.execute("lock table oversight_actions in access exclusive mode")
        yield


def test_a_suspension_holds_through_a_restart_during_an_outage_and_unknown_state_fails_closed(
    client: httpx.Client, stack: Stack, tmp_path: Path
) -> None:
    review = _auth(stack.keys.review)
    reason = "selection rate gap on <b>sex</b>"
    home = tmp_path / "gateway"
    state_file = home / "oversight" / "suspensions.json"
    proxy = CuttableProxy()
    proxy.up()
    try:
        # 1. A gateway sees the suspension and keeps it in its private state file.
        with _proxied_gateway(stack, home, proxy) as url:
            wait_ready(url)
            suspended = client.post("/v1/datasets/salary_band/suspend", json={"reason": reason}, headers=review)
            assert suspended.status_code == 200, suspended.text
            action_id = suspended.json()["action_id"]
            _eventually(lambda: state_file.exists() and action_id in state_file.read_text())
            assert state_file.stat().st_mode & 0o777 == 0o600
            saved = json.loads(state_file.read_text())
            assert saved["format"] == 1 and list(saved["suspensions"]) == ["salary_band"]
            assert {k: saved["suspensions"]["salary_band"][k] for k in ("action_id", "actor_key_id", "note")} == {
                "action_id": action_id,
                "actor_key_id": stack.keys.review_id,
                "note": reason,
            }
            assert [p.name for p in state_file.parent.iterdir()] == ["suspensions.json"]  # no temporary left
            # A suspension is a decision, not a fault: /readyz stays 200 and lists it.
            ready = httpx.get(f"{url}/readyz", timeout=10)
            assert ready.status_code == 200, ready.text
            assert (ready.json()["oversight"], ready.json()["suspended"]) == ("known", ["salary_band"])
        # 2. The database becomes unreachable and the gateway starts again: it uses the saved suspensions.
        proxy.down()
        with _proxied_gateway(stack, home, proxy) as url:
            during = _post_predict(url, stack)  # a fresh process cannot verify the key during the outage
            assert during.status_code == 503 and "cannot verify keys" in during.json()["error"], during.text
            with _suspensions_unreadable(stack):
                proxy.up()
                refused = _once_keys_verify(url, stack)
                assert refused.status_code == 503, refused.text
                body = refused.json()
                assert body["reason"] == "dataset_suspended"
                assert action_id in body["error"] and reason in body["error"]
                assert stack.keys.review_id in body["error"]
                metrics = httpx.get(f"{url}/metrics", timeout=10).text
                assert "riverbed_oversight_state_known 0.0" in metrics
                assert 'riverbed_dataset_suspended{dataset="salary_band"} 1.0' in metrics
                last_known = httpx.get(f"{url}/readyz", timeout=10).json()
                assert (last_known["oversight"], last_known["suspended"]) == ("last_known", ["salary_band"])
            # 3. The database is back and readable: still suspended (it says so), until a reviewer resumes it.
            _eventually(lambda: "riverbed_oversight_state_known 1.0" in httpx.get(f"{url}/metrics", timeout=10).text)
            assert _post_predict(url, stack).json()["reason"] == "dataset_suspended"
            wait_ready(url)  # the spool of the outage replayed: actions can be committed again
            resumed = httpx.post(
                f"{url}/v1/datasets/salary_band/resume", json={"reason": "fixed"}, headers=review, timeout=30
            )
            assert resumed.status_code == 200, resumed.text
            assert _post_predict(url, stack).status_code == 200
            assert json.loads(state_file.read_text())["suspensions"] == {}
        # 4. Neither the database nor a state file (a new home): nothing is served until the state is read.
        proxy.down()
        with _proxied_gateway(stack, tmp_path / "fresh", proxy) as url:
            with _suspensions_unreadable(stack):
                proxy.up()
                unknown = _once_keys_verify(url, stack)
                assert unknown.status_code == 503, unknown.text
                assert unknown.json()["reason"] == "oversight_state_unknown"
                assert unknown.json()["error"].startswith(
                    "oversight state unknown: dataset 'salary_band' is not served"
                )
                metrics = httpx.get(f"{url}/metrics", timeout=10).text
                assert "riverbed_oversight_state_unknown 1.0" in metrics
                assert 'riverbed_oversight_state_unknown_refusals_total{dataset="salary_band"} 1.0' in metrics
                # /readyz says so, as it says a log that is not ready: 503 and degraded (MLServer is live).
                not_ready = httpx.get(f"{url}/readyz", timeout=10)
                assert not_ready.status_code == 503, not_ready.text
                body = not_ready.json()
                assert (body["status"], body["oversight"], body["suspended"]) == ("degraded", "unknown", [])
                assert body["detail"].startswith(
                    "oversight state unknown: every prediction is refused 503 (oversight_state_unknown) until this "
                    "gateway reads the reviewers' suspensions from the inference log"
                ), body
            served, _ = _wait_status(url, stack, 200, 20.0)
            assert served.status_code == 200, served.text
            assert "riverbed_oversight_state_unknown 0.0" in httpx.get(f"{url}/metrics", timeout=10).text
            assert httpx.get(f"{url}/readyz", timeout=10).json()["oversight"] == "known"
            # The refusal's row (spooled while the log was away) is in the log once the spool is replayed.
            row = _eventually(lambda: _rows(stack.dsn, "request_id = %s", (unknown.headers["X-Request-ID"],)), 30)
            assert row[0][:2] == ("rejected", 503) and "oversight state unknown" in row[0][2]
            wait_ready(url)
    finally:
        proxy.down()
    _chain_ok(stack)
