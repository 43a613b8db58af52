"""Monitoring benchmark: one monitoring run over 100,000 logged predictions, timed as a launched run pays it.

Set-up (not timed): a fresh database on the machine's PostgreSQL (127.0.0.1:5432) with the inference-log
migrations, and 100,000 logged predictions of ``machine_failure`` as single-record requests loaded with COPY
(row hashes are well-formed but not chained: the chain is not what is measured), a quarter of them labelled, the
second half with ``torque_nm`` shifted; a temporary home whose model repository holds a deployment pointer and
the champion's reference (6,000 scored records), as the deployment step leaves them.

Timed: ``benchmarks/monitoring_run.py`` in a fresh process (a subprocess), from the moment it is spawned until it
has exited: the interpreter's start, loading the code location (``platform_assets.definitions``), importing
NannyML's calculators, then the ``monitoring_machine_failure`` materialisation for the day as the monitoring
schedule's run does it (window query, reference, NannyML univariate drift on every feature, multivariate drift,
CBPE and realised performance, storing the results and writing the HTML report), and the process's exit. Each
step is on its own line. Runs alternate between the default import (``monitoring.nannyml_import``: NannyML's
calculators without its unused parts) and a whole ``import nannyml`` first (how the analysis imported it before),
``--repeats`` each; the section reports medians per step.

Usage: ``uv run python -m benchmarks.monitoring_benchmark [--records 100000] [--repeats 2]``; ``--quick`` (smoke
tests): 5,000 records, one run of each. Writes ``<results-dir>/monitoring.json`` (default ``benchmarks/results``)
and re-renders ``RESULTS.md`` beside it.
"""

import argparse
import datetime as dt
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.report import RESULTS_DIR, arguments, machine, machine_line, publish, scale_note
from tests.scratch_postgres import create_database, drop_database

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_SECONDS = 30.0
DATASET = "machine_failure"
DAY = dt.date(2026, 11, 22)
REFERENCE_RECORDS = 6000
QUICK_RECORDS = 5000
COMMAND = "uv run python -m benchmarks.monitoring_benchmark"
VARIANTS = {"default": False, "full_nannyml_import": True}  # name -> whole `import nannyml` first
ENV = {
    "NML_DISABLE_USAGE_LOGGING": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "OMP_NUM_THREADS": "1",
    "DAGSTER_DISABLE_TELEMETRY": "true",
}


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


def _deploy_reference(spec: Any, home: Path) -> None:
    """What the deployment step leaves for monitoring: the pointer to v1 and v1's scored holdout (the reference)."""
    from monitoring.reference import PREDICTION, PROBABILITY, TRUTH, write_reference
    from platform_assets.runner import local_instance
    from riverbed.generators import generate_machine_failure
    from riverbed.model_repository import DeployedModel, ModelRepository
    from riverbed.settings import RiverbedSettings

    settings = RiverbedSettings(home=home)
    local_instance(settings).dispose()  # the Dagster instance exists already, as on a running platform
    reference = generate_machine_failure(spec, REFERENCE_RECORDS, 3)[spec.feature_names].reset_index(drop=True)
    probability = 1 / (1 + np.exp(-(reference["torque_nm"].to_numpy() - 45) / 5))
    reference[PROBABILITY] = probability
    reference[PREDICTION] = (probability >= 0.5).astype(int)
    reference[TRUTH] = (np.random.default_rng(1).random(len(reference)) < probability).astype(float)
    reference["machine_type"] = reference["machine_type"].astype("string")
    write_reference(settings.model_repository_dir, spec.name, 1, reference)
    ModelRepository(settings.model_repository_dir).set_deployment(
        DeployedModel(
            dataset=spec.name,
            registered_model_name=f"riverbed-{spec.name}",
            version=1,
            mlflow_run_id="benchmark",
            model_uri=f"models:/riverbed-{spec.name}/1",
            training_set_commit_id="benchmark",
            dagster_run_id="benchmark",
            served_model_name=f"{spec.name}-v1",
            classes=["0", "1"],
            features=list(spec.feature_names),
            deployed_at=dt.datetime(2026, 11, 21, tzinfo=dt.UTC),
        )
    )


