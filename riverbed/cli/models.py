"""``riverbed models``: registered versions, and the reviewers' side of manual promotion.

``riverbed models [DATASET] [--json]`` (also ``models list``) lists the registry as before. ``models pending
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
import urllib.parse
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from riverbed.cli.review import ApiKeyOpt, GatewayOpt, JsonOpt, _call, gateway_url
from riverbed.cli.serving import models as list_registered_versions

console = Console()


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
models_app.command("list")(list_registered_versions)


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")


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
    body = _call("GET", f"{gateway_url(gateway)}/v1/models/versions", api_key, params=params)
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
    url = f"{gateway_url(gateway)}/v1/models/{_segment(dataset)}/versions/{version}/{decision}"
    return _call("POST", url, api_key, json={"reason": reason})


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
    dataset: Annotated[str, typer.Argument(help="The dataset.")],
    version: Annotated[int, typer.Argument(help="The pending version.", min=1)],
    reason: Annotated[str, typer.Option("--reason", help="Why it may be deployed (recorded).")],
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a pending candidate: the approvals sensor then deploys exactly this version."""
    _print_decision(_decide("approve", dataset, version, reason, gateway, api_key), as_json)


@models_app.command("reject")
def reject(
    dataset: Annotated[str, typer.Argument(help="The dataset.")],
    version: Annotated[int, typer.Argument(help="The pending version.", min=1)],
    reason: Annotated[str, typer.Option("--reason", help="Why it must not be deployed (recorded).")],
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Reject a pending candidate: it is never deployed; the champion keeps serving."""
    _print_decision(_decide("reject", dataset, version, reason, gateway, api_key), as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
