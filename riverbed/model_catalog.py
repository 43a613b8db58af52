"""The model catalog: every registered model version of a dataset with why it was trained, its gate decision,
its aliases and status, its model card, and the reviewers' approvals of manual-approval candidates.

Two tables in the inference-log database (migration ``0011_model_catalog.sql``):

- ``model_versions``, one row per ``(dataset, version)``, written by the platform only (the code location through
  the same DSN as :mod:`riverbed.pipeline_failures`): :func:`record_trained` after training,
  :func:`record_gate_decision` after the promotion gate, :func:`record_deployment` when a version becomes the
  champion (deployment or rollback). The gateway and the auditors read it.
- ``model_version_reviews``, append-only, one decision per ``(dataset, version, mlflow_run_id)``: a reviewer's
  approval or rejection of a ``pending_approval`` candidate, inserted by the gateway (:func:`claim_review`) in the
  same transaction that checks the candidate is pending, with the id of the oversight action that records it in
  the chained inference log. The platform reads it (:func:`reviews_after` for the approvals sensor,
  :func:`approval_for` for the deployment asset). A review names the MLflow run of the version it decided, so a
  version number reused by a fresh registry is never approved by a decision about another model. An approval of a
  candidate older than a version that is or was deployed is refused (:class:`SupersededVersionError`: it would roll
  the champion back); the deployment asset checks the same rule again (:func:`superseding_version`).

The status a reader sees (:data:`ModelStatus`) is the stored one, except that a ``pending_approval`` version with
a review reads ``approved`` or ``rejected_by_reviewer``: the gateway never updates ``model_versions``.
Synchronous functions take a DSN (short connect and statement timeouts, as :mod:`riverbed.pipeline_failures`);
the ``*_async`` ones take an open async connection (the gateway's pool). Text is checked before it reaches SQL:
NUL, over-long values and non-finite metrics raise :class:`CatalogValueError` naming the field.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Generator, Mapping, Sequence
from typing import Any, Final, Literal, get_args

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field

ModelStatus = Literal[
    "trained", "rejected", "pending_approval", "approved", "deployed", "retired", "rejected_by_reviewer"
]
MODEL_STATUSES: Final[tuple[ModelStatus, ...]] = get_args(ModelStatus)
ReviewDecision = Literal["approve", "reject"]
REVIEW_DECISIONS: Final[tuple[ReviewDecision, ...]] = get_args(ReviewDecision)

MAX_NAME_CHARS: Final = 200  # dataset, registered model, reason, run ids, alias
MAX_REVIEW_REASON_CHARS: Final = 4000  # as serving.oversight.MAX_NOTE_LENGTH
MAX_GATE_REASON_CHARS: Final = 5000
MAX_MODEL_CARD_CHARS: Final = 200_000
MAX_LIST_LIMIT: Final = 1000
DEFAULT_TIMEOUT_SECONDS: Final = 5.0

_TIMEOUTS = "select set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)"


# ------------------------------------------------------------------------------------------------ errors
class CatalogError(RuntimeError):
    """A catalog read or write that cannot be done (the message says why)."""


class CatalogValueError(CatalogError, ValueError):
    """A value the catalog cannot store: NUL, too long, not finite, or an unknown name. ``field`` names it."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class UnknownModelVersionError(CatalogError):
    """The catalog has no such ``(dataset, version)``."""


class NotPendingApprovalError(CatalogError):
    """A review of a version that is not waiting for one (failed the gate, already decided, deployed...)."""

    def __init__(self, dataset: str, version: int, status: str) -> None:
        super().__init__(
            f"{dataset} version {version} is {status}, not pending_approval: only a candidate that passed the "
            "promotion gate of a manual-approval dataset and has no decision yet can be approved or rejected"
        )
        self.dataset = dataset
        self.version = version
        self.status = status


class SupersededVersionError(NotPendingApprovalError):
    """An approval of a candidate older than a version already deployed (the champion, or a newer version deployed
    after the candidate was trained and since retired): deploying it would roll the champion back."""

    def __init__(self, dataset: str, version: int, superseded_by: int) -> None:
        CatalogError.__init__(
            self,
            f"{dataset} version {version} is superseded by v{superseded_by}, a newer version already deployed: "
            "approving it would roll the champion back (roll back deliberately with `riverbed rollback`)",
        )
        self.dataset = dataset
        self.version = version
        self.superseded_by = superseded_by
        self.status = f"superseded by v{superseded_by}"


