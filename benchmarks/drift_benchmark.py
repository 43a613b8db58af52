"""Drift to v2: from the first drifted record produced until the gateway answers with the retrained model.

Runs the drift scenario of ``riverbed demo`` (``riverbed.cli.drift_demo.run_drift_demo``) unchanged, on embedded
parts in a fresh temporary home: ``machine_failure`` v1 trained on the clean days produced through Kafka
(librdkafka's mock cluster) and ingested by the sensor; then the drifted days (``torque_nm`` +2.5 sd,
``rotational_speed_rpm`` -2 sd). The scenario's own clock starts when the first drifted record is produced and
stops when a prediction through the gateway comes back from v2 (polled every
``drift_demo.SERVED_POLL_SECONDS``); every step in between is timed on its own, and the Dagster jobs' steps too.
Sensors are ticked as soon as the step before them is done: their polling intervals (read from the code
location and written down with the results) are not in the figure; issue 11 measures with them.

Usage: ``uv run python -m benchmarks.drift_benchmark``; ``--quick`` (smoke tests): 15,000 generated records
instead of the spec's 30,000 and 2 Optuna trials. Writes ``<results-dir>/drift.json`` (default
``benchmarks/results``) and re-renders ``RESULTS.md`` beside it.
"""

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.report import RESULTS_DIR, arguments, machine, machine_line, publish, scale_note

for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "NML_DISABLE_USAGE_LOGGING": "1",
    "DAGSTER_DISABLE_TELEMETRY": "true",
    "OMP_NUM_THREADS": "1",
}.items():
    os.environ.setdefault(_key, _value)

COMMAND = "uv run python -m benchmarks.drift_benchmark"
DATASET = "machine_failure"
QUICK = {"rows": 15_000, "trials": 2}


