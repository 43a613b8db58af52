"""What a launched process pays to import each heavy library and each entry module of Riverbed.

Every import runs in a fresh interpreter (``python -c "import X"``), ``--repeats`` times; the figure is the
median wall time minus the median of an empty interpreter (``python -c pass``). These are the measured
reasons behind the few imports kept inside functions (each such import names its library's cost here).

    uv run python -m benchmarks.import_times [--repeats 5]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.report import machine, publish

HERE = Path(__file__).resolve().parent
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


def measure(repeats: int) -> dict[str, Any]:
    empty = statistics.median(_wall("pass") for _ in range(repeats))
    seconds: dict[str, float] = {}
    for module in [*LIBRARIES, *ENTRY_MODULES]:
        samples = [_wall(f"import {module}") for _ in range(repeats)]
        seconds[module] = round(statistics.median(samples) - empty, 3)
    return {"machine": machine(), "repeats": repeats, "empty_interpreter_seconds": round(empty, 3), "seconds": seconds}


def section(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "## Import times",
        "",
        f"Machine: `{m['uname']}`; {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB RAM, Python {m['python']}. "
        f"Date: {m['date']}. Command: `uv run python -m benchmarks.import_times`.",
        "",
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
    args = parser.parse_args()
    result = measure(args.repeats)
    publish(result, section(result), HERE / "results" / "import_times.json", HERE / "RESULTS.md", "## Import times")


if __name__ == "__main__":
    main()
