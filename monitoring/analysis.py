"""Drift and performance of one monitoring window with NannyML, as rows for ``monitoring_results``.

Per chunk of ``chunk_size`` predicted records (NannyML size-based chunks, in order of arrival):
- ``univariate_drift``: Jensen-Shannon distance per feature against the reference, alert beyond NannyML's
  thresholds (mean +- 3 standard deviations of the reference chunks);
- ``multivariate_drift``: PCA data-reconstruction error (name ``reconstruction_error``);
- ``cbpe``: performance estimated without labels (confidence-based), per metric;
- ``realised``: performance on the records that have a label, per metric (only chunks with labels).

NannyML's calculators take seconds to import (``import nannyml`` ~5-15 s cold; the four used here come through
:mod:`monitoring.nannyml_import`, which leaves out FLAML, MLflow and ``statsmodels.api``; both are measured in
``benchmarks/RESULTS.md``, "Monitoring"), so they are imported inside :func:`analyse_window` only.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import psycopg

from monitoring.nannyml_import import Calculators, import_calculators
from monitoring.reference import PREDICTION, PROBABILITY, TRUTH
from riverbed.specs import DatasetSpec

logger = logging.getLogger(__name__)

METRICS = ("roc_auc", "accuracy", "f1")
RESULT_KINDS = ("univariate_drift", "multivariate_drift", "cbpe", "realised")


@dataclass(frozen=True)
class ResultRow:
    """One value of one chunk: a row of ``monitoring_results``."""

    day: dt.date
    chunk: int
    chunk_start: dt.datetime | None
    chunk_end: dt.datetime | None
    rows: int
    kind: str
    name: str
    value: float | None
    lower_threshold: float | None
    upper_threshold: float | None
    alert: bool
    model_version: str | None


@dataclass(frozen=True)
class WindowAnalysis:
    """What one window's analysis found."""

    rows: list[ResultRow]
    records: int
    labelled: int
    chunks: int

    def drifted_features(self) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        for row in self.rows:
            if row.kind == "univariate_drift" and row.alert:
                found.setdefault(row.chunk, []).append(row.name)
        return found

    def latest(self, kind: str, name: str) -> float | None:
        values = [r for r in self.rows if r.kind == kind and r.name == name and r.value is not None]
        return max(values, key=lambda r: r.chunk).value if values else None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or math.isinf(number) else number


def _moment(value: Any) -> dt.datetime | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    moment: dt.datetime = pd.Timestamp(value).to_pydatetime()
    return moment


def _chunk_bounds(analysis: pd.DataFrame, start_index: int, end_index: int) -> tuple[Any, Any]:
    times = analysis.get("received_at")
    if times is None or times.empty:
        return None, None
    return _moment(times.iloc[start_index]), _moment(times.iloc[min(end_index, len(times) - 1)])


def _import_nannyml() -> Calculators:
    """NannyML's calculators (seconds, cold): imported only when a window is analysed."""
    return import_calculators()


@dataclass(frozen=True)
class _Window:
    """The analysed records and what every result row of them carries."""

    analysis: pd.DataFrame
    day: dt.date
    model_version: str | None

    def rows(
        self, found: pd.DataFrame, kind: str, names: Iterable[str], column_of: Callable[[str], tuple[str, ...]]
    ) -> list[ResultRow]:
        """One row per chunk and name of a NannyML result frame (realised: only chunks with a value)."""
        rows: list[ResultRow] = []
        for _, chunk in found.iterrows():
            info = chunk["chunk"]  # ("chunk", <field>) or, for univariate drift, ("chunk", "chunk", <field>)
            if isinstance(info.index, pd.MultiIndex):
                info = info["chunk"]
            index, start_index, end_index = int(info["chunk_index"]), int(info["start_index"]), int(info["end_index"])
            start, end = _chunk_bounds(self.analysis, start_index, end_index)
            for name in names:
                column = column_of(name)
                value = _number(chunk[(*column, "value")])
                if kind == "realised" and value is None:
                    continue
                rows.append(
                    ResultRow(
                        day=self.day,
                        chunk=index,
                        chunk_start=start,
                        chunk_end=end,
                        rows=end_index - start_index + 1,
                        kind=kind,
                        name=name,
                        value=value,
                        lower_threshold=_number(chunk.get((*column, "lower_threshold"))),
                        upper_threshold=_number(chunk.get((*column, "upper_threshold"))),
                        alert=bool(chunk.get((*column, "alert"), False)) and value is not None,
                        model_version=self.model_version,
                    )
                )
        return rows


def _drift_rows(
    nml: Calculators, spec: DatasetSpec, reference: pd.DataFrame, window: _Window, chunk_size: int
) -> list[ResultRow]:
    """Univariate (Jensen-Shannon per feature) and multivariate (reconstruction error) drift per chunk."""
    features = spec.feature_names
    univariate = nml.UnivariateDriftCalculator(
        column_names=features,
        treat_as_categorical=list(spec.categorical_features),
        continuous_methods=["jensen_shannon"],
        categorical_methods=["jensen_shannon"],
        chunk_size=chunk_size,
    ).fit(reference[features])
    found = univariate.calculate(window.analysis[features]).filter(period="analysis").to_df()
    rows = window.rows(found, "univariate_drift", features, lambda name: (name, "jensen_shannon"))

    multivariate = nml.DataReconstructionDriftCalculator(column_names=features, chunk_size=chunk_size).fit(
        reference[features]
    )
    found = multivariate.calculate(window.analysis[features]).filter(period="analysis").to_df()
    return rows + window.rows(found, "multivariate_drift", ["reconstruction_error"], lambda name: (name,))


