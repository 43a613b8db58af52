"""The model catalog (riverbed.model_catalog, migration 0011): the rows the platform writes at each lifecycle step,
the reviewers' decisions (one per version, append-only), a reused version number, bad values, and the grants (the
pipeline writes the catalog, the gateway only appends decisions, the auditor reads)."""

from __future__ import annotations

import asyncio
import datetime as dt

import psycopg
import pytest
from psycopg import errors

from riverbed.model_catalog import (
    CatalogValueError,
    NotPendingApprovalError,
    SupersededVersionError,
    UnknownModelVersionError,
    approval_for,
    claim_review,
    get_model_version,
    list_model_versions,
    record_approval,
    record_deployment,
    record_gate_decision,
    record_trained,
    reviews_after,
    superseding_version,
)
from serving.database_roles import provision_login_roles
from tests.riverbed.catalog_rows import FAIRNESS, catalogue_trained

pytestmark = pytest.mark.timeout(60)


def train(dsn: str, version: int, *, run: str | None = None, manual: bool = False, reason: str = "drift") -> None:
    catalogue_trained(dsn, "loans", version, run=run, manual=manual, reason=reason)


def test_a_version_through_training_gate_and_deployment_has_exact_rows(migrated_dsn: str) -> None:
    train(migrated_dsn, 1, reason="initial")
    first = get_model_version(migrated_dsn, "loans", 1)
    assert first is not None
    assert (first.status, first.aliases, first.gate_passed, first.gate_reasons) == ("trained", [], None, [])
    assert (first.trained_reason, first.mlflow_run_id, first.dagster_run_id) == ("initial", "run1", "dag1")
    assert first.data_commit_ids == {"2026-11-01": "c1"}
    assert first.metrics == {"roc_auc": 0.76, "f1": 0.5}
    assert first.fairness == {**FAIRNESS, "age": {}}  # a NaN figure is undefined, not stored
    assert first.model_card_markdown == "# loans v1\n<script>x</script>"
    record_gate_decision(migrated_dsn, dataset="loans", version=1, passed=True, reasons=["no champion yet"])
    changed = record_deployment(migrated_dsn, dataset="loans", version=1, previous_version=None)
    assert [(r.version, r.status, r.aliases) for r in changed] == [(1, "deployed", ["champion"])]

    train(migrated_dsn, 2)
    failed = record_gate_decision(
        migrated_dsn, dataset="loans", version=2, passed=False, reasons=["does not beat the champion"]
    )
    assert (failed.status, failed.gate_passed, failed.gate_reasons) == (
        "rejected",
        False,
        ["does not beat the champion"],
    )
    train(migrated_dsn, 3)
    record_gate_decision(migrated_dsn, dataset="loans", version=3, passed=True, reasons=["beats the champion"])
    changed = record_deployment(migrated_dsn, dataset="loans", version=3, previous_version=1)
    assert sorted((r.version, r.status, r.aliases) for r in changed) == [
        (1, "retired", ["previous"]),
        (3, "deployed", ["champion"]),
    ]
    # A rollback to 1: 1 serves again, 3 is retired and now 'previous'; 2 never changes.
    record_deployment(migrated_dsn, dataset="loans", version=1, previous_version=3)
    listed = list_model_versions(migrated_dsn, "loans")
    assert [(r.version, r.status, r.aliases) for r in listed] == [
        (3, "retired", ["previous"]),
        (2, "rejected", []),
        (1, "deployed", ["champion"]),
    ]
    assert all(r.updated_at >= r.created_at for r in listed)
    assert list_model_versions(migrated_dsn, "other") == []
    assert [r.version for r in list_model_versions(migrated_dsn, status="rejected")] == [2]
    assert get_model_version(migrated_dsn, "loans", 9) is None


