"""``monitoring.nannyml_import``: the analysis gets the same results without NannyML's unused parts.

Each side runs in a fresh interpreter, since what is imported is the point: one with the slim import the
analysis uses, one after a full ``import nannyml``. Both analyse the same synthetic window (a drifted second
half, a quarter labelled) and print every result row as JSON.
"""

import json
import os
import subprocess
import sys

import pytest

from riverbed.settings import PROJECT_ROOT

_ANALYSE = """
import datetime as dt, json, sys
import numpy as np
FULL = sys.argv[1] == "full"
if FULL:
    import nannyml  # noqa: F401
from monitoring.analysis import analyse_window
from riverbed.generators import generate_machine_failure
from riverbed.settings import PROJECT_ROOT
from riverbed.specs import load_specs

spec = load_specs([PROJECT_ROOT / "datasets"])["machine_failure"]

def scored(rows, seed, shift=0.0):
    frame = generate_machine_failure(spec, rows, seed).reset_index(drop=True)[spec.feature_names]
    frame["torque_nm"] = (frame["torque_nm"] + shift).clip(0, 100)
    p = 1 / (1 + np.exp(-(frame["torque_nm"].to_numpy() - 45) / 5))
    frame["machine_type"] = frame["machine_type"].astype("string")
    truth = (np.random.default_rng(seed).random(rows) < p).astype(float)
    return frame.assign(y_pred_proba=p, y_pred=(p >= 0.5).astype(int), y_true=truth)

reference = scored(3000, 1)
window = __import__("pandas").concat([scored(1000, 2), scored(1000, 3, shift=20.0)], ignore_index=True)
window.loc[window.index % 4 != 0, "y_true"] = float("nan")
found = analyse_window(spec, reference, window, day=dt.date(2026, 11, 22), chunk_size=250, model_version="1")
modules = {name: name in sys.modules and type(sys.modules[name]).__name__ != "_LazyModule"
           for name in ("flaml", "mlflow", "statsmodels.api")}
rows = [[r.chunk, r.kind, r.name, r.value, r.lower_threshold, r.upper_threshold, r.alert] for r in found.rows]
after = None
if not FULL:
    import nannyml  # the deferred package __init__ completes on first use of a name it exports
    after = [nannyml.DLE.__name__, nannyml.CBPE.__module__, nannyml.drift.DomainClassifierCalculator.__name__]
print(json.dumps({"rows": rows, "modules": modules, "after": after}))
"""


def _analyse(mode: str) -> dict:
    env = {**os.environ, "NML_DISABLE_USAGE_LOGGING": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", _ANALYSE, mode],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_slim_import_gives_the_full_imports_results_without_flaml_mlflow_or_statsmodels() -> None:
    slim, full = _analyse("slim"), _analyse("full")
    assert slim["rows"] == full["rows"]
    kinds = {row[1] for row in slim["rows"]}
    assert kinds == {"univariate_drift", "multivariate_drift", "cbpe", "realised"}
    assert len({row[0] for row in slim["rows"]}) == 8  # 2,000 records in chunks of 250
    assert any(row[1] == "univariate_drift" and row[2] == "torque_nm" and row[6] for row in slim["rows"])
    assert slim["modules"] == {"flaml": False, "mlflow": False, "statsmodels.api": False}
    assert full["modules"] == {"flaml": True, "mlflow": True, "statsmodels.api": True}
    assert slim["after"] == [
        "DLE",
        "nannyml.performance_estimation.confidence_based.cbpe",
        "DomainClassifierCalculator",
    ]
