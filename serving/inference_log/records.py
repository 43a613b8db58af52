"""What one inference-log row holds, and its canonical form: the exact text the chain hash covers.

Text PostgreSQL cannot store is escaped reversibly (:func:`escape_text`), so every record can be stored and its
hash covers exactly what is stored: a string that contains U+0000 or a lone surrogate (U+D800..U+DFFF), or that
already starts with :data:`ESCAPE_MARKER`, is stored as ``ESCAPE_MARKER + body`` where the body is the string with
``\\`` doubled, NUL written ``\\0`` and each lone surrogate written ``\\uXXXX`` (four lowercase hex digits). Every
other string is stored unchanged. :func:`unescape_text` / :func:`unescape` restore the original exactly; the
rule applies to every string of a record (object keys included).
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from typing import Any

import orjson

GENESIS_HASH = "0" * 64
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

# The row's content fields, in InferenceRecord order: exactly what the hash covers.
CONTENT_FIELDS = (
    "request_id",
    "received_at",
    "dataset",
    "route",
    "status",
    "http_status",
    "client_key_id",
    "model_name",
    "model_version",
    "mlflow_run_id",
    "training_set_commit_id",
    "data_commit_ids",
    "dagster_run_id",
    "inputs",
    "outputs",
    "labels",
    "error",
    "timings_ms",
)
_JSONB_FIELDS = frozenset({"data_commit_ids", "inputs", "outputs", "timings_ms"})

# U+241B SYMBOL FOR ESCAPE: the first character of every escaped string (and only of those).
ESCAPE_MARKER = "\u241b"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE_SEQUENCE = re.compile(r"\\(\\|0|u[0-9a-f]{4})")


class RequestStatus(enum.StrEnum):
    """Outcome of a request: ``ok``; ``rejected`` (bad input, 4xx); ``failed`` (server side, e.g. MLServer down)."""

    OK = "ok"
    REJECTED = "rejected"
    FAILED = "failed"


class Durability(enum.Enum):
    """Where a recorded row is when :meth:`InferenceLogWriter.record` returns.

    ``COMMITTED``: in the hash chain. ``SPOOLED``: fsynced to the local spool (PostgreSQL unreachable, or the
    spool is being replayed); it enters the chain later, in order. ``QUARANTINED``: PostgreSQL refused the row
    (data or integrity error, a statement that timed out on this row alone, or a row larger than the writer's
    ``max_row_bytes``): it is kept verbatim outside the chain in ``inference_log_quarantine`` (or the local
    quarantine file), not tamper-evident and possibly truncated. The gateway answers 503 (reason
    ``audit_quarantined``) instead of a successful answer, and keeps an error answer it was already giving.
    """

    COMMITTED = "committed"
    SPOOLED = "spooled"
    QUARANTINED = "quarantined"


class AuditWriteError(RuntimeError):
    """The record is not durable anywhere: ``reason`` says why (the gateway answers 503 naming it).

    Reasons: ``invalid_record`` (not JSON-serialisable), ``duplicate`` (request id already logged),
    ``not_running``, ``unavailable`` (neither PostgreSQL nor the spool took it), ``timeout``
    (:class:`AuditTimeoutError`).
    """

    reason = "unavailable"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class AuditTimeoutError(AuditWriteError):
    """The row was not durable within the writer's ``record_timeout`` (e.g. the chain head is locked)."""

    reason = "timeout"


@dataclass
class InferenceRecord:
    """One gateway request, as recorded. Dict and list fields hold anything JSON-serialisable."""

    request_id: str
    received_at: dt.datetime
    dataset: str | None
    route: str
    status: RequestStatus
    http_status: int
    client_key_id: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    mlflow_run_id: str | None = None
    training_set_commit_id: str | None = None
    data_commit_ids: dict[str, str] = field(default_factory=dict)
    dagster_run_id: str | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    error: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- escaping
def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return "\\0" if char == "\x00" else f"\\u{ord(char):04x}"


def escape_text(value: str) -> str:
    """The storable form of ``value`` (itself unless it holds NUL / a lone surrogate or starts with the marker)."""
    if not value.startswith(ESCAPE_MARKER) and _UNSTORABLE.search(value) is None:
        return value
    return ESCAPE_MARKER + _UNSTORABLE.sub(_escape_char, value.replace("\\", "\\\\"))


def _unescape_sequence(match: re.Match[str]) -> str:
    code = match.group(1)
    if code == "\\":
        return "\\"
    if code == "0":
        return "\x00"
    return chr(int(code[1:], 16))


def unescape_text(value: str) -> str:
    """The original of a stored string (inverse of :func:`escape_text`)."""
    if not value.startswith(ESCAPE_MARKER):
        return value
    return _ESCAPE_SEQUENCE.sub(_unescape_sequence, value[len(ESCAPE_MARKER) :])


