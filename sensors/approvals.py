"""Reviewers' approvals reach the platform: ``approvals_<dataset>`` requests a deployment of the approved version.

A dataset with ``promotion.approval: manual`` holds a candidate that passed the promotion gate as
``pending_approval`` in the model catalog (:mod:`riverbed.model_catalog`); a reviewer approves or rejects it through
the gateway (``POST /v1/models/{dataset}/versions/{version}/approve|reject``, the console, ``riverbed models
approve``). This sensor reads the decisions in order (``model_version_reviews.review_id`` is the cursor) and, for
the newest approval among the new decisions, requests a run of ``deploy_<dataset>`` tagged with that version
(:attr:`RunTag.APPROVED_VERSION`); the deployment asset deploys exactly that version and only if its approval is in
the catalog. Rejections only move the cursor. Several approvals in one tick deploy only the newest approved
version (two concurrent deployments of one dataset would race for the champion alias, and an older one would roll
the newer back); the others are superseded, each logged at WARNING. An approval of a version older than one already
deployed is refused by the gateway (409 "superseded by vN") and, should one reach a run, by the deployment asset.
The run key is the review id, so a cursor lost or reset never deploys a decision twice.

The decision is a pure function of the decisions read and the cursor (:func:`decide_approvals`). A database that
cannot be read is a WARNING counted in ``pipeline_failures`` (component ``approvals_<dataset>``) and named in the
skip reason, with the cursor unchanged; no database configured is an INFO skip.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg
import psycopg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from resources.inference_log_resource import InferenceLogResource
from riverbed import names
from riverbed.model_catalog import CatalogError, ModelReview, reviews_after
from riverbed.names import RunTag
from riverbed.pipeline_failures import report_failure
from riverbed.specs import DatasetSpec
from riverbed.stack_file import InferenceLogNotAvailableError

logger = logging.getLogger(__name__)

REVIEWS_PER_TICK = 100


@dataclass(frozen=True)
class ApprovalsDecision:
    """What one tick does: deploy ``deploy`` (None: nothing), move the cursor to ``cursor``, and why."""

    deploy: ModelReview | None
    cursor: int
    explanation: str
    superseded: tuple[ModelReview, ...] = ()  # approvals not deployed because a newer version was approved too


def cursor_position(cursor: str | None) -> int:
    """The last review id handled (0: none). A cursor that is not a non-negative integer starts over (run keys
    keep a decision from being deployed twice) with a WARNING."""
    if cursor is None or cursor == "":
        return 0
    if cursor.isdigit() and len(cursor) <= 19:
        return int(cursor)
    logger.warning("approvals sensor: ignoring malformed cursor %r; starting from the first decision", cursor[:100])
    return 0


def decide_approvals(reviews: Sequence[ModelReview], after: int) -> ApprovalsDecision:
    """Of the decisions with ``review_id > after`` (oldest first), deploy the approval of the newest version (the
    others are ``superseded``); the cursor moves past all of them."""
    new = [review for review in reviews if review.review_id > after]
    if not new:
        return ApprovalsDecision(None, after, "no new review decisions")
    cursor = max(review.review_id for review in new)
    approvals = [review for review in new if review.decision == "approve"]
    rejected = [f"v{review.version}" for review in new if review.decision == "reject"]
    parts: list[str] = []
    if rejected:
        parts.append(f"rejected (never deployed): {', '.join(rejected)}")
    if not approvals:
        return ApprovalsDecision(None, cursor, "; ".join(parts))
    chosen = max(approvals, key=lambda review: (review.version, review.review_id))
    superseded = tuple(review for review in approvals if review is not chosen)
    if superseded:
        names_ = ", ".join(f"v{review.version} (review {review.review_id})" for review in superseded)
        parts.append(f"approvals superseded by the approval of the newest version v{chosen.version}: {names_}")
    parts.insert(0, f"deploy v{chosen.version}, approved by key {chosen.key_id} (review {chosen.review_id})")
    return ApprovalsDecision(chosen, cursor, "; ".join(parts), superseded)


def deployment_run_request(dataset: str, review: ModelReview) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"approval:{dataset}:{review.review_id}",
        tags={
            RunTag.DATASET.value: dataset,
            RunTag.APPROVED_VERSION.value: str(review.version),
            RunTag.REVIEW_ID.value: str(review.review_id),
        },
    )


def build_approvals_sensor(
    spec: DatasetSpec, deploy_job: UnresolvedAssetJobDefinition | dg.JobDefinition
) -> dg.SensorDefinition:
    """``approvals_<dataset>``: every 30 s, requests ``deploy_job`` for the newest new approval."""
    name = spec.name
    sensor_name = names.approvals_sensor(name)

    @dg.sensor(
        name=sensor_name,
        job=deploy_job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=f"Deploys the {name} candidate a reviewer approved (promotion.approval: manual).",
    )
    def approvals(
        context: dg.SensorEvaluationContext, inference_log: InferenceLogResource
    ) -> dg.SensorResult | dg.SkipReason:
        after = cursor_position(context.cursor)
        try:
            dsn = inference_log.resolve_dsn()
        except InferenceLogNotAvailableError as missing:
            logger.info("%s: %s", sensor_name, missing)
            return dg.SkipReason(f"no inference log configured, so no approvals to read: {missing}")
        try:
            inference_log.get_dsn()  # the migrations (once per process)
            reviews = reviews_after(dsn, after, dataset=name, limit=REVIEWS_PER_TICK)
        except (psycopg.Error, OSError, CatalogError) as error:
            message = f"the reviewers' decisions could not be read from the model catalog: {error}"
            report_failure(sensor_name, "reviews_unreadable", message, dsn=dsn, log=logger)
            return dg.SkipReason(message)
        decision = decide_approvals(reviews, after)
        if decision.deploy is None and decision.cursor == after:
            return dg.SkipReason(decision.explanation)
        context.log.info(f"{sensor_name}: {decision.explanation}")
        for review in decision.superseded:
            logger.warning(
                "%s: the approval of v%d (review %d, key %s) is superseded by the approval of v%d: not deployed",
                sensor_name,
                review.version,
                review.review_id,
                review.key_id,
                decision.deploy.version if decision.deploy is not None else 0,
            )
        requests = [deployment_run_request(name, decision.deploy)] if decision.deploy is not None else []
        return dg.SensorResult(run_requests=requests, cursor=str(decision.cursor))

    return approvals
