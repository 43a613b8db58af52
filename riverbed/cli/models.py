"""``riverbed models``: registered versions, and the reviewers' side of manual promotion.

``riverbed models [DATASET] [--json]`` (also ``models list``) lists the versions from the model catalog
(:mod:`riverbed.model_catalog`: status, gate verdict and reasons, why each was trained, aliases, a reviewer's
decision) when the inference-log database is reachable, and else from the MLflow registry as before, with a WARNING
saying why. ``models pending
[DATASET]`` lists the candidates waiting for a reviewer (``promotion.approval: manual``) from the model catalog;
``models approve DATASET VERSION --reason`` and ``models reject ...`` decide on one. The three go over HTTP to the
running gateway (``GET /v1/models/versions``, ``POST /v1/models/{dataset}/versions/{version}/approve|reject``),
like ``riverbed review``: the decision is then recorded as an oversight action in the chained inference log, which
only the gateway writes. URL from ``--gateway`` or the running stack's file; key from ``--api-key`` or
``RIVERBED_API_KEY`` (role ``review``; ``audit`` may list). Refusals print the gateway's message, field and rule and
exit 1; an unreachable gateway exits 2.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import psycopg
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from riverbed.cli.review import ApiKeyOpt, GatewayOpt, JsonOpt, call_gateway, gateway_url, path_segment, post_to_gateway
from riverbed.cli.serving import models as list_registered_versions
from riverbed.model_catalog import MAX_LIST_LIMIT, CatalogError, ModelVersionRecord, list_model_versions
from riverbed.settings import get_settings
from riverbed.specs import load_specs
from riverbed.stack_file import configured_inference_log_dsn

console = Console()
logger = logging.getLogger(__name__)
CATALOG_TIMEOUT_SECONDS = 3.0
DatasetArg = Annotated[str, typer.Argument(help="The dataset.")]
PendingVersionArg = Annotated[int, typer.Argument(help="The pending version.", min=1)]


class _ListByDefault(TyperGroup):
    """``riverbed models`` and ``riverbed models DATASET`` keep meaning ``models list ...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's vendored click Context
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


models_app = typer.Typer(
    cls=_ListByDefault,
    help="Registered model versions; the candidates waiting for a reviewer, and approving or rejecting them.",
)


def _catalog_versions(dataset: str | None, known: list[str]) -> list[ModelVersionRecord] | None:
    """The catalog's versions (of ``dataset``, else of every known dataset), or None (WARNING: why) when the
    database is not configured, unreachable or has no versions to show."""
    settings = get_settings()
    dsn = configured_inference_log_dsn(settings)
    if dsn is None:
        logger.warning("models: no inference-log database configured or running; listing the MLflow registry")
        return None
    try:
        versions = list_model_versions(dsn, dataset, MAX_LIST_LIMIT, timeout_seconds=CATALOG_TIMEOUT_SECONDS)
    except (psycopg.Error, OSError, CatalogError) as error:
        logger.warning(
            "models: the model catalog cannot be read (%s: %s); listing the MLflow registry",
            type(error).__name__,
            str(error).strip().splitlines()[0] if str(error).strip() else "",
        )
        return None
    shown = [v for v in versions if v.dataset in known]
    if not shown:
        logger.warning("models: the model catalog has no versions of %s; listing the MLflow registry", ", ".join(known))
        return None
    return sorted(shown, key=lambda v: (v.dataset, -v.version))


def _gate(version: ModelVersionRecord) -> str:
    verdict = "pending" if version.gate_passed is None else "passed" if version.gate_passed else "failed"
    return f"{verdict}: {'; '.join(version.gate_reasons)}" if version.gate_reasons else verdict


@models_app.command("list")
def list_versions(
    dataset: Annotated[str | None, typer.Argument(help="Only this dataset (default: every spec).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Model versions: status, gate verdict, why trained, aliases, key metrics (the model catalog; else MLflow)."""
    specs = load_specs(get_settings().specs_dirs)
    if dataset is not None and dataset not in specs:
        console.print(f"[red]unknown dataset {escape(dataset)!r}; known: {', '.join(sorted(specs))}[/red]")
        raise typer.Exit(2)
    versions = _catalog_versions(dataset, [dataset] if dataset else sorted(specs))
    if versions is None:
        list_registered_versions(dataset, as_json)
        return
    if as_json:
        typer.echo(json.dumps([v.model_dump(mode="json", exclude={"model_card_markdown"}) for v in versions], indent=2))
        return
    table = Table("dataset", "version", "status", "aliases", "reason", "gate", "roc_auc", "f1", "reviewer")
    for v in versions:
        table.add_row(
            escape(v.dataset),
            str(v.version),
            v.status,
            ", ".join(v.aliases) or "-",
            escape(v.trained_reason),
            escape(_gate(v))[:120],
            *(f"{v.metrics[m]:.4f}" if m in v.metrics else "-" for m in ("roc_auc", "f1")),
            escape(f"{v.review.decision} by {v.review.key_id}") if v.review else "-",
        )
    console.print(table)


@models_app.command("pending")
def pending(
    dataset: Annotated[str | None, typer.Argument(help="Only this dataset.")] = None,
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Candidates that passed the promotion gate and wait for a reviewer (promotion.approval: manual)."""
    params: dict[str, Any] = {"status": "pending_approval"}
    if dataset is not None:
        params["dataset"] = dataset
    body = call_gateway("GET", f"{gateway_url(gateway)}/v1/models/versions", api_key, params=params)
    versions = body.get("versions", [])
    if as_json:
        typer.echo(json.dumps(versions, indent=2))
        return
    if not versions:
        console.print("no candidate waits for approval")
        return
    table = Table("dataset", "version", "reason", "gate", "roc_auc", "trained")
    for v in versions:
        metric = v.get("metrics", {}).get("roc_auc")
        table.add_row(
            escape(v["dataset"]),
            str(v["version"]),
            escape(v["trained_reason"]),
            escape("; ".join(v.get("gate_reasons", [])))[:120],
            f"{metric:.4f}" if isinstance(metric, int | float) else "-",
            str(v["created_at"])[:19],
        )
    console.print(table)


def _decide(
    decision: str, dataset: str, version: int, reason: str, gateway: str | None, api_key: str | None
) -> dict[str, Any]:
    path = f"/v1/models/{path_segment(dataset)}/versions/{version}/{decision}"
    return post_to_gateway(gateway, path, api_key, {"reason": reason})


def _print_decision(body: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(body))
        return
    review = body["review"]
    done = "approved: the platform deploys it next" if review["decision"] == "approve" else "rejected: never deployed"
    console.print(
        f"{escape(review['dataset'])} v{review['version']} {done} "
        f"(recorded as {escape(review['action_id'])}, key {escape(review['key_id'])})"
    )


@models_app.command("approve")
def approve(
    dataset: DatasetArg,
    version: PendingVersionArg,
    reason: Annotated[str, typer.Option("--reason", help="Why it may be deployed (recorded).")],
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a pending candidate: the approvals sensor then deploys exactly this version."""
    _print_decision(_decide("approve", dataset, version, reason, gateway, api_key), as_json)


@models_app.command("reject")
def reject(
    dataset: DatasetArg,
    version: PendingVersionArg,
    reason: Annotated[str, typer.Option("--reason", help="Why it must not be deployed (recorded).")],
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reject a pending candidate: it is never deployed; the champion keeps serving."""
    _print_decision(_decide("reject", dataset, version, reason, gateway, api_key), as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
