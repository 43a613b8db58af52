"""What a prediction does beyond HTTP: score the records on MLServer, shape the answers, record the request.

:class:`PredictCall` collects what the request did as it goes; whichever way it ends (served, rejected, failed),
its inference-log row is built from it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from riverbed.errors import MLServerUnavailableError
from riverbed.model_repository import DeployedModel
from riverbed.specs import DatasetSpec
from serving.gateway.body import ReceivedBody, printable
from serving.gateway.middleware import RequestClock
from serving.gateway.mlserver_client import ScoredBatch, ScoringError, ServedModelNotFoundError, encode_inputs
from serving.gateway.schemas import RESERVED_RECORD_FIELDS, ParsedRequest, RequestRejected
from serving.gateway.state import GatewayState
from serving.inference_log import AuditTimeoutError, AuditWriteError, Durability, InferenceRecord, RequestStatus

logger = logging.getLogger(__name__)

PREDICT_ROUTE = "/v1/{dataset}/predict"  # the route recorded in the inference log
SCORING_ATTEMPTS = 3  # MLServer may briefly not serve the deployed model while a new version is swapped in


@dataclass
class PredictCall:
    """What one predict request did so far: everything its inference-log row needs."""

    request_id: str
    clock: RequestClock
    dataset: str | None  # None for a dataset the gateway does not know
    client_key_id: str | None = None
    deployment: DeployedModel | None = None
    body: ReceivedBody | None = None  # as far as it was read (None: refused before reading it)
    inputs: list[Any] = field(default_factory=list)  # the validated values scored (set once the body is valid)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.clock.started) * 1000

    def logged_inputs(self) -> list[Any]:
        """What the row keeps of the request: the validated values, or for a refused body only its summary
        (size, SHA-256, first bytes), never the body; nothing if it was refused before its body was read."""
        if self.inputs:
            return self.inputs
        return [self.body.summary()] if self.body is not None else []


async def score(
    gateway: GatewayState, dataset: str, parsed: ParsedRequest, call: PredictCall
) -> tuple[DeployedModel, ScoredBatch]:
    """Score the records on the dataset's deployed model, timing the round trip."""
    spec = gateway.specs[dataset]
    columns = {name: [getattr(r, name) for r in parsed.records] for name in spec.feature_names}
    inputs = encode_inputs(spec.feature_names, gateway.numeric[dataset], columns)
    began = time.perf_counter()
    deployment, scored = await _infer(gateway, dataset, inputs, parsed.explain, call)
    elapsed = time.perf_counter() - began
    call.timings["score_ms"] = elapsed * 1000
    gateway.metrics.scoring_seconds.labels(dataset, str(parsed.explain).lower()).observe(elapsed)
    if parsed.explain:
        gateway.metrics.explanation_seconds.labels(dataset).observe(elapsed)
    return deployment, scored


async def _infer(
    gateway: GatewayState, dataset: str, inputs: list[dict[str, Any]], explain: bool, call: PredictCall
) -> tuple[DeployedModel, ScoredBatch]:
    """Score on MLServer; while it does not serve the model the pointer names (a swap), re-read the pointer, retry."""
    for attempt in range(SCORING_ATTEMPTS):
        deployment = gateway.deployments.get(dataset, refresh=attempt > 0)
        if deployment is None:
            raise RequestRejected(503, f"no model is deployed for dataset {dataset!r}")
        call.deployment = deployment
        try:
            scored = await gateway.mlserver.infer(
                deployment.served_model_name, call.request_id, inputs, explain=explain
            )
        except ServedModelNotFoundError as error:
            if attempt == SCORING_ATTEMPTS - 1:
                raise _model_server_failure(
                    call, 503, f"MLServer does not serve the deployed model {deployment.served_model_name!r}", error
                ) from None
            await asyncio.sleep(0.05 * attempt)  # a swap in progress: re-read the pointer and retry
        except MLServerUnavailableError as error:
            raise _model_server_failure(call, 503, "the model server is unavailable", error) from None
        except ScoringError as error:
            raise _model_server_failure(call, 422, "the model server could not score the request", error) from None
        else:
            return deployment, scored
    raise AssertionError("unreachable: the last attempt returns or raises")


def _model_server_failure(call: PredictCall, status: int, message: str, error: Exception) -> RequestRejected:
    """The client gets ``message`` and the request id, never MLServer's own text: that goes to the log (WARNING)
    and to the request's inference-log row."""
    detail = printable(f"{message}: {error}", 2000)
    logger.warning("request %s: %s", call.request_id, detail)
    return RequestRejected(
        status, f"{message} (request {call.request_id}: the details are in the inference log)", detail=detail
    )


