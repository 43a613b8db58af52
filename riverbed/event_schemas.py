"""Versioned JSON Schemas of the event topics, and the raw-message codec the producer and the sensor share.

A raw message (topic ``<prefix>.<dataset>.raw``) is one flat JSON object: ``sample_id`` (the record's id),
``event_time`` (ISO 8601; without an offset it means UTC), one property per feature of the spec and the
target. Its schema is derived from the dataset spec and versioned with it (``schemas/<dataset>.raw.v<N>.json``,
N = the spec's ``version``). The schema is the *structural* contract: every field present, of its JSON type,
nothing unknown, and only what every store downstream can hold: a sample id of at most ``MAX_ID_LENGTH``
characters without control characters, no NUL in any text, integers within 64 bits, an event time that exists
in UTC (years 1 to 9999). Value rules (ranges, category lists, classes) stay with the raw asset's validation, which
keeps such records under ``_rejected`` with their reason, so a value a provider gets wrong is never lost.

Labels, prediction events and dead letters have schemas generated from their models in
:mod:`riverbed.events`. ``riverbed kafka schemas`` rewrites the files; a test keeps them in sync.

:func:`parse_raw_message` is on the ingestion hot path: hand-written checks equivalent to the schema (a test
compares it with a JSON Schema validator on good and bad messages), about a microsecond per field.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from riverbed.events import ID_PATTERN, MAX_ID_LENGTH, SAMPLE_ID_FIELD, DeadLetter, LabelEvent, PredictionEvent
from riverbed.settings import PROJECT_ROOT
from riverbed.specs import DatasetSpec, FeatureType

SCHEMAS_DIR = PROJECT_ROOT / "schemas"
EVENT_TIME_FIELD = "event_time"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
NO_NUL_PATTERN = "^[^\\u0000]*$"
EVENT_SCHEMA_VERSION = 1  # of the label / prediction / dead-letter schemas; bump with an incompatible change


class RawMessageError(ValueError):
    """A raw message that breaks its schema; the text names the field and the rule."""


# ------------------------------------------------------------------------------------------------ schemas


def raw_schema_file_name(spec: DatasetSpec) -> str:
    return f"{spec.name}.raw.v{spec.version}.json"


def _feature_schema(feature: Any) -> dict[str, Any]:
    json_type = {FeatureType.NUMERIC: "number", FeatureType.INTEGER: "integer"}.get(feature.type, "string")
    rule = ""
    if feature.type == FeatureType.CATEGORY:
        rule = f" One of {feature.categories} (checked by raw validation)."
    elif feature.minimum is not None or feature.maximum is not None:
        rule = f" Range [{feature.minimum}, {feature.maximum}] (checked by raw validation)."
    schema: dict[str, Any] = {
        "type": [json_type, "null"] if feature.nullable else json_type,
        "description": (feature.description or feature.name) + rule,
    }
    if json_type == "string":
        schema["pattern"] = NO_NUL_PATTERN
    elif json_type == "integer":
        schema["minimum"], schema["maximum"] = -(2**63), 2**63 - 1
    return schema


def raw_record_schema(spec: DatasetSpec) -> dict[str, Any]:
    """The JSON Schema of ``<prefix>.<spec.name>.raw`` messages."""
    properties: dict[str, Any] = {
        SAMPLE_ID_FIELD: {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_ID_LENGTH,
            "pattern": ID_PATTERN,
            "description": "The record's id (Kafka key too); no control characters.",
        },
        EVENT_TIME_FIELD: {
            "type": "string",
            "format": "date-time",
            "description": "When the record happened, ISO 8601; without an offset it means UTC. Picks the daily "
            "partition.",
        },
    }
    for feature in spec.features:
        properties[feature.name] = _feature_schema(feature)
    properties[spec.target.name] = {
        "type": ["string", "integer"],
        "maxLength": MAX_ID_LENGTH,
        "pattern": NO_NUL_PATTERN,
        "description": f"The label, one of {spec.target.classes} (checked by raw validation).",
    }
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"riverbed/schemas/{raw_schema_file_name(spec)}",
        "title": f"{spec.name} raw record, version {spec.version}",
        "description": f"One record of {spec.name} as a data provider publishes it. {spec.description}".strip(),
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _model_schema(model: Any, name: str) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"riverbed/schemas/{name}.v{EVENT_SCHEMA_VERSION}.json",
        **schema,
    }


def event_schemas() -> dict[str, dict[str, Any]]:
    """File name -> schema of the dataset-independent topics (labels, predictions, dead letters)."""
    return {
        f"label.v{EVENT_SCHEMA_VERSION}.json": _model_schema(LabelEvent, "label"),
        f"prediction.v{EVENT_SCHEMA_VERSION}.json": _model_schema(PredictionEvent, "prediction"),
        f"dead_letter.v{EVENT_SCHEMA_VERSION}.json": _model_schema(DeadLetter, "dead_letter"),
    }


def all_schemas(specs: Mapping[str, DatasetSpec]) -> dict[str, dict[str, Any]]:
    """Every schema file's name and content, for the given dataset specs."""
    schemas = {raw_schema_file_name(spec): raw_record_schema(spec) for spec in specs.values()}
    schemas.update(event_schemas())
    return dict(sorted(schemas.items()))