def _performance_rows(
    nml: Calculators, reference: pd.DataFrame, window: _Window, chunk_size: int, labelled: int
) -> list[ResultRow]:
    """Estimated (CBPE, no labels needed) and, when some records have a label, realised performance per chunk."""
    performance_columns = {"y_pred_proba": PROBABILITY, "y_pred": PREDICTION, "y_true": TRUTH}
    cbpe = nml.CBPE(
        **performance_columns,
        problem_type="classification_binary",
        metrics=list(METRICS),
        chunk_size=chunk_size,
    ).fit(reference)
    found = cbpe.estimate(window.analysis.drop(columns=[TRUTH])).filter(period="analysis").to_df()
    rows = window.rows(found, "cbpe", METRICS, lambda name: (name,))
    if labelled:
        realised = nml.PerformanceCalculator(
            **performance_columns,
            problem_type="classification_binary",
            metrics=list(METRICS),
            chunk_size=chunk_size,
        ).fit(reference)
        found = realised.calculate(window.analysis).filter(period="analysis").to_df()
        rows += window.rows(found, "realised", METRICS, lambda name: (name,))
    return rows


def analyse_window(
    spec: DatasetSpec,
    reference: pd.DataFrame,
    analysis: pd.DataFrame,
    *,
    day: dt.date,
    chunk_size: int,
    model_version: str | None = None,
) -> WindowAnalysis:
    """Univariate and multivariate drift, CBPE and realised performance of ``analysis`` against ``reference``."""
    nml = _import_nannyml()
    if len(analysis) == 0:
        return WindowAnalysis([], 0, 0, 0)
    if len(reference) < 2 * chunk_size:
        raise ValueError(
            f"chunk_size: {chunk_size} leaves the reference ({len(reference)} records) fewer than 2 chunks, so no "
            "drift threshold can be estimated; lower monitoring.chunk_size"
        )
    window = _Window(analysis.reset_index(drop=True), day, model_version)
    reference = reference.reset_index(drop=True)
    labelled = int(window.analysis[TRUTH].notna().sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = _drift_rows(nml, spec, reference, window, chunk_size)
        rows += _performance_rows(nml, reference, window, chunk_size, labelled)
    chunks = len({row.chunk for row in rows})
    return WindowAnalysis(rows, len(window.analysis), labelled, chunks)


# ----------------------------------------------------------------------------------------------- storage
_INSERT = """
insert into monitoring_results (dataset, day, chunk, chunk_start, chunk_end, rows, kind, name, value,
                                lower_threshold, upper_threshold, alert, model_version)
values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


def store_results(dsn: str, dataset: str, day: dt.date, rows: list[ResultRow]) -> None:
    """Replace the results of ``dataset``'s window ``day`` in one transaction."""
    with psycopg.connect(dsn, connect_timeout=5) as conn, conn.cursor() as cursor:
        cursor.execute("delete from monitoring_results where dataset = %s and day = %s", (dataset, day))
        cursor.executemany(
            _INSERT,
            [
                (
                    dataset,
                    r.day,
                    r.chunk,
                    r.chunk_start,
                    r.chunk_end,
                    r.rows,
                    r.kind,
                    r.name,
                    r.value,
                    r.lower_threshold,
                    r.upper_threshold,
                    r.alert,
                    r.model_version,
                )
                for r in rows
            ],
        )


# ------------------------------------------------------------------------------------------------ report
def html_report(spec: DatasetSpec, day: dt.date, analysis: WindowAnalysis) -> str:
    """A self-contained HTML page: one table per result kind, chunks as columns, alerts highlighted."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Riverbed monitoring: {html.escape(spec.name)} {day}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th:first-child,td:first-child{text-align:left}"
        ".alert{background:#fdd;font-weight:bold}</style></head><body>",
        f"<h1>{html.escape(spec.name)}: monitoring window {day}</h1>",
        f"<p>{analysis.records} predicted records in {analysis.chunks} chunk(s), {analysis.labelled} with a label. "
        "Highlighted cells are alerts.</p>",
    ]
    chunks = sorted({r.chunk for r in analysis.rows})
    for kind in RESULT_KINDS:
        selected = [r for r in analysis.rows if r.kind == kind]
        if not selected:
            continue
        cells = {(r.name, r.chunk): r for r in selected}
        names = list(dict.fromkeys(r.name for r in selected))
        parts.append(f"<h2>{kind.replace('_', ' ')}</h2><table><tr><th>name</th>")
        parts.extend(f"<th>chunk {c}</th>" for c in chunks)
        parts.append("</tr>")
        for name in names:
            parts.append(f"<tr><td>{html.escape(name)}</td>")
            for chunk in chunks:
                row = cells.get((name, chunk))
                if row is None or row.value is None:
                    parts.append("<td>-</td>")
                else:
                    parts.append(f"<td class='{'alert' if row.alert else ''}'>{row.value:.4f}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