def _launch(config: dict[str, Any], workdir: Path, index: int) -> dict[str, Any]:
    """One run in a fresh process; wall-clock stamps from its spawn to its exit."""
    config_path = workdir / f"run-{index}.json"
    out_path = workdir / f"run-{index}-out.json"
    config_path.write_text(json.dumps(config))
    spawned = time.time()
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.monitoring_run", str(config_path), str(out_path)],
        cwd=ROOT,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    exited = time.time()
    if completed.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"the monitoring run failed (exit {completed.returncode}): {completed.stderr[-4000:]}")
    out = json.loads(out_path.read_text())
    stamps, steps = out["stamps"], out["steps"]
    run_seconds = stamps["run_finished"] - stamps["run_started"]
    inside = sum(steps[name] for name in ("query", "reference", "nannyml_import", "analysis", "store", "report"))
    timings = {
        "interpreter_start": stamps["started"] - spawned,
        "code_location_import": stamps["code_location_imported"] - stamps["started"],
        "nannyml_import": steps.get("nannyml_import", 0.0)
        + stamps["nannyml_preimported"]
        - stamps["code_location_imported"],
        "definitions_and_instance": stamps["run_started"] - stamps["nannyml_preimported"],
        "query": steps["query"],
        "reference": steps["reference"],
        "analysis": steps["analysis"],
        "store": steps["store"],
        "report": steps["report"],
        "dagster_run_overhead": run_seconds - inside,
        "total": stamps["run_finished"] - spawned,
        "exit": exited - out["finished"],
    }
    return {
        "variant": "full_nannyml_import" if config["full_nannyml_import"] else "default",
        "success": out["success"],
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "modules_loaded": out["modules_loaded"],
        "summary": out["summary"],
    }


def run(records: int, repeats: int) -> dict[str, Any]:
    from riverbed.inference_log_schema import apply_migrations
    from riverbed.settings import PROJECT_ROOT
    from riverbed.specs import load_specs

    spec = load_specs([PROJECT_ROOT / "datasets"])[DATASET]
    name, dsn = create_database("riverbed_bench")
    try:
        apply_migrations(dsn)
        start = dt.datetime.combine(DAY, dt.time(), dt.UTC)
        t0 = time.perf_counter()
        _load(dsn, spec, records, start)
        load_seconds = time.perf_counter() - t0
        with tempfile.TemporaryDirectory(prefix="monitoring-bench-") as scratch:
            workdir = Path(scratch)
            home = workdir / "home"
            _deploy_reference(spec, home)
            config = {
                "home": str(home),
                "specs_dir": str(PROJECT_ROOT / "datasets"),
                "dsn": dsn,
                "dataset": DATASET,
                "day": DAY.isoformat(),
            }
            runs = []
            for _ in range(repeats):
                for variant, full in VARIANTS.items():  # alternate, so neither always runs on a warmer cache
                    runs.append(_launch({**config, "full_nannyml_import": full}, workdir, len(runs)))
                    logging.getLogger("bench").warning("%s: %s", variant, runs[-1]["seconds"])
        summary = runs[0]["summary"]
        drifted = {int(chunk): features for chunk, features in summary["drifted_features_by_chunk"].items()}
        torque = sorted(chunk for chunk, features in drifted.items() if "torque_nm" in features)
        clean_half = summary["chunks"] // 2
        false_alerts: dict[str, int] = {}
        for chunk, features in drifted.items():
            if chunk < clean_half:
                for feature in features:
                    false_alerts[feature] = false_alerts.get(feature, 0) + 1
        medians = {
            variant: {
                step: round(statistics.median(r["seconds"][step] for r in runs if r["variant"] == variant), 3)
                for step in runs[0]["seconds"]
            }
            for variant in VARIANTS
        }
        return {
            "machine": machine(),
            "records": records,
            "repeats": repeats,
            "labelled": summary["labelled"],
            "chunks": summary["chunks"],
            "chunk_size": spec.monitoring.chunk_size,
            "drifted_chunks": len(drifted),
            "torque_alert_chunks": len(torque),
            "first_torque_alert_chunk": torque[0] if torque else None,
            "clean_half_alerts_by_feature": false_alerts,
            "estimated_roc_auc": summary["estimated"].get("roc_auc"),
            "realised_roc_auc": summary["realised"].get("roc_auc"),
            "load_seconds": round(load_seconds, 1),
            "runs": [{k: v for k, v in r.items() if k != "summary"} for r in runs],
            "median_seconds": medians,
        }
    finally:
        drop_database(name)


