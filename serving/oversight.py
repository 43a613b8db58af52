"""Human oversight actions (EU AI Act Art. 14): flag or override a prediction, suspend or resume a dataset's
serving, approve or reject a model version; each one append-only and hash-chained like every request.

**An action is a row of the inference log itself.** :func:`record_action` writes it through the gateway's
:class:`~serving.inference_log.InferenceLogWriter` (so it is in the same keyed chain as the predictions, verified
by ``riverbed audit verify``, listed by the audit API, ``riverbed audit show`` and the exports) and returns only
once the row is *committed* (a spooled or quarantined action is refused with 503, see below):

* ``request_id`` = the action's own ``X-Request-ID`` (its ``action_id``); ``route`` = the action's route
  template (:data:`ACTION_ROUTES`, e.g. ``/v1/predictions/{request_id}/flag``); ``status`` ``ok``,
  ``http_status`` 200; ``client_key_id`` = the reviewer's key id; ``dataset`` = the target's dataset;
* ``inputs`` = ``[{"oversight": {"action", "target_kind", "target_id", "note", "outcome"}}]``; ``labels`` =
  ``[outcome]`` for an override (so the audit ``label`` filter finds overrides too), else ``[]``.

**The index.** Migration ``0010_oversight_actions`` adds ``oversight_actions``: one row per action row of the log,
filled by a trigger on ``inference_log`` (SECURITY DEFINER; the gateway's role has no INSERT on the index, so no
index row can exist without its chained log row, and a spooled action replayed later is indexed as it commits).
It serves :func:`actions_for` (index ``(target_kind, target_id, seq)``) and the audit filters ``flagged`` /
``overridden`` (index ``(action, target_kind, target_id)``). Its suspend and resume rows also
``NOTIFY riverbed_oversight, '<dataset>'``.

**Suspension.** :class:`SuspensionMonitor` (one per gateway process, on ``GatewayState.oversight``) loads the
current suspension of every dataset at start-up (the latest suspend/resume of each dataset in the index) and
LISTENs on ``riverbed_oversight`` (the mechanism that pushes API-key revocations, :mod:`serving.api_keys`):
each notification (and every (re)connect) re-reads every dataset's latest state, so a suspension holds in every
gateway process within about a second and survives a restart. :func:`suspension_of` answers from memory.
Suspend and resume are decided one at a time per dataset (a transaction-scoped advisory lock, only tried), so
concurrent resumes of one suspension record one resume and refuse the rest 409.

**Refusals** are typed (:class:`OversightError` and subclasses, each with an HTTP ``status``, the ``field`` and
the ``rule``): unknown prediction / dataset / model version 404, a malformed value 422 (empty, over-long or NUL
note, an outcome not among the dataset's target classes, a malformed id), a conflicting state 409 (resume of a
dataset that is not suspended, override of a prediction that was not served), the log unable to commit the
action 503. A second flag of the same prediction is a second action, not an error; a second suspend of a
suspended dataset is a new suspension (new reason and actor), recorded as such. An override applies to the
whole request (every record of a batch).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from pydantic import BaseModel, ConfigDict, ValidationError

from serving.audit_queries import AuditQueryError, check_request_id
from serving.gateway.prediction import PREDICT_ROUTE
from serving.inference_log import (
    AuditWriteError,
    Durability,
    InferenceRecord,
    RequestStatus,
    escape_text,
    format_time,
    unescape,
)
from serving.notify_listener import NotifyListener

if TYPE_CHECKING:
    from serving.gateway.state import GatewayState

logger = logging.getLogger(__name__)

ActionKind = Literal["flag", "override", "suspend", "resume", "approve", "reject"]
TargetKind = Literal["prediction", "dataset", "model_version"]

ACTION_KINDS: tuple[ActionKind, ...] = ("flag", "override", "suspend", "resume", "approve", "reject")
TARGET_KINDS: tuple[TargetKind, ...] = ("prediction", "dataset", "model_version")
# The target kind each action applies to.
ACTION_TARGETS: dict[ActionKind, TargetKind] = {
    "flag": "prediction",
    "override": "prediction",
    "suspend": "dataset",
    "resume": "dataset",
    "approve": "model_version",
    "reject": "model_version",
}
# The route recorded in the action's inference-log row (the /v1 route that performs it).
ACTION_ROUTES: dict[ActionKind, str] = {
    "flag": "/v1/predictions/{request_id}/flag",
    "override": "/v1/predictions/{request_id}/override",
    "suspend": "/v1/datasets/{dataset}/suspend",
    "resume": "/v1/datasets/{dataset}/resume",
    "approve": "/v1/models/{dataset}/versions/{version}/approve",
    "reject": "/v1/models/{dataset}/versions/{version}/reject",
}
MAX_NOTE_LENGTH = 4000  # characters of a note or reason
MAX_TARGET_ID_LENGTH = 300
MAX_LIST_LIMIT = 1000
DATASET_SUSPENDED = "dataset_suspended"  # the reason label of a predict request refused for a suspension
OVERSIGHT_STATE_UNKNOWN = "oversight_state_unknown"  # refused: suspensions neither read nor known from the file
STATE_FILE_FORMAT = 1
LOCK_WAIT_SECONDS = 5.0  # how long a suspend/resume tries for the dataset's lock before it is refused 409
_ADVISORY_LOCK_CLASS = 0x6F76  # "ov": the advisory-lock class of suspend/resume, keyed by hashtext(dataset)
NOTIFY_CHANNEL = "riverbed_oversight"  # NOTIFY'd by migration 0010's trigger with the dataset of a suspend/resume


class OversightError(ValueError):
    """An action refused: ``status`` is the HTTP status to answer, ``field`` the offending field, ``rule`` why."""

    status = 422

    def __init__(self, field: str, rule: str, *, row_attempted: bool = False, spooled: bool = False) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule
        self.row_attempted = row_attempted  # the action's own row was offered to the log (its id is taken)
        # The action's row was spooled: it enters the chain once the log is back. An action that takes effect from
        # its row (flag, override, suspend, resume) must not be repeated; a caller that also holds a transaction
        # of its own (approve/reject) rolls that back and says so instead.
        self.spooled = spooled


class InvalidActionError(OversightError):
    """422: a malformed value (empty, over-long or NUL note; unknown outcome; malformed id or action)."""

    status = 422


class UnknownTargetError(OversightError):
    """404: no such prediction (request id), dataset or model version."""

    status = 404


class ActionConflictError(OversightError):
    """409: the target's state does not allow the action (e.g. resume of a dataset that is not suspended)."""

    status = 409


