"""``benchmarks/RESULTS.md``, rendered from the raw results in ``benchmarks/results/*.json`` and nothing else.

Every benchmark script writes its raw figures (with the machine and the date they were measured on) to one JSON
file and re-renders the whole of ``RESULTS.md`` from the results directory; each section's text comes from the
``render`` function of the script that measured it, so no figure is written by hand. To re-render without
measuring anything (after editing a renderer, say):

    uv run python -m benchmarks.report [--results-dir benchmarks/results] [--output benchmarks/RESULTS.md]

A section whose raw file is missing says which command produces it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
RESULTS_MD = HERE / "RESULTS.md"
TITLE = "# Benchmark results"


def machine() -> dict[str, Any]:
    """CPU, memory, kernel, Python and the date: what every results section states."""
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "uname": uname,
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(memory_gb),
        "python": platform.python_version(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def machine_line(m: dict[str, Any], command: str) -> str:
    """The section's first line: the machine, the date and the command, from the raw file."""
    return (
        f"Machine: `{m['uname']}`; {m['cpus']} CPUs ({m['cpu_model']}), {m['memory_gb']} GB RAM, Python {m['python']}. "
        f"Date: {m['date']}. Command: `{command}`."
    )


def arguments(argv: list[str]) -> list[str]:
    """A script's command-line arguments as worth stating in RESULTS.md: without ``--results-dir`` and its value."""
    kept: list[str] = []
    skip = False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--results-dir":
            skip = True
        elif not argument.startswith("--results-dir="):
            kept.append(argument)
    return kept


def scale_note(result: dict[str, Any], full_command: str) -> list[str]:
    """A warning paragraph when the raw file comes from a smoke-scale (``--quick``) run."""
    if result.get("scale") != "quick":
        return []
    return [
        f"**Smoke-scale run (`--quick`): these figures only show the script works; the benchmark is `{full_command}`.**",
        "",
    ]


@dataclass(frozen=True)
class Section:
    """One ``## `` section: the script that renders it, its raw files and the command that measures it."""

    title: str
    module: str
    files: tuple[str, ...]
    command: str

    def render(self, results_dir: Path) -> str:
        found = [results_dir / name for name in self.files if (results_dir / name).exists()]
        if not found:
            paths = ", ".join(f"`benchmarks/results/{name}`" for name in self.files)
            return (
                f"{self.title}\n\nNot measured with the committed script yet: `{self.command}` writes {paths} and "
                "this section.\n"
            )
        renderer: Callable[[Any], str] = importlib.import_module(self.module).render_results
        results = {path.name: json.loads(path.read_text()) for path in found}
        return renderer(results).rstrip("\n") + "\n"


SECTIONS = (
    Section(
        "## Asset graph",
        "benchmarks.graph_benchmark",
        ("graph-salary_band.json", "graph-machine_failure.json"),
        "make bench-graph",
    ),
    Section("## Kafka ingestion", "benchmarks.ingestion_benchmark", ("kafka_ingestion.json",), "make bench-ingestion"),
    Section("## Monitoring", "benchmarks.monitoring_benchmark", ("monitoring.json",), "make bench-monitoring"),
    Section("## Drift to v2 (end to end)", "benchmarks.drift_benchmark", ("drift.json",), "make bench-drift"),
    Section(
        "## The loop under `riverbed up` (end to end, intervals included)",
        "benchmarks.loop_benchmark",
        ("loop.json",),
        "uv run python -m benchmarks.run_all --only loop",
    ),
    Section("## Serving", "benchmarks.serving_render", ("serving.json",), "make bench-serving"),
    Section(
        "## Scale-out (gateways behind HAProxy)",
        "benchmarks.scale_out_benchmark",
        ("scale_out.json",),
        "make bench-scale-out",
    ),
    Section(
        "## Console", "benchmarks.console_benchmark", ("console.json",), "uv run python -m benchmarks.console_benchmark"
    ),
    Section("## Import times", "benchmarks.import_times", ("import_times.json",), "make bench-imports"),
)


def render_all(results_dir: Path = RESULTS_DIR) -> str:
    intro = [
        TITLE,
        "",
        "Every figure below is rendered by `benchmarks/report.py` from the raw results committed in "
        "`benchmarks/results/` (each file names the machine and the date it was measured on). `make bench` runs "
        "every benchmark and rewrites this file; `uv run python -m benchmarks.report` re-renders it from the "
        "committed raw results without measuring.",
        "",
    ]
    return "\n".join(intro) + "\n" + "\n".join(section.render(results_dir) for section in SECTIONS)


def results_md_for(results_dir: Path) -> Path:
    """Where the rendering of ``results_dir`` goes: ``RESULTS.md`` beside it (``benchmarks/RESULTS.md``)."""
    return results_dir.parent / "RESULTS.md"


def write_results_md(results_dir: Path = RESULTS_DIR, output: Path | None = None) -> Path:
    path = output or results_md_for(results_dir)
    path.write_text(render_all(results_dir))
    return path


def publish(name: str, result: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write one benchmark's raw results as ``<results_dir>/<name>`` and re-render ``RESULTS.md`` beside it."""
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / name).write_text(json.dumps(result, indent=2) + "\n")
    return write_results_md(results_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description="Re-render RESULTS.md from the raw results, measuring nothing.")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--output", type=Path, default=None, help="default: RESULTS.md beside the results directory")
    args = parser.parse_args()
    print(write_results_md(args.results_dir.resolve(), args.output))


if __name__ == "__main__":
    main()