def _quick_specs(specs_dir: Path) -> None:
    """A copy of the dataset's spec with fewer generated records and Optuna trials (smoke scale only)."""
    from riverbed.settings import PROJECT_ROOT

    data = yaml.safe_load((PROJECT_ROOT / "datasets" / f"{DATASET}.yaml").read_text())
    data["source"]["default_rows"] = QUICK["rows"]
    data["training"]["optuna_trials"] = QUICK["trials"]
    specs_dir.mkdir(parents=True, exist_ok=True)
    (specs_dir / f"{DATASET}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _intervals(settings: Any) -> dict[str, Any]:
    """The automation's polling intervals, from the code location (what production adds to the figure)."""
    from platform_assets.definitions import build_definitions
    from riverbed import names

    defs = build_definitions(settings)
    return {
        "ingestion_sensor_seconds": defs.get_sensor_def(names.kafka_ingest_sensor(DATASET)).minimum_interval_seconds,
        "retraining_sensor_seconds": defs.get_sensor_def(names.retrain_sensor(DATASET)).minimum_interval_seconds,
        "monitoring_sensor_seconds": defs.get_sensor_def(names.monitor_sensor(DATASET)).minimum_interval_seconds,
    }


def run(home: Path, quick: bool) -> dict[str, Any]:
    from rich.console import Console

    from riverbed.cli.drift_demo import DRIFT_SHIFTS, DRIFT_START, run_drift_demo
    from riverbed.settings import PROJECT_ROOT, RiverbedSettings
    from riverbed.specs import load_specs

    specs_dir = PROJECT_ROOT / "datasets"
    if quick:
        specs_dir = home / "specs"
        _quick_specs(specs_dir)
    settings = RiverbedSettings(home=home, specs_dirs=[specs_dir])
    spec = load_specs([specs_dir])[DATASET]
    started = time.perf_counter()
    outcome = run_drift_demo(settings, Console(stderr=True))
    scenario_seconds = time.perf_counter() - started
    return {
        "machine": machine(),
        "dataset": DATASET,
        "source_rows": spec.source.default_rows,
        "optuna_trials": spec.training.optuna_trials,
        "chunk_size": spec.monitoring.chunk_size,
        "drift_start": DRIFT_START.isoformat(),
        "drift_shifts_sd": dict(DRIFT_SHIFTS),
        "records": outcome.records,
        "seconds_to_v2": round(outcome.seconds_to_v2 or 0.0, 3),
        "step_seconds": outcome.step_seconds,
        "job_step_seconds": outcome.job_step_seconds,
        "served_polls": outcome.served_polls,
        "v1": outcome.v1,
        "v2": outcome.v2,
        "drifted_features_by_chunk": outcome.drifted_features,
        "retraining_reason": outcome.reason,
        "retraining_trigger": outcome.trigger,
        "metrics_on_unseen_drifted": outcome.metrics,
        "scenario_seconds": round(scenario_seconds, 1),
        "intervals": _intervals(settings),
    }


def render_results(results: dict[str, Any]) -> str:
    r = results["drift.json"]
    steps = r["step_seconds"]
    intervals = r["intervals"]
    v1, v2 = r["metrics_on_unseen_drifted"].get(f"v{r['v1']}", {}), r["metrics_on_unseen_drifted"].get(f"v{r['v2']}")
    step_rows = [f"| {name} | {seconds} |" for name, seconds in steps.items()]
    job_rows = [
        f"| {job}: {step} | {seconds} |"
        for job, by_step in r["job_step_seconds"].items()
        for step, seconds in by_step.items()
    ]
    drifted = ", ".join(
        f"chunk {chunk}: {', '.join(f'`{f}`' for f in features)}"
        for chunk, features in r["drifted_features_by_chunk"].items()
    )
    compare = [
        f"| v{r['v1']} on {r['records'].get('unseen_drifted', 0):,} unseen drifted records | ROC AUC {v1.get('roc_auc', float('nan')):.4f}, accuracy "
        f"{v1.get('accuracy', float('nan')):.4f} |"
    ]
    if v2:
        compare.append(
            f"| v{r['v2']} on the same records | ROC AUC {v2.get('roc_auc', float('nan')):.4f}, accuracy "
            f"{v2.get('accuracy', float('nan')):.4f} |"
        )
    return "\n".join(
        [
            "## Drift to v2 (end to end)",
            "",
            machine_line(r["machine"], " ".join([COMMAND, *r.get("arguments", [])])),
            "",
            *scale_note(r, COMMAND),
            f"The drift scenario of `riverbed demo` (`riverbed.cli.drift_demo.run_drift_demo`), embedded parts, fresh "
            f"home: `{r['dataset']}` ({r['source_rows']:,} generated records over 30 days, {r['optuna_trials']} Optuna "
            f"trials), v{r['v1']} trained on the {r['records'].get('clean', 0):,} clean records produced through "
            f"Kafka (mock cluster) and ingested by the sensor; then {r['records'].get('drifted', 0):,} records from "
            f"{r['drift_start'][:10]} with "
            + ", ".join(f"`{feature}` {shift:+} sd" for feature, shift in r["drift_shifts_sd"].items())
            + ". The clock runs from the first drifted record produced until a prediction through the gateway comes "
            f"back from v{r['v2']} (polled; {r['served_polls']} poll(s)). Whole scenario including v1: "
            f"{r['scenario_seconds']} s.",
            "",
            "| measure | measured |",
            "|---|---|",
            f"| first drifted record to v{r['v2']} serving (sensor intervals excluded) | **{r['seconds_to_v2']} s** |",
            f"| drift found (chunk: features) | {drifted or 'none'} |",
            f"| retraining reason | `{r['retraining_reason']}` (evidence: {r['retraining_trigger']}) |",
            *compare,
            "",
            "| step, in order (wall seconds) | s |",
            "|---|---:|",
            *step_rows,
            "",
            "| Dagster job step (wall seconds, from the run's events) | s |",
            "|---|---:|",
            *job_rows,
            "",
            "Not in the figure: the automation's polling intervals, which production adds (read from the code "
            f"location): the ingestion sensor ticks every {intervals['ingestion_sensor_seconds']} s, monitoring runs "
            + (  # results measured before the monitoring schedule became a sensor name its cron
                f"on `{intervals['monitoring_schedule_cron']}`"
                if "monitoring_schedule_cron" in intervals
                else f"every {intervals['monitoring_sensor_seconds']} s"
            )
            + ", the retraining sensor ticks every "
            f"{intervals['retraining_sensor_seconds']} s. Raw figures: `benchmarks/results/drift.json`.",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke scale: {QUICK}")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as home:
        result = run(Path(home), args.quick)
    result.update(scale="quick" if args.quick else "full", arguments=arguments(sys.argv[1:]))
    print(publish("drift.json", result, args.results_dir.resolve()))


if __name__ == "__main__":
    main()