class OversightUnavailableError(OversightError):
    """503: the inference log cannot be read or written right now."""

    status = 503


class ActionNotRecordedError(OversightUnavailableError):
    """503: the action was not committed to the inference log: refused before writing (the log unreachable or
    replaying its spool), quarantined, timed out, or spooled (then it enters the chain, and takes effect, once the
    log is reachable again: the message says so and that it must not be repeated)."""

    status = 503


class OversightAction(BaseModel):
    """One recorded oversight action (the fields of its inference-log row that matter to a reader)."""

    model_config = ConfigDict(frozen=True)

    action_id: str  # id of the action's own chained inference-log row (its X-Request-ID)
    action: ActionKind
    target_kind: TargetKind
    target_id: str  # request_id / dataset name / "<dataset>:<version>"
    dataset: str | None
    actor_key_id: str
    note: str  # the note or reason
    outcome: str | None  # override: the reviewer's outcome (one of the dataset's target classes)
    recorded_at: dt.datetime


# ------------------------------------------------------------------------------------------------- validation
_DATASET_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_MODEL_VERSION_PATTERN = re.compile(r"([A-Za-z_][A-Za-z0-9_]{0,127}):([1-9][0-9]{0,17})")


def check_note(field: str, note: Any) -> str:
    """The note or reason if it is text a reviewer wrote: non-empty (not only spaces), at most
    :data:`MAX_NOTE_LENGTH` characters, no NUL, valid Unicode. Stored verbatim (markup included: readers escape)."""
    if not isinstance(note, str):
        raise InvalidActionError(field, f"expected text, got {type(note).__name__}")
    if not note.strip():
        raise InvalidActionError(field, "must not be empty")
    if len(note) > MAX_NOTE_LENGTH:
        raise InvalidActionError(field, f"at most {MAX_NOTE_LENGTH} characters, got {len(note)}")
    if "\x00" in note:
        raise InvalidActionError(field, "must not contain a NUL character")
    if not note.isascii():
        try:
            note.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidActionError(field, "is not valid Unicode text (a lone surrogate)") from None
    return note


def check_prediction_id(field: str, request_id: Any) -> str:
    """A request id as the gateway issues them (see :func:`serving.audit_queries.check_request_id`)."""
    try:
        return check_request_id(request_id)
    except AuditQueryError as error:
        raise InvalidActionError(field, error.rule) from None


def check_dataset_name(field: str, dataset: Any) -> str:
    """A dataset name (a spec's name: a letter or '_', then letters, digits, '_'; at most 128 characters)."""
    if not isinstance(dataset, str) or not _DATASET_PATTERN.fullmatch(dataset):
        raise InvalidActionError(field, "must be a dataset name: a letter or '_', then letters, digits or '_'")
    return dataset


def check_target(target_kind: Any, target_id: Any) -> tuple[TargetKind, str]:
    """The target kind and id if well formed: a request id, a dataset name, or ``<dataset>:<version>``."""
    if target_kind not in TARGET_KINDS:
        raise InvalidActionError("target_kind", f"must be one of {', '.join(TARGET_KINDS)}")
    kind: TargetKind = target_kind
    if kind == "prediction":
        return kind, check_prediction_id("target_id", target_id)
    if kind == "dataset":
        return kind, check_dataset_name("target_id", target_id)
    if not isinstance(target_id, str) or not _MODEL_VERSION_PATTERN.fullmatch(target_id):
        raise InvalidActionError("target_id", "must be '<dataset>:<version>' (a dataset name, a positive version)")
    return kind, target_id


