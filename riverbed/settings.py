"""Riverbed's one settings object: every host, secret and path comes from here (prefix ``RIVERBED_``).

Nothing is read at import time: call :func:`get_settings` where a value is needed.
"""

from __future__ import annotations

import enum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Environment(enum.StrEnum):
    """Where Riverbed runs: embedded parts (``local``) or real services (``compose`` / ``production``)."""

    LOCAL = "local"
    COMPOSE = "compose"
    PRODUCTION = "production"

    @property
    def uses_real_services(self) -> bool:
        return self is not Environment.LOCAL


class RiverbedSettings(BaseSettings):
    """All configuration. Environment variables ``RIVERBED_<FIELD>`` override the defaults."""

    model_config = SettingsConfigDict(env_prefix="RIVERBED_", env_file=None, extra="ignore")

    env: Environment = Environment.LOCAL
    home: Path = Field(default=Path(".riverbed"), description="State directory for embedded parts.")
    specs_dirs: list[Path] = Field(
        default_factory=lambda: [PROJECT_ROOT / "datasets"],
        description="Directories holding dataset spec files (*.yaml).",
    )

    # Versioned data store (lakeFS semantics).
    data_repository: str = "riverbed"
    data_main_branch: str = "main"
    lakefs_endpoint: str | None = None
    lakefs_access_key_id: str | None = None
    lakefs_secret_access_key: SecretStr | None = None
    lakefs_storage_namespace: str | None = Field(
        default=None, description="Where lakeFS keeps the repository's objects, e.g. s3://bucket/riverbed."
    )

    # Object store (MinIO / S3) for artifacts and reports.
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "riverbed"

    # MLflow tracking and registry.
    mlflow_tracking_uri: str | None = None

    # Serving: MLServer, its model repository, the gateway and the inference log.
    mlserver_url: str = Field(default="http://127.0.0.1:8080", description="MLServer's HTTP (V2) address.")
    mlserver_grpc_port: int = 8081
    mlserver_metrics_port: int = 8082
    mlserver_coalesce_max_rows: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="The gateway scores concurrent requests for one model in one MLServer call up to this many rows "
        "(exact per-row results; a larger request goes alone). 0 or 1: one call per request.",
    )
    mlserver_max_in_flight: int = Field(
        default=2,
        ge=1,
        le=1024,
        description="MLServer calls the gateway keeps running per model; requests arriving meanwhile are coalesced.",
    )
    model_repository: Path | None = Field(
        default=None,
        description="MLServer model repository shared with the gateway (default: <home>/model-repository).",
    )
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    max_batch_records: int = Field(default=1000, ge=1, description="Largest batch one predict request may carry.")
    inference_log_dsn: SecretStr | None = Field(
        default=None, description="PostgreSQL DSN of the inference log; unset: an embedded server under <home>."
    )
    inference_log_pool_size: int = Field(default=4, ge=1)
    audit_spool_dir: Path | None = Field(
        default=None, description="Fsynced spool used while PostgreSQL is unreachable (default: <home>/audit-spool)."
    )
    oversight_state_file: Path | None = Field(
        default=None,
        description="The gateway's last known dataset suspensions (0600, rewritten atomically on every refresh), read "
        "at start-up when PostgreSQL is unreachable (default: <home>/oversight/suspensions.json).",
    )

    # Bounded input: checked before any work, answered 413 / 422 naming the limit.
    max_body_bytes: int = Field(
        default=4 * 2**20, ge=1024, description="Largest request body, enforced while reading (Content-Length too)."
    )
    max_string_length: int = Field(default=1024, ge=16, description="Longest text value in a request body.")
    max_json_depth: int = Field(default=16, ge=2, description="Deepest nesting of objects and arrays in a body.")

    # The inference log's guarantees.
    database_statement_timeout_ms: int = Field(
        default=5000, ge=100, description="Statement and lock timeout of every inference-log connection."
    )
    audit_record_timeout_seconds: float = Field(
        default=15.0, gt=0, description="Longest a request waits for its audit row before it is answered 503."
    )
    audit_chain_key: SecretStr | None = Field(
        default=None, description="HMAC key of the inference-log chain (kept outside the database)."
    )
    audit_chain_key_file: Path | None = Field(
        default=None, description="File holding the chain key (default: <home>/secrets/audit-chain.key, 0600)."
    )
    audit_checkpoint_dir: Path | None = Field(
        default=None, description="Where signed chain-head checkpoints go (default: <home>/audit-checkpoints)."
    )
    audit_checkpoint_interval_seconds: float = Field(default=60.0, gt=0)
    unauthenticated_log_per_second: float = Field(
        default=20.0, ge=0, description="Most 401 rows logged per second; the rest are counted (metric) not logged."
    )
    api_key_cache_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long a verified key is trusted without re-reading it (revocations are pushed).",
    )
    # The oversight console (serving/console, under /console on the gateway).
    console_session_seconds: float = Field(
        default=8 * 3600.0, ge=60, le=7 * 24 * 3600, description="How long a console login lasts (session cookie)."
    )
    console_mlflow_url: str | None = Field(
        default=None,
        description="MLflow UI base URL for the console's lineage links (unset: mlflow_tracking_uri if http(s)).",
    )
    console_dagster_url: str | None = Field(
        default=None, description="Dagster UI base URL for the console's lineage links (unset: run ids as text)."
    )
    console_lakefs_url: str | None = Field(
        default=None,
        description="lakeFS UI base URL: the console links data commit ids to <url>/repositories/<data_repository>/"
        "commits/<id> (unset: commit ids as text).",
    )

    # Kafka (events): unset bootstrap servers means the local dev broker recorded in <home>/kafka.json.
    kafka_bootstrap_servers: str | None = Field(
        default=None, description="Kafka bootstrap servers, e.g. kafka:9092 (unset: `riverbed kafka dev-broker`)."
    )
    kafka_security_protocol: str = Field(default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL.")
    kafka_sasl_mechanism: str | None = Field(default=None, description="e.g. PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: Path | None = None
    kafka_topic_prefix: str = Field(default="riverbed", pattern=r"^[A-Za-z0-9._-]+$")
    label_clock_skew_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How far a label's labelled_at may be ahead of the labels sensor's clock; later ones are "
        "dead-lettered (a future date would outrank every later label).",
    )

    # `riverbed up`: the platform's other services, on 127.0.0.1.
    dagster_port: int = Field(default=3000, ge=1, le=65535, description="Dagster webserver port under `up`.")
    mlflow_port: int = Field(default=5000, ge=1, le=65535, description="MLflow tracking server port under `up`.")
    prometheus_port: int = Field(default=9090, ge=1, le=65535, description="Prometheus port under `up`.")
    alertmanager_port: int = Field(default=9093, ge=1, le=65535, description="Alertmanager port under `up`.")
    alert_webhook_url: str | None = Field(
        default=None, description="Where Alertmanager under `up` posts alerts (unset: alerts are kept, not sent)."
    )
    exporter_port: int = Field(default=9108, ge=1, le=65535, description="Pipeline exporter port under `up`.")
    prometheus_scrape_interval: str | None = Field(
        default=None,
        pattern=r"^[0-9]+(ms|s|m|h)$",
        description="Under `up`, Prometheus's scrape and rule evaluation interval, e.g. 2s (unset: deploy/'s 15s).",
    )
    alert_rules_for: str | None = Field(
        default=None,
        pattern=r"^[0-9]+(ms|s|m|h)$",
        description="Under `up`, every alert rule's `for:` in a generated copy of deploy/prometheus/rules, e.g. 5s "
        "(for tests and demos: alerts fire within seconds; unset: the committed rules as they are).",
    )
    automation: bool = Field(
        default=True,
        description="Under `up`, start every sensor and schedule (false: stop them all).",
    )
    monitoring_interval_seconds: int = Field(
        default=900,
        ge=5,
        le=86_400,
        description="How often the monitoring sensor analyses today's logged predictions (a run at a time).",
    )
    retraining_interval_seconds: int = Field(
        default=60, ge=5, le=86_400, description="How often the retraining sensor evaluates its triggers."
    )
    dagster_executor: Literal["multiprocess", "in_process"] = Field(
        default="multiprocess",
        description="How a Dagster run executes its steps: a process per step (multiprocess) or all in the run's "
        "own process (in_process: no per-step start-up; `riverbed up` uses it unless this is set).",
    )

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def local_store_dir(self) -> Path:
        return self.home / "versioned-store"

    @property
    def local_objects_dir(self) -> Path:
        return self.home / "objects"

    @property
    def model_repository_dir(self) -> Path:
        return (self.model_repository or self.home / "model-repository").expanduser().resolve()

    @property
    def audit_spool_path(self) -> Path:
        return (self.audit_spool_dir or self.home / "audit-spool").expanduser().resolve()

    @property
    def oversight_state_path(self) -> Path:
        return (self.oversight_state_file or self.home / "oversight" / "suspensions.json").expanduser().resolve()

    @property
    def audit_chain_key_path(self) -> Path:
        return (self.audit_chain_key_file or self.home / "secrets" / "audit-chain.key").expanduser().resolve()

    @property
    def audit_checkpoint_path(self) -> Path:
        return (self.audit_checkpoint_dir or self.home / "audit-checkpoints").expanduser().resolve()

    @property
    def embedded_postgres_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def kafka_dev_broker_file(self) -> Path:
        return self.home / "kafka.json"

    @property
    def stack_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def resolved_mlflow_tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> str:
        return (self.home / "mlflow" / "artifacts").as_uri()


@lru_cache(maxsize=1)
def get_settings() -> RiverbedSettings:
    """The process-wide settings, read from the environment on first use."""
    return RiverbedSettings()