# ----------------------------------------------------------------------------------------------- records
class ModelReview(BaseModel):
    """A reviewer's decision on a pending candidate (one per version and MLflow run)."""

    model_config = ConfigDict(frozen=True)

    review_id: int = Field(description="Increasing id: the approvals sensor's cursor.")
    dataset: str
    version: int
    mlflow_run_id: str = Field(description="The MLflow run of the version decided on ('' if none was recorded).")
    decision: ReviewDecision
    action_id: str = Field(description="Id of the oversight action's chained inference-log row (its X-Request-ID).")
    key_id: str = Field(description="The reviewer's API key id.")
    reason: str
    decided_at: dt.datetime


class ModelVersionRecord(BaseModel):
    """One registered model version as the catalog knows it."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    dataset: str
    registered_model: str
    version: int
    aliases: list[str] = Field(description="MLflow aliases it holds: ['champion'], ['previous'] or [].")
    status: ModelStatus
    trained_reason: str = Field(description="A TrainingReason value: initial, manual, drift, performance, ...")
    mlflow_run_id: str | None
    dagster_run_id: str | None
    data_commit_ids: dict[str, str] = Field(description="Feature partition -> versioned-store commit id.")
    metrics: dict[str, float] = Field(description="Holdout metrics at training.")
    gate_passed: bool | None = Field(description="None until the promotion gate ran.")
    gate_reasons: list[str]
    fairness: dict[str, dict[str, float]] = Field(
        description="Protected attribute -> {selection_rate[group], count[group], demographic_parity_difference...}."
    )
    model_card_markdown: str
    manual_approval: bool = Field(default=False, description="Whether its dataset needed a reviewer's approval.")
    review: ModelReview | None = Field(default=None, description="The reviewer's decision, if any.")
    created_at: dt.datetime
    updated_at: dt.datetime


# ------------------------------------------------------------------------------------------- validation
def check_text(field: str, value: Any, max_chars: int, *, allow_empty: bool = False) -> str:
    """``value`` if it is text PostgreSQL can store within ``max_chars``; :class:`CatalogValueError` otherwise."""
    if not isinstance(value, str):
        raise CatalogValueError(field, f"must be text, not {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise CatalogValueError(field, "must not be empty")
    if len(value) > max_chars:
        raise CatalogValueError(field, f"at most {max_chars} characters (got {len(value)})")
    if "\x00" in value:
        raise CatalogValueError(field, "must not contain NUL (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CatalogValueError(field, "must be valid Unicode text (no lone surrogates)") from None
    return value


def check_version(version: Any) -> int:
    """A model version number: an int from 1 to 2**31-1."""
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= 2**31 - 1:
        raise CatalogValueError("version", "must be an integer from 1 to 2147483647")
    return version


def _finite(field: str, values: Mapping[str, Any]) -> dict[str, float]:
    result: dict[str, float] = {}
    for key, value in values.items():
        check_text(f"{field} key", key, MAX_NAME_CHARS)
        number = float(value)
        if not math.isfinite(number):
            raise CatalogValueError(f"{field}[{key}]", f"must be a finite number (got {number})")
        result[key] = number
    return result


def _fairness(fairness: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Fairness figures with non-finite values dropped (a group with one class has no defined difference)."""
    cleaned: dict[str, dict[str, float]] = {}
    for attribute, values in fairness.items():
        check_text("fairness attribute", attribute, MAX_NAME_CHARS)
        kept: dict[str, float] = {}
        for key, value in values.items():
            check_text(f"fairness[{attribute}] key", key, MAX_NAME_CHARS)
            number = float(value)
            if math.isfinite(number):
                kept[key] = number
        cleaned[attribute] = kept
    return cleaned


