"""The gateway's long-lived parts, created once in the lifespan and kept on ``app.state.gateway``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.applications import Starlette

from riverbed.settings import RiverbedSettings
from riverbed.specs import DatasetSpec
from serving.api_keys import ApiKeyAuthenticator
from serving.embedded_postgres import EmbeddedPostgres
from serving.gateway.deployments import DeploymentDirectory
from serving.gateway.metrics import GatewayMetrics
from serving.gateway.mlserver_client import MLServerClient
from serving.gateway.prediction_events import PredictionEventPublisher
from serving.gateway.refusals import RefusalLogLimiter
from serving.gateway.schemas import DatasetSchemas
from serving.inference_log import InferenceLogWriter

if TYPE_CHECKING:  # serving.oversight imports the gateway's modules: only for the annotation
    from serving.oversight import SuspensionMonitor


@dataclass(frozen=True)
class GatewayState:
    """Everything a request handler needs that outlives a request."""

    settings: RiverbedSettings
    specs: dict[str, DatasetSpec]
    schemas: dict[str, DatasetSchemas]
    deployments: DeploymentDirectory
    mlserver: MLServerClient
    writer: InferenceLogWriter
    authenticator: ApiKeyAuthenticator
    metrics: GatewayMetrics
    embedded_postgres: EmbeddedPostgres | None = None
    events: PredictionEventPublisher | None = None  # None when no Kafka is configured
    numeric: dict[str, set[str]] = field(default_factory=dict)  # numeric feature names per dataset
    refusal_log: RefusalLogLimiter | None = None  # None: every unauthenticated refusal is logged as a row
    # The audit cursors' HMAC key, derived from the writer's chain key (serving.audit_queries.cursor_key_for).
    # None (a writer without a key): a random key made once per process, so cursors do not survive a restart.
    cursor_key: bytes | None = field(default=None, repr=False)
    # Datasets suspended by reviewers (serving.oversight), kept fresh by LISTEN; None: no suspension is enforced.
    oversight: SuspensionMonitor | None = None


def running_gateway(app: Starlette) -> GatewayState | None:
    """The app's gateway state while its lifespan runs, else None."""
    gateway = getattr(app.state, "gateway", None)
    return gateway if isinstance(gateway, GatewayState) else None


def running_metrics(app: Starlette) -> GatewayMetrics | None:
    """The running gateway's metrics (None before the lifespan starts and after it ends)."""
    gateway = running_gateway(app)
    return gateway.metrics if gateway is not None else None