# ------------------------------------------------------------------------------------------------- recording
def _action_record(
    *,
    request_id: str,
    received_at: dt.datetime,
    key_id: str,
    action: ActionKind,
    target_kind: TargetKind,
    target_id: str,
    dataset: str | None,
    note: str,
    outcome: str | None,
) -> InferenceRecord:
    payload = {
        "action": action,
        "target_kind": target_kind,
        "target_id": target_id,
        "note": note,
        "outcome": outcome,
    }
    return InferenceRecord(
        request_id=request_id,
        received_at=received_at,
        dataset=dataset,
        route=ACTION_ROUTES[action],
        status=RequestStatus.OK,
        http_status=200,
        client_key_id=key_id,
        inputs=[{"oversight": payload}],
        labels=[outcome] if outcome is not None else [],
    )


async def record_action(
    gateway: GatewayState,
    *,
    request_id: str,
    key_id: str,
    action: ActionKind,
    target_kind: TargetKind,
    target_id: str,
    dataset: str | None,
    note: str,
    outcome: str | None = None,
) -> OversightAction:
    """Append ``action`` as a committed, chained inference-log row (indexed by the migration's trigger) and return
    it. Generic: callers check their target first (the ``*_prediction`` / ``*_dataset`` helpers do; B's
    approve/reject checks the model version). Validates the note (non-empty after stripping, at most
    :data:`MAX_NOTE_LENGTH` characters, no NUL, valid Unicode), the action/target kinds and the ids.

    Raises :class:`InvalidActionError` (422), :class:`ActionConflictError` (409: ``request_id`` is already a
    logged row) or :class:`ActionNotRecordedError` (503: the log is unreachable, the row was spooled, quarantined
    or not committed in time; a spooled action enters the chain, and takes effect, once the log is reachable).
    """
    if action not in ACTION_KINDS:
        raise InvalidActionError("action", f"must be one of {', '.join(ACTION_KINDS)}")
    kind, target = check_target(target_kind, target_id)
    if ACTION_TARGETS[action] != kind:
        raise InvalidActionError("target_kind", f"a {action} applies to a {ACTION_TARGETS[action]}, not a {kind}")
    check_prediction_id("request_id", request_id)
    if not isinstance(key_id, str) or not key_id or len(key_id) > MAX_TARGET_ID_LENGTH or "\x00" in key_id:
        raise InvalidActionError("key_id", "must be the acting API key's id")
    if dataset is not None:
        check_dataset_name("dataset", dataset)
    check_note("reason" if action not in ("flag",) else "note", note)
    if action == "override":
        if not isinstance(outcome, str) or not outcome:
            raise InvalidActionError("outcome", "an override names the reviewer's outcome")
    elif outcome is not None:
        raise InvalidActionError("outcome", f"only an override has an outcome, not a {action}")
    if gateway.writer.degraded:
        raise ActionNotRecordedError(
            "inference_log",
            f"the inference log is {gateway.writer.status}: oversight actions are taken only once they can be "
            "committed to it; retry shortly",
        )
    received_at = dt.datetime.now(dt.UTC)
    row = _action_record(
        request_id=request_id,
        received_at=received_at,
        key_id=key_id,
        action=action,
        target_kind=kind,
        target_id=target,
        dataset=dataset,
        note=note,
        outcome=outcome,
    )
    try:
        durability = await gateway.writer.record(row)
    except AuditWriteError as failure:
        logger.warning("oversight %s of %s %s not recorded (%s): %s", action, kind, target, failure.reason, failure)
        if failure.reason == "duplicate":
            raise ActionConflictError(
                "request_id", f"{request_id} is already a row of the inference log", row_attempted=True
            ) from None
        raise ActionNotRecordedError(
            "inference_log",
            f"the action could not be committed to the inference log ({failure.reason})",
            row_attempted=True,
        ) from None
    if durability is Durability.SPOOLED:
        logger.warning("oversight %s %s spooled: it takes effect once the inference log is reachable", action, target)
        raise ActionNotRecordedError(
            "inference_log",
            "the inference log became unreachable: the action was spooled and takes effect once it is committed "
            f"(action {request_id}; do not repeat it)",
            row_attempted=True,
            spooled=True,
        )
    if durability is Durability.QUARANTINED:
        raise ActionNotRecordedError(
            "inference_log",
            f"the action's row was refused by the inference log and quarantined ({request_id})",
            row_attempted=True,
        )
    recorded = OversightAction(
        action_id=request_id,
        action=action,
        target_kind=kind,
        target_id=target,
        dataset=dataset,
        actor_key_id=key_id,
        note=note,
        outcome=outcome,
        recorded_at=received_at,
    )
    logger.info("oversight: %s of %s %s by key %s (action %s)", action, kind, target, key_id, request_id)
    if action in ("suspend", "resume") and dataset is not None and gateway.oversight is not None:
        await gateway.oversight.refresh(gateway.writer.pool, dataset)  # this process sees it at once
    return recorded