def scored_inputs(parsed: ParsedRequest) -> list[dict[str, Any]]:
    """The validated records as scored: typed values after coercion (a missing optional feature as null);
    ``sample_id`` and ``event_time`` only when given."""
    rows = []
    for record in parsed.records:
        row = record.model_dump(mode="json")
        for name in RESERVED_RECORD_FIELDS:
            if row.get(name) is None:
                row.pop(name, None)
        rows.append(row)
    return rows


def predictions(spec: DatasetSpec, parsed: ParsedRequest, scored: ScoredBatch) -> list[dict[str, Any]]:
    """One answer per record: label, class probabilities and (if asked for) the explanation."""
    classes = list(spec.target.classes)
    names = scored.feature_names or spec.feature_names
    results = []
    probabilities = np.round(scored.probabilities, 6).tolist()
    contributions = scored.contributions
    for index, record in enumerate(parsed.records):
        item: dict[str, Any] = {
            "sample_id": getattr(record, "sample_id", None),
            "label": scored.labels[index],
            "probabilities": dict(zip(classes, probabilities[index], strict=True)),
        }
        if contributions is not None and scored.base_value is not None:
            row = contributions[index]
            order = np.argsort(-np.abs(row))[: parsed.top_k]
            item["explanation"] = {
                "base_value": float(scored.base_value[index]),
                "contributions": dict(zip(names, row.tolist(), strict=True)),
                "top_features": [
                    {"feature": names[i], "value": getattr(record, names[i]), "contribution": float(row[i])}
                    for i in order
                ],
            }
        else:
            item["explanation"] = None
        results.append(item)
    return results


def inference_record(call: PredictCall, status: RequestStatus, http_status: int, error: str | None) -> InferenceRecord:
    """The request's inference-log row; stamps the total time."""
    call.timings["total_ms"] = call.elapsed_ms()
    lineage: dict[str, Any] = dict(call.deployment.audit_fields()) if call.deployment is not None else {}
    return InferenceRecord(
        request_id=call.request_id,
        received_at=call.clock.received_at,
        dataset=call.dataset,
        route=PREDICT_ROUTE,
        status=status,
        http_status=http_status,
        client_key_id=call.client_key_id,
        inputs=call.logged_inputs(),
        outputs=call.outputs,
        labels=[o["label"] for o in call.outputs],
        error=error,
        timings_ms={k: round(v, 3) for k, v in call.timings.items()},
        **lineage,
    )


async def record(
    gateway: GatewayState, call: PredictCall, status: RequestStatus, http_status: int, error: str | None
) -> RequestRejected | None:
    """Make the request's row durable. None if it is in the chain or the spool; otherwise the 503 a successful
    answer must become (a refusal keeps its own answer, the caller decides):

    * ``audit_quarantined``: the row is durable, but outside the hash chain (``inference_log_quarantine``);
    * ``audit_timeout``: not durable within ``audit_record_timeout_seconds`` (e.g. the chain head is locked);
    * ``audit_<reason>`` for any other :class:`AuditWriteError` (e.g. ``audit_unavailable``: neither PostgreSQL
      nor the spool took it).
    """
    row = inference_record(call, status, http_status, error)
    began = time.perf_counter()
    outcome: str
    refusal: RequestRejected | None = None
    try:
        durability = await gateway.writer.record(row)
    except AuditWriteError as failure:
        logger.error("request %s could not be recorded (%s): %s", call.request_id, failure.reason, failure)
        if isinstance(failure, AuditTimeoutError):
            outcome = "timeout"
            refusal = RequestRejected(
                503,
                "the prediction was not served because its inference-log row was not recorded within "
                f"{gateway.settings.audit_record_timeout_seconds:g} s",
                reason="audit_timeout",
            )
        else:
            outcome = "failed"
            refusal = RequestRejected(
                503,
                f"the prediction was not served because it could not be recorded ({failure.reason})",
                reason=f"audit_{failure.reason}",
            )
    else:
        outcome = durability.value
        if durability is Durability.QUARANTINED:
            refusal = RequestRejected(
                503,
                "the prediction was not served because its inference-log row could not enter the hash chain: it "
                f"was quarantined (request {call.request_id})",
                reason="audit_quarantined",
            )
    gateway.metrics.audit_write_seconds.labels(outcome).observe(time.perf_counter() - began)
    return refusal
