"""The console's own reads: monitoring results of a window, and a bounded sample of the newest served requests.

Every query is bounded and index-backed (EXPLAINed in ``tests/serving/test_console.py``): monitoring results by
``monitoring_results_recent (dataset, day desc, chunk desc)``; the sample by ``inference_log_dataset_keyset
(dataset, received_at desc, request_id desc)`` with a LIMIT, so a page costs the same on a log of a million rows
as on one of a thousand. Nothing counts the whole log.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from riverbed.specs import DatasetSpec
from serving.inference_log import unescape

PREDICT_ROUTE = "/v1/{dataset}/predict"
SAMPLE_ROWS = 1000  # newest served requests a monitoring page reads
SAMPLE_RECORDS = 5000  # records (of batched requests) at most
MAX_RESULT_ROWS = 20_000

MONITORING_SQL = """
select day, chunk, chunk_start, chunk_end, rows, kind, name, value, lower_threshold, upper_threshold, alert,
       model_version
from monitoring_results
where dataset = %s and day >= %s
order by day desc, chunk desc, kind, name
limit %s
"""

SAMPLE_SQL = """
select request_id, received_at, inputs, outputs
from inference_log
where dataset = %s and received_at >= %s and received_at < %s and route = %s and status = 'ok'
order by received_at desc, request_id desc
limit %s
"""


@dataclass
class MonitoringResults:
    """A window of ``monitoring_results``: drift per feature and performance, per analysed chunk."""

    chunks: list[tuple[dt.date, int]] = field(default_factory=list)  # oldest first
    features: list[str] = field(default_factory=list)
    drift: dict[tuple[dt.date, int], dict[str, dict[str, Any]]] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    performance: dict[tuple[dt.date, int], dict[str, dict[str, Any]]] = field(default_factory=dict)
    rows: int = 0


@dataclass
class LogSample:
    """What the newest served requests of a window show: prediction mix, live fairness, mean |SHAP|."""

    requests: int = 0
    records: int = 0
    oldest: str | None = None
    newest: str | None = None
    mix: list[tuple[str, int, float]] = field(default_factory=list)
    fairness: list[dict[str, Any]] = field(default_factory=list)  # day, attribute, group, records, selected, rate
    shap_features: list[str] = field(default_factory=list)
    shap_rows: list[list[float]] = field(default_factory=list)
    mean_abs_shap: list[tuple[str, float]] = field(default_factory=list)


async def monitoring_results(pool: AsyncConnectionPool[Any], dataset: str, since_day: dt.date) -> MonitoringResults:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(MONITORING_SQL, (dataset, since_day, MAX_RESULT_ROWS))
        rows = await cur.fetchall()
    results = MonitoringResults(rows=len(rows))
    chunks: set[tuple[dt.date, int]] = set()
    features: list[str] = []
    metrics: list[str] = []
    for row in rows:
        position = (row["day"], row["chunk"])
        chunks.add(position)
        cell = {
            "value": row["value"],
            "alert": row["alert"],
            "lower": row["lower_threshold"],
            "upper": row["upper_threshold"],
        }
        if row["kind"] in ("univariate_drift", "multivariate_drift"):
            name = row["name"] if row["kind"] == "univariate_drift" else f"multivariate: {row['name']}"
            if name not in features:
                features.append(name)
            results.drift.setdefault(position, {})[name] = cell
        else:
            if row["name"] not in metrics:
                metrics.append(row["name"])
            results.performance.setdefault(position, {})[f"{row['kind']}:{row['name']}"] = cell
    results.chunks = sorted(chunks)
    results.features = sorted(features)
    results.metrics = sorted(metrics)
    return results


async def log_sample(
    pool: AsyncConnectionPool[Any], spec: DatasetSpec, since: dt.datetime, until: dt.datetime
) -> LogSample:
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(SAMPLE_SQL, (spec.name, since, until, PREDICT_ROUTE, SAMPLE_ROWS))
        rows = await cur.fetchall()
    return summarise_sample(spec, [unescape(row) for row in rows])


def summarise_sample(spec: DatasetSpec, rows: list[dict[str, Any]]) -> LogSample:
    """Prediction mix, selection rate per protected group per day and mean |SHAP| of the logged records."""
    sample = LogSample(requests=len(rows))
    if rows:
        sample.newest = rows[0]["received_at"].isoformat()
        sample.oldest = rows[-1]["received_at"].isoformat()
    labels: Counter[str] = Counter()
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    features = list(spec.feature_names)
    positive = spec.target.positive_class
    for row in rows:
        day = row["received_at"].date().isoformat()
        inputs = row["inputs"] if isinstance(row["inputs"], list) else []
        outputs = row["outputs"] if isinstance(row["outputs"], list) else []
        for index, output in enumerate(outputs):
            if sample.records >= SAMPLE_RECORDS:
                break
            if not isinstance(output, dict) or not isinstance(output.get("label"), str):
                continue
            sample.records += 1
            label = output["label"]
            labels[label] += 1
            record = inputs[index] if index < len(inputs) and isinstance(inputs[index], dict) else {}
            for attribute in spec.protected_attributes:
                counts = groups[(day, attribute, str(record.get(attribute, "missing")))]
                counts[0] += 1
                counts[1] += label == positive
            explanation = output.get("explanation")
            contributions = explanation.get("contributions") if isinstance(explanation, dict) else None
            if isinstance(contributions, dict) and all(_is_number(contributions.get(f)) for f in features):
                sample.shap_rows.append([float(contributions[f]) for f in features])
    total = sum(labels.values())
    sample.mix = [(label, count, count / total) for label, count in labels.most_common()]
    sample.fairness = [
        {"day": day, "attribute": attribute, "group": group, "records": n, "selected": k, "rate": k / n}
        for (day, attribute, group), (n, k) in sorted(groups.items())
    ]
    if sample.shap_rows:
        sample.shap_features = features
        means = [sum(abs(row[i]) for row in sample.shap_rows) / len(sample.shap_rows) for i in range(len(features))]
        sample.mean_abs_shap = sorted(zip(features, means, strict=True), key=lambda pair: -pair[1])
    return sample


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
