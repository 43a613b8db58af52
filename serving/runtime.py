"""MLServer runtime: predicted class, class probabilities and exact per-feature SHAP contributions.

The model directory (``parameters.uri``) holds one registered model version, copied there by the
deployment step: ``model.pkl`` (the cloudpickled encoding + XGBoost pipeline), ``feature_groups.json``
(input feature -> encoded columns) and ``model.json`` (dataset, classes, registered name and version).
Nothing is resolved at request time; MLflow is not imported in the serving image.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, PandasCodec, StringCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, RequestOutput
from mlserver.utils import get_model_uri

from riverbed.ml.model_inputs import ModelInputError, frame_model_inputs
from serving.explanations import ExplanationError, parallel_booster, predict_and_explain, verified_fast_encoder

logger = logging.getLogger(__name__)

OUTPUT_LABEL = "label"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CONTRIBUTIONS = "contributions"
OUTPUT_BASE_VALUE = "base_value"
ALL_OUTPUTS = (OUTPUT_LABEL, OUTPUT_PROBABILITIES, OUTPUT_CONTRIBUTIONS, OUTPUT_BASE_VALUE)
MODEL_FILE = "model.pkl"
FEATURE_GROUPS_FILE = "feature_groups.json"
MODEL_INFO_FILE = "model.json"


def read_model_directory(folder: Path) -> tuple[object, dict[str, list[int]], dict[str, object]]:
    """The pipeline, feature groups and model info stored in a served model directory."""
    import cloudpickle

    if folder.is_file():
        folder = folder.parent
    with (folder / MODEL_FILE).open("rb") as handle:
        pipeline = cloudpickle.load(handle)
    groups = json.loads((folder / FEATURE_GROUPS_FILE).read_text())
    info = json.loads((folder / MODEL_INFO_FILE).read_text())
    return pipeline, groups, info


def numeric_features(pipeline: object, info: dict[str, object]) -> frozenset[str]:
    """Input features the model reads as numbers: from model.json if listed, else the encoder's passthrough block."""
    listed = info.get("numeric_features")
    if isinstance(listed, list):
        return frozenset(str(name) for name in listed)
    encoder = getattr(pipeline, "named_steps", {}).get("encode")
    numeric: set[str] = set()
    for _, transformer, columns in getattr(encoder, "transformers", []):
        if transformer == "passthrough":
            numeric.update(str(c) for c in columns)
    return frozenset(numeric)


class RiverbedModelRuntime(MLModel):
    """Serves one pinned model version of a Riverbed dataset."""

    async def load(self) -> bool:
        folder = Path(await get_model_uri(self._settings))
        self._pipeline, self._feature_groups, self._info = await asyncio.to_thread(read_model_directory, folder)
        # model.json holds a DeployedModel dump (riverbed.model_repository): "classes" is a JSON list of labels
        classes = cast("list[object]", self._info["classes"])
        self._classes: list[str] = [str(c) for c in classes]
        self._features = list(self._feature_groups)
        self._numeric = numeric_features(self._pipeline, self._info)
        self._fast_encoder = await asyncio.to_thread(verified_fast_encoder, self._pipeline, self._features)
        self._wide_booster = parallel_booster(self._pipeline, os.cpu_count() or 1)
        if self._fast_encoder is None:
            logger.warning("model %s: encoding with scikit-learn (no verified fast encoder)", self.name)
        self.ready = True
        return self.ready

    def _requested(self, outputs: list[RequestOutput] | None) -> list[str]:
        if not outputs:
            return list(ALL_OUTPUTS)
        names = [o.name for o in outputs]
        unknown = sorted(set(names) - set(ALL_OUTPUTS))
        if unknown:
            raise InferenceError(f"unknown outputs {unknown}; this model offers {list(ALL_OUTPUTS)}")
        return names

    def _frame(self, payload: InferenceRequest) -> pd.DataFrame:
        # Numbers come as FP64, or as BYTES when some are missing ("" -> NaN: XGBoost treats it as missing).
        try:
            return frame_model_inputs(PandasCodec.decode_request(payload), self._features, self._numeric)
        except ModelInputError as error:
            raise InferenceError(str(error)) from None

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        wanted = self._requested(payload.outputs)
        frame = self._frame(payload)
        explain = OUTPUT_CONTRIBUTIONS in wanted or OUTPUT_BASE_VALUE in wanted
        loop = asyncio.get_running_loop()
        try:  # CPU-bound work off the event loop so health checks stay responsive
            batch = await loop.run_in_executor(
                None,
                predict_and_explain,
                self._pipeline,
                self._feature_groups,
                frame,
                explain,
                self._fast_encoder,
                self._wide_booster,
            )
        except (ExplanationError, ValueError) as error:
            raise InferenceError(f"could not score the inputs: {error}") from None
        positive = batch.positive_probability
        outputs = []
        if OUTPUT_LABEL in wanted:
            labels = [self._classes[1] if p >= 0.5 else self._classes[0] for p in positive]
            outputs.append(StringCodec.encode_output(OUTPUT_LABEL, labels))
        if OUTPUT_PROBABILITIES in wanted:
            outputs.append(NumpyCodec.encode_output(OUTPUT_PROBABILITIES, np.column_stack([1 - positive, positive])))
        if OUTPUT_CONTRIBUTIONS in wanted:
            outputs.append(NumpyCodec.encode_output(OUTPUT_CONTRIBUTIONS, batch.contributions))
        if OUTPUT_BASE_VALUE in wanted:
            outputs.append(NumpyCodec.encode_output(OUTPUT_BASE_VALUE, batch.base_value))
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=outputs,
            parameters={"feature_names": json.dumps(self._features)},
        )
