"""``riverbed review``: human oversight actions over HTTP to the running gateway (role ``review``).

``flag REQUEST_ID --note``, ``override REQUEST_ID --outcome --reason``, ``suspend DATASET --reason``,
``resume DATASET --reason`` and ``history (--request-id ID | --dataset NAME)``. The gateway's URL comes from
``--gateway``, else the running stack's file (``<home>/stack.json``, written by ``riverbed serve`` / ``up``); the
API key from ``--api-key`` or ``RIVERBED_API_KEY`` (never printed). A refusal prints the gateway's message and
the field and rule it names, and exits 1; an unreachable gateway exits 2.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from riverbed.cli.stack_state import read_stack_file, why_not_live
from riverbed.settings import get_settings

console = Console()
err_console = Console(stderr=True)
review_app = typer.Typer(help="Human oversight: flag or override predictions, suspend or resume a dataset's serving.")

TIMEOUT_SECONDS = 30.0

GatewayOpt = Annotated[
    str | None, typer.Option("--gateway", help="The gateway's URL (default: the running stack's, from stack.json).")
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="RIVERBED_API_KEY", show_envvar=True, help="An API key with the review role."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the gateway's JSON answer.")]
RequestIdArg = Annotated[str, typer.Argument(help="The X-Request-ID of the prediction.")]


def gateway_url(explicit: str | None) -> str:
    """``--gateway`` if given, else the ``gateway`` URL of the running stack's file; exits 2 naming what is missing."""
    if explicit:
        return explicit.rstrip("/")
    path = get_settings().stack_file
    try:
        record = read_stack_file(path)
    except ValueError as error:
        err_console.print(f"[red]cannot read {path}: {escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    if record is None or not isinstance(record.get("gateway"), str):
        err_console.print(f"[red]no running gateway: {path} names none; start `riverbed serve` or pass --gateway[/red]")
        raise typer.Exit(2)
    stale = why_not_live(record)
    if stale is not None:
        err_console.print(f"[red]the stack in {path} is not running ({escape(stale)}); pass --gateway[/red]")
        raise typer.Exit(2)
    return str(record["gateway"]).rstrip("/")


def call_gateway(method: str, url: str, api_key: str | None, **options: Any) -> dict[str, Any]:
    """One request to the gateway; prints the refusal (message, field and rule) and exits 1, or 2 if unreachable."""
    if not api_key:
        err_console.print("[red]no API key: pass --api-key or set RIVERBED_API_KEY (a key with the review role)[/red]")
        raise typer.Exit(2)
    try:
        response = httpx.request(
            method, url, headers={"Authorization": f"Bearer {api_key}"}, timeout=TIMEOUT_SECONDS, **options
        )
    except httpx.HTTPError as error:
        err_console.print(f"[red]cannot reach the gateway at {escape(url)}: {escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    try:
        body: Any = response.json()
    except ValueError:
        body = {"error": response.text[:500]}
    if response.status_code >= 400:
        message = body.get("error", "") if isinstance(body, dict) else str(body)
        err_console.print(f"[red]refused ({response.status_code}): {escape(str(message))}[/red]")
        for problem in body.get("problems", []) if isinstance(body, dict) else []:
            err_console.print(f"  {escape(str(problem.get('field')))}: {escape(str(problem.get('rule')))}")
        request_id = response.headers.get("X-Request-ID")
        if request_id:
            err_console.print(f"  request id {request_id}")
        raise typer.Exit(1)
    if not isinstance(body, dict):
        err_console.print(f"[red]unexpected answer from the gateway: {escape(str(body)[:200])}[/red]")
        raise typer.Exit(1)
    return body


def post_to_gateway(gateway: str | None, path: str, api_key: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """POST ``body`` to ``path`` of the gateway (``--gateway`` or the running stack's): see :func:`call_gateway`."""
    return call_gateway("POST", f"{gateway_url(gateway)}{path}", api_key, json=body)


def _done(action: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(action))
        return
    outcome = f" -> {action['outcome']}" if action.get("outcome") else ""
    console.print(
        f"{escape(action['action'])} of {escape(action['target_kind'])} {escape(action['target_id'])}{escape(outcome)}"
        f" recorded as {action['action_id']} (key {escape(action['actor_key_id'])})"
    )


@review_app.command("flag")
def flag(
    request_id: RequestIdArg,
    note: Annotated[str, typer.Option("--note", help="Why it is flagged.")],
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Flag a logged prediction with a note."""
    path = f"/v1/predictions/{path_segment(request_id)}/flag"
    _done(post_to_gateway(gateway, path, api_key, {"note": note}), as_json)


@review_app.command("override")
def override(
    request_id: RequestIdArg,
    outcome: Annotated[str, typer.Option("--outcome", help="The reviewer's outcome (a target class).")],
    reason: Annotated[str, typer.Option("--reason", help="Why.")],
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record a reviewer's outcome for a served prediction."""
    path = f"/v1/predictions/{path_segment(request_id)}/override"
    _done(post_to_gateway(gateway, path, api_key, {"outcome": outcome, "reason": reason}), as_json)


@review_app.command("suspend")
def suspend(
    dataset: Annotated[str, typer.Argument(help="The dataset whose serving stops.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (shown to every refused client).")],
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Suspend a dataset's serving: its predict route answers 503 naming who and why until resumed."""
    _done(
        post_to_gateway(gateway, f"/v1/datasets/{path_segment(dataset)}/suspend", api_key, {"reason": reason}), as_json
    )


@review_app.command("resume")
def resume(
    dataset: Annotated[str, typer.Argument(help="The suspended dataset.")],
    reason: Annotated[str, typer.Option("--reason", help="Why serving resumes.")],
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Resume a suspended dataset's serving."""
    _done(
        post_to_gateway(gateway, f"/v1/datasets/{path_segment(dataset)}/resume", api_key, {"reason": reason}), as_json
    )


@review_app.command("history")
def history(
    request_id: Annotated[str | None, typer.Option("--request-id", help="Actions on this prediction.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Actions on this dataset's serving.")] = None,
    gateway: GatewayOpt = None,
    api_key: ApiKeyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The recorded actions on one prediction or one dataset, oldest first (role audit or review)."""
    if (request_id is None) == (dataset is None):
        raise typer.BadParameter("pass exactly one of --request-id and --dataset")
    if request_id is not None:
        params = {"target_kind": "prediction", "target_id": request_id}
    else:
        params = {"target_kind": "dataset", "target_id": str(dataset)}
    url = f"{gateway_url(gateway)}/v1/oversight"
    actions: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = call_gateway(
            "GET", url, api_key, params={**params, "limit": 1000, **({"cursor": cursor} if cursor else {})}
        )
        actions.extend(page.get("actions", []))
        cursor = page.get("next_cursor")
        if not cursor:
            break
    if as_json:
        typer.echo(json.dumps({"actions": actions}))
        return
    table = Table("recorded", "action", "by key", "outcome", "note / reason", "action id")
    for action in actions:
        table.add_row(
            str(action["recorded_at"])[:23],
            action["action"],
            escape(action["actor_key_id"]),
            escape(action.get("outcome") or "-"),
            escape(action["note"][:80]),
            action["action_id"],
        )
    console.print(table)
    console.print(f"{len(actions)} actions")


def path_segment(value: str) -> str:
    """A path segment, percent-encoded (the gateway checks what it is)."""
    return urllib.parse.quote(value, safe="")


def register(app: typer.Typer) -> None:
    """Attach ``riverbed review`` to the main CLI."""
    app.add_typer(review_app, name="review")
