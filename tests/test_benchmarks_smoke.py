"""The benchmark scripts still run and still produce what ``benchmarks/report.py`` renders.

Each script runs at its smoke scale (``--quick``) in its own process, into a temporary results directory, and
the section is rendered from the JSON it wrote. The figures are not checked (a smoke run on a busy machine
measures nothing worth keeping); the fields the renderer needs, the machine and the date, and the smoke-scale
warning are. The last test keeps ``benchmarks/RESULTS.md`` what the renderer makes of the committed raw results.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report
from riverbed.settings import PROJECT_ROOT

ENV = {
    "NML_DISABLE_USAGE_LOGGING": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DAGSTER_DISABLE_TELEMETRY": "true",
    "OMP_NUM_THREADS": "1",
}
MACHINE_FIELDS = {"uname", "cpus", "cpu_model", "memory_gb", "python", "date"}


def _run(module: str, results_dir: Path, *arguments: str, timeout: int = 900) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", module, *arguments, "--results-dir", str(results_dir)],
        cwd=PROJECT_ROOT,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]


def _section(results_dir: Path, title: str) -> str:
    (section,) = [s for s in report.SECTIONS if s.title == title]
    return section.render(results_dir)


def _check_rendered(results_dir: Path, title: str, result: dict[str, Any]) -> str:
    assert set(result["machine"]) >= MACHINE_FIELDS, result["machine"]
    assert result["machine"]["cpus"] == os.cpu_count()
    text = _section(results_dir, title)
    assert text.startswith(title + "\n")
    assert "Not measured" not in text
    assert f"Date: {result['machine']['date']}" in text and f"{result['machine']['memory_gb']} GB RAM" in text
    assert "Smoke-scale run (`--quick`)" in text
    rendered = (results_dir.parent / "RESULTS.md").read_text()
    assert text in rendered  # the script re-rendered RESULTS.md beside its results
    return text


def test_import_times_quick(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _run("benchmarks.import_times", results, "--quick")
    result = json.loads((results / "import_times.json").read_text())
    assert result["scale"] == "quick" and set(result["seconds"]) == {"psycopg", "riverbed.cli"}
    assert all(seconds > 0 for seconds in result["seconds"].values())
    text = _check_rendered(results, "## Import times", result)
    assert "| `riverbed.cli` |" in text


@pytest.mark.slow
def test_graph_benchmark_quick_charges_the_source_read_to_the_raw_step(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _run("benchmarks.graph_benchmark", results, "--dataset", "machine_failure", "--quick")
    result = json.loads((results / "graph-machine_failure.json").read_text())
    assert result["partitions"] == 3 and result["source_rows"] == 20_000
    raw = result["assets"]["raw_machine_failure"]
    assert raw["compute_seconds"] >= result["source_read_seconds"] > 0  # the raw step read the source itself
    for key in ("io_floor", "raw_plus_features_over_floor", "raw_plus_features_platform_over_floor", "commits_on_main"):
        assert key in result
    assert {"raw", "features", "training_set", "model"} <= {a.rsplit("_machine_failure")[0] for a in result["assets"]}
    text = _check_rendered(results, "## Asset graph", result)
    assert "### machine_failure (generated, 20,000 rows)" in text and "### Notes" in text


@pytest.mark.slow
def test_ingestion_benchmark_quick(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _run("benchmarks.ingestion_benchmark", results, "--quick")
    result = json.loads((results / "kafka_ingestion.json").read_text())
    assert result["consumed"] == 20_000 and result["raw_rows"] == 20_000
    assert result["records_per_second"] > 0 and result["tick_count"] >= 4
    _check_rendered(results, "## Kafka ingestion", result)


@pytest.mark.slow
def test_monitoring_benchmark_quick_runs_in_a_fresh_process_with_each_step_timed(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _run("benchmarks.monitoring_benchmark", results, "--quick")
    result = json.loads((results / "monitoring.json").read_text())
    assert result["records"] == 5000 and result["chunks"] == 10 and result["labelled"] == 1250
    assert [run["variant"] for run in result["runs"]] == ["default", "full_nannyml_import"]
    assert all(run["success"] for run in result["runs"])
    default = result["median_seconds"]["default"]
    steps = ("interpreter_start", "code_location_import", "nannyml_import", "query", "analysis", "store", "report")
    assert all(default[step] >= 0 for step in steps) and default["nannyml_import"] > 0
    assert default["total"] > sum(default[step] for step in steps)  # the total is spawn to results, all included
    assert result["runs"][0]["modules_loaded"] == {"flaml": False, "mlflow": False}
    assert result["runs"][1]["modules_loaded"] == {"flaml": True, "mlflow": True}
    assert result["torque_alert_chunks"] >= 1 and result["first_torque_alert_chunk"] >= 5  # shifted half only
    text = _check_rendered(results, "## Monitoring", result)
    assert "imports: NannyML" in text


@pytest.mark.slow
def test_drift_benchmark_quick_times_every_step_until_v2_answers(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _run("benchmarks.drift_benchmark", results, "--quick", timeout=1500)
    result = json.loads((results / "drift.json").read_text())
    assert result["v2"] == result["v1"] + 1 and result["retraining_reason"] == "drift"
    steps = result["step_seconds"]
    order = list(steps)
    assert order[0] == "produce drifted records (Kafka)" and order[-1] == "until the gateway answers with v2"
    assert sum(steps.values()) <= result["seconds_to_v2"] + 0.01  # the steps are inside the measured window
    assert {"ingest", "monitor", "train"} == set(result["job_step_seconds"])
    assert result["intervals"]["ingestion_sensor_seconds"] > 0 and result["served_polls"] >= 1
    text = _check_rendered(results, "## Drift to v2 (end to end)", result)
    assert "sensor intervals excluded" in text


@pytest.mark.slow
def test_serving_benchmark_quick_through_run_all(tmp_path: Path) -> None:
    results = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.run_all", "--quick", "--only", "serving", "--results-dir", str(results)],
        cwd=PROJECT_ROOT,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    result = json.loads((results / "serving.json").read_text())
    assert result["scale"] == "quick" and list(result["backends"]) == ["embedded"]
    _check_rendered(results, "## Serving", result)


@pytest.mark.slow
def test_console_benchmark_quick_times_every_page_and_explains_its_queries(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _run("benchmarks.console_benchmark", results, "--quick")
    result = json.loads((results / "console.json").read_text())
    assert result["scale"] == "quick" and result["rows"] == 20_000 and result["repeats"] == 3
    assert set(result["pages"]) == {
        "request_first_after_start",
        "log_first_page",
        "log_deep_page",
        "log_filtered_label_version",
        "log_filtered_refused",
        "log_filtered_flagged",
        "log_filtered_not_overridden",
        "models",
        "monitoring_30_days",
        "request_with_chart",
    }
    assert all(page["median_ms"] > 0 for page in result["pages"].values())
    assert "inference_log_keyset" in result["plans"]["log_deep_page"]["indexes"]
    text = _check_rendered(results, "## Console", result)
    assert "| Inference log, first page (50 rows) |" in text


def test_results_md_is_the_rendering_of_the_committed_raw_results() -> None:
    committed = (PROJECT_ROOT / "benchmarks" / "RESULTS.md").read_text()
    assert committed == report.render_all(report.RESULTS_DIR), (
        "benchmarks/RESULTS.md differs from what benchmarks/report.py renders from benchmarks/results/*.json: "
        "re-render it with `uv run python -m benchmarks.report` (never edit it by hand)"
    )
    for section in report.SECTIONS:
        assert section.title + "\n" in committed
