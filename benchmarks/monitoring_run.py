"""One monitoring run in a fresh process, as a launched run pays it (started by ``monitoring_benchmark``).

``python -m benchmarks.monitoring_run CONFIG.json OUT.json``: loads the code location
(``platform_assets.definitions``), then materialises ``monitoring_<dataset>`` for one day with Dagster on the
configured home and inference log, exactly as the monitoring schedule's run does (query, reference, NannyML
analysis, stored results, HTML report). Each of those steps is timed by wrapping the functions the asset calls;
every time is a wall-clock timestamp (``time.time()``), so the parent can also charge the interpreter's start.
With ``"full_nannyml_import": true`` the run first does ``import nannyml`` whole (how the analysis imported
NannyML before ``monitoring.nannyml_import``), for the before/after comparison.
"""

import time

STARTED = time.time()  # first line of the process: everything before it is the interpreter's start

import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


def _timed(marks: dict[str, float], name: str, function: Any) -> Any:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.time()
        try:
            return function(*args, **kwargs)
        finally:
            marks[name] = marks.get(name, 0.0) + time.time() - began

    return wrapper


def main(config_path: Path, out_path: Path) -> None:
    config = json.loads(config_path.read_text())
    marks: dict[str, float] = {}
    stamps: dict[str, float] = {"started": STARTED}
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")

    import monitoring.analysis as analysis
    import platform_assets.monitoring_assets as monitoring_assets
    from platform_assets.definitions import build_definitions
    from platform_assets.runner import QUIET_LOGGING, local_instance
    from riverbed import names
    from riverbed.settings import RiverbedSettings

    stamps["code_location_imported"] = time.time()
    if config["full_nannyml_import"]:
        import nannyml  # noqa: F401  (the "before" variant: the whole package)
    stamps["nannyml_preimported"] = time.time()

    # Time the functions the asset calls (looked up in these modules' globals at call time).
    for name, attribute in (
        ("query", "logged_predictions"),
        ("reference", "read_reference"),
        ("analysis_with_import", "analyse_window"),
        ("store", "store_results"),
        ("report", "html_report"),
    ):
        setattr(monitoring_assets, attribute, _timed(marks, name, getattr(monitoring_assets, attribute)))
    analysis._import_nannyml = _timed(marks, "nannyml_import", analysis._import_nannyml)  # type: ignore[method-assign]

    settings = RiverbedSettings(
        home=Path(config["home"]), specs_dirs=[Path(config["specs_dir"])], inference_log_dsn=config["dsn"]
    )
    defs = build_definitions(settings)
    job = defs.resolve_job_def(names.monitor_job(config["dataset"]))
    instance = local_instance(settings)
    stamps["run_started"] = time.time()
    result = job.execute_in_process(instance=instance, partition_key=config["day"], run_config=QUIET_LOGGING)
    stamps["run_finished"] = time.time()
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    summary = metadata["summary"].value
    instance.dispose()
    if not isinstance(summary, dict):
        raise TypeError("the monitoring asset's summary metadata is not a JSON object")
    marks["analysis"] = marks.pop("analysis_with_import") - marks.get("nannyml_import", 0.0)
    nannyml_modules = {name: name in sys.modules for name in ("flaml", "mlflow")}
    out_path.write_text(
        json.dumps(
            {
                "stamps": stamps,
                "steps": marks,
                "summary": summary,
                "success": result.success,
                "modules_loaded": nannyml_modules,
                "finished": time.time(),
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
