"""Approve or reject a pending model version from the console: the same transaction as the ``/v1`` routes
(:mod:`serving.gateway.routes.model_reviews`): claim the decision, append the chained oversight action, then commit
the decision (an action that could not be committed rolls the decision back; the candidate stays pending)."""

from __future__ import annotations

from riverbed.model_catalog import ReviewDecision, UnknownModelVersionError, claim_review
from serving.gateway.state import GatewayState
from serving.oversight import check_note, record_action


async def review_model_version(
    gateway: GatewayState,
    *,
    request_id: str,
    key_id: str,
    dataset: str,
    version: int,
    decision: ReviewDecision,
    reason: str,
) -> str:
    """Record the reviewer's decision; returns the oversight action's id. Raises the catalog's and the oversight
    module's typed errors (unknown version, not pending, malformed reason, not recorded)."""
    if dataset not in gateway.specs:
        raise UnknownModelVersionError(f"unknown dataset {dataset!r}")
    reason = check_note("reason", reason)
    async with gateway.writer.pool.connection() as conn, conn.transaction():
        await claim_review(
            conn,
            dataset=dataset,
            version=version,
            decision=decision,
            action_id=request_id,
            key_id=key_id,
            reason=reason,
        )
        action = await record_action(
            gateway,
            request_id=request_id,
            key_id=key_id,
            action=decision,
            target_kind="model_version",
            target_id=f"{dataset}:{version}",
            dataset=dataset,
            note=reason,
        )
    return action.action_id