# ------------------------------------------------------------------------------------------------- reading
_ACTION_COLUMNS = "seq, action_id, action, target_kind, target_id, dataset, actor_key_id, note, outcome, recorded_at"


def _action_of(row: dict[str, Any]) -> OversightAction:
    restored = unescape({name: value for name, value in row.items() if name not in ("seq", "recorded_at")})
    return OversightAction(**restored, recorded_at=row["recorded_at"])


@contextlib.asynccontextmanager
async def _reading() -> AsyncIterator[None]:
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as error:
        logger.warning("oversight: the inference log is unreachable: %s", error)
        raise OversightUnavailableError("inference_log", "the inference log is unreachable right now") from None


async def actions_for(gateway: GatewayState, target_kind: TargetKind, target_id: str) -> list[OversightAction]:
    """Every action on one target, oldest first (chain order). Raises :class:`InvalidActionError` for a
    malformed kind or id, :class:`OversightUnavailableError` if the log cannot be read."""
    async with _reading():
        return await fetch_actions(gateway.writer.pool, target_kind, target_id)


async def fetch_actions(
    pool: AsyncConnectionPool[Any], target_kind: TargetKind, target_id: str
) -> list[OversightAction]:
    """:func:`actions_for` through any pool (the CLI's); database errors propagate (psycopg's)."""
    kind, target = check_target(target_kind, target_id)
    query = f"select {_ACTION_COLUMNS} from oversight_actions where target_kind = %s and target_id = %s order by seq"
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, (kind, escape_text(target)))
        return [_action_of(row) for row in await cur.fetchall()]


@dataclass(frozen=True)
class ActionFilter:
    """Which actions a listing selects (every field optional)."""

    target_kind: TargetKind | None = None
    target_id: str | None = None
    dataset: str | None = None
    action: ActionKind | None = None

    def validate(self) -> None:
        if self.target_id is not None and self.target_kind is None:
            raise InvalidActionError("target_kind", "required with target_id")
        if self.target_kind is not None:
            if self.target_id is not None:
                check_target(self.target_kind, self.target_id)
            elif self.target_kind not in TARGET_KINDS:
                raise InvalidActionError("target_kind", f"must be one of {', '.join(TARGET_KINDS)}")
        if self.dataset is not None:
            check_dataset_name("dataset", self.dataset)
        if self.action is not None and self.action not in ACTION_KINDS:
            raise InvalidActionError("action", f"must be one of {', '.join(ACTION_KINDS)}")

    def as_json(self) -> dict[str, str]:
        fields = {
            "target_kind": self.target_kind,
            "target_id": self.target_id,
            "dataset": self.dataset,
            "action": self.action,
        }
        return {name: value for name, value in fields.items() if value is not None}

    def digest(self) -> str:
        text = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


_CURSOR_PATTERN = re.compile(r"([0-9]{1,19})\.([0-9a-f]{16})\.([A-Za-z0-9_-]{22})")
_PROCESS_CURSOR_KEY = secrets.token_bytes(32)


def _cursor_tag(payload: str, key: bytes | None) -> str:
    digest = hmac.new(key or _PROCESS_CURSOR_KEY, b"oversight-cursor:" + payload.encode("ascii"), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()[:16]).decode("ascii").rstrip("=")


def encode_action_cursor(seq: int, flt: ActionFilter, key: bytes | None) -> str:
    """The cursor after the action at chain position ``seq`` under ``flt``: ``<seq>.<filter digest>.<HMAC tag>``."""
    payload = f"{seq}.{flt.digest()}"
    return f"{payload}.{_cursor_tag(payload, key)}"


def decode_action_cursor(cursor: Any, flt: ActionFilter, key: bytes | None) -> int:
    """The chain position a cursor issued for ``flt`` points after; raises :class:`InvalidActionError` (field
    ``cursor``) for anything this API did not issue for these filters."""
    if not isinstance(cursor, str) or len(cursor) > 64:
        raise InvalidActionError("cursor", "malformed: not a cursor returned by this API")
    match = _CURSOR_PATTERN.fullmatch(cursor)
    if match is None:
        raise InvalidActionError("cursor", "malformed: not a cursor returned by this API")
    seq, digest, tag = match.groups()
    if not hmac.compare_digest(tag, _cursor_tag(f"{seq}.{digest}", key)):
        raise InvalidActionError("cursor", "altered or corrupted: not a cursor returned by this API")
    if digest != flt.digest():
        raise InvalidActionError("cursor", "issued for other filters: pass it with the filters that returned it")
    return int(seq)


