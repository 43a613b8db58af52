"""What a launched process pays to import each heavy library and each entry module of Riverbed.

Every import runs in a fresh interpreter (``python -c "import X"``; for ``SNIPPETS``, their code: the NannyML
calculators the monitoring analysis imports instead of ``import nannyml``), ``--repeats`` times; the figure is the
median wall time minus the median of an empty interpreter (``python -c pass``). These are the measured
reasons behind the few imports kept inside functions (each such import names its library's cost here).

    uv run python -m benchmarks.import_times [--repeats 5] [--quick] [--results-dir DIR]

Writes ``<results-dir>/import_times.json`` (default ``benchmarks/results``) and re-renders ``RESULTS.md`` beside it.
``--quick`` (smoke tests) measures one repeat of two imports.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.report import RESULTS_DIR, machine, machine_line, publish, scale_note

LIBRARIES = [
    "pandas",
    "pyarrow",
    "psycopg",
    "httpx",
    "fastapi",
    "confluent_kafka",
    "sklearn",
    "xgboost",
    "dagster",
    "mlflow",
    "optuna",
    "fairlearn.metrics",
    "nannyml",
]
# What the monitoring analysis imports instead of the whole of nannyml (monitoring/nannyml_import.py).
SNIPPETS = {
    "monitoring.nannyml_import.import_calculators()": (
        "from monitoring.nannyml_import import import_calculators; import_calculators()"
    ),
}
ENTRY_MODULES = [
    "riverbed.cli",
    "serving.gateway.main",
    "serving.runtime",
    "platform_assets.definitions",
]
ENV = {"NML_DISABLE_USAGE_LOGGING": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1"}


def _wall(code: str) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env={**os.environ, **ENV})
    return time.perf_counter() - began


COMMAND = "uv run python -m benchmarks.import_times"
QUICK_MODULES = ["psycopg", "riverbed.cli"]


def measure(repeats: int, modules: list[str] | None = None) -> dict[str, Any]:
    empty = statistics.median(_wall("pass") for _ in range(repeats))
    seconds: dict[str, float] = {}
    for module in modules or [*LIBRARIES, *SNIPPETS, *ENTRY_MODULES]:
        samples = [_wall(SNIPPETS.get(module, f"import {module}")) for _ in range(repeats)]
        seconds[module] = round(statistics.median(samples) - empty, 3)
    return {"machine": machine(), "repeats": repeats, "empty_interpreter_seconds": round(empty, 3), "seconds": seconds}


def render_results(results: dict[str, Any]) -> str:
    result = results["import_times.json"]
    m = result["machine"]
    lines = [
        "## Import times",
        "",
        machine_line(m, COMMAND),
        "",
        *scale_note(result, COMMAND),
        f"Median of {result['repeats']} fresh interpreters each, minus an empty interpreter "
        f"({result['empty_interpreter_seconds']} s). Libraries costing a second or more are imported inside the "
        "functions that need them (with a comment naming the cost), so the CLI, the gateway and the runtime do not pay "
        "for what they do not use.",
        "",
        "| import | seconds |",
        "|---|---:|",
    ]
    lines += [f"| `{name}` | {seconds} |" for name, seconds in result["seconds"].items()]
    lines.append("")
    lines.append("Raw figures: `benchmarks/results/import_times.json`.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smoke scale: one repeat of two imports")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.quick:
        result = {**measure(1, QUICK_MODULES), "scale": "quick"}
    else:
        result = {**measure(args.repeats), "scale": "full"}
    print(publish("import_times.json", result, args.results_dir.resolve()))


if __name__ == "__main__":
    main()
