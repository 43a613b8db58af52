"""Shared set-up for gateway tests: a quickly trained salary_band model installed in a model repository."""

import contextlib
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cloudpickle
import pandas as pd

from riverbed.cli.demo_serving import gateway_records
from riverbed.cli.mlserver_process import free_port
from riverbed.ml.features import build_features
from riverbed.ml.training import build_pipeline, encoded_feature_groups, model_inputs
from riverbed.model_repository import DeployedModel, ModelRepository
from riverbed.names import served_model_name
from riverbed.settings import PROJECT_ROOT, RiverbedSettings
from riverbed.sources import load_source_records
from riverbed.specs import DatasetSpec, load_specs
from riverbed.validation import validate_records


def salary_band_spec() -> DatasetSpec:
    return load_specs([PROJECT_ROOT / "datasets"])["salary_band"]


def salary_band_features(rows: int = 3000) -> pd.DataFrame:
    spec = salary_band_spec()
    records = load_source_records(spec).head(rows)
    return build_features(spec, validate_records(spec, records).valid).reset_index(drop=True)


def api_records(frame: pd.DataFrame, spec: DatasetSpec) -> list[dict]:
    """Rows as the gateway's JSON records (None for missing values)."""
    return gateway_records(spec, frame)


def install_trained_model(
    repository: ModelRepository, version: int, trees: int, folder: Path, *, point: bool = True
) -> DeployedModel:
    """Train a small pipeline, install it as ``salary_band-v<version>`` and point the deployment at it."""
    spec = salary_band_spec()
    frame = salary_band_features()
    pipeline = build_pipeline(spec, {"n_estimators": trees, "max_depth": 3}, seed=version)
    pipeline.fit(model_inputs(spec, frame), frame[spec.target.name])
    folder.mkdir(parents=True, exist_ok=True)
    model_file, groups_file = folder / f"model-{version}.pkl", folder / f"groups-{version}.json"
    model_file.write_bytes(cloudpickle.dumps(pipeline))
    groups_file.write_text(json.dumps(encoded_feature_groups(pipeline, spec)))
    info = DeployedModel(
        dataset=spec.name,
        served_model_name=served_model_name(spec.name, version),
        registered_model_name="riverbed-salary_band",
        version=version,
        mlflow_run_id=uuid.uuid4().hex,
        model_uri=f"models:/riverbed-salary_band/{version}",
        training_set_commit_id=uuid.uuid4().hex,
        data_commit_ids={"2026-10-01": uuid.uuid4().hex, "2026-10-02": uuid.uuid4().hex},
        dagster_run_id=str(uuid.uuid4()),
        classes=list(spec.target.classes),
        features=spec.feature_names,
        deployed_at=dt.datetime.now(dt.UTC),
    )
    repository.install(model_file, groups_file, info, numeric_features=spec.numeric_features)
    if point:
        repository.set_deployment(info)
    return info


# ------------------------------------------------------------------------------------------------------------------
# An in-process gateway (real uvicorn in a thread) in front of a scripted stand-in for MLServer's V2 protocol, for
# tests that need MLServer to misbehave on demand (or do not need a trained model at all).


class ScriptedMLServer:
    """Answers the V2 routes the gateway uses. ``mode``: ``ok`` (plausible scores), ``refuse`` (400) or ``fail``
    (500), the last two with ``secret`` in the error text, which the gateway must never echo to a client."""

    secret = "mlserver-internal-detail /opt/secret/runtime.py line 42"

    def __init__(self) -> None:
        self.mode = "ok"
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _answer(self, status: int, body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._answer(200, {})

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if scripted.mode == "refuse":
                    self._answer(400, {"error": f"refused: {scripted.secret}"})
                    return
                if scripted.mode == "fail":
                    self._answer(500, {"error": f"crashed: {scripted.secret}"})
                    return
                inputs = request["inputs"]
                count = inputs[0]["shape"][0]
                names = [item["name"] for item in inputs]
                served = self.path.split("/")[3] if self.path.count("/") >= 4 else ""
                label = "0" if served.startswith("machine_failure") else "<=50K"
                outputs = [
                    {"name": "label", "datatype": "BYTES", "shape": [count], "data": [label] * count},
                    {"name": "probabilities", "datatype": "FP64", "shape": [count, 2], "data": [0.75, 0.25] * count},
                    {
                        "name": "contributions",
                        "datatype": "FP64",
                        "shape": [count, len(names)],
                        "data": [0.0] * (count * len(names)),
                    },
                    {"name": "base_value", "datatype": "FP64", "shape": [count], "data": [-1.0986] * count},
                ]
                wanted = {item["name"] for item in request.get("outputs", [])} or {o["name"] for o in outputs}
                self._answer(
                    200,
                    {
                        "model_name": "scripted",
                        "outputs": [o for o in outputs if o["name"] in wanted],
                        "parameters": {"feature_names": json.dumps(names)},
                    },
                )

        self.port = free_port()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ScriptedMLServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def point_at_scripted_model(repository: ModelRepository, spec: DatasetSpec, version: int = 1) -> DeployedModel:
    """Write a dataset's deployment pointer only (no trained model: for a scripted MLServer)."""
    info = DeployedModel(
        dataset=spec.name,
        served_model_name=served_model_name(spec.name, version),
        registered_model_name=f"riverbed-{spec.name}",
        version=version,
        mlflow_run_id=uuid.uuid4().hex,
        model_uri=f"models:/riverbed-{spec.name}/{version}",
        training_set_commit_id=uuid.uuid4().hex,
        data_commit_ids={"2026-10-01": uuid.uuid4().hex},
        dagster_run_id=str(uuid.uuid4()),
        classes=list(spec.target.classes),
        features=spec.feature_names,
        deployed_at=dt.datetime.now(dt.UTC),
    )
    repository.set_deployment(info)
    return info


@contextlib.contextmanager
def in_process_gateway(settings: RiverbedSettings, **app_options: Any) -> Iterator[str]:
    """The gateway app on a real uvicorn server in a background thread; yields its base URL. ``app_options`` go
    to :func:`serving.gateway.main.create_app` (e.g. ``writer_options``)."""
    import uvicorn

    from serving.gateway.main import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(settings, **app_options),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process gateway did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
