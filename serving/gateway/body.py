"""A predict body under hostile input: read within a byte limit, decoded within limits on depth, strings and numbers.

Reading (:func:`read_body`) stops as soon as the limit is passed, whether the client declared a
``Content-Length`` or streams a chunked body (or declares one length and sends more): nothing beyond
``max_body_bytes`` plus one chunk is ever held. Decoding (:func:`decode_body`) checks, before any
validation against the dataset's spec:

* nesting depth, counted on the raw bytes (strings stripped by one linear regex, brackets summed with
  numpy), so no parser ever recurses into a hostile document;
* the number of JSON values (a cheap count, so the checks below stay bounded);
* every string (and object key): at most ``max_string_length`` characters, no NUL character, valid Unicode;
* every number: finite (no ``NaN``/``Infinity`` literals, nothing like ``1e999``) and, for integers, at most
  2^53 in magnitude (what a float64 holds exactly: models score FP64).

orjson parses well-formed bodies; a body it refuses is parsed once more by the standard library's lenient
parser only to name the offending field. Each problem names the record (batch index), the field and the rule;
a refused body is summarised by :class:`ReceivedBody` (size, SHA-256, first bytes) for the inference log.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from starlette.requests import ClientDisconnect, Request

from serving.gateway.schemas import RecordProblem, RequestRejected

HEAD_BYTES = 256  # how much of a refused body the inference log keeps, as text
MAX_EXACT_INTEGER = 2**53  # the largest magnitude a float64 holds exactly
MAX_PROBLEMS = 100  # a refusal names at most this many problems
_LOCATABLE_DEPTH = 200  # deeper than this, a too-deep body is refused without parsing it to name the field
_PREVIEW_CHARS = 64

# A JSON string token (possessive: linear, never backtracks); an unterminated one runs to the end of the body.
_STRING_TOKEN = re.compile(rb'"(?:[^"\\]++|\\[\s\S])*+"?')
# An integer literal of 17 or more digits (beyond 2^53) outside strings; orjson turns those beyond 64 bits into
# floats, so their presence sends the body through the exact parser.
_LONG_INTEGER = re.compile(rb"(?<![0-9.eE+\-])-?[0-9]{17,}+(?![.eE0-9])")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
_OPENING = (ord("["), ord("{"))


def escape_nul(text: str) -> str:
    """``text`` with each NUL character written as the six characters ``\\u0000`` (PostgreSQL stores no NUL)."""
    return text.replace("\x00", "\\u0000")


def printable(text: str, limit: int = _PREVIEW_CHARS) -> str:
    """A short, storable rendering of client text: NUL escaped, lone surrogates escaped, cut at ``limit``."""
    cut = text[:limit]
    if not cut.isascii():
        cut = cut.encode("utf-8", "backslashreplace").decode("utf-8")
    return escape_nul(cut) + ("…" if len(text) > limit else "")


@dataclass(frozen=True)
class BodyLimits:
    """The limits of one predict body (from the settings ``max_body_bytes``, ``max_string_length``,
    ``max_json_depth`` and ``max_batch_records``; ``max_values`` follows from the batch size)."""

    max_bytes: int
    max_string_length: int
    max_depth: int
    max_records: int
    max_values: int


@dataclass(frozen=True)
class ReceivedBody:
    """The bytes of a body as far as they were read; ``complete`` is False when reading stopped at the limit."""

    data: bytes
    declared_bytes: int | None  # the Content-Length header, if any
    complete: bool

    def summary(self) -> dict[str, Any]:
        """What the inference log keeps of a refused body: never the body itself."""
        return {
            "refused_body": {
                "bytes": len(self.data),
                "declared_bytes": self.declared_bytes,
                "complete": self.complete,
                "sha256": hashlib.sha256(self.data).hexdigest(),
                "head": escape_nul(self.data[:HEAD_BYTES].decode("utf-8", "replace")),
            }
        }


class BodyTooLarge(RequestRejected):
    """413: the body passed ``max_body_bytes`` (declared or while reading); carries what was read."""

    def __init__(self, received: ReceivedBody, limit: int) -> None:
        size = received.declared_bytes if received.declared_bytes is not None else len(received.data)
        more = "" if received.declared_bytes is not None else "at least "
        super().__init__(
            413,
            f"the request body ({more}{size} bytes) is larger than the limit of {limit} bytes",
            [RecordProblem(None, "body", size, f"at most {limit} bytes")],
            headers={"Connection": "close"},  # do not read (and discard) the rest of a huge upload
        )
        self.received = received


def _declared_length(request: Request) -> int | None:
    text = request.headers.get("content-length")
    if text is None or not text.isdigit() or len(text) > 19:
        return None
    return int(text)


async def read_body(request: Request, max_bytes: int) -> ReceivedBody:
    """The whole body if it holds at most ``max_bytes``; else raises :class:`BodyTooLarge` having read no more
    than the limit plus one chunk (nothing at all when ``Content-Length`` already says it is too large)."""
    declared = _declared_length(request)
    if declared is not None and declared > max_bytes:
        raise BodyTooLarge(ReceivedBody(b"", declared, complete=False), max_bytes)
    chunks: list[bytes] = []
    total = 0
    try:
        async for chunk in request.stream():
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise BodyTooLarge(ReceivedBody(b"".join(chunks), declared, complete=False), max_bytes)
    except ClientDisconnect:
        raise RequestRejected(
            400,
            "the client disconnected before sending the whole body",
            [RecordProblem(None, "body", total, "incomplete: the connection closed")],
        ) from None
    return ReceivedBody(b"".join(chunks), declared, complete=True)


# -------------------------------------------------------------------------------------------------------- decoding
def _max_depth(stripped: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in a body whose strings were removed (0 for a scalar)."""
    brackets = np.frombuffer(stripped.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    if brackets.size == 0:
        return 0
    steps = np.where((brackets == _OPENING[0]) | (brackets == _OPENING[1]), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max())


@dataclass(frozen=True)
class _HugeInteger:
    """An integer literal too long to convert (more than 40 digits), kept as text."""

    text: str


def _bounded_int(text: str) -> int | _HugeInteger:
    return _HugeInteger(text) if len(text) > 40 else int(text)


def _lenient_parse(data: bytes) -> Any:
    """The standard library's parse (NaN/Infinity accepted, control characters in strings accepted, exact
    integers), used only to name what orjson refused; raises ValueError if the text is not JSON at all."""
    text = data.decode("utf-8")  # UnicodeDecodeError is a ValueError
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        raise
    except ValueError:  # an integer of more than 4300 digits: parse again, keeping long integers as text
        return json.loads(text, strict=False, parse_int=_bounded_int)


def _shown(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, _HugeInteger):
        return printable(value.text, 40)
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int) and not -MAX_EXACT_INTEGER <= value <= MAX_EXACT_INTEGER:
        return printable(str(value), 40)  # as text: JSON encoders refuse integers beyond 64 bits
    return value