def escape(value: Any) -> Any:
    """:func:`escape_text` applied to every string (and object key) of a JSON value."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {escape_text(str(key)): escape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [escape(item) for item in value]
    return value


def unescape(value: Any) -> Any:
    """The original of a stored JSON value or row (for readers: audit API, exports); inverse of :func:`escape`."""
    if isinstance(value, str):
        return unescape_text(value)
    if isinstance(value, dict):
        return {unescape_text(key) if isinstance(key, str) else key: unescape(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [unescape(item) for item in value]
    return value


# ----------------------------------------------------------------------------------------------- canonical form
def format_time(value: dt.datetime) -> str:
    """Microsecond ISO UTC text of a timestamp (naive values are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).strftime(_TIME_FORMAT)


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=dt.UTC)


def _jsonb_float(text: str) -> float | int:
    """Parse a JSON number the way it reads back from jsonb (numeric never prints exponents or negative zero)."""
    if ("e" in text or "E" in text) and "e-" not in text and "E-" not in text:
        exact = Decimal(text)
        if exact == exact.to_integral_value():
            return int(exact)
    value = float(text)
    return 0.0 if value == 0 else value


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return format_time(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def canonical_json(content: dict[str, Any]) -> str:
    """The hashed text of a row's content: sorted keys, no spaces, UTF-8."""
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class Prepared:
    """A record normalised to exactly what PostgreSQL will store and give back: its content and canonical text.

    An ``oversized`` record (larger than the writer's limit) is not normalised: ``canonical`` is its verbatim
    JSON (storable: lone surrogates written as JSON escapes) and ``content`` holds only its id and time; it is
    quarantined without being offered to PostgreSQL.
    """

    content: dict[str, Any]
    canonical: str
    oversized: bool = False

    @property
    def request_id(self) -> str:
        return str(self.content["request_id"])

    @cached_property
    def jsonb_texts(self) -> dict[str, str]:
        """The jsonb fields as JSON text, encoded once (retries reuse it; no deadline pays for encoding)."""
        return {name: _jsonb_text(self.content[name]) for name in _JSONB_FIELDS}

    @property
    def received_at(self) -> dt.datetime | None:
        try:
            return parse_time(str(self.content["received_at"]))
        except (KeyError, ValueError):
            return None


def prepare(rec: InferenceRecord, *, max_bytes: int | None = None) -> Prepared:
    """Normalise a record (raises :class:`AuditWriteError` ``invalid_record`` if it is not JSON-serialisable)."""
    raw = {name: getattr(rec, name) for name in CONTENT_FIELDS}
    raw["received_at"] = format_time(rec.received_at)
    raw["status"] = RequestStatus(rec.status).value
    raw["labels"] = [str(label) for label in rec.labels]
    try:
        text = json.dumps(
            raw, default=_json_default, allow_nan=False, ensure_ascii=False, sort_keys=True, separators=(",", ":")
        )
    except (TypeError, ValueError) as error:
        raise AuditWriteError(
            f"record {rec.request_id}: not JSON-serialisable ({error})", reason="invalid_record"
        ) from error
    if max_bytes is not None and len(text) > max_bytes // 4 and len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        storable = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) if _SURROGATE.search(text) else text
        head = {"request_id": escape_text(str(rec.request_id)), "received_at": raw["received_at"]}
        return Prepared(content=head, canonical=storable, oversized=True)
    value = json.loads(text, parse_float=_jsonb_float)
    if "\\u0000" in text or ESCAPE_MARKER in text or _SURROGATE.search(text) is not None:
        value = escape(value)
    return from_content(value)


def from_content(content: dict[str, Any]) -> Prepared:
    """A prepared record from stored (already escaped) content, e.g. a spool line; raises ValueError."""
    missing = [name for name in CONTENT_FIELDS if name not in content]
    if missing:
        raise ValueError(f"record lacks fields {missing}")
    content = {name: content[name] for name in CONTENT_FIELDS}
    return Prepared(content=content, canonical=canonical_json(content))


def content_of_row(row: dict[str, Any]) -> dict[str, Any]:
    """The content fields of a row read back from PostgreSQL, in canonical form."""
    content = {name: row[name] for name in CONTENT_FIELDS}
    content["received_at"] = format_time(row["received_at"])
    return content


def _jsonb_text(value: Any) -> str:
    """JSON text of a jsonb value (orjson; the standard library for what it refuses, e.g. integers over 64 bits).

    Only PostgreSQL parses this text: the hash covers :func:`canonical_json`, and jsonb stores numbers as numeric,
    so both encoders give the same stored value.
    """
    try:
        return orjson.dumps(value).decode("utf-8")
    except TypeError:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def insert_placeholders() -> list[str]:
    """SQL placeholders of the content fields, in CONTENT_FIELDS order (jsonb fields are sent as JSON text)."""
    return ["%s::jsonb" if name in _JSONB_FIELDS else "%s" for name in CONTENT_FIELDS]


def insert_values(prepared: Prepared) -> list[Any]:
    """The content fields of a prepared record as insert parameters, in CONTENT_FIELDS order."""
    texts = prepared.jsonb_texts
    values: list[Any] = []
    for name in CONTENT_FIELDS:
        value = prepared.content[name]
        if name == "received_at":
            value = parse_time(value)
        elif name in _JSONB_FIELDS:
            value = texts[name]
        values.append(value)
    return values


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
