"""The lineage of a logged request (or a catalog version) as links: model version -> the console's Models page,
MLflow run -> the MLflow UI, data commit ids -> the lakeFS UI, Dagster run -> the Dagster UI.

A link is made only to a configured http(s) base URL, and every id in it is percent-encoded as one path segment
(a ``/``, ``:``, quote or ``<`` in an id cannot change where the link goes, or make it a ``javascript:`` URL);
templates escape the result once more as an attribute value. Without a base URL a part is shown as text, with a
``title`` saying which setting would make it a link.

Data commits have no console page of their own: finding every request that used a commit would need an index on
``inference_log.data_commit_ids`` that the log does not have (a page scanning the log is not offered, see the
README), so without ``RIVERBED_CONSOLE_LAKEFS_URL`` they stay text.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from riverbed.names import CONSOLE_PATH
from riverbed.settings import RiverbedSettings
from serving.gateway.lineage import lineage_of

MODELS_PATH = f"{CONSOLE_PATH}/models"
NO_MLFLOW_UI = "no MLflow UI configured: set RIVERBED_CONSOLE_MLFLOW_URL (or an http(s) RIVERBED_MLFLOW_TRACKING_URI)"
NO_DAGSTER_UI = "no Dagster UI configured: set RIVERBED_CONSOLE_DAGSTER_URL"
NO_LAKEFS_UI = (
    "no lakeFS UI configured: set RIVERBED_CONSOLE_LAKEFS_URL (the console lists no requests by data commit: "
    "the inference log has no index on commit ids)"
)
NO_CATALOG_VERSION = "not a model catalog version (no dataset, or the version is not a whole number)"
_UNSAFE_SLUG = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Link:
    """One lineage part: its text, and the URL it links to (None: shown as text with ``title`` saying why)."""

    text: str
    url: str | None
    title: str


def http_base(url: str | None) -> str | None:
    """``url`` without a trailing slash if it is an absolute http(s) URL, else None (never javascript: etc.)."""
    if not url:
        return None
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
        return None
    return urllib.parse.urlunsplit(parsed).rstrip("/")


def segment(value: Any) -> str:
    """``value`` percent-encoded as a single URL path segment (nothing is left unquoted but unreserved chars)."""
    return urllib.parse.quote(str(value), safe="")


def version_slug(dataset: str, version: Any) -> str:
    """The id suffix of a version on the Models page: ``<dataset with [^A-Za-z0-9_-] as _>-<version>``."""
    return f"{_UNSAFE_SLUG.sub('_', dataset)}-{_UNSAFE_SLUG.sub('_', str(version))}"


def model_version_url(dataset: str, version: int | str) -> str:
    """The Models page of ``dataset``, scrolled to the version's row (``#version-<slug>``)."""
    query = urllib.parse.urlencode({"dataset": dataset})
    return f"{MODELS_PATH}?{query}#version-{version_slug(dataset, version)}"


def mlflow_base(settings: RiverbedSettings) -> str | None:
    return http_base(settings.console_mlflow_url or settings.mlflow_tracking_uri)


def _link(text: Any, base: str | None, path: str, missing: str, *, title: str) -> Link | None:
    if text is None or text == "":
        return None
    if base is None:
        return Link(str(text), None, missing)
    return Link(str(text), f"{base}/{path}", title)


def mlflow_run_link(settings: RiverbedSettings, run_id: Any) -> Link | None:
    base = mlflow_base(settings)
    return _link(run_id, base, f"#/runs/{segment(run_id)}", NO_MLFLOW_UI, title="the MLflow run in the MLflow UI")


def dagster_run_link(settings: RiverbedSettings, run_id: Any) -> Link | None:
    base = http_base(settings.console_dagster_url)
    return _link(run_id, base, f"runs/{segment(run_id)}", NO_DAGSTER_UI, title="the Dagster run in the Dagster UI")


def data_commit_link(settings: RiverbedSettings, commit_id: Any) -> Link | None:
    base = http_base(settings.console_lakefs_url)
    path = f"repositories/{segment(settings.data_repository)}/commits/{segment(commit_id)}"
    return _link(commit_id, base, path, NO_LAKEFS_UI, title="the commit in the lakeFS UI")


def lineage_links(settings: RiverbedSettings, row: Mapping[str, Any]) -> dict[str, Any]:
    """The request's lineage (as :func:`serving.gateway.lineage.lineage_of` reads it), each part a :class:`Link`
    or None when the row records no such part."""
    lineage = lineage_of(dict(row))
    model = lineage["model"]
    dataset = row.get("dataset")
    version = model["version"]
    model_link: Link | None = None
    if model["name"] or version:
        text = f"{model['name'] or 'unnamed model'} version {version if version is not None else 'none'}"
        if isinstance(dataset, str) and dataset and str(version).isascii() and str(version).isdigit():
            model_link = Link(text, model_version_url(dataset, str(version)), "this version on the Models page")
        else:
            model_link = Link(text, None, NO_CATALOG_VERSION)
    commits = lineage["data_commit_ids"] if isinstance(lineage["data_commit_ids"], dict) else {}
    return {
        "model": model_link,
        "mlflow_run": mlflow_run_link(settings, lineage["mlflow_run_id"]),
        "training_set_commit": data_commit_link(settings, lineage["training_set_commit_id"]),
        "data_commits": [
            (str(partition), data_commit_link(settings, commit)) for partition, commit in sorted(commits.items())
        ],
        "dagster_run": dagster_run_link(settings, lineage["dagster_run_id"]),
    }