class _Scan:
    """An iterative walk over a parsed body collecting (path, shown value, rule) for every broken limit."""

    def __init__(self, limits: BodyLimits, check_unicode: bool) -> None:
        self.limits = limits
        self.check_unicode = check_unicode
        self.found: list[tuple[tuple[str | int, ...], Any, str]] = []

    def _string_rule(self, text: str) -> str | None:
        if len(text) > self.limits.max_string_length:
            return f"string longer than {self.limits.max_string_length} characters"
        if "\x00" in text:
            return "contains a NUL character"
        if self.check_unicode and not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return "is not valid Unicode text (a lone surrogate)"
        return None

    def _scalar(self, path: tuple[str | int, ...], value: Any) -> None:
        kind = type(value)
        rule: str | None = None
        if kind is str:
            rule = self._string_rule(value)
        elif kind is int:
            if not -MAX_EXACT_INTEGER <= value <= MAX_EXACT_INTEGER:
                rule = "integer larger than 2^53 in magnitude (not exactly representable)"
        elif kind is float:
            if not math.isfinite(value):
                rule = "must be a finite number (NaN, Infinity and numbers beyond the float64 range are refused)"
        elif kind is _HugeInteger:
            rule = "integer larger than 2^53 in magnitude (not exactly representable)"
        if rule is not None:
            self.found.append((path, _shown(value), rule))

    def run(self, body: Any) -> list[tuple[tuple[str | int, ...], Any, str]]:
        stack: list[tuple[Any, tuple[str | int, ...], int]] = [(body, (), 1)]
        while stack and len(self.found) < MAX_PROBLEMS:
            node, path, depth = stack.pop()
            if type(node) is dict:
                if depth > self.limits.max_depth:
                    self.found.append((path, None, f"nested deeper than {self.limits.max_depth} levels"))
                    continue
                children: list[tuple[Any, tuple[str | int, ...], int]] = []
                for key, child in node.items():
                    key_rule = self._string_rule(key)
                    if key_rule is not None:
                        self.found.append(((*path, key), None, f"field name {key_rule}"))
                    if type(child) is dict or type(child) is list:
                        children.append((child, (*path, key), depth + 1))
                    else:
                        self._scalar((*path, key), child)
                stack.extend(reversed(children))
            elif type(node) is list:
                if depth > self.limits.max_depth:
                    self.found.append((path, None, f"nested deeper than {self.limits.max_depth} levels"))
                    continue
                items: list[tuple[Any, tuple[str | int, ...], int]] = []
                for index, child in enumerate(node):
                    if type(child) is dict or type(child) is list:
                        items.append((child, (*path, index), depth + 1))
                    else:
                        self._scalar((*path, index), child)
                stack.extend(reversed(items))
            else:
                self._scalar(path, node)
        return self.found[:MAX_PROBLEMS]


