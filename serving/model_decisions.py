"""A reviewer's decision on a pending model version, one transaction shared by the ``/v1`` routes
(:mod:`serving.gateway.routes.model_reviews`) and the console (:mod:`serving.console.pages`).

The decision row is claimed (the version must be pending and undecided; a concurrent decision waits on the unique key
and then finds it taken), the oversight action is appended to the chained inference log
(:func:`serving.oversight.record_action`, target ``<dataset>:<version>``, committed before this returns), and only
then is the decision committed. An action that could not be committed rolls the decision back: the candidate stays
pending. If the log became unreachable just then, the action's row is spooled (it enters the chain later, as every
accepted row does) while the decision is still rolled back: :class:`DecisionNotTakenError` then says that nothing
was decided and that the reviewer must decide again once the log is back (the generic "do not repeat it" of a
spooled flag or suspension would be wrong here).
"""

from __future__ import annotations

from riverbed.model_catalog import ModelReview, ReviewDecision, UnknownModelVersionError, claim_review
from serving.gateway.state import GatewayState
from serving.oversight import OversightAction, OversightError, OversightUnavailableError, check_note, record_action


class DecisionNotTakenError(OversightUnavailableError):
    """503: the decision's action row was spooled but its transaction rolled back: nothing was decided."""

    status = 503


def not_taken_rule(decision: ReviewDecision, dataset: str, version: int, request_id: str) -> str:
    return (
        f"the inference log became unreachable while the {decision} was being recorded: it was not taken "
        f"and {dataset} version {version} is still pending_approval; decide again once the inference log "
        f"is back (the attempt's row {request_id} was spooled and will appear in the log, but the model "
        "catalog holds no decision)"
    )


async def decide_model_version(
    gateway: GatewayState,
    *,
    request_id: str,
    key_id: str,
    dataset: str,
    version: int,
    decision: ReviewDecision,
    reason: str,
) -> tuple[ModelReview, OversightAction]:
    """Take the reviewer's decision; ``request_id`` is the caller's own request id (the action's log row).

    Raises the catalog's typed errors (unknown dataset or version, not pending, superseded, malformed value, catalog
    unreachable), the oversight module's (malformed reason, action not recorded), :class:`DecisionNotTakenError`
    when the action was spooled, and psycopg/pool errors when the database is unreachable."""
    if dataset not in gateway.specs:
        raise UnknownModelVersionError(f"unknown dataset {dataset!r}")
    reason = check_note("reason", reason)
    try:
        async with gateway.writer.pool.connection() as conn, conn.transaction():
            review = await claim_review(
                conn,
                dataset=dataset,
                version=version,
                decision=decision,
                action_id=request_id,
                key_id=key_id,
                reason=reason,
            )
            # Committed to the chained log before the decision commits: no decision without its record.
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
    except OversightError as error:
        if not error.spooled:
            raise
        raise DecisionNotTakenError(
            error.field, not_taken_rule(decision, dataset, version, request_id), row_attempted=True, spooled=True
        ) from error
    return review, action
