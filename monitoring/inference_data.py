"""Monitoring's view of the inference log: one row per predicted record of a time window, with its label.

PostgreSQL expands the logged request arrays (``jsonb_array_elements ... with ordinality``) and joins the
labels (by request id and position first, else by sample id; the newest label wins), so Python receives
only the columns it needs. Labels that arrived before their prediction match the same way: the join happens
at read time.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import orjson
import pandas as pd
import psycopg

from monitoring.reference import PREDICTION, PROBABILITY, TRUTH, positive_labels
from riverbed.specs import DatasetSpec

RECEIVED_AT = "received_at"
MODEL_VERSION = "model_version"
SAMPLE_ID = "sample_id"

_QUERY = """
with records as (
    select l.request_id, l.received_at, l.model_version, r.ord - 1 as record_index, r.input, o.output
    from inference_log l
    cross join lateral jsonb_array_elements(l.inputs) with ordinality as r(input, ord)
    join lateral jsonb_array_elements(l.outputs) with ordinality as o(output, ord) on o.ord = r.ord
    where l.dataset = %(dataset)s and l.status = 'ok'
      and l.received_at >= %(start)s and l.received_at < %(end)s
)
select records.received_at, records.model_version, records.input::text, records.output ->> 'sample_id',
       (records.output -> 'probabilities' ->> %(positive)s)::float8, records.output ->> 'label',
       coalesce(by_request.label, by_sample.label)
from records
left join lateral (
    select p.label from prediction_labels p
    where p.request_id = records.request_id and p.record_index = records.record_index
    order by p.labelled_at desc limit 1
) by_request on true
left join lateral (
    select p.label from prediction_labels p
    where p.dataset = %(dataset)s and p.sample_id = records.output ->> 'sample_id'
    order by p.labelled_at desc limit 1
) by_sample on records.output ->> 'sample_id' is not null
order by records.received_at, records.request_id, records.record_index
"""


def logged_predictions(dsn: str, spec: DatasetSpec, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    """Predicted records of ``spec`` received in ``[start, end)``: features, ``y_pred_proba``, ``y_pred`` (the served
    label),
    ``y_true`` (NaN when no label yet), ``received_at``, ``model_version`` and ``sample_id``."""
    params = {"dataset": spec.name, "start": start, "end": end, "positive": spec.target.positive_class}
    with psycopg.connect(dsn, connect_timeout=5) as conn, conn.cursor() as cursor:
        cursor.execute(_QUERY, params)
        rows = cursor.fetchall()
    features = spec.feature_names
    if not rows:
        columns = [*features, PROBABILITY, PREDICTION, TRUTH, RECEIVED_AT, MODEL_VERSION, SAMPLE_ID]
        return pd.DataFrame(columns=columns)
    received, versions, inputs, samples, probabilities, labels, truths = zip(*rows, strict=True)
    loads = orjson.loads
    frame = pd.DataFrame.from_records([loads(text) for text in inputs], columns=features)
    for feature in spec.numeric_features:
        frame[feature] = pd.to_numeric(frame[feature], errors="coerce")
    for feature in spec.categorical_features:
        frame[feature] = frame[feature].astype("string")
    frame[PROBABILITY] = np.asarray(probabilities, dtype=float)
    frame[PREDICTION] = (np.asarray(labels, dtype=object) == spec.target.positive_class).astype(int)  # as served
    frame[TRUTH] = positive_labels(spec, pd.Series(truths, dtype="object"))
    frame[RECEIVED_AT] = pd.to_datetime(pd.Series(received), utc=True)
    frame[MODEL_VERSION] = pd.Series(versions, dtype="string")
    frame[SAMPLE_ID] = pd.Series(samples, dtype="string")
    return frame
