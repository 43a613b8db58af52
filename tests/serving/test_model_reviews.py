"""The model catalog and reviewers' decisions over HTTP: ``GET /v1/models/versions``, ``POST
/v1/models/{dataset}/versions/{version}/approve|reject``, and ``riverbed models pending|approve|reject``.

A real uvicorn gateway (in this process) over real PostgreSQL, in front of a scripted MLServer; catalog rows are
written as the platform writes them (riverbed.model_catalog). Each decision is a chained inference-log row (the
chain still verifies) and a catalog review; refusals name the field and the rule.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from typer.testing import CliRunner

from riverbed.cli import models as models_cli
from riverbed.cli.main import app as riverbed_app
from riverbed.cli.mlserver_process import free_port
from riverbed.model_catalog import (
    get_model_version,
    record_deployment,
    record_gate_decision,
    record_trained,
    reviews_after,
)
from riverbed.settings import get_settings
from serving.api_keys import create_api_key
from serving.inference_log import verify_chain_from_settings
from tests.serving.review_stack import Stack, review_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DATASET = "salary_band"
HOSTILE = "<script>alert('x')</script> & ünïcode"
_versions = itertools.count(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with review_stack(tmp_path_factory, "model-reviews") as running:
        yield running


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        yield http


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def candidate(stack: Stack, *, passed: bool = True, manual: bool = True) -> int:
    """A new catalogued salary_band version, gated as asked (pending_approval when passed and manual)."""
    version = next(_versions)
    record_trained(
        stack.dsn,
        dataset=DATASET,
        registered_model="riverbed-salary_band",
        version=version,
        trained_reason="drift",
        mlflow_run_id=f"run-{version}",
        dagster_run_id=f"dagster-{version}",
        data_commit_ids={"2026-10-01": f"commit-{version}"},
        metrics={"roc_auc": 0.8, "f1": 0.6},
        fairness={"sex": {"selection_rate[Female]": 0.2, "selection_rate[Male]": 0.3}},
        model_card_markdown=f"# salary_band v{version}\n{HOSTILE}",
        manual_approval=manual,
    )
    reasons = ["beats the champion", "largest demographic parity difference 0.1"] if passed else ["worse"]
    record_gate_decision(
        stack.dsn, dataset=DATASET, version=version, passed=passed, reasons=reasons, manual_approval=manual
    )
    return version


def decide(client: httpx.Client, stack: Stack, version: int, decision: str, body: Any, key: str = "review") -> Any:
    return client.post(
        f"/v1/models/{DATASET}/versions/{version}/{decision}",
        json=body,
        headers=_auth(stack.keys.of(key)) if key else {},
    )


def problems(response: httpx.Response) -> list[tuple[str, str]]:
    return [(p["field"], p["rule"]) for p in response.json()["problems"]]


def test_approve_records_a_chained_action_and_a_review_and_the_version_reads_approved(
    client: httpx.Client, stack: Stack
) -> None:
    version = candidate(stack)
    response = decide(client, stack, version, "approve", {"reason": HOSTILE})
    assert response.status_code == 200, response.text
    body = response.json()
    action_id = response.headers["X-Request-ID"]
    assert {
        k: body["review"][k] for k in ("dataset", "version", "mlflow_run_id", "decision", "action_id", "key_id")
    } == {
        "dataset": DATASET,
        "version": version,
        "mlflow_run_id": f"run-{version}",
        "decision": "approve",
        "action_id": action_id,
        "key_id": stack.keys.review_id,
    }
    assert body["review"]["reason"] == HOSTILE
    assert {k: body["action"][k] for k in ("action_id", "action", "target_kind", "target_id", "actor_key_id")} == {
        "action_id": action_id,
        "action": "approve",
        "target_kind": "model_version",
        "target_id": f"{DATASET}:{version}",
        "actor_key_id": stack.keys.review_id,
    }
    # The action's own row of the inference log, in the audit API, chained.
    own = client.get(f"/v1/audit/predictions/{action_id}", headers=_auth(stack.keys.audit))
    assert own.status_code == 200, own.text
    row = own.json()["request"]
    assert (row["route"], row["status"], row["client_key_id"], row["dataset"]) == (
        "/v1/models/{dataset}/versions/{version}/approve",
        "ok",
        stack.keys.review_id,
        DATASET,
    )
    assert row["inputs"][0]["oversight"]["note"] == HOSTILE
    report = verify_chain_from_settings(stack.dsn, stack.settings)
    assert report.ok, report.problems
    record = get_model_version(stack.dsn, DATASET, version)
    assert record is not None and record.status == "approved" and record.review is not None
    assert record.review.action_id == action_id
    # Listed by the catalog route, for both reading roles; not for predict keys.
    for key in ("audit", "review"):
        listed = client.get(
            "/v1/models/versions", params={"dataset": DATASET, "limit": 1000}, headers=_auth(stack.keys.of(key))
        )
        assert listed.status_code == 200, listed.text
        found = {v["version"]: v for v in listed.json()["versions"]}
        assert found[version]["status"] == "approved"
        assert found[version]["review"]["decision"] == "approve"
        assert found[version]["gate_reasons"] == ["beats the champion", "largest demographic parity difference 0.1"]
        assert found[version]["model_card_markdown"] == f"# salary_band v{version}\n{HOSTILE}"
        assert found[version]["fairness"] == {"sex": {"selection_rate[Female]": 0.2, "selection_rate[Male]": 0.3}}


def test_reject_makes_the_version_rejected_by_reviewer(client: httpx.Client, stack: Stack) -> None:
    version = candidate(stack)
    response = decide(client, stack, version, "reject", {"reason": "selection rate gap on sex"})
    assert response.status_code == 200, response.text
    assert response.json()["review"]["decision"] == "reject"
    assert response.json()["action"]["action"] == "reject"
    assert get_model_version(stack.dsn, DATASET, version).status == "rejected_by_reviewer"  # type: ignore[union-attr]
    listed = client.get(
        "/v1/models/versions", params={"status": "rejected_by_reviewer"}, headers=_auth(stack.keys.audit)
    )
    assert version in [v["version"] for v in listed.json()["versions"]]


@pytest.mark.parametrize(("key", "status"), [("", 401), ("predict", 403), ("audit", 403)])
def test_only_the_review_role_decides(client: httpx.Client, stack: Stack, key: str, status: int) -> None:
    version = candidate(stack)
    response = decide(client, stack, version, "approve", {"reason": "ok"}, key=key)
    assert response.status_code == status, response.text
    assert get_model_version(stack.dsn, DATASET, version).status == "pending_approval"  # type: ignore[union-attr]


@pytest.mark.parametrize(("key", "status"), [("", 401), ("predict", 403)])
def test_the_catalog_is_read_by_the_audit_and_review_roles_only(
    client: httpx.Client, stack: Stack, key: str, status: int
) -> None:
    response = client.get("/v1/models/versions", headers=_auth(stack.keys.of(key)) if key else {})
    assert response.status_code == status, response.text


def test_unknown_dataset_or_version_is_404(client: httpx.Client, stack: Stack) -> None:
    missing = decide(client, stack, 99_999, "approve", {"reason": "ok"})
    assert missing.status_code == 404, missing.text
    assert "no salary_band version 99999" in missing.json()["error"]
    assert problems(missing) == [("version", "unknown")]
    unknown = client.post("/v1/models/nope/versions/1/approve", json={"reason": "ok"}, headers=_auth(stack.keys.review))
    assert unknown.status_code == 404 and problems(unknown) == [("dataset", "unknown")]


def test_a_version_that_is_not_pending_is_409_and_nothing_is_recorded(client: httpx.Client, stack: Stack) -> None:
    failed_gate = candidate(stack, passed=False)
    automatic = candidate(stack, manual=False)
    before = len(reviews_after(stack.dsn, 0))
    for version, status in ((failed_gate, "rejected"), (automatic, "trained")):
        response = decide(client, stack, version, "approve", {"reason": "ok"})
        assert response.status_code == 409, response.text
        assert problems(response) == [("version", f"is {status}, not pending_approval")]
        assert get_model_version(stack.dsn, DATASET, version).status == status  # type: ignore[union-attr]
    assert len(reviews_after(stack.dsn, 0)) == before
    with psycopg.connect(stack.dsn) as conn:
        rows = conn.execute(
            "select count(*) from oversight_actions where target_id in (%s, %s)",
            (f"{DATASET}:{failed_gate}", f"{DATASET}:{automatic}"),
        ).fetchone()
    assert rows == (0,)


def test_a_replayed_or_second_decision_is_409_and_the_first_stands(client: httpx.Client, stack: Stack) -> None:
    version = candidate(stack)
    first = decide(client, stack, version, "approve", {"reason": "ok"})
    assert first.status_code == 200, first.text
    for decision in ("approve", "reject"):
        again = decide(client, stack, version, decision, {"reason": "ok"})
        assert again.status_code == 409, again.text
        assert problems(again) == [("version", "is already decided, not pending_approval")]
    assert get_model_version(stack.dsn, DATASET, version).status == "approved"  # type: ignore[union-attr]
    with psycopg.connect(stack.dsn) as conn:
        actions = conn.execute(
            "select action from oversight_actions where target_id = %s", (f"{DATASET}:{version}",)
        ).fetchall()
    assert actions == [("approve",)]  # a refused decision leaves no action row


def test_concurrent_decisions_have_one_winner(stack: Stack) -> None:
    version = candidate(stack)

    def post(decision: str) -> int:
        with httpx.Client(base_url=stack.url, timeout=30) as http:
            return decide(http, stack, version, decision, {"reason": decision}).status_code

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(post, ["approve", "reject", "approve", "reject"]))
    assert statuses == [200, 409, 409, 409]
    assert len([r for r in reviews_after(stack.dsn, 0) if r.version == version]) == 1


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        ({"reason": "a\x00b"}, "reason", "must not contain a NUL character"),
        ({"reason": "x" * 4001}, "reason", "at most 4000 characters, got 4001"),
        ({"reason": "   "}, "reason", "must not be empty"),
        ({"reason": 7}, "reason", "expected text, got int"),
        ({}, "reason", "is required: why the version is approved or rejected"),
        ({"reason": "ok", "force": True}, "force", "unknown field: the body holds only 'reason'"),
        (["reason"], "body", 'must be a JSON object {"reason": "..."}'),
    ],
)
def test_malformed_bodies_are_422_naming_the_field(
    client: httpx.Client, stack: Stack, body: Any, field: str, rule: str
) -> None:
    version = candidate(stack)
    response = decide(client, stack, version, "approve", body)
    assert response.status_code == 422, response.text
    assert problems(response) == [(field, rule)]
    assert get_model_version(stack.dsn, DATASET, version).status == "pending_approval"  # type: ignore[union-attr]


def test_bodies_that_are_not_json_or_too_large_are_refused(client: httpx.Client, stack: Stack) -> None:
    version = candidate(stack)
    url = f"/v1/models/{DATASET}/versions/{version}/approve"
    garbage = client.post(url, content=b"{reason", headers=_auth(stack.keys.review))
    assert garbage.status_code == 422 and problems(garbage) == [("body", 'must be a JSON object {"reason": "..."}')]
    huge = client.post(url, content=b'{"reason": "' + b"x" * 20_000 + b'"}', headers=_auth(stack.keys.review))
    assert huge.status_code == 413 and problems(huge) == [("body", "at most 16384 bytes")]
    assert get_model_version(stack.dsn, DATASET, version).status == "pending_approval"  # type: ignore[union-attr]


@pytest.mark.parametrize("version", ["0", "-1", "abc", "99999999999999999999", "2147483648"])
def test_malformed_versions_are_422(client: httpx.Client, stack: Stack, version: str) -> None:
    response = client.post(
        f"/v1/models/{DATASET}/versions/{version}/approve", json={"reason": "ok"}, headers=_auth(stack.keys.review)
    )
    assert response.status_code == 422, response.text
    assert [field for field, _ in problems(response)] == ["version"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "bogus"}, "status"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"dataset": "x" * 201}, "dataset"),
        ({"dataset": "a\x00b"}, "dataset"),
    ],
)
def test_malformed_listing_parameters_are_422(
    client: httpx.Client, stack: Stack, params: dict[str, str], field: str
) -> None:
    response = client.get("/v1/models/versions", params=params, headers=_auth(stack.keys.audit))
    assert response.status_code == 422, response.text
    assert [f for f, _ in problems(response)] == [field]


def test_cli_lists_pending_and_approves_and_rejects_over_http(stack: Stack) -> None:
    to_approve, to_reject = candidate(stack), candidate(stack)
    runner = CliRunner()
    common = ["--gateway", stack.url, "--api-key", stack.keys.review]
    listed = runner.invoke(riverbed_app, ["models", "pending", DATASET, *common, "--json"])
    assert listed.exit_code == 0, listed.output
    assert {to_approve, to_reject} <= {v["version"] for v in json.loads(listed.output)}
    approved = runner.invoke(riverbed_app, ["models", "approve", DATASET, str(to_approve), "--reason", "fine", *common])
    assert approved.exit_code == 0, approved.output
    assert f"salary_band v{to_approve} approved" in approved.output
    rejected = runner.invoke(riverbed_app, ["models", "reject", DATASET, str(to_reject), "--reason", "bias", *common])
    assert rejected.exit_code == 0, rejected.output
    assert f"salary_band v{to_reject} rejected: never deployed" in rejected.output
    again = runner.invoke(riverbed_app, ["models", "reject", DATASET, str(to_reject), "--reason", "bias", *common])
    assert again.exit_code == 1
    assert "refused (409)" in again.output and "already decided" in again.output
    assert get_model_version(stack.dsn, DATASET, to_approve).status == "approved"  # type: ignore[union-attr]
    assert get_model_version(stack.dsn, DATASET, to_reject).status == "rejected_by_reviewer"  # type: ignore[union-attr]


def test_approving_a_candidate_older_than_the_champion_is_409_superseded(client: httpx.Client, stack: Stack) -> None:
    stale = candidate(stack)
    newer = candidate(stack, manual=False)
    record_deployment(stack.dsn, dataset=DATASET, version=newer, previous_version=None)  # the champion moved on
    response = decide(client, stack, stale, "approve", {"reason": "looks fine"})
    assert response.status_code == 409, response.text
    assert problems(response) == [
        ("version", f"superseded by v{newer}: a newer version is or was deployed (no rollback by approval)")
    ]
    assert f"salary_band version {stale} is superseded by v{newer}" in response.json()["error"]
    assert get_model_version(stack.dsn, DATASET, stale).status == "pending_approval"  # type: ignore[union-attr]
    with psycopg.connect(stack.dsn) as conn:
        actions = conn.execute(
            "select count(*) from oversight_actions where target_id = %s", (f"{DATASET}:{stale}",)
        ).fetchone()
    assert actions == (0,)  # refused before its action was recorded
    # Rejecting it is still possible (and recorded).
    rejected = decide(client, stack, stale, "reject", {"reason": "superseded"})
    assert rejected.status_code == 200, rejected.text
    assert get_model_version(stack.dsn, DATASET, stale).status == "rejected_by_reviewer"  # type: ignore[union-attr]


def test_a_catalog_read_is_recorded_in_the_audit_access_log(client: httpx.Client, stack: Stack) -> None:
    auditor = create_api_key(stack.dsn, ["audit"], "catalog-auditor")
    waiting = [candidate(stack), candidate(stack)]
    response = client.get(
        "/v1/models/versions",
        params={"dataset": DATASET, "status": "pending_approval", "limit": 1000},
        headers=_auth(auditor.key),
    )
    assert response.status_code == 200, response.text
    count = response.json()["count"]
    assert set(waiting) <= {v["version"] for v in response.json()["versions"]} and count >= 2
    request_id = response.headers["X-Request-ID"]
    unfiltered = client.get("/v1/models/versions", headers=_auth(stack.keys.review))
    assert unfiltered.status_code == 200, unfiltered.text
    with psycopg.connect(stack.dsn) as conn:
        rows = conn.execute(
            "select key_id, route, filters, row_count, request_id from audit_access_log where request_id in (%s, %s) "
            "order by id",
            (request_id, unfiltered.headers["X-Request-ID"]),
        ).fetchall()
    assert rows == [
        (
            auditor.key_id,
            "/v1/models/versions",
            {"dataset": DATASET, "status": "pending_approval", "limit": 1000},
            count,
            request_id,
        ),
        (
            stack.keys.review_id,
            "/v1/models/versions",
            {"limit": 100},
            unfiltered.json()["count"],
            unfiltered.headers["X-Request-ID"],
        ),
    ]


def test_a_decision_whose_action_is_spooled_is_rolled_back_and_must_be_taken_again(
    client: httpx.Client, stack: Stack
) -> None:
    version = candidate(stack)
    # PostgreSQL refuses the approval's log row as if its disk were full: the writer spools it (the log is
    # "unavailable") while the gateway's other connection, holding the decision's transaction, still works.
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        conn.execute(
            "create function test_disk_full() returns trigger language plpgsql as $$ begin "
            "raise exception 'could not extend file (test)' using errcode = '53100'; end $$"
        )
        conn.execute(
            "create trigger test_disk_full before insert on inference_log for each row "
            "when (new.route like '%/approve') execute function test_disk_full()"
        )
    try:
        response = decide(client, stack, version, "approve", {"reason": "good enough"})
    finally:
        with psycopg.connect(stack.dsn, autocommit=True) as conn:
            conn.execute("drop trigger test_disk_full on inference_log")
            conn.execute("drop function test_disk_full()")
    assert response.status_code == 503, response.text
    action_id = response.headers["X-Request-ID"]
    rule = (
        f"the inference log became unreachable while the approve was being recorded: it was not taken and "
        f"salary_band version {version} is still pending_approval; decide again once the inference log is back "
        f"(the attempt's row {action_id} was spooled and will appear in the log, but the model catalog holds no "
        "decision)"
    )
    assert problems(response) == [("inference_log", rule)]
    assert response.json()["error"] == f"the approve was not taken: {rule}"
    assert "do not repeat" not in response.text
    assert get_model_version(stack.dsn, DATASET, version).status == "pending_approval"  # type: ignore[union-attr]
    assert [r for r in reviews_after(stack.dsn, 0) if r.version == version] == []
    # The log comes back (the spool is replayed): the attempt's row is there, as the message said.
    deadline = time.monotonic() + 30
    while (ready := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.2)
    with psycopg.connect(stack.dsn) as conn:
        replayed = conn.execute("select route from inference_log where request_id = %s", (action_id,)).fetchall()
    assert replayed == [("/v1/models/{dataset}/versions/{version}/approve",)]
    # Deciding again, as told, takes the decision.
    again = decide(client, stack, version, "approve", {"reason": "good enough"})
    assert again.status_code == 200, again.text
    assert get_model_version(stack.dsn, DATASET, version).status == "approved"  # type: ignore[union-attr]
    report = verify_chain_from_settings(stack.dsn, stack.settings)
    assert report.ok, report.problems


def test_models_list_shows_the_catalog_and_falls_back_to_mlflow_with_a_warning(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    waiting = candidate(stack)
    failed = candidate(stack, passed=False)
    monkeypatch.setenv("RIVERBED_HOME", str(tmp_path / "home"))  # an empty MLflow registry: nothing listed there
    monkeypatch.setenv("RIVERBED_INFERENCE_LOG_DSN", stack.dsn)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        listed = runner.invoke(riverbed_app, ["models", "list", DATASET, "--json"])
        assert listed.exit_code == 0, listed.output
        found = {v["version"]: v for v in json.loads(listed.stdout)}
        assert {k: found[waiting][k] for k in ("status", "trained_reason", "gate_passed", "gate_reasons")} == {
            "status": "pending_approval",
            "trained_reason": "drift",
            "gate_passed": True,
            "gate_reasons": ["beats the champion", "largest demographic parity difference 0.1"],
        }
        assert (found[failed]["status"], found[failed]["gate_passed"], found[failed]["gate_reasons"]) == (
            "rejected",
            False,
            ["worse"],
        )
        assert "model_card_markdown" not in found[waiting]
        monkeypatch.setattr(models_cli.console, "width", 300)  # one line per version
        table = runner.invoke(riverbed_app, ["models", DATASET])  # `models DATASET` is `models list DATASET`
        assert table.exit_code == 0, table.output
        [row] = [line for line in table.stdout.splitlines() if f"│ {waiting} " in line]
        cells = [cell.strip() for cell in row.strip("│ ").split("│")]
        assert cells[:6] == [
            DATASET,
            str(waiting),
            "pending_approval",
            "-",
            "drift",
            "passed: beats the champion; largest demographic parity difference 0.1",
        ]

        # The database unreachable: the MLflow registry is listed instead, with a WARNING saying why.
        monkeypatch.setenv("RIVERBED_INFERENCE_LOG_DSN", stack.dsn.replace("port=5432", f"port={free_port()}"))
        get_settings.cache_clear()
        caplog.set_level(logging.WARNING, logger="riverbed.cli.models")
        fallback = runner.invoke(riverbed_app, ["models", "list", DATASET, "--json"])
        assert fallback.exit_code == 0, fallback.output
        assert json.loads(fallback.stdout) == []  # the (empty) registry's versions, not the catalog's
        warnings = [r.getMessage() for r in caplog.records if r.name == "riverbed.cli.models"]
        assert len(warnings) == 1 and warnings[0].startswith(
            "models: the model catalog cannot be read (OperationalError"
        )
        assert warnings[0].endswith("; listing the MLflow registry")
    finally:
        get_settings.cache_clear()