async def list_actions(
    gateway: GatewayState,
    flt: ActionFilter,
    *,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[list[OversightAction], str | None]:
    """One page of actions, oldest first (chain order), and the next page's cursor (None on the last page).
    Keyset on the chain position; cursors are HMAC-tagged with the gateway's cursor key."""
    flt.validate()
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidActionError("limit", f"must be between 1 and {MAX_LIST_LIMIT}")
    after = decode_action_cursor(cursor, flt, gateway.cursor_key) if cursor else None
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in flt.as_json().items():
        clauses.append(f"{column} = %s")
        params.append(escape_text(value))
    if after is not None:
        clauses.append("seq > %s")
        params.append(after)
    where = f" where {' and '.join(clauses)}" if clauses else ""
    query = f"select {_ACTION_COLUMNS} from oversight_actions{where} order by seq limit %s"
    async with _reading(), gateway.writer.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, [*params, limit + 1])
        rows = await cur.fetchall()
    following = None
    if len(rows) > limit:
        rows = rows[:limit]
        following = encode_action_cursor(int(rows[-1]["seq"]), flt, gateway.cursor_key)
    return [_action_of(row) for row in rows], following


# ------------------------------------------------------------------------------------------------- actions
async def _logged_request(gateway: GatewayState, request_id: str) -> dict[str, Any] | None:
    query = "select request_id, dataset, route, status from inference_log where request_id = %s"
    async with _reading(), gateway.writer.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, (request_id,))
        return await cur.fetchone()


async def _prediction(gateway: GatewayState, target_request_id: str) -> dict[str, Any]:
    check_prediction_id("request_id", target_request_id)
    row = await _logged_request(gateway, target_request_id)
    if row is None:
        raise UnknownTargetError("request_id", f"no request {target_request_id!r} in the inference log")
    if row["route"] != PREDICT_ROUTE:
        raise InvalidActionError("request_id", f"{target_request_id} is not a prediction request ({row['route']})")
    return row


async def _record_on_prediction(
    gateway: GatewayState,
    action: ActionKind,
    row: dict[str, Any],
    *,
    request_id: str,
    key_id: str,
    note: str,
    outcome: str | None = None,
) -> OversightAction:
    """Record ``action`` on the logged prediction ``row`` (see :func:`_prediction`), in its dataset."""
    return await record_action(
        gateway,
        request_id=request_id,
        key_id=key_id,
        action=action,
        target_kind="prediction",
        target_id=row["request_id"],
        dataset=row["dataset"],
        note=note,
        outcome=outcome,
    )


async def flag_prediction(
    gateway: GatewayState, *, request_id: str, key_id: str, target_request_id: str, note: str
) -> OversightAction:
    """Flag a logged prediction (any predict request, served or refused) with a note. 404 for an unknown
    request id, 422 for one that is not a prediction (e.g. an action's own row) or a bad note."""
    check_note("note", note)
    row = await _prediction(gateway, target_request_id)
    return await _record_on_prediction(gateway, "flag", row, request_id=request_id, key_id=key_id, note=note)


async def override_prediction(
    gateway: GatewayState, *, request_id: str, key_id: str, target_request_id: str, outcome: str, reason: str
) -> OversightAction:
    """Record a reviewer's outcome for a served prediction (applies to the whole request, every record of a
    batch). 404 unknown request id; 409 a request that was not served (no prediction to overrule); 422 an
    outcome not among the dataset's target classes, or a bad reason."""
    check_note("reason", reason)
    if not isinstance(outcome, str):
        raise InvalidActionError("outcome", f"expected text, got {type(outcome).__name__}")
    row = await _prediction(gateway, target_request_id)
    if row["status"] != RequestStatus.OK.value:
        raise ActionConflictError(
            "request_id", f"{target_request_id} was not served ({row['status']}): there is no prediction to override"
        )
    spec = gateway.specs.get(row["dataset"])
    if spec is None:
        raise ActionConflictError("request_id", f"dataset {row['dataset']!r} is no longer served by this gateway")
    classes = [str(name) for name in spec.target.classes]
    if outcome not in classes:
        raise InvalidActionError("outcome", f"must be one of the dataset's target classes: {', '.join(classes)}")
    return await _record_on_prediction(
        gateway, "override", row, request_id=request_id, key_id=key_id, note=reason, outcome=outcome
    )


def _served_dataset(gateway: GatewayState, dataset: str) -> str:
    check_dataset_name("dataset", dataset)
    if dataset not in gateway.specs:
        raise UnknownTargetError("dataset", f"unknown dataset {dataset!r}; known: {', '.join(sorted(gateway.specs))}")
    return dataset


async def suspend_dataset(
    gateway: GatewayState, *, request_id: str, key_id: str, dataset: str, reason: str
) -> OversightAction:
    """Suspend a dataset's serving: from now on (every gateway process within about a second) its predict route
    answers 503 naming the actor and the reason, and records each refused request. 404 unknown dataset. A
    suspended dataset may be suspended again: the newest suspension (actor, reason) is the one reported."""
    return await _change_serving(gateway, "suspend", request_id=request_id, key_id=key_id, dataset=dataset, note=reason)