def _field_name(parts: tuple[str | int, ...]) -> str:
    return ".".join(printable(part) if isinstance(part, str) else str(part) for part in parts)


def _locator(body: Any) -> Callable[[tuple[str | int, ...]], tuple[int | None, str]]:
    """Maps a path in the body to (record index in a batch, field), as validation problems name them."""
    batch = isinstance(body, dict) and "records" in body
    wrapped = isinstance(body, dict) and not batch and "record" in body

    def locate(path: tuple[str | int, ...]) -> tuple[int | None, str]:
        if batch and len(path) >= 2 and path[0] == "records" and isinstance(path[1], int):
            return path[1], _field_name(path[2:]) or "record"
        if wrapped and path and path[0] == "record":
            return None, _field_name(path[1:]) or "record"
        return None, _field_name(path) or "body"

    return locate


def _check_batch_size(body: Any, max_records: int) -> None:
    if isinstance(body, dict) and isinstance(body.get("records"), list) and len(body["records"]) > max_records:
        count = len(body["records"])
        raise RequestRejected(
            413,
            f"a batch may hold at most {max_records} records; this one has {count}",
            [RecordProblem(None, "records", count, f"at most {max_records} records")],
        )


def decode_body(data: bytes, limits: BodyLimits) -> Any:
    """The parsed body, or :class:`RequestRejected` (413 / 422) naming each broken limit by record and field."""
    stripped = _STRING_TOKEN.sub(b'""', data)
    depth = _max_depth(stripped)
    if depth > limits.max_depth and depth > _LOCATABLE_DEPTH:
        raise RequestRejected(
            422,
            "invalid request",
            [RecordProblem(None, "body", None, f"nested deeper than {limits.max_depth} levels")],
        )
    values = stripped.count(b",") + stripped.count(b"[") + stripped.count(b"{") + 1
    if values > limits.max_values:
        raise RequestRejected(
            413,
            f"the body holds more than {limits.max_values} JSON values",
            [RecordProblem(None, "body", None, f"at most {limits.max_values} values (numbers, strings, ...)")],
        )
    body: Any = None
    syntax_error: orjson.JSONDecodeError | None = None
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        syntax_error = error
    exact = syntax_error is not None or _LONG_INTEGER.search(stripped) is not None
    if exact:  # parse again, exactly and leniently, only to name the refused values
        try:
            body = _lenient_parse(data)
        except (ValueError, RecursionError):
            if syntax_error is not None:
                raise _invalid_json(syntax_error) from None
            exact = False  # orjson's parse stands
    _check_batch_size(body, limits.max_records)
    found = _Scan(limits, check_unicode=exact).run(body)
    if found:
        locate = _locator(body)
        problems = []
        for path, shown, rule in found:
            record, field = locate(path)
            problems.append(RecordProblem(record, field, shown, rule))
        raise RequestRejected(422, "invalid request", problems)
    if syntax_error is not None:
        raise _invalid_json(syntax_error)
    return body


def _invalid_json(error: orjson.JSONDecodeError) -> RequestRejected:
    return RequestRejected(
        422, "the body is not valid JSON", [RecordProblem(None, "body", None, f"invalid JSON: {error}")]
    )


def describe(message: str, problems: list[RecordProblem], *, limit: int = 2000) -> str:
    """A refusal's reason for the inference log: the message and the problems (record, field, rule), storable
    text (no NUL) of at most ``limit`` characters."""
    parts = []
    for problem in problems[:20]:
        where = f"record {problem.record} " if problem.record is not None else ""
        parts.append(f"{where}field '{printable(problem.field)}': {printable(problem.rule, 200)}")
    if len(problems) > 20:
        parts.append(f"and {len(problems) - 20} more")
    text = printable(message, 500) if not parts else f"{printable(message, 500)}: {'; '.join(parts)}"
    return text if len(text) <= limit else text[: limit - 1] + "…"