def schema_text(schema: Mapping[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def write_schemas(specs: Mapping[str, DatasetSpec], directory: Path = SCHEMAS_DIR) -> list[Path]:
    """Write (or rewrite) every schema file; returns the files that changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, schema in all_schemas(specs).items():
        path = directory / name
        text = schema_text(schema)
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


# ------------------------------------------------------------------------------------------------ codec


def _event_time_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime):
        moment = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
        return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    raise TypeError(f"event_time: cannot encode {type(value).__name__}")


def _plain(value: Any) -> Any:
    """numpy / pandas scalars to JSON values; NaN and NA to null."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value.__class__.__name__ in {"NAType", "NaTType"}:
        return None
    return value


def _typed(kind: FeatureType, value: Any) -> Any:
    """Numbers read from text files (``"39"``) as JSON numbers; anything unparseable is sent as it is (and is
    then refused with its reason)."""
    if kind == FeatureType.CATEGORY or value is None:
        return value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return value
        if math.isnan(value):
            return None
    if kind == FeatureType.INTEGER and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def raw_message(spec: DatasetSpec, row: Mapping[str, Any]) -> bytes:
    """Encode one record (keyed by the spec's column names) as a raw message."""
    message: dict[str, Any] = {
        SAMPLE_ID_FIELD: str(row[spec.record_id.name]),
        EVENT_TIME_FIELD: _event_time_text(row[spec.event_time.name]),
    }
    for feature in spec.features:
        message[feature.name] = _typed(feature.type, _plain(row.get(feature.name)))
    target = _plain(row.get(spec.target.name))
    message[spec.target.name] = None if target is None else str(target)
    return orjson.dumps(message)


_INT64 = 2**63
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _has_nul(value: str) -> bool:
    return "\x00" in value


class _RawParser:
    """Checks compiled once per spec: field name -> (accepted Python types, rule text, nullable)."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        # (field, accepted JSON scalar types, rule for messages, nullable, must be a whole number)
        self.checks: list[tuple[str, tuple[type[int | float | str], ...], str, bool, bool]] = []
        for feature in spec.features:
            if feature.type == FeatureType.NUMERIC:
                self.checks.append((feature.name, (int, float), "a number", feature.nullable, False))
            elif feature.type == FeatureType.INTEGER:
                self.checks.append((feature.name, (int, float), "an integer", feature.nullable, True))
            else:
                self.checks.append((feature.name, (str,), "a string", feature.nullable, False))
        self.fields = {SAMPLE_ID_FIELD, EVENT_TIME_FIELD, *(c[0] for c in self.checks), spec.target.name}
        self.version = f"{spec.name}.raw v{spec.version}"

    def parse(self, value: bytes) -> dict[str, Any]:
        try:
            record = orjson.loads(value)  # strict JSON: no NaN / Infinity, valid UTF-8, nesting depth <= 1024
        except orjson.JSONDecodeError as error:
            raise RawMessageError(f"value: not a JSON document ({error})") from None
        if not isinstance(record, dict):
            raise RawMessageError(f"value: a JSON object is required, got {type(record).__name__}")
        if record.keys() != self.fields:
            missing = sorted(self.fields - record.keys())
            if missing:
                raise RawMessageError(f"{', '.join(missing)}: missing (required by {self.version})")
            unknown = sorted(_shown(k) for k in record.keys() - self.fields)
            raise RawMessageError(f"{', '.join(unknown)}: not a field of {self.version}")
        sample_id = record[SAMPLE_ID_FIELD]
        if not isinstance(sample_id, str) or not sample_id:
            raise RawMessageError(f"sample_id: {_shown(sample_id)} is not a non-empty string")
        if len(sample_id) > MAX_ID_LENGTH:
            raise RawMessageError(f"sample_id: {len(sample_id)} characters, more than the {MAX_ID_LENGTH} allowed")
        if _CONTROL.search(sample_id):
            raise RawMessageError(f"sample_id: {_shown(sample_id)} contains a control character (NUL, line break...)")
        record[EVENT_TIME_FIELD] = _utc_event_time(record[EVENT_TIME_FIELD])
        for name, types, rule, nullable, whole in self.checks:
            item = record[name]
            if item is None:
                if nullable:
                    continue
                raise RawMessageError(f"{name}: null (the feature is not nullable)")
            if not isinstance(item, types) or isinstance(item, bool):
                raise RawMessageError(f"{name}: {_shown(item)} is not {rule}")
            if isinstance(item, str):
                if _has_nul(item):
                    raise RawMessageError(f"{name}: {_shown(item)} contains a NUL character")
            elif isinstance(item, int):
                if not -_INT64 <= item < _INT64:
                    raise RawMessageError(f"{name}: {item} is outside the 64-bit integer range")
                if not whole:
                    record[name] = float(item)  # a number column stays float64 whatever the literal looked like
            elif not math.isfinite(item):  # orjson refuses NaN / Infinity; kept for records built in Python
                raise RawMessageError(f"{name}: {item} is not a finite number")
            elif whole and not item.is_integer():
                raise RawMessageError(f"{name}: {item!r} is not {rule}")
            elif whole and not -_INT64 <= item < _INT64:
                raise RawMessageError(f"{name}: {item:g} is outside the 64-bit integer range")
        target = record[self.spec.target.name]
        if isinstance(target, bool) or not isinstance(target, str | int):
            raise RawMessageError(f"{self.spec.target.name}: {_shown(target)} is not a string or integer label")
        target = str(target)
        if _has_nul(target) or len(target) > MAX_ID_LENGTH:
            raise RawMessageError(
                f"{self.spec.target.name}: {_shown(target)} contains a NUL character or is longer than "
                f"{MAX_ID_LENGTH} characters"
            )
        record[self.spec.target.name] = target
        return record


def _shown(value: Any, limit: int = 60) -> str:
    """``repr`` of a value for a reason, cut to ``limit`` characters (a reason must stay small)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"


def _utc_event_time(event_time: Any) -> str:
    """The event time as UTC ISO 8601; raises :class:`RawMessageError` naming the rule."""
    if not isinstance(event_time, str):
        raise RawMessageError(f"event_time: {_shown(event_time)} is not an ISO 8601 string")
    try:
        moment = dt.datetime.fromisoformat(event_time)
    except ValueError:
        raise RawMessageError(f"event_time: {_shown(event_time)} is not an ISO 8601 date-time") from None
    try:
        moment = moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    except OverflowError:
        raise RawMessageError(f"event_time: {_shown(event_time)} is outside the years 1 to 9999 in UTC") from None
    return moment.isoformat()


# Compiled checks per spec object (a parser holds its spec, so an id is never reused while cached).
_PARSERS: dict[int, _RawParser] = {}
_MAX_PARSERS = 64


def parse_raw_message(spec: DatasetSpec, value: bytes) -> dict[str, Any]:
    """Decode and check one raw message; returns the record with ``event_time`` normalised to UTC ISO 8601.

    Raises :class:`RawMessageError` naming the field and the rule.
    """
    parser = _PARSERS.get(id(spec))
    if parser is None:
        if len(_PARSERS) >= _MAX_PARSERS:  # specs reloaded many times in one process: start over
            _PARSERS.clear()
        parser = _PARSERS[id(spec)] = _RawParser(spec)
    return parser.parse(value)
