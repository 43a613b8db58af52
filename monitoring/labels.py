"""Labels: ``LabelEvent`` messages from ``<prefix>.<dataset>.labels`` stored in ``prediction_labels``.

A label names its prediction by ``sample_id`` (the record's id) or by ``request_id`` + ``record_index``. It is
stored whether or not the prediction is logged yet; monitoring joins at read time, so a label that arrives
first matches once its prediction is logged. Labels for ids never predicted are kept too. The primary key
is the message's (topic, partition, offset), so a redelivered message is stored once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg

from riverbed.events import LabelEvent

_INSERT = """
insert into prediction_labels (topic, partition, "offset", dataset, sample_id, request_id, record_index, label,
                               labelled_at)
values (%s, %s, %s, %s, %s, %s, %s, %s, %s)
on conflict (topic, partition, "offset") do nothing
"""


@dataclass(frozen=True)
class LabelMessage:
    """A parsed label with where it came from."""

    topic: str
    partition: int
    offset: int
    event: LabelEvent


def store_labels(dsn: str, labels: Iterable[LabelMessage]) -> int:
    """Insert labels in one transaction; returns how many were new."""
    rows = [
        (
            m.topic,
            m.partition,
            m.offset,
            m.event.dataset,
            m.event.sample_id,
            m.event.request_id,
            m.event.record_index,
            m.event.label,
            m.event.labelled_at,
        )
        for m in labels
    ]
    if not rows:
        return 0
    with psycopg.connect(dsn, connect_timeout=5) as conn, conn.cursor() as cursor:
        cursor.executemany(_INSERT, rows)
        return max(cursor.rowcount, 0)  # summed over the batch; conflicts count 0


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
