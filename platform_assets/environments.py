"""All environment logic: which implementation stands behind each resource key.

``local`` (default) builds embedded parts under ``RIVERBED_HOME``; ``compose`` / ``production`` point the
same keys at real services, with hosts and secrets resolved at launch through ``dg.EnvVar``.
"""

from typing import Any

import dagster as dg

from resources.data_store_resource import VersionedDataStoreResource
from resources.inference_log_resource import InferenceLogResource
from resources.kafka_resource import kafka_resource_for
from resources.mlflow_resource import MlflowTrackingResource
from resources.mlserver_resource import MLServerResource
from resources.versioned_io_manager import VersionedDataIOManager
from riverbed.settings import Environment, RiverbedSettings

RESOURCE_KEYS = ("data_store", "io_manager", "mlflow", "mlserver", "inference_log", "kafka")


def build_resources(settings: RiverbedSettings) -> dict[str, Any]:
    """The resource dict for the settings' environment; every environment has the same keys."""
    if settings.env is Environment.LOCAL:
        data_store = VersionedDataStoreResource(
            backend="local",
            repository=settings.data_repository,
            main_branch=settings.data_main_branch,
            local_dir=str(settings.local_store_dir),
        )
        mlflow = MlflowTrackingResource(
            tracking_uri=settings.resolved_mlflow_tracking_uri, artifact_root=settings.mlflow_artifact_root
        )
        mlserver = MLServerResource(
            url=settings.mlserver_url,
            model_repository=str(settings.model_repository_dir),
            local_home=str(settings.home),  # MLServer runs inside `riverbed serve`, when it runs
        )
        inference_log = InferenceLogResource(
            dsn=settings.inference_log_dsn.get_secret_value() if settings.inference_log_dsn else None,
            home=str(settings.home),
        )
        kafka = kafka_resource_for(settings)
    else:
        data_store = VersionedDataStoreResource(
            backend="lakefs",
            repository=settings.data_repository,
            main_branch=settings.data_main_branch,
            lakefs_endpoint=dg.EnvVar("RIVERBED_LAKEFS_ENDPOINT"),
            lakefs_access_key_id=dg.EnvVar("RIVERBED_LAKEFS_ACCESS_KEY_ID"),
            lakefs_secret_access_key=dg.EnvVar("RIVERBED_LAKEFS_SECRET_ACCESS_KEY"),
            lakefs_storage_namespace=dg.EnvVar("RIVERBED_LAKEFS_STORAGE_NAMESPACE"),
        )
        mlflow = MlflowTrackingResource(tracking_uri=dg.EnvVar("RIVERBED_MLFLOW_TRACKING_URI"))
        # The model repository is a volume shared with MLServer and the gateway, mounted at the same path.
        mlserver = MLServerResource(
            url=dg.EnvVar("RIVERBED_MLSERVER_URL"), model_repository=str(settings.model_repository_dir)
        )
        inference_log = InferenceLogResource(dsn=dg.EnvVar("RIVERBED_INFERENCE_LOG_DSN"))
        kafka = kafka_resource_for(settings, bootstrap_servers=dg.EnvVar("RIVERBED_KAFKA_BOOTSTRAP_SERVERS"))
    return {
        "data_store": data_store,
        "io_manager": VersionedDataIOManager(data_store=data_store),
        "mlflow": mlflow,
        "mlserver": mlserver,
        "inference_log": inference_log,
        "kafka": kafka,
    }