STEP_TITLES = {
    "interpreter_start": "interpreter start (spawn to the script's first line)",
    "code_location_import": "imports: the code location (`platform_assets.definitions`: Dagster, pandas, ...)",
    "nannyml_import": "imports: NannyML",
    "definitions_and_instance": "build the definitions, open the Dagster instance",
    "query": "window query (records expanded, labels joined in PostgreSQL)",
    "reference": "read the champion's reference",
    "analysis": "analysis: univariate + multivariate drift, CBPE, realised performance",
    "store": "store the results (`monitoring_results`, one transaction)",
    "report": "render the HTML report",
    "dagster_run_overhead": "Dagster run bookkeeping (events, run storage) and writing the report",
}


def render_results(results: dict[str, Any]) -> str:
    r = results["monitoring.json"]
    default, before = r["median_seconds"]["default"], r["median_seconds"]["full_nannyml_import"]
    met = default["total"] <= TARGET_SECONDS
    rows = [f"| {title} | {default[step]} | {before[step]} |" for step, title in STEP_TITLES.items()]
    loaded = next(run["modules_loaded"] for run in r["runs"] if run["variant"] == "default")
    return "\n".join(
        [
            "## Monitoring",
            "",
            machine_line(r["machine"], " ".join([COMMAND, *r.get("arguments", [])])),
            "",
            *scale_note(r, COMMAND),
            f"{r['records']:,} logged `machine_failure` predictions (single-record requests, the second half with "
            f"`torque_nm` shifted), {r['labelled']:,} of them labelled, on the machine's PostgreSQL. One monitoring run "
            "timed as a launched run pays it: a fresh process from its spawn, loading the code location, "
            "then materialising `monitoring_machine_failure` for the day with Dagster: window query, NannyML "
            f"univariate drift on every feature, multivariate drift, CBPE and realised performance over {r['chunks']} "
            f"chunks of {r['chunk_size']} records, results stored in PostgreSQL and the HTML report written. Median "
            f"of {r['repeats']} run(s) per column; the columns alternate.",
            "",
            "| measure | goal | measured | |",
            "|---|---|---|---|",
            f"| fresh process to results stored and report written, {r['records']:,} logged predictions | "
            f"<= {TARGET_SECONDS:.0f} s | {default['total']} s (imports {default['code_location_import']} + "
            f"{default['nannyml_import']} s, query {default['query']} s, analysis {default['analysis']} s) | "
            f"{'met' if met else 'missed'} |",
            f"| imports on their own: code location + NannyML's calculators | - | "
            f"{round(default['code_location_import'] + default['nannyml_import'], 3)} s "
            f"(whole `import nannyml` instead: {before['nannyml_import']} s for NannyML alone) | |",
            "",
            "| step (seconds) | default (`monitoring.nannyml_import`) | before: whole `import nannyml` |",
            "|---|---:|---:|",
            *rows,
            f"| **total: spawn to results stored, report written, run recorded** | **{default['total']}** | "
            f"**{before['total']}** |",
            f"| after that, not counted above: the process's exit (interpreter teardown) | {default['exit']} | "
            f"{before['exit']} |",
            "",
            "The default imports only the four NannyML calculators the analysis runs (`monitoring/nannyml_import.py`): "
            "NannyML's package `__init__` would also import its domain-classifier and DLE estimators, which pull FLAML "
            "and MLflow, and `statsmodels.api` for plots. In the default runs FLAML loaded: "
            f"{loaded['flaml']}, MLflow loaded: {loaded['mlflow']}. A run launched by the Dagster daemon with the "
            "multiprocess executor starts one more process first (the run worker), which pays the interpreter start "
            "and the code location's import once more.",
            "",
            f"`torque_nm` (shifted from chunk {r['chunks'] // 2} on) alerts in {r['torque_alert_chunks']} chunks, the "
            f"first at chunk {r['first_torque_alert_chunk']}. Alerts in the unshifted half, by feature: "
            f"{r['clean_half_alerts_by_feature'] or 'none'} (the generator's temperatures follow a slow random walk "
            f"by design, which chunks of consecutive requests see). Not timed: loading the rows with COPY "
            f"{r['load_seconds']} s. Raw figures: `benchmarks/results/monitoring.json`.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant")
    parser.add_argument("--quick", action="store_true", help=f"smoke scale: {QUICK_RECORDS:,} records, one run each")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.records, args.repeats = QUICK_RECORDS, 1
    result = run(args.records, args.repeats)
    result.update(scale="quick" if args.quick else "full", arguments=arguments(sys.argv[1:]))
    print(publish("monitoring.json", result, args.results_dir.resolve()))


if __name__ == "__main__":
    main()
