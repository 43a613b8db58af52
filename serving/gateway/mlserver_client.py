"""MLServer over the V2 inference protocol: one long-lived connection pool per gateway process.

Concurrent small requests for the same model are coalesced into one V2 call (:class:`MLServerClient` ``infer``):
MLServer pays its HTTP, validation and codec work per call, not per row, and scores and explains rows
independently (exact TreeSHAP per row), so several requests' rows scored together get exactly the values
each would get alone. There is no added wait: a request goes out at once while fewer than ``max_in_flight``
calls for its model are running; requests that arrive meanwhile queue and leave together when a call
returns. A request of ``max_batch_rows`` rows or more always goes alone. If MLServer refuses a coalesced
call's inputs, each request is retried alone, so one bad request never fails another.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
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


class MLServerAnsweredError(MLServerUnavailableError):
    """MLServer answered 5xx: it is up, and the call (perhaps one request's rows in it) failed."""


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


def batch_rows(inputs: list[dict[str, Any]]) -> int:
    """How many rows V2 ``inputs`` hold: every input has shape ``[rows]`` and ``rows`` values; -1 otherwise (such
    inputs are never coalesced: MLServer judges them alone, and no other request's rows can shift)."""
    if not inputs:
        return 0
    rows = len(inputs[0]["data"])
    for item in inputs:
        if item["shape"] != [rows] or len(item["data"]) != rows:
            return -1
    return rows


def concatenate_inputs(parts: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One V2 input list holding the rows of ``parts`` in order (same names and datatypes in each part)."""
    combined = []
    for column in zip(*parts, strict=True):
        data: list[Any] = []
        for part in column:
            data.extend(part["data"])
        first = column[0]
        combined.append({"name": first["name"], "datatype": first["datatype"], "shape": [len(data)], "data": data})
    return combined


def slice_batch(scored: ScoredBatch, start: int, stop: int) -> ScoredBatch:
    """Rows ``start:stop`` of a scored batch."""
    return ScoredBatch(
        labels=scored.labels[start:stop],
        probabilities=scored.probabilities[start:stop],
        contributions=None if scored.contributions is None else scored.contributions[start:stop],
        base_value=None if scored.base_value is None else scored.base_value[start:stop],
        feature_names=scored.feature_names,
        model_version=scored.model_version,
    )


@dataclass
class _Waiting:
    request_id: str
    inputs: list[dict[str, Any]]
    rows: int
    future: asyncio.Future[ScoredBatch]


@dataclass
class _Lane:
    """Requests for one (model, outputs, input types) waiting to be coalesced, and the calls running for them."""

    waiting: list[_Waiting] = field(default_factory=list)
    in_flight: int = 0


@dataclass
class CoalescingStats:
    calls: int = 0  # V2 calls made for coalescable requests
    requests: int = 0  # requests they carried
    split_retries: int = 0  # coalesced calls refused and retried request by request


class MLServerClient:
    """Async V2 client; create in the gateway's lifespan, close at shutdown."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float = 30.0,
        max_connections: int = 100,
        max_batch_rows: int = 64,
        max_in_flight: int = 2,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=2.0)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self.max_batch_rows = max_batch_rows  # 0 or 1: no coalescing
        self.max_in_flight = max_in_flight
        self._lanes: dict[tuple[Any, ...], _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # running lanes (the loop keeps only weak references)
        self.coalescing = CoalescingStats()

    async def start(self) -> None:
        # Idle connections are dropped after 4 s, before MLServer's uvicorn closes its side at 5 s: reusing a
        # connection the server is closing fails the request (a ClientOSError, answered 503).
        connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=KEEPALIVE_SECONDS)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, json_serialize=lambda v: orjson.dumps(v).decode()
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
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
        """Score ``inputs`` (coalesced with concurrent requests for the same model when they are small)."""
        rows = batch_rows(inputs)
        if rows <= 0 or rows >= self.max_batch_rows:
            return await self.infer_alone(served_name, request_id, inputs, explain=explain)
        key = (served_name, explain, tuple((item["name"], item["datatype"]) for item in inputs))
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        waiting = _Waiting(request_id, inputs, rows, asyncio.get_running_loop().create_future())
        lane.waiting.append(waiting)
        if lane.in_flight < self.max_in_flight:
            lane.in_flight += 1
            self._drain(key, lane, served_name, explain)
        return await waiting.future

    def _drain(self, key: tuple[Any, ...], lane: _Lane, served_name: str, explain: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._run_lane(key, lane, served_name, explain))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_task_failure)

    async def _run_lane(self, key: tuple[Any, ...], lane: _Lane, served_name: str, explain: bool) -> None:
        try:
            while lane.waiting:
                taken: list[_Waiting] = []
                rows = 0
                while lane.waiting and (not taken or rows + lane.waiting[0].rows <= self.max_batch_rows):
                    item = lane.waiting.pop(0)
                    if item.future.done():  # the client went away
                        continue
                    taken.append(item)
                    rows += item.rows
                if taken:
                    await self._score_together(taken, served_name, explain)
        finally:
            lane.in_flight -= 1
            if lane.in_flight == 0:  # cancelled with requests still queued: none may wait forever
                for item in lane.waiting:
                    item.future.cancel()
                lane.waiting.clear()
            if lane.in_flight == 0 and not lane.waiting and self._lanes.get(key) is lane:
                del self._lanes[key]

    async def _score_together(self, taken: list[_Waiting], served_name: str, explain: bool) -> None:
        self.coalescing.calls += 1
        self.coalescing.requests += len(taken)
        if len(taken) == 1:
            only = taken[0]
            await _settle(only, self.infer_alone(served_name, only.request_id, only.inputs, explain=explain))
            return
        try:
            scored = await self.infer_alone(
                served_name, taken[0].request_id, concatenate_inputs([item.inputs for item in taken]), explain=explain
            )
        except (ScoringError, MLServerAnsweredError):  # one request's rows may be at fault: each is scored alone
            self.coalescing.split_retries += 1
            for item in taken:  # one after another: MLServer's adaptive batching would merge concurrent retries
                await _settle(item, self.infer_alone(served_name, item.request_id, item.inputs, explain=explain))
            return
        except Exception as error:  # unavailable, or the model not served (a swap): every request learns it
            for item in taken:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        except BaseException:  # cancelled (shutdown): the waiting requests are cancelled too
            for item in taken:
                item.future.cancel()
            raise
        start = 0
        for item in taken:
            if not item.future.done():
                item.future.set_result(slice_batch(scored, start, start + item.rows))
            start += item.rows

    async def infer_alone(
        self,
        served_name: str,
        request_id: str,
        inputs: list[dict[str, Any]],
        *,
        explain: bool,
    ) -> ScoredBatch:
        """One V2 call for exactly these inputs."""
        outputs = OUTPUTS_WITH_EXPLANATIONS if explain else OUTPUTS_WITHOUT_EXPLANATIONS
        payload = {"id": request_id, "inputs": inputs, "outputs": [{"name": name} for name in outputs]}
        url = f"{self.base_url}/v2/models/{served_name}/infer"
        data = orjson.dumps(payload)
        for attempt in (1, 2):
            try:
                async with self.session.post(url, data=data, headers=INFER_HEADERS) as response:
                    body = await response.read()
                    status = response.status
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
                # A pooled connection the server had just closed (after an error answer, or at its keep-alive
                # limit). Scoring has no side effects, so it is sent once more, on a fresh connection.
                if attempt == 2:
                    raise MLServerUnavailableError(f"MLServer is unreachable ({type(error).__name__})") from None
                logger.info("MLServer dropped a pooled connection (%s); sending %s again", error, request_id)
            except (aiohttp.ClientError, TimeoutError) as error:
                raise MLServerUnavailableError(f"MLServer is unreachable ({type(error).__name__})") from None
        if status == 200:
            return _decode(orjson.loads(body), explain)
        text = body.decode(errors="replace")[:300]
        if status == 404 or (status == 400 and ("not found" in text.lower() or "unavailable" in text.lower())):
            raise ServedModelNotFoundError(f"MLServer does not serve {served_name!r}: {text}")
        if status >= 500:
            raise MLServerAnsweredError(f"MLServer answered {status}: {text}")
        raise ScoringError(f"MLServer refused the inputs ({status}): {text}")


async def _settle(item: _Waiting, call: Any) -> None:
    """Await ``call`` and hand its result or error to the waiting request."""
    try:
        result = await call
    except Exception as error:
        if not item.future.done():
            item.future.set_exception(error)
        return
    if not item.future.done():
        item.future.set_result(result)


def _log_task_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("an MLServer coalescing task failed", exc_info=task.exception())


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