def test_a_manual_candidate_waits_for_one_decision_and_only_approval_counts(migrated_dsn: str) -> None:
    train(migrated_dsn, 1, manual=True)
    pending = record_gate_decision(
        migrated_dsn, dataset="loans", version=1, passed=True, reasons=["ok"], manual_approval=True
    )
    assert (pending.status, pending.manual_approval, pending.review) == ("pending_approval", True, None)
    assert [r.version for r in list_model_versions(migrated_dsn, status="pending_approval")] == [1]
    assert approval_for(migrated_dsn, "loans", 1) is None
    review = record_approval(
        migrated_dsn, dataset="loans", version=1, decision="approve", action_id="req-1", key_id="k1", reason="fine"
    )
    assert (review.dataset, review.version, review.mlflow_run_id, review.decision) == ("loans", 1, "run1", "approve")
    assert (review.action_id, review.key_id, review.reason) == ("req-1", "k1", "fine")
    assert review.decided_at <= dt.datetime.now(dt.UTC)
    approved = get_model_version(migrated_dsn, "loans", 1)
    assert approved is not None and approved.status == "approved" and approved.review == review
    assert list_model_versions(migrated_dsn, status="pending_approval") == []
    assert approval_for(migrated_dsn, "loans", 1) == review
    with pytest.raises(NotPendingApprovalError, match="loans version 1 is already decided"):
        record_approval(
            migrated_dsn, dataset="loans", version=1, decision="reject", action_id="req-2", key_id="k1", reason="no"
        )
    # A rejected candidate is never approved.
    train(migrated_dsn, 2, manual=True)
    record_gate_decision(migrated_dsn, dataset="loans", version=2, passed=True, reasons=["ok"], manual_approval=True)
    record_approval(
        migrated_dsn, dataset="loans", version=2, decision="reject", action_id="req-3", key_id="k2", reason="bias"
    )
    rejected = get_model_version(migrated_dsn, "loans", 2)
    assert rejected is not None and rejected.status == "rejected_by_reviewer"
    assert approval_for(migrated_dsn, "loans", 2) is None
    # The sensor's view: decisions in order, after a cursor.
    decisions = reviews_after(migrated_dsn, 0)
    assert [(d.version, d.decision) for d in decisions] == [(1, "approve"), (2, "reject")]
    assert reviews_after(migrated_dsn, decisions[-1].review_id) == []
    assert [d.version for d in reviews_after(migrated_dsn, decisions[0].review_id)] == [2]


def test_only_a_pending_candidate_can_be_decided(migrated_dsn: str) -> None:
    def decide(version: int) -> None:
        record_approval(
            migrated_dsn, dataset="loans", version=version, decision="approve", action_id="a", key_id="k", reason="r"
        )

    with pytest.raises(UnknownModelVersionError, match="no loans version 1"):
        decide(1)
    train(migrated_dsn, 1, manual=True)
    with pytest.raises(NotPendingApprovalError, match="loans version 1 is trained, not pending_approval"):
        decide(1)  # the gate has not run
    record_gate_decision(migrated_dsn, dataset="loans", version=1, passed=False, reasons=["x"], manual_approval=True)
    with pytest.raises(NotPendingApprovalError, match="is rejected, not pending_approval"):
        decide(1)  # failed the gate
    train(migrated_dsn, 2)
    record_gate_decision(migrated_dsn, dataset="loans", version=2, passed=True, reasons=["ok"])
    with pytest.raises(NotPendingApprovalError, match="is trained, not pending_approval"):
        decide(2)  # automatic promotion: nothing to approve


