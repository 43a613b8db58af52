"""Request and response models, generated from each dataset spec so ``/docs`` shows every field's type and range.

A predict body is one record (the record's fields at the top level, or ``{"record": {...}}``) or a batch
``{"records": [...]}``; ``explain`` and ``top_k`` may sit beside them. Validation collects every problem of
every record into :class:`RecordProblem` entries that name the record, field, value and rule.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from riverbed.specs import DatasetSpec, FeatureSpec, FeatureType

RESERVED_RECORD_FIELDS = ("sample_id", "event_time")
BODY_OPTIONS = ("explain", "top_k")
DEFAULT_TOP_K = 5
MAX_SAMPLE_ID_LENGTH = 200


@dataclass(frozen=True)
class RecordProblem:
    """One broken rule: which record (batch index, None for a single record), field, value and rule."""

    record: int | None
    field: str
    value: Any
    rule: str

    def as_dict(self) -> dict[str, Any]:
        return {"record": self.record, "field": self.field, "value": self.value, "rule": self.rule}


class RequestRejected(Exception):
    """The request cannot be served as sent; ``status`` is the HTTP status to answer with.

    ``message`` and ``problems`` are what the client is told; ``detail`` (if any) is what only the log and the
    inference-log row get (e.g. the model server's own error text); ``reason`` is a short machine label
    (e.g. ``missing_key``) for metrics.
    """

    def __init__(
        self,
        status: int,
        message: str,
        problems: list[RecordProblem] | None = None,
        *,
        detail: str | None = None,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.problems = problems or []
        self.detail = detail
        self.reason = reason
        self.headers = headers


def _feature_field(feature: FeatureSpec) -> tuple[Any, Any]:
    constraints: dict[str, Any] = {"description": feature.description or None}
    if feature.type is FeatureType.CATEGORY:
        categories = tuple(feature.categories or ())
        annotation: Any = Literal[categories] if categories else str
    else:
        annotation = int if feature.type is FeatureType.INTEGER else float
        if feature.minimum is not None:
            constraints["ge"] = feature.minimum
        if feature.maximum is not None:
            constraints["le"] = feature.maximum
    if feature.nullable:
        return annotation | None, Field(default=None, **constraints)
    return annotation, Field(**constraints)


@dataclass(frozen=True)
class DatasetSchemas:
    """The generated models of one dataset and a fast validator for lists of records."""

    spec: DatasetSpec
    record: type[BaseModel]
    batch: type[BaseModel]
    single: type[BaseModel]
    records_adapter: TypeAdapter[list[Any]]

    def openapi_body(self) -> dict[str, Any]:
        """JSON schema for the request body: a single record or a batch."""
        return {
            "oneOf": [
                {"$ref": f"#/components/schemas/{self.single.__name__}"},
                {"$ref": f"#/components/schemas/{self.batch.__name__}"},
            ]
        }


def build_schemas(spec: DatasetSpec) -> DatasetSchemas:
    """Pydantic models for ``spec``: ``<Dataset>Record``, ``<Dataset>PredictRequest`` and the batch request."""
    title = "".join(part.capitalize() for part in spec.name.split("_"))
    fields: dict[str, Any] = {feature.name: _feature_field(feature) for feature in spec.features}
    fields["sample_id"] = (
        str | None,
        Field(default=None, max_length=MAX_SAMPLE_ID_LENGTH, description="Caller's id for this record, kept."),
    )
    fields["event_time"] = (
        dt.datetime | None,
        Field(default=None, description="When the record was observed (default: when it was received)."),
    )
    record = create_model(
        f"{title}Record",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__=f"One {spec.name} record: {spec.description}",
        **fields,
    )
    options: dict[str, Any] = {
        "explain": (bool, Field(default=True, description="Return exact SHAP contributions per feature.")),
        "top_k": (
            int,
            Field(default=DEFAULT_TOP_K, ge=0, le=len(spec.features), description="How many top features to list."),
        ),
    }
    batch = create_model(
        f"{title}BatchPredictRequest",
        __config__=ConfigDict(extra="forbid"),
        records=(list[record], Field(min_length=1, description="Records to score (up to the configured maximum).")),
        **options,
    )
    single = create_model(
        f"{title}PredictRequest",
        __base__=record,
        **options,
    )
    return DatasetSchemas(spec, record, batch, single, TypeAdapter(list[record]))


@dataclass(frozen=True)
class ParsedRequest:
    records: list[BaseModel]
    raw_records: list[dict[str, Any]]
    explain: bool
    top_k: int
    batch: bool


def _option(body: dict[str, Any], name: str, default: Any, query: Any) -> Any:
    if name in body:
        return body[name]
    return default if query is None else query


def parse_predict_body(
    schemas: DatasetSchemas,
    body: Any,
    *,
    max_records: int,
    explain_query: bool | None = None,
    top_k_query: int | None = None,
) -> ParsedRequest:
    """Validate a predict body; raises :class:`RequestRejected` (413 / 422) naming every broken rule."""
    if not isinstance(body, dict):
        raise RequestRejected(
            422,
            "the body must be a JSON object",
            [RecordProblem(None, "body", type(body).__name__, "must be an object")],
        )
    explain = _option(body, "explain", True, explain_query)
    top_k = _option(body, "top_k", DEFAULT_TOP_K, top_k_query)
    problems: list[RecordProblem] = []
    if not isinstance(explain, bool):
        problems.append(RecordProblem(None, "explain", explain, "must be true or false"))
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 0 <= top_k <= len(schemas.spec.features):
        problems.append(
            RecordProblem(None, "top_k", top_k, f"must be an integer from 0 to {len(schemas.spec.features)}")
        )
    if "records" in body:
        raw = body["records"]
        extra = sorted(set(body) - {"records", *BODY_OPTIONS})
        problems.extend(RecordProblem(None, name, body[name], "unknown field beside 'records'") for name in extra)
        if not isinstance(raw, list) or not raw:
            problems.append(RecordProblem(None, "records", raw, "must be a non-empty list of records"))
            raise RequestRejected(422, "invalid request", problems)
        if len(raw) > max_records:
            raise RequestRejected(
                413,
                f"a batch may hold at most {max_records} records; this one has {len(raw)}",
                [RecordProblem(None, "records", len(raw), f"at most {max_records} records")],
            )
        batch = True
    else:
        if "record" in body:
            raw = [body["record"]]
            extra = sorted(set(body) - {"record", *BODY_OPTIONS})
            problems.extend(RecordProblem(None, name, body[name], "unknown field beside 'record'") for name in extra)
        else:
            raw = [{k: v for k, v in body.items() if k not in BODY_OPTIONS}]
        batch = False
    try:
        records = schemas.records_adapter.validate_python(raw)
    except ValidationError as error:
        problems.extend(_problems(error, raw, batch))
        records = []
    if problems:
        raise RequestRejected(422, "invalid request", problems)
    return ParsedRequest(records, raw, explain, top_k, batch)


def _problems(error: ValidationError, raw: list[Any], batch: bool) -> list[RecordProblem]:
    found = []
    for item in error.errors(include_url=False):
        location = list(item["loc"])
        head = location[0] if location else None
        index = head if isinstance(head, int) else None
        if index is not None:
            del location[0]
        field = ".".join(str(part) for part in location) or "record"
        value = item.get("input")
        if item["type"] == "missing":
            value = None
            rule = "is required"
        elif item["type"] == "extra_forbidden":
            rule = "is not a field of this dataset"
        elif item["type"] == "literal_error":
            rule = "must be one of " + str(item.get("ctx", {}).get("expected", "the spec's categories"))
        else:
            rule = item["msg"][0].lower() + item["msg"][1:] if item["msg"] else item["type"]
        if field == "record" and isinstance(index, int) and not isinstance(raw[index], dict):
            rule = "must be an object of feature values"
        found.append(RecordProblem(index if batch else None, field, value, rule))
    return found


class TopFeature(BaseModel):
    feature: str
    value: Any = Field(description="The record's value of this feature.")
    contribution: float = Field(description="SHAP contribution to the margin (log-odds of the positive class).")


class Explanation(BaseModel):
    base_value: float = Field(description="Expected margin; base_value + sum(contributions) = this record's margin.")
    contributions: dict[str, float]
    top_features: list[TopFeature]


class RecordPrediction(BaseModel):
    sample_id: str | None = None
    label: str
    probabilities: dict[str, float]
    explanation: Explanation | None = None


class ModelRef(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: int
    mlflow_run_id: str | None = None


class PredictResponse(BaseModel):
    request_id: str
    dataset: str
    model: ModelRef
    predictions: list[RecordPrediction]


class ErrorResponse(BaseModel):
    request_id: str
    error: str
    problems: list[dict[str, Any]] = Field(default_factory=list)
    reason: str | None = Field(
        default=None,
        description="A machine-readable reason, when there is one: e.g. missing_key, invalid_key, expired_key, "
        "key_store_unavailable, audit_quarantined, audit_timeout, audit_unavailable (the request's inference-log "
        "row could not be made durable, so a prediction was not served).",
    )