async def resume_dataset(
    gateway: GatewayState, *, request_id: str, key_id: str, dataset: str, reason: str
) -> OversightAction:
    """Resume a suspended dataset's serving. 404 unknown dataset; 409 a dataset that is not suspended (read from
    the database, not this process's memory)."""
    return await _change_serving(gateway, "resume", request_id=request_id, key_id=key_id, dataset=dataset, note=reason)


async def _change_serving(
    gateway: GatewayState, action: ActionKind, *, request_id: str, key_id: str, dataset: str, note: str
) -> OversightAction:
    """Suspend or resume under a transaction-scoped advisory lock per dataset, so that concurrent suspends and
    resumes (in any gateway process) are decided one after the other on the state the previous one left. The lock
    is only tried (a waiting request holds no pooled connection); after :data:`LOCK_WAIT_SECONDS` of trying the
    request is refused 409."""
    check_note("reason", note)
    _served_dataset(gateway, dataset)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        async with _reading(), gateway.writer.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "select pg_try_advisory_xact_lock(%s, hashtext(%s))", (_ADVISORY_LOCK_CLASS, dataset)
            )
            locked = await cur.fetchone()
            if locked is not None and locked[0]:
                query = _LATEST_DATASET_STATE + _LATEST_WHERE + " and dataset = %s order by dataset, seq desc"
                cur = await conn.execute(query, (dataset,))
                latest = await cur.fetchone()
                if action == "resume" and (latest is None or latest[0] != "suspend"):
                    raise ActionConflictError("dataset", f"dataset {dataset!r} is not suspended")
                return await record_action(
                    gateway,
                    request_id=request_id,
                    key_id=key_id,
                    action=action,
                    target_kind="dataset",
                    target_id=dataset,
                    dataset=dataset,
                    note=note,
                )
        if time.monotonic() >= deadline:
            raise ActionConflictError("dataset", f"another suspend or resume of {dataset!r} is in progress; retry")
        await asyncio.sleep(0.05)


def suspension_of(gateway: GatewayState, dataset: str) -> OversightAction | None:
    """The dataset's current suspension (its ``suspend`` action), or None if it is served. From memory (no
    database round trip), kept fresh across gateway processes by :class:`SuspensionMonitor`."""
    monitor = gateway.oversight
    return None if monitor is None else monitor.suspension(dataset)


def oversight_state_unknown(gateway: GatewayState) -> bool:
    """True while this gateway knows neither the database's suspensions nor its last known ones (the state file):
    predictions are then refused 503 (fail closed) until the database is read."""
    monitor = gateway.oversight
    return monitor is not None and monitor.state_unknown


def state_unknown_message(dataset: str) -> str:
    """What a predict request refused because the suspensions are unknown is told."""
    return (
        f"oversight state unknown: dataset {dataset!r} is not served until this gateway can read the reviewers' "
        "suspensions (the inference log is unreachable and no last known state was saved); retry shortly"
    )


def suspension_message(dataset: str, suspension: OversightAction) -> str:
    """What a refused predict request is told: who suspended the dataset, when, why, and the action's id."""
    return (
        f"dataset {dataset!r} is suspended: serving was stopped by API key {suspension.actor_key_id} at "
        f"{format_time(suspension.recorded_at)} (action {suspension.action_id}); reason: {suspension.note}"
    )


# ------------------------------------------------------------------------------------------------- suspensions
_LATEST_DATASET_STATE = (
    "select distinct on (dataset) action, action_id, target_kind, target_id, dataset, actor_key_id, note, outcome, "
    "recorded_at from oversight_actions"
)
_LATEST_WHERE = " where action in ('suspend', 'resume')"