def test_a_version_number_reused_by_a_fresh_registry_is_a_new_model(migrated_dsn: str) -> None:
    train(migrated_dsn, 1, manual=True)
    record_gate_decision(migrated_dsn, dataset="loans", version=1, passed=True, reasons=["ok"], manual_approval=True)
    record_approval(migrated_dsn, dataset="loans", version=1, decision="approve", action_id="a", key_id="k", reason="r")
    train(migrated_dsn, 1, manual=True)  # the same run again (a retried step): progress kept
    again = get_model_version(migrated_dsn, "loans", 1)
    assert again is not None and (again.status, again.gate_passed) == ("approved", True)
    train(migrated_dsn, 1, run="another-run", manual=True)
    fresh = get_model_version(migrated_dsn, "loans", 1)
    assert fresh is not None
    assert (fresh.status, fresh.gate_passed, fresh.review, fresh.mlflow_run_id) == (
        "trained",
        None,
        None,
        "another-run",
    )
    assert approval_for(migrated_dsn, "loans", 1) is None  # the old approval was about another model


@pytest.mark.parametrize(
    ("field", "overrides", "message"),
    [
        ("reason", {"reason": "a\x00b"}, "reason: must not contain NUL"),
        ("reason", {"reason": "x" * 4001}, "reason: at most 4000 characters"),
        ("reason", {"reason": "  "}, "reason: must not be empty"),
        ("reason", {"reason": "\ud800"}, "reason: must be valid Unicode"),
        ("version", {"version": 0}, "version: must be an integer from 1"),
        ("decision", {"decision": "maybe"}, "decision: must be one of approve, reject"),
    ],
)
def test_review_values_the_catalog_cannot_store_are_refused_by_name(
    migrated_dsn: str, field: str, overrides: dict[str, object], message: str
) -> None:
    values: dict[str, object] = {
        "dataset": "loans",
        "version": 1,
        "decision": "approve",
        "action_id": "a",
        "key_id": "k",
        "reason": "r",
    }
    with pytest.raises(CatalogValueError, match=message) as caught:
        record_approval(migrated_dsn, **{**values, **overrides})  # type: ignore[arg-type]
    assert caught.value.field == field


def test_non_finite_metrics_are_refused(migrated_dsn: str) -> None:
    with pytest.raises(CatalogValueError, match=r"metrics\[roc_auc\]: must be a finite number"):
        record_trained(
            migrated_dsn,
            dataset="loans",
            registered_model="m",
            version=1,
            trained_reason="manual",
            mlflow_run_id=None,
            dagster_run_id=None,
            data_commit_ids={},
            metrics={"roc_auc": float("inf")},
            fairness={},
            model_card_markdown="",
        )


def test_concurrent_decisions_on_one_candidate_have_one_winner(migrated_dsn: str) -> None:
    train(migrated_dsn, 1, manual=True)
    record_gate_decision(migrated_dsn, dataset="loans", version=1, passed=True, reasons=["ok"], manual_approval=True)

    async def decide(decision: str, action: str) -> str:
        async with await psycopg.AsyncConnection.connect(migrated_dsn) as conn, conn.transaction():
            try:
                await claim_review(
                    conn, dataset="loans", version=1, decision=decision, action_id=action, key_id="k", reason="r"
                )  # type: ignore[arg-type]
            except NotPendingApprovalError:
                return "refused"
            await asyncio.sleep(0.2)  # the oversight action is recorded here, before the commit
            return "won"

    async def both() -> list[str]:
        return list(await asyncio.gather(decide("approve", "a1"), decide("reject", "a2")))

    assert sorted(asyncio.run(both())) == ["refused", "won"]
    assert len(reviews_after(migrated_dsn, 0)) == 1


