"""Labels: ``LabelEvent`` messages from ``<prefix>.<dataset>.labels`` stored in ``prediction_labels``.

A label names its prediction by ``sample_id`` (the record's id) or by ``request_id`` + ``record_index``. It is
stored whether or not the prediction is logged yet; monitoring joins at read time, so a label that arrives
first matches once its prediction is logged. Labels for ids never predicted are kept too.

A label is stored once per identity, (dataset, sample id, request id, record index, label event id) (migration
0009): the same label event at another offset (a producer retry, a replay) is a no-op, and so is a redelivered
message (the primary key is its topic, partition and offset). A row PostgreSQL refuses for its content is
returned with the database's reason instead of failing the batch, so one label can never hold the others back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg

from riverbed.events import LabelEvent

_INSERT = """
insert into prediction_labels (topic, partition, "offset", dataset, sample_id, request_id, record_index, label,
                               labelled_at, label_event_id)
values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
on conflict do nothing
"""
STATEMENT_TIMEOUT_MS = 30_000
# Errors about a row's content (bad text, a value out of range, an index row too large, a check): that row is
# refused and the rest stored. Anything else (connection, permissions, timeouts) fails the whole batch.
_ROW_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError, psycopg.errors.ProgramLimitExceeded)


@dataclass(frozen=True)
class LabelMessage:
    """A parsed label with where it came from; ``label_event_id`` is the event's id or the message's digest."""

    topic: str
    partition: int
    offset: int
    event: LabelEvent
    label_event_id: str


@dataclass
class StoredLabels:
    """What :func:`store_labels` did: how many labels were new, and the ones PostgreSQL refused, with why."""

    stored: int = 0
    refused: list[tuple[LabelMessage, str]] = field(default_factory=list)


def _row(m: LabelMessage) -> tuple[object, ...]:
    e = m.event
    return (
        m.topic,
        m.partition,
        m.offset,
        e.dataset,
        e.sample_id,
        e.request_id,
        e.record_index,
        e.label,
        e.labelled_at,
        m.label_event_id,
    )


def store_labels(dsn: str, labels: Iterable[LabelMessage]) -> StoredLabels:
    """Insert labels in one transaction; a row refused for its content is left out and reported.

    Raises :class:`psycopg.Error` when the database cannot take the batch at all (unreachable, permissions).
    """
    messages = list(labels)
    result = StoredLabels()
    if not messages:
        return result
    options = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
    with psycopg.connect(dsn, connect_timeout=5, options=options) as conn:
        try:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(_INSERT, [_row(m) for m in messages])
                result.stored = max(cursor.rowcount, 0)  # summed over the batch; conflicts count 0
            return result
        except _ROW_ERRORS:
            pass  # find the row(s): one savepoint per row
        with conn.transaction(), conn.cursor() as cursor:
            for message in messages:
                try:
                    with conn.transaction():
                        cursor.execute(_INSERT, _row(message))
                        result.stored += max(cursor.rowcount, 0)
                except _ROW_ERRORS as error:
                    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    result.refused.append((message, detail))
    return result


def label_counts(dsn: str, dataset: str) -> tuple[int, int]:
    """(labels stored, labels matching a logged prediction) for a dataset."""
    query = """
    select count(*),
           count(*) filter (where exists (
               select 1 from inference_log l
               where l.dataset = p.dataset and l.status = 'ok' and (
                   l.request_id = p.request_id
                   or (p.sample_id is not null and l.outputs @> jsonb_build_array(jsonb_build_object('sample_id',
                       p.sample_id)))
               )))
    from prediction_labels p where p.dataset = %s
    """
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(query, (dataset,)).fetchone()
    stored, matched = row if row is not None else (0, 0)  # an aggregate always returns one row
    return int(stored), int(matched)
