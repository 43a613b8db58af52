"""Monitoring benchmark: drift + CBPE over 100,000 logged predictions, read from PostgreSQL.

Set-up (not timed): a fresh database on the machine's PostgreSQL (127.0.0.1:5432) with the inference-log
migrations, and 100,000 logged predictions of ``machine_failure`` as single-record requests loaded with COPY
(row hashes are well-formed but not chained: the chain is not what is measured), a quarter of them labelled.
Timed, as the monitoring asset runs it: the window query (records expanded and labels joined in PostgreSQL),
then NannyML univariate drift on every feature, multivariate drift, CBPE and realised performance, in
chunks of the spec's ``monitoring.chunk_size``; ``import nannyml`` is timed apart.

Writes ``benchmarks/results/monitoring.json`` and the ``## Monitoring`` section of ``RESULTS.md``.
"""

import argparse
import datetime as dt
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import machine, publish
from tests.scratch_postgres import create_database, drop_database

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"
RESULTS_JSON = HERE / "results" / "monitoring.json"
SECTION = "## Monitoring"
TARGET_SECONDS = 30.0


def _load(dsn: str, spec: Any, records: int, start: dt.datetime) -> None:
    import psycopg

    from riverbed.generators import generate_machine_failure

    frame = generate_machine_failure(spec, records, 11).reset_index(drop=True)
    half = records // 2
    frame.loc[half:, "torque_nm"] = (frame.loc[half:, "torque_nm"] + 15).clip(0, 100)  # second half drifts
    probability = 1 / (1 + np.exp(-(frame["torque_nm"].to_numpy() - 45) / 5))
    inputs = json.loads(frame[spec.feature_names].to_json(orient="records"))
    fake_hash = "0" * 64
    with psycopg.connect(dsn) as conn, conn.cursor() as cursor:
        with cursor.copy(
            "copy inference_log (request_id, seq, received_at, dataset, route, status, http_status, model_name, "
            "model_version, inputs, outputs, labels, prev_hash, row_hash) from stdin"
        ) as copy:
            for index in range(records):
                p = float(probability[index])
                label = "1" if p >= 0.5 else "0"
                output = {"sample_id": f"s{index}", "label": label, "probabilities": {"0": 1 - p, "1": p}}
                copy.write_row(
                    (
                        str(uuid.uuid4()),
                        index + 1,
                        start + dt.timedelta(milliseconds=index * 100),
                        spec.name,
                        "/v1/{dataset}/predict",
                        "ok",
                        200,
                        "riverbed-machine_failure",
                        "1",
                        json.dumps([inputs[index]]),
                        json.dumps([output]),
                        [label],
                        fake_hash,
                        fake_hash,
                    )
                )
        rng = np.random.default_rng(5)
        labelled = rng.choice(records, size=records // 4, replace=False)
        with cursor.copy(
            'copy prediction_labels (topic, partition, "offset", dataset, sample_id, label, labelled_at) from stdin'
        ) as copy:
            for offset, index in enumerate(labelled):
                truth = "1" if rng.random() < probability[index] else "0"
                copy.write_row(("bench.labels", 0, offset, spec.name, f"s{index}", truth, start))
        conn.execute("analyze inference_log")
        conn.execute("analyze prediction_labels")


def run(records: int) -> dict[str, Any]:

    from monitoring.reference import PREDICTION, PROBABILITY, TRUTH
    from riverbed.generators import generate_machine_failure
    from riverbed.inference_log_schema import apply_migrations
    from riverbed.settings import PROJECT_ROOT
    from riverbed.specs import load_specs

    spec = load_specs([PROJECT_ROOT / "datasets"])["machine_failure"]
    name, dsn = create_database("riverbed_bench")
    try:
        apply_migrations(dsn)
        start = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
        t0 = time.perf_counter()
        _load(dsn, spec, records, start)
        load_seconds = time.perf_counter() - t0

        reference = generate_machine_failure(spec, 6000, 3)[spec.feature_names].reset_index(drop=True)
        ref_probability = 1 / (1 + np.exp(-(reference["torque_nm"].to_numpy() - 45) / 5))
        reference[PROBABILITY] = ref_probability
        reference[PREDICTION] = (ref_probability >= 0.5).astype(int)
        reference[TRUTH] = (np.random.default_rng(1).random(len(reference)) < ref_probability).astype(float)
        reference["machine_type"] = reference["machine_type"].astype("string")

        t0 = time.perf_counter()
        os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
        import nannyml  # noqa: F401

        import_seconds = time.perf_counter() - t0

        from monitoring.analysis import analyse_window
        from monitoring.inference_data import logged_predictions

        t0 = time.perf_counter()
        window = logged_predictions(dsn, spec, start, start + dt.timedelta(days=1))
        query_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = analyse_window(
            spec, reference, window, day=start.date(), chunk_size=spec.monitoring.chunk_size, model_version="1"
        )
        analysis_seconds = time.perf_counter() - t0
        drifted = found.drifted_features()
        torque = sorted(chunk for chunk, features in drifted.items() if "torque_nm" in features)
        clean_half = found.chunks // 2
        false_alerts: dict[str, int] = {}
        for chunk, features in drifted.items():
            if chunk < clean_half:
                for feature in features:
                    false_alerts[feature] = false_alerts.get(feature, 0) + 1
        return {
            "machine": machine(),
            "records": records,
            "labelled": found.labelled,
            "chunks": found.chunks,
            "chunk_size": spec.monitoring.chunk_size,
            "result_rows": len(found.rows),
            "drifted_chunks": len(drifted),
            "torque_alert_chunks": len(torque),
            "first_torque_alert_chunk": torque[0] if torque else None,
            "clean_half_alerts_by_feature": false_alerts,
            "load_seconds": round(load_seconds, 1),
            "import_seconds": round(import_seconds, 1),
            "query_seconds": round(query_seconds, 2),
            "analysis_seconds": round(analysis_seconds, 2),
            "total_seconds": round(query_seconds + analysis_seconds, 2),
        }
    finally:
        drop_database(name)


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    met = r["total_seconds"] <= TARGET_SECONDS
    return "\n".join(
        [
            SECTION,
            "",
            f"Machine: `{m['uname']}`; {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB RAM, "
            f"Python {m['python']}. Date: {m['date']}. Command: `uv run python -m benchmarks.monitoring_benchmark`.",
            "",
            f"{r['records']:,} logged `machine_failure` predictions (single-record requests, the second half with "
            f"`torque_nm` shifted), {r['labelled']:,} of them labelled, on the machine's PostgreSQL 15. Timed as the "
            "monitoring asset runs: the window query (request arrays expanded and labels joined in PostgreSQL), then "
            f"NannyML univariate drift on 6 features, multivariate drift, CBPE and realised performance over "
            f"{r['chunks']} chunks of {r['chunk_size']} records ({r['result_rows']:,} result rows).",
            "",
            "| measure | goal | measured | |",
            "|---|---|---|---|",
            f"| drift + CBPE (+ realised) over {r['records']:,} logged predictions | <= {TARGET_SECONDS:.0f} s | "
            f"{r['total_seconds']} s (query {r['query_seconds']} s, analysis {r['analysis_seconds']} s) | "
            f"{'met' if met else 'missed'} |",
            f"| `import nannyml` (once per process) | - | {r['import_seconds']} s | |",
            "",
            f"`torque_nm` (shifted from chunk {r['chunks'] // 2} on) alerts in {r['torque_alert_chunks']} chunks, the "
            f"first at chunk {r['first_torque_alert_chunk']}. Alerts in the unshifted half, by feature: "
            f"{r['clean_half_alerts_by_feature'] or 'none'} (the generator's temperatures follow a slow random walk "
            "by design, which 500-record chunks of consecutive requests see). Not timed: loading the rows with COPY "
            f"{r['load_seconds']} s. Raw figures: `benchmarks/results/monitoring.json`.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run(args.records)
    text = render(result)
    if args.no_write:
        print(text)
    else:
        publish(result, text, RESULTS_JSON, RESULTS_MD, SECTION)


if __name__ == "__main__":
    main()