def test_grants_the_platform_writes_the_gateway_appends_decisions_the_auditor_reads(migrated_dsn: str) -> None:
    train(migrated_dsn, 1, manual=True)
    record_gate_decision(migrated_dsn, dataset="loans", version=1, passed=True, reasons=["ok"], manual_approval=True)
    dsns = provision_login_roles(migrated_dsn)
    # The pipeline role writes the catalog (the code location uses it) ...
    record_gate_decision(
        dsns["pipeline"], dataset="loans", version=1, passed=True, reasons=["ok"], manual_approval=True
    )
    # ... the gateway may not, but reads it and appends a decision ...
    for statement in (
        "update model_versions set status = 'deployed'",
        "insert into model_versions (dataset, version, registered_model, status, trained_reason) "
        "values ('x', 1, 'm', 'trained', 'manual')",
        "delete from model_versions",
    ):
        with psycopg.connect(dsns["gateway"], autocommit=True) as conn, pytest.raises(errors.InsufficientPrivilege):
            conn.execute(statement)
    assert get_model_version(dsns["gateway"], "loans", 1) is not None
    review = record_approval(
        dsns["gateway"], dataset="loans", version=1, decision="approve", action_id="a", key_id="k", reason="r"
    )
    # ... which nobody changes afterwards, not even the owner.
    for dsn in (dsns["gateway"], migrated_dsn):
        for statement in ("update model_version_reviews set decision = 'reject'", "delete from model_version_reviews"):
            with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(dsns["pipeline"], autocommit=True) as conn, pytest.raises(errors.InsufficientPrivilege):
        conn.execute(
            "insert into model_version_reviews (dataset, version, mlflow_run_id, decision, action_id, "
            "key_id, reason) values ('loans', 1, 'x', 'approve', 'a', 'k', 'r')"
        )
    assert approval_for(dsns["pipeline"], "loans", 1) == review
    assert [r.status for r in list_model_versions(dsns["auditor"])] == ["approved"]
    for statement in ("update model_versions set status = 'deployed'", "delete from model_version_reviews"):
        with psycopg.connect(dsns["auditor"], autocommit=True) as conn, pytest.raises(errors.InsufficientPrivilege):
            conn.execute(statement)


def test_an_approval_of_a_candidate_older_than_a_deployed_version_is_refused(migrated_dsn: str) -> None:
    # v1 and v2 wait for a reviewer; v3 (automatic, or approved and deployed) becomes the champion meanwhile.
    for version in (1, 2):
        train(migrated_dsn, version, manual=True)
        record_gate_decision(
            migrated_dsn, dataset="loans", version=version, passed=True, reasons=["ok"], manual_approval=True
        )
    train(migrated_dsn, 3)
    record_gate_decision(migrated_dsn, dataset="loans", version=3, passed=True, reasons=["ok"])
    record_deployment(migrated_dsn, dataset="loans", version=3, previous_version=None)
    assert superseding_version(migrated_dsn, "loans", 1) == 3
    assert superseding_version(migrated_dsn, "loans", 3) is None
    with pytest.raises(SupersededVersionError, match="loans version 1 is superseded by v3") as refused:
        record_approval(
            migrated_dsn, dataset="loans", version=1, decision="approve", action_id="a1", key_id="k", reason="r"
        )
    assert (refused.value.superseded_by, refused.value.status) == (3, "superseded by v3")

    async def claim() -> None:
        async with await psycopg.AsyncConnection.connect(migrated_dsn) as conn, conn.transaction():
            await claim_review(
                conn, dataset="loans", version=2, decision="approve", action_id="a2", key_id="k", reason="r"
            )

    with pytest.raises(SupersededVersionError, match="loans version 2 is superseded by v3"):
        asyncio.run(claim())
    assert reviews_after(migrated_dsn, 0) == []
    # A rollback to an older version does not make the newer one's candidates fresh: v3 was deployed after them.
    record_deployment(migrated_dsn, dataset="loans", version=1, previous_version=3)  # (v1 unapproved: test only)
    assert superseding_version(migrated_dsn, "loans", 2) == 3
    # A rejection of a stale candidate is still taken (it is never deployed either way).
    rejected = record_approval(
        migrated_dsn, dataset="loans", version=2, decision="reject", action_id="r2", key_id="k", reason="stale"
    )
    assert rejected.decision == "reject"
    assert get_model_version(migrated_dsn, "loans", 2).status == "rejected_by_reviewer"  # type: ignore[union-attr]
