"""Run every benchmark and rewrite ``benchmarks/RESULTS.md`` with the figures, the machine and the date.

Each benchmark runs in its own process so peak-memory figures are not polluted by the previous one.
Raw JSON results are kept under ``benchmarks/results/`` (ignored by git).
"""

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"

GRAPH_RUNS = [
    ("salary_band (UCI Adult, 48,842 rows)", ["--dataset", "salary_band", "--days", "30", "--trials", "8"]),
    (
        "machine_failure (generated, 1,000,000 rows)",
        ["--dataset", "machine_failure", "--rows", "1000000", "--days", "30", "--trials", "4"],
    ),
]


def machine_description() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), {memory_gb:.0f} GB RAM, Python {platform.python_version()}"


def run_graph(args: list[str]) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.graph_benchmark", *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=HERE.parent,
    )
    return json.loads(completed.stdout)


def graph_section(title: str, result: dict) -> str:
    lines = [
        f"### {title}",
        "",
        f"{result['partitions']} daily partitions, {result['source_rows']:,} source rows "
        f"(source parsed/generated once in {result['source_load_seconds']} s, outside the timed steps).",
        "",
        "| asset | wall s | platform work s | peak RSS MB | RSS growth MB | rows | load s | compute s | serialise s | object puts s | versioning s | versioning share of wall |",
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
    floor = result["io_floor"]
    ratio = result["raw_plus_features_over_floor"]
    lines += [
        "",
        f"I/O floor (read + write the same {floor['bytes'] / 2**20:.1f} MiB of Parquet the raw and features assets "
        f"wrote, nothing else): {floor['floor_seconds']} s (read {floor['read_seconds']} s, write "
        f"{floor['write_seconds']} s). Raw + features: {result['raw_plus_features_seconds']} s = **{ratio}x the floor** "
        f"(target <= 3x: {'met' if ratio <= 3 else 'missed'}); the assets' own work (load + compute + serialise + "
        f"store + version, without Dagster's event bookkeeping) is {result.get('raw_plus_features_platform_seconds')} s "
        f"= **{result.get('raw_plus_features_platform_over_floor')}x the floor**. "
        f"Commits on main afterwards: {result['commits_on_main']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    RESULTS_DIR.mkdir(exist_ok=True)
    rerender = "--render-only" in sys.argv  # rewrite RESULTS.md from the last JSON results
    sections = []
    for title, args in GRAPH_RUNS:
        name = args[1]
        path = RESULTS_DIR / f"graph-{name}.json"
        if rerender:
            result = json.loads(path.read_text())
        else:
            result = run_graph(args)
            path.write_text(json.dumps(result, indent=2))
        sections.append(graph_section(title, result))
    today = dt.date.today().isoformat()
    header = [
        "# Benchmark results",
        "",
        f"Machine: {machine_description()}. Date: {today}. Command: `make bench`.",
        "",
        "## Asset graph (issue: foundation)",
        "",
        "Each run: ingest (raw + features over 30 daily partitions, one run) then train (training set + model), "
        "embedded parts (local versioned store, MLflow on SQLite) in a fresh temporary home. Wall time is Dagster's "
        "step time; peak RSS is the whole process (Dagster, pandas, XGBoost loaded) sampled every 5 ms during the "
        "step; versioning = branch creation + commits + merge + branch deletion, measured inside the IO manager.",
        "",
    ]
    existing = (HERE / "RESULTS.md").read_text() if (HERE / "RESULTS.md").exists() else ""
    notes = ""
    marker = "## Notes"
    if marker in existing:
        notes = existing[existing.index(marker) :]
    (HERE / "RESULTS.md").write_text("\n".join(header) + "\n".join(sections) + ("\n" + notes if notes else ""))


if __name__ == "__main__":
    main()