# ------------------------------------------------------------------------------------------- connections
def _connect(dsn: str, timeout_seconds: float) -> psycopg.Connection[Any]:
    """A connection whose statements and lock waits give up after ``timeout_seconds`` (not autocommit)."""
    conn = psycopg.connect(dsn, connect_timeout=max(1, round(timeout_seconds)))
    try:
        timeout = f"{int(timeout_seconds * 1000)}ms"
        conn.execute(_TIMEOUTS, (timeout, timeout))
        conn.commit()
    except BaseException:
        conn.close()
        raise
    return conn


def _read_rows(dsn: str, timeout_seconds: float, query: bytes, params: Sequence[Any]) -> list[dict[str, Any]]:
    """The rows of one read, as dicts, on a connection of its own (see :func:`_connect`)."""
    with _connect(dsn, timeout_seconds) as conn, conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


# ----------------------------------------------------------------------------------------------- reading
_REVIEW_COLUMNS = "review_id, dataset, version, mlflow_run_id, decision, action_id, key_id, reason, decided_at"

_SELECT_VERSIONS = """
select v.dataset, v.registered_model, v.version, v.aliases, v.status, v.trained_reason, v.mlflow_run_id,
       v.dagster_run_id, v.data_commit_ids, v.metrics, v.gate_passed, v.gate_reasons, v.fairness,
       v.model_card_markdown, v.manual_approval, v.created_at, v.updated_at,
       r.review_id as r_review_id, r.mlflow_run_id as r_mlflow_run_id, r.decision as r_decision,
       r.action_id as r_action_id, r.key_id as r_key_id, r.reason as r_reason, r.decided_at as r_decided_at
from model_versions v
left join model_version_reviews r
  on r.dataset = v.dataset and r.version = v.version and r.mlflow_run_id = coalesce(v.mlflow_run_id, '')
"""


def _effective_status(stored: str, decision: str | None) -> ModelStatus:
    if stored == "pending_approval" and decision == "approve":
        return "approved"
    if stored == "pending_approval" and decision == "reject":
        return "rejected_by_reviewer"
    if stored not in MODEL_STATUSES:
        raise CatalogError(f"model_versions holds an unknown status {stored!r}")
    return stored


