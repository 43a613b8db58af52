"""The code location loads, every job resolves, and both environments build the same resource keys."""

import dagster as dg
import pytest

from platform_assets.definitions import build_definitions
from platform_assets.environments import RESOURCE_KEYS, build_resources
from riverbed.settings import Environment, RiverbedSettings


def test_module_level_defs_load_and_every_job_resolves() -> None:
    from platform_assets.definitions import defs

    jobs = {job.name for job in defs.resolve_all_job_defs()}
    for dataset in ("salary_band", "machine_failure"):
        assert {f"ingest_{dataset}", f"train_{dataset}", f"full_{dataset}"} <= jobs
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    for dataset in ("salary_band", "machine_failure"):
        assert {f"raw_{dataset}", f"features_{dataset}", f"training_set_{dataset}", f"model_{dataset}"} <= keys


def test_feature_checks_are_blocking(local_settings: RiverbedSettings) -> None:
    defs = build_definitions(local_settings)
    checks = defs.resolve_asset_graph().asset_check_keys
    names = {key.name for key in checks if key.asset_key == dg.AssetKey("features_salary_band")}
    assert names == {"schema", "nulls", "ranges_and_categories", "non_empty"}
    features = defs.resolve_assets_def("features_salary_band")
    assert all(spec.blocking for spec in features.check_specs)


@pytest.mark.parametrize("env", list(Environment))
def test_every_environment_builds_the_same_resource_keys(env: Environment, tmp_path) -> None:
    resources = build_resources(RiverbedSettings(env=env, home=tmp_path))
    assert tuple(sorted(resources)) == tuple(sorted(RESOURCE_KEYS))


def test_production_resources_take_hosts_and_secrets_from_the_environment(tmp_path) -> None:
    resources = build_resources(RiverbedSettings(env=Environment.PRODUCTION, home=tmp_path))
    store = resources["data_store"]
    assert store.backend == "lakefs"
    assert isinstance(store.lakefs_endpoint, dg.EnvVar)
    assert isinstance(store.lakefs_secret_access_key, dg.EnvVar)
    assert isinstance(resources["mlflow"].tracking_uri, dg.EnvVar)


def test_building_definitions_creates_no_state(tmp_path) -> None:
    home = tmp_path / "untouched"
    build_definitions(RiverbedSettings(home=home))
    assert not home.exists()
