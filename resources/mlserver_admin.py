"""Synchronous admin client for MLServer's V2 health and model repository endpoints (load, unload, index).

Used by the deployment step and rollback to hot-swap models; no Dagster or MLflow here.
"""

import logging
import time
from typing import Any

import httpx

from riverbed.errors import MLServerModelError, MLServerUnavailableError

logger = logging.getLogger(__name__)

LOAD_TIMEOUT_SECONDS = 120.0  # loading unpickles the model inside MLServer; a cold import can take a while


class MLServerAdmin:
    """Health checks and model repository calls against one MLServer."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._client = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "MLServerAdmin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        try:
            return self._client.request(method, path, timeout=timeout or self.timeout, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise MLServerUnavailableError(f"MLServer is not reachable at {self.url}: {error}") from None
        except httpx.HTTPError as error:
            raise MLServerUnavailableError(f"MLServer at {self.url} did not answer {method} {path}: {error}") from None

    def is_live(self) -> bool:
        """True if MLServer answers its liveness probe."""
        try:
            return self._request("GET", "/v2/health/live", timeout=min(self.timeout, 3.0)).status_code == 200
        except MLServerUnavailableError:
            return False

    def is_ready(self, name: str) -> bool:
        """True if the named model is loaded and ready to answer."""
        return self._request("GET", f"/v2/models/{name}/ready").status_code == 200

    def load(self, name: str) -> None:
        """Load (or reload) a model found in MLServer's repository folder; returns once MLServer has loaded it."""
        response = self._request("POST", f"/v2/repository/models/{name}/load", timeout=LOAD_TIMEOUT_SECONDS)
        if response.status_code != 200:
            raise MLServerModelError(f"MLServer at {self.url} could not load model {name!r}: {_error_text(response)}")
        logger.info("MLServer loaded %s", name)

    def unload(self, name: str) -> None:
        """Unload a model; its folder stays in the repository."""
        response = self._request("POST", f"/v2/repository/models/{name}/unload")
        if response.status_code != 200:
            raise MLServerModelError(f"MLServer at {self.url} could not unload model {name!r}: {_error_text(response)}")
        logger.info("MLServer unloaded %s", name)

    def wait_ready(self, name: str, timeout: float = 60.0, poll_seconds: float = 0.2) -> None:
        """Block until the model is ready; raise :class:`MLServerModelError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.is_ready(name):
                return
            if time.monotonic() >= deadline:
                raise MLServerModelError(
                    f"model {name!r} was not ready in MLServer at {self.url} after {timeout:.0f} s"
                )
            time.sleep(poll_seconds)

    def repository_index(self) -> list[dict[str, Any]]:
        """Every model MLServer's repository knows of, with its state (``READY``, ``UNAVAILABLE``...)."""
        response = self._request("POST", "/v2/repository/index", json={})
        if response.status_code != 200:
            raise MLServerModelError(f"MLServer at {self.url} did not list its repository: {_error_text(response)}")
        return list(response.json())

    def loaded_models(self) -> list[str]:
        """Names of the models MLServer reports ready."""
        return sorted({item["name"] for item in self.repository_index() if item.get("state") == "READY"})


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    message = body.get("error") if isinstance(body, dict) else None
    return f"HTTP {response.status_code}: {message or str(body)[:300]}"