def _record(row: Mapping[str, Any]) -> ModelVersionRecord:
    review = None
    if row.get("r_review_id") is not None:
        review = ModelReview(
            review_id=row["r_review_id"],
            dataset=row["dataset"],
            version=row["version"],
            mlflow_run_id=row["r_mlflow_run_id"],
            decision=row["r_decision"],
            action_id=row["r_action_id"],
            key_id=row["r_key_id"],
            reason=row["r_reason"],
            decided_at=row["r_decided_at"],
        )
    return ModelVersionRecord(
        dataset=row["dataset"],
        registered_model=row["registered_model"],
        version=row["version"],
        aliases=sorted(row["aliases"] or []),
        status=_effective_status(row["status"], review.decision if review else None),
        trained_reason=row["trained_reason"],
        mlflow_run_id=row["mlflow_run_id"],
        dagster_run_id=row["dagster_run_id"],
        data_commit_ids=dict(row["data_commit_ids"] or {}),
        metrics=dict(row["metrics"] or {}),
        gate_passed=row["gate_passed"],
        gate_reasons=list(row["gate_reasons"] or []),
        fairness=dict(row["fairness"] or {}),
        model_card_markdown=row["model_card_markdown"],
        manual_approval=row["manual_approval"],
        review=review,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _list_query(dataset: str | None, status: ModelStatus | None, limit: int) -> tuple[str, list[Any]]:
    if dataset is not None:
        check_text("dataset", dataset, MAX_NAME_CHARS)
    if status is not None and status not in MODEL_STATUSES:
        raise CatalogValueError("status", f"must be one of {', '.join(MODEL_STATUSES)}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise CatalogValueError("limit", f"must be an integer from 1 to {MAX_LIST_LIMIT}")
    where: list[str] = []
    params: list[Any] = []
    if dataset is not None:
        where.append("v.dataset = %s")
        params.append(dataset)
    if status in ("approved", "rejected_by_reviewer"):
        where.append("v.status = 'pending_approval' and r.decision = %s")
        params.append("approve" if status == "approved" else "reject")
    elif status == "pending_approval":
        where.append("v.status = 'pending_approval' and r.review_id is null")
    elif status is not None:
        where.append("v.status = %s")
        params.append(status)
    clause = f"where {' and '.join(where)}" if where else ""
    # Newest first; (dataset, version) is the primary key, so one dataset's page is an index scan.
    query = f"{_SELECT_VERSIONS} {clause} order by v.created_at desc, v.dataset, v.version desc limit %s"
    return query, [*params, limit]


def list_model_versions(
    dsn: str,
    dataset: str | None = None,
    limit: int = 100,
    *,
    status: ModelStatus | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> list[ModelVersionRecord]:
    """Catalogued versions, newest first (at most ``limit``, 1..1000), of one dataset or all, optionally of one
    effective status (``pending_approval`` lists only those without a decision)."""
    query, params = _list_query(dataset, status, limit)
    return [_record(row) for row in _read_rows(dsn, timeout_seconds, query.encode(), params)]


def get_model_version(
    dsn: str, dataset: str, version: int, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> ModelVersionRecord | None:
    """One catalogued version, or None."""
    check_text("dataset", dataset, MAX_NAME_CHARS)
    check_version(version)
    query = f"{_SELECT_VERSIONS} where v.dataset = %s and v.version = %s".encode()
    found = _read_rows(dsn, timeout_seconds, query, (dataset, version))
    return _record(found[0]) if found else None


async def list_model_versions_async(
    conn: psycopg.AsyncConnection[Any],
    dataset: str | None = None,
    limit: int = 100,
    *,
    status: ModelStatus | None = None,
) -> list[ModelVersionRecord]:
    """:func:`list_model_versions` on an open async connection (the gateway's pool)."""
    query, params = _list_query(dataset, status, limit)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query.encode(), params)
        rows = await cur.fetchall()
    return [_record(row) for row in rows]


async def get_model_version_async(
    conn: psycopg.AsyncConnection[Any], dataset: str, version: int
) -> ModelVersionRecord | None:
    """:func:`get_model_version` on an open async connection."""
    check_text("dataset", dataset, MAX_NAME_CHARS)
    check_version(version)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"{_SELECT_VERSIONS} where v.dataset = %s and v.version = %s".encode(), (dataset, version))
        found = await cur.fetchone()
    return _record(found) if found else None


# ------------------------------------------------------------------------------------------ reviews (gateway)
_VERSION_STATE = """
select status, coalesce(mlflow_run_id, '') as mlflow_run_id from model_versions where dataset = %s and version = %s
"""
_INSERT_REVIEW = f"""
insert into model_version_reviews (dataset, version, mlflow_run_id, decision, action_id, key_id, reason)
values (%s, %s, %s, %s, %s, %s, %s)
on conflict (dataset, version, mlflow_run_id) do nothing
returning {_REVIEW_COLUMNS}
"""
_REVIEW_OF = f"""
select {_REVIEW_COLUMNS} from model_version_reviews where dataset = %s and version = %s and mlflow_run_id = %s
"""


# A newer version of the dataset that holds (or held) the champion: deployed now, retired since, or aliased champion.
_SUPERSEDING = """
select max(version) as newer from model_versions
where dataset = %s and version > %s and (status in ('deployed', 'retired') or 'champion' = any(aliases))
"""


def _superseded(dataset: str, version: int, found: Mapping[str, Any] | None) -> None:
    if found is not None and found["newer"] is not None:
        raise SupersededVersionError(dataset, version, int(found["newer"]))


def superseding_version(
    dsn: str, dataset: str, version: int, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> int | None:
    """The newest version of ``dataset`` newer than ``version`` that is or was deployed (None: nothing newer was
    ever the champion). The deployment asset's check that an approval never rolls the champion back."""
    check_text("dataset", dataset, MAX_NAME_CHARS)
    check_version(version)
    with _connect(dsn, timeout_seconds) as conn:
        found = conn.execute(_SUPERSEDING, (dataset, version)).fetchone()
    return None if found is None or found[0] is None else int(found[0])


# One claim, two drivers: the steps yield each statement and receive its row, so the async route and the sync
# helper take the same decision the same way (no rule written twice).
_Statement = tuple[str, tuple[Any, ...]]


def _claim_steps(
    dataset: str, version: int, decision: str, action_id: str, key_id: str, reason: str
) -> Generator[_Statement, Mapping[str, Any] | None, ModelReview]:
    check_text("dataset", dataset, MAX_NAME_CHARS)
    check_version(version)
    if decision not in REVIEW_DECISIONS:
        raise CatalogValueError("decision", f"must be one of {', '.join(REVIEW_DECISIONS)}")
    check_text("action_id", action_id, MAX_NAME_CHARS)
    check_text("key_id", key_id, MAX_NAME_CHARS)
    check_text("reason", reason, MAX_REVIEW_REASON_CHARS)
    found = yield _VERSION_STATE, (dataset, version)
    if found is None:
        raise UnknownModelVersionError(f"the model catalog has no {dataset} version {version}")
    if found["status"] != "pending_approval":
        raise NotPendingApprovalError(dataset, version, str(found["status"]))
    if decision == "approve":
        _superseded(dataset, version, (yield _SUPERSEDING, (dataset, version)))
    inserted = yield (
        _INSERT_REVIEW,
        (dataset, version, str(found["mlflow_run_id"]), decision, action_id, key_id, reason),
    )
    if inserted is None:
        raise NotPendingApprovalError(dataset, version, "already decided")
    return ModelReview.model_validate(inserted)


async def claim_review(
    conn: psycopg.AsyncConnection[Any],
    *,
    dataset: str,
    version: int,
    decision: ReviewDecision,
    action_id: str,
    key_id: str,
    reason: str,
) -> ModelReview:
    """Insert the decision on a pending candidate, inside the caller's open transaction.

    The caller commits only after the oversight action was recorded, so a decision never exists without its
    chained record; a concurrent decision on the same version waits on the unique key and then finds it taken.
    Raises :class:`UnknownModelVersionError` (no such version), :class:`NotPendingApprovalError` (failed the gate,
    not manual, deployed, or already decided), :class:`SupersededVersionError` (an approval of a candidate older
    than a version already deployed: it would roll the champion back; a rejection is still taken),
    :class:`CatalogValueError` (a value the catalog cannot store).
    """
    steps = _claim_steps(dataset, version, decision, action_id, key_id, reason)
    row: Mapping[str, Any] | None = None
    async with conn.cursor(row_factory=dict_row) as cur:
        while True:
            try:
                query, args = steps.send(row)
            except StopIteration as claimed:
                review: ModelReview = claimed.value
                return review
            await cur.execute(query, args)
            row = await cur.fetchone()


def record_approval(
    dsn: str,
    *,
    dataset: str,
    version: int,
    decision: ReviewDecision,
    action_id: str,
    key_id: str,
    reason: str,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> ModelReview:
    """The synchronous :func:`claim_review`, committed at once (tests, maintenance). The gateway's routes are the
    way reviewers decide: they also record the decision as an oversight action in the chained log."""
    steps = _claim_steps(dataset, version, decision, action_id, key_id, reason)
    row: Mapping[str, Any] | None = None
    query, args = next(steps)  # the values are checked before a connection is opened
    with _connect(dsn, timeout_seconds) as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        while True:
            row = cur.execute(query, args).fetchone()
            try:
                query, args = steps.send(row)
            except StopIteration as claimed:
                review: ModelReview = claimed.value
                return review


# ------------------------------------------------------------------------------------- reviews (platform)
def reviews_after(
    dsn: str,
    after_review_id: int,
    *,
    dataset: str | None = None,
    limit: int = 100,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> list[ModelReview]:
    """Decisions with ``review_id > after_review_id`` (of one dataset, or all), oldest first: the approvals
    sensor's cursor."""
    where = "review_id > %s" + (" and dataset = %s" if dataset is not None else "")
    params: list[Any] = [after_review_id, *([dataset] if dataset is not None else []), limit]
    query = f"select {_REVIEW_COLUMNS} from model_version_reviews where {where} order by review_id limit %s"
    return [ModelReview.model_validate(row) for row in _read_rows(dsn, timeout_seconds, query.encode(), params)]


def approval_for(
    dsn: str, dataset: str, version: int, *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> ModelReview | None:
    """The approval of exactly this catalogued version (its MLflow run), or None (not decided, or rejected)."""
    check_text("dataset", dataset, MAX_NAME_CHARS)
    check_version(version)
    query = (
        f"select {', '.join('r.' + c.strip() for c in _REVIEW_COLUMNS.split(','))} "
        "from model_version_reviews r join model_versions v on v.dataset = r.dataset and v.version = r.version "
        "and r.mlflow_run_id = coalesce(v.mlflow_run_id, '') "
        "where r.dataset = %s and r.version = %s and r.decision = 'approve'"
    )
    rows = _read_rows(dsn, timeout_seconds, query.encode(), (dataset, version))
    return ModelReview.model_validate(rows[0]) if rows else None


# --------------------------------------------------------------------------------------- writes (platform)
_UPSERT_TRAINED = """
insert into model_versions (dataset, version, registered_model, aliases, status, trained_reason, mlflow_run_id,
    dagster_run_id, data_commit_ids, metrics, gate_passed, gate_reasons, fairness, model_card_markdown,
    manual_approval)
values (%s, %s, %s, '{}', 'trained', %s, %s, %s, %s, %s, null, '[]', %s, %s, %s)
on conflict (dataset, version) do update set
    registered_model = excluded.registered_model, trained_reason = excluded.trained_reason,
    dagster_run_id = excluded.dagster_run_id, data_commit_ids = excluded.data_commit_ids,
    metrics = excluded.metrics, fairness = excluded.fairness, model_card_markdown = excluded.model_card_markdown,
    manual_approval = excluded.manual_approval, updated_at = now(),
    -- The same MLflow run recorded again (a retried step) keeps its progress; another run under a reused version
    -- number (a fresh registry) is another model and starts over.
    aliases = case when model_versions.mlflow_run_id is not distinct from excluded.mlflow_run_id
        then model_versions.aliases else '{}' end,
    status = case when model_versions.mlflow_run_id is not distinct from excluded.mlflow_run_id
        then model_versions.status else 'trained' end,
    gate_passed = case when model_versions.mlflow_run_id is not distinct from excluded.mlflow_run_id
        then model_versions.gate_passed else null end,
    gate_reasons = case when model_versions.mlflow_run_id is not distinct from excluded.mlflow_run_id
        then model_versions.gate_reasons else '[]' end,
    mlflow_run_id = excluded.mlflow_run_id
"""


def record_trained(
    dsn: str,
    *,
    dataset: str,
    registered_model: str,
    version: int,
    trained_reason: str,
    mlflow_run_id: str | None,
    dagster_run_id: str | None,
    data_commit_ids: Mapping[str, str],
    metrics: Mapping[str, float],
    fairness: Mapping[str, Mapping[str, float]],
    model_card_markdown: str,
    manual_approval: bool = False,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> ModelVersionRecord:
    """Catalogue a newly registered version with status ``trained`` (idempotent for the same MLflow run).

    Non-finite metrics raise :class:`CatalogValueError`; non-finite fairness figures are dropped (undefined for
    a group with one class). The model card is bounded (:data:`MAX_MODEL_CARD_CHARS`).
    """
    check_text("dataset", dataset, MAX_NAME_CHARS)
    check_text("registered_model", registered_model, MAX_NAME_CHARS)
    check_version(version)
    check_text("trained_reason", trained_reason, MAX_NAME_CHARS)
    for field, value in (("mlflow_run_id", mlflow_run_id), ("dagster_run_id", dagster_run_id)):
        if value is not None:
            check_text(field, value, MAX_NAME_CHARS)
    commits = {
        check_text("data_commit_ids key", k, MAX_NAME_CHARS): check_text(f"data_commit_ids[{k}]", v, MAX_NAME_CHARS)
        for k, v in data_commit_ids.items()
    }
    check_text("model_card_markdown", model_card_markdown, MAX_MODEL_CARD_CHARS, allow_empty=True)
    params = (
        dataset,
        version,
        registered_model,
        trained_reason,
        mlflow_run_id,
        dagster_run_id,
        json.dumps(commits),
        json.dumps(_finite("metrics", metrics)),
        json.dumps(_fairness(fairness)),
        model_card_markdown,
        manual_approval,
    )
    with _connect(dsn, timeout_seconds) as conn:
        with conn.transaction():
            conn.execute(_UPSERT_TRAINED, params)
        return _read_one(conn, dataset, version)


def _read_one(conn: psycopg.Connection[Any], dataset: str, version: int) -> ModelVersionRecord:
    with conn.cursor(row_factory=dict_row) as cur:
        found = cur.execute(
            f"{_SELECT_VERSIONS} where v.dataset = %s and v.version = %s".encode(), (dataset, version)
        ).fetchone()
    if found is None:
        raise UnknownModelVersionError(f"the model catalog has no {dataset} version {version}")
    return _record(found)


def gate_status(passed: bool, manual_approval: bool) -> ModelStatus:
    """The status a gate decision leaves: ``rejected`` (failed), ``pending_approval`` (passed, manual) or
    ``trained`` (passed, deployed automatically next)."""
    if not passed:
        return "rejected"
    return "pending_approval" if manual_approval else "trained"


def record_gate_decision(
    dsn: str,
    *,
    dataset: str,
    version: int,
    passed: bool,
    reasons: Sequence[str],
    fairness: Mapping[str, Mapping[str, float]] | None = None,
    manual_approval: bool = False,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> ModelVersionRecord:
    """Record the promotion gate's verdict and the status it leaves (:func:`gate_status`); ``fairness`` (the
    holdout figures the gate judged) replaces the training-time figures when given. A version already deployed or
    decided by a reviewer keeps its status (re-checking a champion does not make it pending again)."""
    check_text("dataset", dataset, MAX_NAME_CHARS)
    check_version(version)
    texts = [check_text("reasons", reason, MAX_GATE_REASON_CHARS) for reason in reasons]
    status = gate_status(passed, manual_approval)
    with _connect(dsn, timeout_seconds) as conn:
        with conn.transaction():
            updated = conn.execute(
                """
                update model_versions set gate_passed = %s, gate_reasons = %s, manual_approval = %s,
                    fairness = coalesce(%s::jsonb, fairness), updated_at = now(),
                    status = case when status in ('trained', 'rejected', 'pending_approval')
                        and not exists (select 1 from model_version_reviews r where r.dataset = model_versions.dataset
                            and r.version = model_versions.version
                            and r.mlflow_run_id = coalesce(model_versions.mlflow_run_id, ''))
                        then %s else status end
                where dataset = %s and version = %s
                """,
                (
                    passed,
                    json.dumps(texts),
                    manual_approval,
                    json.dumps(_fairness(fairness)) if fairness is not None else None,
                    status,
                    dataset,
                    version,
                ),
            )
            if updated.rowcount == 0:
                raise UnknownModelVersionError(
                    f"the model catalog has no {dataset} version {version}: record_trained first"
                )
        return _read_one(conn, dataset, version)


def record_deployment(
    dsn: str,
    *,
    dataset: str,
    version: int,
    previous_version: int | None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
) -> list[ModelVersionRecord]:
    """``version`` became the champion (a deployment or a rollback): it is ``deployed`` with alias ``champion``,
    ``previous_version`` holds ``previous``, every other version of the dataset loses its aliases and a formerly
    deployed one is ``retired``. Returns the dataset's changed rows."""
    check_text("dataset", dataset, MAX_NAME_CHARS)
    check_version(version)
    if previous_version is not None:
        check_version(previous_version)
    with _connect(dsn, timeout_seconds) as conn:
        with conn.transaction():
            found = conn.execute(
                "select 1 from model_versions where dataset = %s and version = %s for update", (dataset, version)
            ).fetchone()
            if found is None:
                raise UnknownModelVersionError(
                    f"the model catalog has no {dataset} version {version}: it was trained before the catalog "
                    "existed or its training could not record it"
                )
            changed = conn.execute(
                """
                update model_versions set
                    aliases = case when version = %(v)s then array['champion']
                        when version = %(p)s then array['previous'] else '{}'::text[] end,
                    status = case when version = %(v)s then 'deployed'
                        when status = 'deployed' then 'retired' else status end,
                    updated_at = now()
                where dataset = %(d)s and (version = %(v)s or version = %(p)s or status = 'deployed'
                    or aliases <> '{}'::text[])
                returning version
                """,
                {"d": dataset, "v": version, "p": previous_version},
            ).fetchall()
        return [_read_one(conn, dataset, row[0]) for row in changed]