class SuspensionMonitor:
    """The suspension of every dataset, in memory, kept fresh by LISTEN ``riverbed_oversight`` (one per gateway).

    :meth:`start` loads every dataset's latest suspend/resume (waiting up to ``start_timeout`` seconds) and starts
    the listener; each notification and each (re)connect re-read every dataset's state.

    **Fail closed.** After every read of the database the monitor saves the suspensions to ``state_file`` (0600,
    written to a temporary file, fsynced and renamed over the old one). If the log is unreachable at start the
    gateway still starts (it may serve from the spool) with the suspensions of that file: a suspended dataset stays
    suspended through a restart during an outage. With neither the database nor a readable file the state is
    unknown (:attr:`state_unknown`, gauge ``riverbed_oversight_state_unknown``): every prediction is refused 503
    "oversight state unknown" (a recorded row, ``riverbed_oversight_state_unknown_refusals_total``) until the
    database is read. Failures are WARNINGs counted in ``riverbed_oversight_listener_failures_total`` and
    ``riverbed_oversight_state_file_failures_total``; ``riverbed_oversight_state_known`` is 1 once the database
    was read.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        registry: CollectorRegistry | None = None,
        *,
        ping_interval: float = 2.0,
        reconnect_delay: tuple[float, float] = (0.2, 5.0),
        start_timeout: float = 5.0,
        state_file: Path | None = None,
    ) -> None:
        self._pool = pool
        self._state_file = state_file
        self._save_lock = asyncio.Lock()
        self._unknown = False  # set at start when neither the database nor the state file could be read
        self._from_file = False
        self._ping_interval = ping_interval
        self._start_timeout = start_timeout
        self._suspensions: dict[str, OversightAction] = {}
        self._task: asyncio.Task[None] | None = None
        self._loaded = asyncio.Event()
        self._listening = False
        self._listener = NotifyListener(
            channel=NOTIFY_CHANNEL,
            application_name="riverbed-oversight-listener",
            label="oversight listener",
            conninfo=self._conninfo,
            log=logger,
            connect_timeout=2,
            ping_interval=ping_interval,
            reconnect_delay=reconnect_delay,
            on_connect=self._on_connect,
            on_notified=self._on_notified,
            on_failure=lambda: self.failures.inc(),
            on_disconnect=lambda: self._set_listening(False),
            stop_after=1,
        )
        self.failures = Counter(
            "riverbed_oversight_listener_failures_total",
            "Failures of the suspension listener (connect, read, lost connection).",
            registry=registry,
        )
        self.state_known = Gauge(
            "riverbed_oversight_state_known",
            "1 once the gateway has read the datasets' suspensions from the inference log.",
            registry=registry,
        )
        self.listening_gauge = Gauge(
            "riverbed_oversight_listener",
            "1 while the suspension listener (LISTEN riverbed_oversight) is connected.",
            registry=registry,
        )
        self.suspended_gauge = Gauge(
            "riverbed_dataset_suspended",
            "1 while a dataset's serving is suspended by a reviewer.",
            ["dataset"],
            registry=registry,
        )
        self.state_unknown_gauge = Gauge(
            "riverbed_oversight_state_unknown",
            "1 while the gateway knows neither the database's suspensions nor its last known ones: it serves nothing.",
            registry=registry,
        )
        self.unknown_refusals = Counter(
            "riverbed_oversight_state_unknown_refusals_total",
            "Predict requests refused 503 because the datasets' suspensions were unknown.",
            ["dataset"],
            registry=registry,
        )
        self.state_file_failures = Counter(
            "riverbed_oversight_state_file_failures_total",
            "Failures to save or read the file of the last known suspensions.",
            registry=registry,
        )

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    @property
    def state_unknown(self) -> bool:
        """True while neither the database nor the state file told this gateway which datasets are suspended."""
        return self._unknown

    @property
    def from_file(self) -> bool:
        """True while the suspensions in force are the state file's (the database not read since start)."""
        return self._from_file

    def suspension(self, dataset: str) -> OversightAction | None:
        return self._suspensions.get(dataset)

    def suspended(self) -> dict[str, OversightAction]:
        return dict(self._suspensions)

    async def start(self, *, wait: bool = True) -> None:
        """Start the listener and, if ``wait``, wait (at most ``start_timeout``) until it has read every dataset's
        state (a gateway that knows PostgreSQL is down does not wait: the listener keeps trying)."""
        if self._task is not None:
            return
        if not wait:
            logger.warning("oversight: the inference log is unreachable; suspensions are read once it is back")
            self._fall_back_to_file()
            self._task = asyncio.create_task(self._listener.run(), name="oversight-listener")
            return
        self._task = asyncio.create_task(self._listener.run(), name="oversight-listener")
        try:
            await asyncio.wait_for(self._loaded.wait(), timeout=self._start_timeout)
        except TimeoutError:
            logger.warning(
                "oversight: dataset suspensions not read within %.0f s (the inference log is unreachable?)",
                self._start_timeout,
            )
            self._fall_back_to_file()

    def _fall_back_to_file(self) -> None:
        """The database could not be read at start: use the last known suspensions, or refuse everything (fail
        closed). Synchronous (a small file), so a database read that completes meanwhile is never overwritten."""
        if self._loaded.is_set():
            return
        saved = self._load_file()
        if saved is None:
            self._unknown = True
            self.state_unknown_gauge.set(1)
            logger.warning(
                "oversight: suspensions unknown (no database, no readable state file %s): every prediction is "
                "refused 503 until the inference log is read",
                self._state_file,
            )
            return
        self._from_file = True
        for dataset, suspension in saved.items():
            self._apply(dataset, suspension)
        logger.warning(
            "oversight: using the last known suspensions from %s until the inference log is read: %s",
            self._state_file,
            ", ".join(sorted(saved)) or "none",
        )

    def _load_file(self) -> dict[str, OversightAction] | None:
        """The state file's suspensions; None (WARNING, counted) if there is none or it cannot be trusted."""
        if self._state_file is None:
            return None
        try:
            info = self._state_file.stat()
            if info.st_mode & 0o022 or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
                raise ValueError(f"writable by others or not owned by this user (mode {info.st_mode & 0o777:o})")
            document = json.loads(self._state_file.read_bytes())
            if not isinstance(document, dict) or document.get("format") != STATE_FILE_FORMAT:
                raise ValueError(f"not a format-{STATE_FILE_FORMAT} suspensions file")
            listed = document.get("suspensions")
            if not isinstance(listed, dict):
                raise ValueError("no 'suspensions' object")
            return {str(name): OversightAction.model_validate(action) for name, action in listed.items()}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, ValidationError) as error:  # json.JSONDecodeError is a ValueError
            self.state_file_failures.inc()
            logger.warning("oversight: ignoring the state file %s: %s", self._state_file, error)
            return None

    async def _save(self) -> None:
        """Write the current suspensions to the state file (atomically, 0600); a failure is a counted WARNING."""
        if self._state_file is None or not self._loaded.is_set():
            return  # only a state read from the database is saved (never a partial or file-derived one)
        async with self._save_lock:
            document = {
                "format": STATE_FILE_FORMAT,
                "written_at": format_time(dt.datetime.now(dt.UTC)),
                "suspensions": {name: a.model_dump(mode="json") for name, a in sorted(self._suspensions.items())},
            }
            data = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
            try:
                await asyncio.to_thread(_write_private_file, self._state_file, data)
            except OSError as error:
                self.state_file_failures.inc()
                logger.warning("oversight: could not save the suspensions to %s: %s", self._state_file, error)

    def _read_from_database(self) -> None:
        self._loaded.set()
        self.state_known.set(1)
        if self._unknown or self._from_file:
            logger.warning("oversight: suspensions read from the inference log; the gateway serves as they say")
        self._unknown = self._from_file = False
        self.state_unknown_gauge.set(0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        self._set_listening(False)

    async def refresh(self, pool: AsyncConnectionPool[Any], dataset: str) -> None:
        """Re-read one dataset's state now (after this process recorded a suspend or resume)."""
        try:
            async with pool.connection() as conn:
                await self._read(conn, dataset)
        except (psycopg.Error, OSError, PoolTimeout) as error:
            self.failures.inc()
            logger.warning("oversight: could not re-read dataset %s (the listener will): %s", dataset, error)
            return
        await self._save()

    async def _read(self, conn: psycopg.AsyncConnection[Any], dataset: str | None) -> None:
        """Re-read one dataset's latest suspend/resume (``None``: every dataset's) and apply it."""
        where = _LATEST_WHERE + (" and dataset = %s" if dataset is not None else "")
        query = _LATEST_DATASET_STATE + where + " order by dataset, seq desc"
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, (dataset,) if dataset is not None else ())
            rows = await cur.fetchall()
        latest: dict[str, OversightAction | None] = {}
        for row in rows:
            latest[row["dataset"]] = _action_of(row) if row["action"] == "suspend" else None
        if dataset is None:
            for name in set(self._suspensions) - set(latest):
                latest[name] = None
        elif dataset not in latest:
            latest[dataset] = None
        for name, suspension in latest.items():
            self._apply(name, suspension)

    def _apply(self, dataset: str, suspension: OversightAction | None) -> None:
        previous = self._suspensions.get(dataset)
        if suspension is None:
            self._suspensions.pop(dataset, None)
            if previous is not None:
                logger.warning("oversight: dataset %s resumed", dataset)
        else:
            self._suspensions[dataset] = suspension
            if previous is None or previous.action_id != suspension.action_id:
                logger.warning(
                    "oversight: dataset %s suspended by key %s: %s",
                    dataset,
                    suspension.actor_key_id,
                    suspension.note[:200],
                )
        self.suspended_gauge.labels(dataset).set(1 if suspension is not None else 0)

    def _set_listening(self, listening: bool) -> None:
        self._listening = listening
        self.listening_gauge.set(1 if listening else 0)

    async def _conninfo(self) -> tuple[str, dict[str, Any]]:
        conninfo: Any = self._pool.conninfo  # the writer's pool: a DSN and a dict of options (no callables)
        options: Any = self._pool.kwargs
        return str(conninfo), (dict(options) if isinstance(options, dict) else {})

    async def _on_connect(self, conn: psycopg.AsyncConnection[Any], reconnected: bool) -> None:
        """A new listener connection (LISTEN active): re-read every dataset's state, save it, then listen."""
        await self._read(conn, None)  # LISTEN is active: nothing committed from now on is missed
        self._read_from_database()
        await self._save()
        self._set_listening(True)
        if reconnected:
            logger.info("oversight listener connected again; suspensions re-read")

    async def _on_notified(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Any notification re-reads every dataset's state: a few index rows, and no ordering between
        notifications to get wrong (the listener waits for one at a time, so the connection is free here)."""
        async with asyncio.timeout(max(1.0, self._ping_interval)):
            await self._read(conn, None)
        await self._save()


def _write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a 0600 temporary file in the same folder, fsynced, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
