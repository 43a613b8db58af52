"""MLServer over the V2 inference protocol: one long-lived connection pool per gateway process."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import orjson

from riverbed.errors import MLServerUnavailableError

logger = logging.getLogger(__name__)

OUTPUTS_WITH_EXPLANATIONS = ("label", "probabilities", "contributions", "base_value")
OUTPUTS_WITHOUT_EXPLANATIONS = ("label", "probabilities")
KEEPALIVE_SECONDS = 4.0  # below uvicorn's default keep-alive (5 s), which MLServer uses
# The gateway and MLServer share a host or a network: compressing the responses costs both sides CPU
# (gzip of a few KB of explanations per request) and saves nothing worth it.
INFER_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}


class ServedModelNotFoundError(Exception):
    """MLServer does not (or no longer) serve the requested model; the caller may re-resolve and retry."""


class ScoringError(Exception):
    """MLServer refused the inputs (a 4xx other than an unknown model)."""


@dataclass(frozen=True)
class ScoredBatch:
    labels: list[str]
    probabilities: np.ndarray  # (n, 2): class 0, class 1
    contributions: np.ndarray | None  # (n, features)
    base_value: np.ndarray | None  # (n,)
    feature_names: list[str]
    model_version: str | None


def encode_inputs(features: list[str], numeric: set[str], columns: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """V2 inputs, one per feature: numbers as FP64 (BYTES with "" for missing ones), categories as BYTES."""
    inputs = []
    for name in features:
        values = columns[name]
        size = len(values)
        if name in numeric and all(v is not None for v in values):
            inputs.append({"name": name, "datatype": "FP64", "shape": [size], "data": [float(v) for v in values]})
        else:
            data = ["" if v is None else str(v) for v in values]
            inputs.append({"name": name, "datatype": "BYTES", "shape": [size], "data": data})
    return inputs


class MLServerClient:
    """Async V2 client; create in the gateway's lifespan, close at shutdown."""

    def __init__(self, base_url: str, *, timeout_seconds: float = 30.0, max_connections: int = 100) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=2.0)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # Idle connections are dropped after 4 s, before MLServer's uvicorn closes its side at 5 s: reusing a
        # connection the server is closing fails the request (a ClientOSError, answered 503).
        connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=KEEPALIVE_SECONDS)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, json_serialize=lambda v: orjson.dumps(v).decode()
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise MLServerUnavailableError("the MLServer client is not started")
        return self._session

    async def _answers_ok(self, path: str) -> bool:
        try:
            async with self.session.get(f"{self.base_url}{path}", timeout=aiohttp.ClientTimeout(total=1.0)) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def live(self) -> bool:
        return await self._answers_ok("/v2/health/live")

    async def model_ready(self, served_name: str) -> bool:
        return await self._answers_ok(f"/v2/models/{served_name}/ready")

    async def infer(
        self,
        served_name: str,
        request_id: str,
        inputs: list[dict[str, Any]],
        *,
        explain: bool,
    ) -> ScoredBatch:
        outputs = OUTPUTS_WITH_EXPLANATIONS if explain else OUTPUTS_WITHOUT_EXPLANATIONS
        payload = {"id": request_id, "inputs": inputs, "outputs": [{"name": name} for name in outputs]}
        url = f"{self.base_url}/v2/models/{served_name}/infer"
        try:
            async with self.session.post(url, data=orjson.dumps(payload), headers=INFER_HEADERS) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            raise MLServerUnavailableError(f"MLServer is unreachable ({type(error).__name__})") from None
        if status == 200:
            return _decode(orjson.loads(body), explain)
        text = body.decode(errors="replace")[:300]
        if status == 404 or (status == 400 and ("not found" in text.lower() or "unavailable" in text.lower())):
            raise ServedModelNotFoundError(f"MLServer does not serve {served_name!r}: {text}")
        if status >= 500:
            raise MLServerUnavailableError(f"MLServer answered {status}: {text}")
        raise ScoringError(f"MLServer refused the inputs ({status}): {text}")


def _decode(body: dict[str, Any], explain: bool) -> ScoredBatch:
    outputs = {output["name"]: output for output in body.get("outputs", [])}
    labels = [str(v) for v in outputs["label"]["data"]]
    count = len(labels)
    probabilities = np.asarray(outputs["probabilities"]["data"], dtype=np.float64).reshape(count, 2)
    parameters = body.get("parameters") or {}
    names = parameters.get("feature_names")
    feature_names = orjson.loads(names) if isinstance(names, str) else list(names or [])
    contributions = base_value = None
    if explain:
        contributions = np.asarray(outputs["contributions"]["data"], dtype=np.float64).reshape(count, -1)
        base_value = np.asarray(outputs["base_value"]["data"], dtype=np.float64).reshape(count)
    return ScoredBatch(labels, probabilities, contributions, base_value, feature_names, body.get("model_version"))
