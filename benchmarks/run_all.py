"""Run every benchmark, each in its own process, then render ``benchmarks/RESULTS.md`` from the raw results.

    uv run python -m benchmarks.run_all [--quick] [--results-dir DIR] [--only graph monitoring ...]

Each script writes its raw figures (machine and date included) to ``<results-dir>/<name>.json`` and re-renders
``RESULTS.md`` beside the results directory; nothing in RESULTS.md is written by hand (``benchmarks/report.py``).
A process per benchmark keeps one benchmark's imports and memory out of the next one's figures. The serving
benchmark keeps its own file handling, so it runs with ``--no-write`` and its JSON (standard output) is stored here.

``--quick`` runs every script at its smoke scale (figures that only show the scripts work, marked so in the
rendering); use it with a scratch ``--results-dir`` so the committed results are left alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import RESULTS_DIR, write_results_md

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name -> the module and its full-scale arguments (the figures in RESULTS.md)
BENCHMARKS: dict[str, list[str]] = {
    "graph-salary_band": ["benchmarks.graph_benchmark", "--dataset", "salary_band", "--days", "30", "--trials", "8"],
    "graph-machine_failure": [
        "benchmarks.graph_benchmark",
        "--dataset",
        "machine_failure",
        "--rows",
        "1000000",
        "--days",
        "30",
        "--trials",
        "4",
    ],
    "ingestion": ["benchmarks.ingestion_benchmark"],
    "monitoring": ["benchmarks.monitoring_benchmark"],
    "drift": ["benchmarks.drift_benchmark"],
    "loop": ["benchmarks.loop_benchmark"],  # --quick is the same loop (~6 min): it has no smaller scale that closes
    "serving": ["benchmarks.serving_benchmark"],
    "scale_out": ["benchmarks.scale_out_benchmark"],
    "console": ["benchmarks.console_benchmark"],
    "imports": ["benchmarks.import_times"],
}
GROUPS = {"graph": ["graph-salary_band", "graph-machine_failure"]}
SERVING_QUICK = ["--duration", "10", "--warmup", "2", "--backends", "embedded"]  # locust needs a few s to start


def command(name: str, results_dir: Path, quick: bool, scratch: Path) -> list[str]:
    module, *arguments = BENCHMARKS[name]
    if name == "serving":
        extra = [*SERVING_QUICK, "--home", str(scratch / "serving-home")] if quick else []
        return [sys.executable, "-m", module, *arguments, *extra, "--no-write"]
    return [
        sys.executable,
        "-m",
        module,
        *arguments,
        *(["--quick"] if quick else []),
        "--results-dir",
        str(results_dir),
    ]


def run_one(name: str, results_dir: Path, quick: bool, scratch: Path) -> float:
    """Run one benchmark in its own process; its wall seconds."""
    started = time.perf_counter()
    argv = command(name, results_dir, quick, scratch)
    print(f"== {name}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    if name == "serving":
        completed = subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True)
        out = completed.stdout
        start = 0 if out.startswith("{") else out.rindex("\n{\n") + 1  # the JSON document it prints last
        result = json.loads(out[start:])
        result["scale"] = "quick" if quick else "full"
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "serving.json").write_text(json.dumps(result, indent=2) + "\n")
    else:
        subprocess.run(argv, cwd=ROOT, check=True, stdout=sys.stderr)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every script at its smoke scale")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--only", nargs="+", default=None, help=f"a subset, in this order: {', '.join([*GROUPS, *BENCHMARKS])}"
    )
    args = parser.parse_args()
    names = list(BENCHMARKS)
    if args.only:
        wanted = {n for item in args.only for n in GROUPS.get(item, [item])}
        unknown = sorted(wanted - set(BENCHMARKS))
        if unknown:
            parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {', '.join([*GROUPS, *BENCHMARKS])}")
        names = [n for n in names if n in wanted]
    results_dir = args.results_dir.resolve()
    with tempfile.TemporaryDirectory(prefix="riverbed-bench-") as scratch:
        seconds = {name: run_one(name, results_dir, args.quick, Path(scratch)) for name in names}
    print(write_results_md(results_dir))
    print(", ".join(f"{name} {value / 60:.1f} min" for name, value in seconds.items()), file=sys.stderr)


if __name__ == "__main__":
    main()
