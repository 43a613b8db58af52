"""The one Dagster ``Definitions`` of Riverbed: every dataset spec's assets and jobs, and the resources.

``workspace.yaml`` loads ``defs`` from here. Building reads the dataset spec files and nothing else:
no connection is opened and no directory is created until a run uses a resource.
"""

from typing import Any

import dagster as dg

from platform_assets.dataset_assets import build_dataset_definitions
from platform_assets.environments import build_resources
from riverbed.settings import RiverbedSettings, get_settings
from riverbed.specs import load_specs


def build_definitions(settings: RiverbedSettings | None = None) -> dg.Definitions:
    settings = settings or get_settings()
    specs = load_specs(settings.specs_dirs)
    assets: list[dg.AssetsDefinition] = []
    jobs: list[Any] = []
    for spec in specs.values():
        dataset = build_dataset_definitions(spec)
        assets.extend(dataset.assets)
        jobs.extend(dataset.jobs)
    return dg.Definitions(assets=assets, jobs=jobs, resources=build_resources(settings))


defs = build_definitions()
