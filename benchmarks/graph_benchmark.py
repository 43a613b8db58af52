"""Benchmark of the asset graph: wall time and peak memory per asset, against the Parquet I/O floor.

Runs ingest (raw + features over N daily partitions, one run) and train (training set + model) on
embedded parts in a temporary RIVERBED_HOME, and measures in the same run:

- per asset: wall time (Dagster step start to success), peak RSS of the process during the step and its
  growth over the step's starting RSS, rows, and the IO manager's split of its own time into
  serialisation, object puts and versioning (branch + commits + merge + branch deletion);
- the I/O floor: reading and writing the same Parquet bytes the raw and features assets wrote, with
  nothing else (pyarrow, same compression, to local disk).

The source (CSV parse or generator) is read inside the raw asset's step, which is what reads it on the default
path (nothing is pre-loaded: the in-process source cache starts empty). After the runs the source is read once
more on its own, with the cache cleared, to state how much of the raw step that read is.

Usage (the figures in RESULTS.md; ``make bench-graph`` runs both):

    uv run python -m benchmarks.graph_benchmark --dataset salary_band --days 30 --trials 8
    uv run python -m benchmarks.graph_benchmark --dataset machine_failure --rows 1000000 --days 30 --trials 4

``--quick`` (smoke tests): 3 days, 1 trial, 20,000 generated rows. Writes
``<results-dir>/graph-<dataset>.json`` (default ``benchmarks/results``) and re-renders ``RESULTS.md`` beside it.
"""

import argparse
import datetime as dt
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from benchmarks.report import RESULTS_DIR, arguments, machine, machine_line, publish, scale_note

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE


class RssSampler:
    """Samples this process's RSS every few milliseconds in a background thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), _rss_bytes()))
            time.sleep(self.interval)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def window(self, start: float, end: float) -> tuple[int, int]:
        inside = [rss for t, rss in self.samples if start <= t <= end]
        before = [rss for t, rss in self.samples if t <= start]
        first = before[-1] if before else (inside[0] if inside else 0)
        return (max(inside) if inside else first), first


def _write_spec_copy(specs_dir: Path, dataset: str, rows: int | None) -> None:
    from riverbed.settings import PROJECT_ROOT

    source = PROJECT_ROOT / "datasets" / f"{dataset}.yaml"
    data = yaml.safe_load(source.read_text())
    if rows is not None and data["source"]["kind"] == "generator":
        data["source"]["default_rows"] = rows
    if data["source"]["kind"] == "csv":
        data["source"]["files"] = [str((source.parent / f).resolve()) for f in data["source"]["files"]]
    (specs_dir / f"{dataset}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _io_floor(store, commit_paths: list[tuple[str, str]], scratch: Path) -> dict[str, float]:
    """Read the stored Parquet bytes into DataFrames and write them back to disk, nothing else."""
    blobs = [store.get_object(commit, path) for commit, path in commit_paths]
    total_bytes = sum(len(b) for b in blobs)
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    frames = [pd.read_parquet(io.BytesIO(blob)) for blob in blobs]
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for i, frame in enumerate(frames):
        frame.to_parquet(scratch / f"{i}.parquet", index=False, compression="zstd")
    write_seconds = time.perf_counter() - started
    return {
        "bytes": total_bytes,
        "read_seconds": read_seconds,
        "write_seconds": write_seconds,
        "floor_seconds": read_seconds + write_seconds,
    }


def run(dataset: str, days: int, rows: int | None, trials: int, keep: bool) -> dict[str, object]:
    import dagster as dg

    from platform_assets.definitions import build_definitions
    from platform_assets.environments import build_resources
    from platform_assets.runner import QUIET_LOGGING, RANGE_END_TAG, RANGE_START_TAG, demo_partitions, local_instance
    from resources.versioned_io_manager import LOAD_SECONDS_BY_STEP, table_path
    from riverbed.settings import RiverbedSettings
    from riverbed.specs import load_specs

    workdir = Path(tempfile.mkdtemp(prefix="riverbed-bench-"))
    specs_dir = workdir / "specs"
    specs_dir.mkdir()
    _write_spec_copy(specs_dir, dataset, rows)
    settings = RiverbedSettings(home=workdir / "home", specs_dirs=[specs_dir])
    spec = load_specs(settings.specs_dirs)[dataset]
    partitions = demo_partitions(spec, days)
    instance = local_instance(settings)
    defs = build_definitions(settings)

    from riverbed.sources import clear_source_cache, load_source_records

    clear_source_cache()  # the raw step reads (parses or generates) the source itself, as on the default path
    report: dict[str, object] = {
        "dataset": dataset,
        "source_kind": spec.source.kind,
        "partitions": len(partitions),
        "assets": {},
    }

    with RssSampler() as sampler:
        ingest = defs.resolve_job_def(f"ingest_{dataset}").execute_in_process(
            instance=instance,
            tags={RANGE_START_TAG: partitions[0], RANGE_END_TAG: partitions[-1]},
            run_config=QUIET_LOGGING,
        )
        train = defs.resolve_job_def(f"train_{dataset}").execute_in_process(
            instance=instance,
            run_config={**QUIET_LOGGING, "ops": {f"model_{dataset}": {"config": {"optuna_trials": trials}}}},
        )

    assets: dict[str, dict[str, object]] = {}
    for result in (ingest, train):
        records = instance.all_logs(result.run_id)
        starts = {
            r.step_key: r.timestamp
            for r in records
            if r.dagster_event and r.dagster_event.event_type_value == "STEP_START"
        }
        ends = {
            r.step_key: r.timestamp
            for r in records
            if r.dagster_event and r.dagster_event.event_type_value == "STEP_SUCCESS"
        }
        loads = {step: seconds for (run_id, step), seconds in LOAD_SECONDS_BY_STEP.items() if run_id == result.run_id}
        for materialization in result.get_asset_materialization_events():
            mat = materialization.event_specific_data.materialization
            step = materialization.step_key
            meta = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
            start, end = starts[step], ends[step]
            peak, first = sampler.window(start, end)
            wall = end - start
            entry = {
                "wall_seconds": round(wall, 3),
                "peak_rss_mb": round(peak / 2**20, 1),
                "rss_growth_mb": round((peak - first) / 2**20, 1),
                "rows": meta.get("rows"),
                "serialise_seconds": meta.get("serialise_seconds"),
                "put_seconds": meta.get("put_seconds"),
                "versioning_seconds": meta.get("versioning_seconds"),
                "versioning_share": round(float(meta.get("versioning_seconds", 0.0)) / wall, 4) if wall else None,
                "load_seconds": round(loads.get(step, 0.0), 4),
                "compute_seconds": meta.get("compute_seconds"),
                # The asset's own work: load inputs + body + serialise + store + version (no Dagster bookkeeping).
                "platform_seconds": round(
                    loads.get(step, 0.0)
                    + sum(
                        float(meta.get(k) or 0.0)
                        for k in ("compute_seconds", "serialise_seconds", "put_seconds", "versioning_seconds")
                    ),
                    3,
                ),
                "commit_id": meta.get("commit_id"),
            }
            assets[mat.asset_key.to_user_string()] = entry
    report["assets"] = assets

    store = build_resources(settings)["data_store"].get_store()
    raw_key = dg.AssetKey(f"raw_{dataset}")
    features_key = dg.AssetKey(f"features_{dataset}")
    commit_paths = []
    for key in (raw_key, features_key):
        commit = str(assets[key.to_user_string()]["commit_id"])
        commit_paths += [(commit, table_path(key, p)) for p in partitions]
    floor = _io_floor(store, commit_paths, workdir / "floor")
    raw_plus_features = float(assets[raw_key.to_user_string()]["wall_seconds"]) + float(
        assets[features_key.to_user_string()]["wall_seconds"]
    )
    report["io_floor"] = {k: round(v, 3) if isinstance(v, float) else v for k, v in floor.items()}
    report["raw_plus_features_seconds"] = round(raw_plus_features, 3)
    report["raw_plus_features_over_floor"] = round(raw_plus_features / floor["floor_seconds"], 2)
    platform = sum(float(assets[k.to_user_string()]["platform_seconds"]) for k in (raw_key, features_key))
    report["raw_plus_features_platform_seconds"] = round(platform, 3)
    report["raw_plus_features_platform_over_floor"] = round(platform / floor["floor_seconds"], 2)
    report["commits_on_main"] = len(store.log(store.main_branch, limit=100_000))
    # The source read alone (inside the raw step above it was part of the step's compute): for the breakdown.
    clear_source_cache()
    started = time.perf_counter()
    source = load_source_records(spec)
    report["source_read_seconds"] = round(time.perf_counter() - started, 3)
    report["source_rows"] = len(source)
    del source
    clear_source_cache()
    report["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        report["workdir"] = str(workdir)
    return report


QUICK = {"days": 3, "rows": 20_000, "trials": 1}
TARGET_FLOOR_MULTIPLE = 3.0
TARGET_VERSIONING_SHARE = 0.10
COMMAND = "make bench-graph"
TITLES = {"salary_band": "UCI Adult", "machine_failure": "generated"}


def _asset_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| asset | wall s | platform work s | peak RSS MB | RSS growth MB | rows | load s | compute s | serialise s "
        "| object puts s | versioning s | versioning share of wall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for asset, m in result["assets"].items():
        share = m.get("versioning_share")
        lines.append(
            f"| {asset} | {m['wall_seconds']} | {m.get('platform_seconds', '')} | {m['peak_rss_mb']} | "
            f"{m['rss_growth_mb']} | {m['rows']} | {m.get('load_seconds', '')} | {m.get('compute_seconds') or ''} | "
            f"{m['serialise_seconds']} | {m['put_seconds']} | {m['versioning_seconds']} | "
            f"{'' if share is None else f'{share * 100:.1f}%'} |"
        )
    return lines


def _dataset_section(result: dict[str, Any]) -> list[str]:
    dataset = result["dataset"]
    raw = result["assets"][f"raw_{dataset}"]
    floor = result["io_floor"]
    ratio = result["raw_plus_features_over_floor"]
    args = " ".join(result.get("arguments", []))
    return [
        f"### {dataset} ({TITLES.get(dataset, dataset)}, {result['source_rows']:,} rows)",
        "",
        machine_line(result["machine"], f"uv run python -m benchmarks.graph_benchmark {args}".strip()),
        "",
        *scale_note(result, COMMAND),
        f"{result['partitions']} daily partitions, {result['source_rows']:,} source rows, read by the raw step "
        f"itself (its compute {raw.get('compute_seconds')} s includes the source read, which alone takes "
        f"{result['source_read_seconds']} s: "
        f"{'parsing the CSV' if result['source_kind'] == 'csv' else 'running the generator'}).",
        "",
        *_asset_table(result),
        "",
        f"I/O floor (read + write the same {floor['bytes'] / 2**20:.1f} MiB of Parquet the raw and features assets "
        f"wrote, nothing else): {floor['floor_seconds']} s (read {floor['read_seconds']} s, write "
        f"{floor['write_seconds']} s). Raw + features: {result['raw_plus_features_seconds']} s = **{ratio}x the floor** "
        f"(target <= {TARGET_FLOOR_MULTIPLE:.0f}x: {'met' if ratio <= TARGET_FLOOR_MULTIPLE else 'missed'}); the "
        "assets' own work (load + compute + serialise + store + version, without Dagster's event bookkeeping) is "
        f"{result['raw_plus_features_platform_seconds']} s = **{result['raw_plus_features_platform_over_floor']}x "
        f"the floor**. Commits on main afterwards: {result['commits_on_main']}.",
        "",
    ]


def _notes(results: list[dict[str, Any]]) -> list[str]:
    """Observations computed from the raw files (no figure typed by hand)."""
    lines = ["### Notes (computed from the raw files above)", ""]
    for r in results:
        dataset = r["dataset"]
        shares = [m["versioning_share"] for m in r["assets"].values() if m.get("versioning_share") is not None]
        bookkeeping = sum(
            float(r["assets"][f"{stage}_{dataset}"]["wall_seconds"])
            - float(r["assets"][f"{stage}_{dataset}"]["platform_seconds"])
            for stage in ("raw", "features")
        )
        model = r["assets"][f"model_{dataset}"]
        train_wall = model["wall_seconds"] + r["assets"][f"training_set_{dataset}"]["wall_seconds"]
        lines += [
            f"- **{dataset}**: raw + features at {r['raw_plus_features_over_floor']}x the I/O floor "
            f"({'within' if r['raw_plus_features_over_floor'] <= TARGET_FLOOR_MULTIPLE else 'beyond'} the "
            f"{TARGET_FLOOR_MULTIPLE:.0f}x target); of their {r['raw_plus_features_seconds']} s, "
            f"{bookkeeping:.3f} s ({bookkeeping / r['partitions'] / 2 * 1000:.0f} ms per partition and asset) is "
            "step time outside the assets' own work: Dagster's bookkeeping, chiefly one event-log write per "
            "partition materialisation and its planned event. Versioning (branch + one commit per partition + "
            f"merge + branch deletion) is {min(shares) * 100:.1f}-{max(shares) * 100:.1f}% of each asset's wall "
            f"time ({'under' if max(shares) <= TARGET_VERSIONING_SHARE else 'over'} the "
            f"{TARGET_VERSIONING_SHARE * 100:.0f}% target). The model step (Optuna trials x XGBoost fits) is "
            f"{model['wall_seconds']} s of the {train_wall:.1f} s the training set and model steps take, and holds "
            "the peak RSS, "
            f"{model['peak_rss_mb']} MB.",
        ]
    return [*lines, ""]


def render_results(results: dict[str, Any]) -> str:
    ordered = [results[name] for name in ("graph-salary_band.json", "graph-machine_failure.json") if name in results]
    lines = [
        "## Asset graph",
        "",
        "Each run: ingest (raw + features over the daily partitions, one run) then train (training set + model), "
        "embedded parts (local versioned store, MLflow on SQLite) in a fresh temporary home, one process. Wall "
        "time is Dagster's step time; peak RSS is the whole process (Dagster, pandas, XGBoost loaded) sampled every "
        "5 ms during the step; versioning = branch creation + commits + merge + branch deletion, measured inside "
        "the IO manager. Raw figures: `benchmarks/results/graph-<dataset>.json`.",
        "",
    ]
    for result in ordered:
        lines += _dataset_section(result)
    return "\n".join(lines + _notes(ordered))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="salary_band")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows", type=int, default=None, help="rows for generated datasets")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help=f"smoke scale: {QUICK}")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep", action="store_true", help="keep the temporary RIVERBED_HOME")
    args = parser.parse_args()
    if args.quick:
        args.days, args.rows, args.trials = QUICK["days"], QUICK["rows"], QUICK["trials"]
    result = run(args.dataset, args.days, args.rows, args.trials, args.keep)
    result.update(machine=machine(), scale="quick" if args.quick else "full", arguments=arguments(sys.argv[1:]))
    print(publish(f"graph-{args.dataset}.json", result, args.results_dir.resolve()))


if __name__ == "__main__":
    main()
