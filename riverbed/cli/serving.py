"""Serving commands of the ``riverbed`` CLI: serve, models, rollback, apikey and audit.

Kept apart from :mod:`riverbed.cli` so the Dagster commands and these stay readable. Only ``models`` and
``rollback`` import Dagster and MLflow, inside the commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from psycopg_pool import AsyncConnectionPool
from rich.console import Console
from rich.table import Table

from riverbed.cli.stack import ServingStack, StackError, sigterm_interrupts, wait_for_signal
from riverbed.inference_log_schema import apply_migrations
from riverbed.names import PREVIOUS_ALIAS
from riverbed.settings import RiverbedSettings, get_settings
from riverbed.specs import load_specs
from serving.api_keys import create_api_key, list_api_keys, revoke_api_key
from serving.audit_queries import (
    AuditFilter,
    export_csv_chunks,
    export_parquet_bytes,
    fetch_predictions,
    get_prediction,
    iter_export_rows,
)
from serving.embedded_postgres import resolve_inference_log_dsn
from serving.gateway.lineage import lineage_of
from serving.inference_log import RequestStatus, verify_chain

console = Console()
apikey_app = typer.Typer(help="API keys for the gateway (stored hashed in the inference-log database).")
audit_app = typer.Typer(help="The inference log: show, query, export and verify recorded requests.")


@contextlib.contextmanager
def inference_log_dsn(settings: RiverbedSettings | None = None) -> Iterator[str]:
    """The inference log's DSN: configured, the running stack's, or an embedded server started for this command."""
    dsn, embedded = resolve_inference_log_dsn(settings or get_settings())
    try:
        yield dsn
    finally:
        if embedded is not None:
            embedded.stop()


# ---------------------------------------------------------------------------------------------------- apikey
@apikey_app.command("create")
def apikey_create(
    roles: Annotated[str, typer.Option(help="Comma-separated roles: predict, audit.")] = "predict",
    name: Annotated[str, typer.Option(help="A label for the key (who or what uses it).")] = "",
) -> None:
    """Create an API key; prints the key alone on the last line (it is shown only once)."""
    wanted = [role.strip() for role in roles.split(",") if role.strip()]
    with inference_log_dsn() as dsn:
        apply_migrations(dsn)
        try:
            created = create_api_key(dsn, wanted, name)
        except ValueError as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(2) from None
    console.print(f"API key {created.key_id} with roles {', '.join(sorted(created.roles))} (shown only once):")
    typer.echo(created.key)


@apikey_app.command("list")
def apikey_list() -> None:
    """List API keys (ids, names, roles; never the keys)."""
    with inference_log_dsn() as dsn:
        apply_migrations(dsn)
        keys = list_api_keys(dsn)
    table = Table("key id", "name", "roles", "created", "revoked")
    for key in keys:
        row = key if isinstance(key, dict) else key.__dict__
        table.add_row(
            str(row.get("key_id")),
            str(row.get("name") or ""),
            ", ".join(sorted(row.get("roles") or [])),
            str(row.get("created_at") or ""),
            str(row.get("revoked_at") or ""),
        )
    console.print(table)


@apikey_app.command("revoke")
def apikey_revoke(key_id: Annotated[str, typer.Argument(help="The key id to revoke.")]) -> None:
    """Revoke an API key; the gateway refuses it within seconds."""
    with inference_log_dsn() as dsn:
        revoke_api_key(dsn, key_id)
    console.print(f"revoked {key_id}")


# ---------------------------------------------------------------------------------------------------- audit
def _filter(
    dataset: str | None,
    since: str | None,
    until: str | None,
    model_version: str | None,
    label: str | None,
    status: str | None,
) -> Any:
    def when(name: str, value: str | None) -> dt.datetime | None:
        if value is None:
            return None
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint=f"--{name}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)

    try:
        state = RequestStatus(status) if status else None
    except ValueError:
        raise typer.BadParameter(f"{status!r}: use ok, rejected or failed", param_hint="--status") from None
    return AuditFilter(
        dataset=dataset,
        since=when("since", since),
        until=when("until", until),
        model_version=model_version,
        label=label,
        status=state,
    )


async def _with_pool(dsn: str, work: Any) -> Any:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        await pool.open(wait=True, timeout=10)
        return await work(pool)


DatasetOpt = Annotated[str | None, typer.Option(help="Only this dataset.")]
SinceOpt = Annotated[str | None, typer.Option(help="Received at or after (ISO 8601; UTC if no offset).")]
UntilOpt = Annotated[str | None, typer.Option(help="Received before (ISO 8601).")]
VersionOpt = Annotated[str | None, typer.Option("--model-version", help="Only this model version.")]
LabelOpt = Annotated[str | None, typer.Option(help="Requests with a record predicted as this label.")]
StatusOpt = Annotated[str | None, typer.Option(help="ok, rejected or failed.")]


@audit_app.command("show")
def audit_show(request_id: Annotated[str, typer.Argument(help="The X-Request-ID of a request.")]) -> None:
    """Show one request with its lineage (model version -> MLflow run -> data commits -> Dagster run)."""
    with inference_log_dsn() as dsn:
        row = asyncio.run(_with_pool(dsn, lambda pool: get_prediction(pool, request_id)))
    if row is None:
        console.print(f"[red]no request {request_id!r} in the inference log[/red]")
        raise typer.Exit(1)
    typer.echo(json.dumps({"request": row, "lineage": lineage_of(row)}, indent=2, default=str))


@audit_app.command("query")
def audit_query(
    dataset: DatasetOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    model_version: VersionOpt = None,
    label: LabelOpt = None,
    status: StatusOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Rows per page.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of a previous page.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List recorded requests, newest first, with the same filters as the API."""
    selection = _filter(dataset, since, until, model_version, label, status)
    with inference_log_dsn() as dsn:
        rows, next_cursor = asyncio.run(
            _with_pool(dsn, lambda pool: fetch_predictions(pool, selection, limit=limit, cursor=cursor))
        )
    if as_json:
        typer.echo(json.dumps({"predictions": rows, "next_cursor": next_cursor}, default=str))
        return
    table = Table("received", "request id", "dataset", "model", "status", "records", "labels")
    for row in rows:
        labels = row.get("labels") or []
        table.add_row(
            str(row.get("received_at", ""))[:23],
            str(row.get("request_id")),
            str(row.get("dataset") or "-"),
            f"{row.get('model_name') or '-'} v{row.get('model_version') or '-'}",
            f"{row.get('status')} {row.get('http_status')}",
            str(len(row.get("inputs") or [])),
            ", ".join(sorted(set(labels)))[:40],
        )
    console.print(table)
    if next_cursor:
        console.print(f"more: --cursor {next_cursor}")


@audit_app.command("export")
def audit_export(
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write.")],
    format: Annotated[str, typer.Option(help="csv or parquet.")] = "csv",
    dataset: DatasetOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    model_version: VersionOpt = None,
    label: LabelOpt = None,
    status: StatusOpt = None,
) -> None:
    """Export the selected requests to CSV or Parquet."""
    if format not in ("csv", "parquet"):
        raise typer.BadParameter(f"{format!r}: use csv or parquet", param_hint="--format")
    selection = _filter(dataset, since, until, model_version, label, status)

    async def work(pool: Any) -> int:
        rows = iter_export_rows(pool, selection)
        if format == "parquet":
            output.write_bytes(await export_parquet_bytes(rows))
            return output.stat().st_size
        with output.open("w", encoding="utf-8", newline="") as handle:
            async for chunk in export_csv_chunks(rows):
                handle.write(chunk if isinstance(chunk, str) else chunk.decode())
        return output.stat().st_size

    with inference_log_dsn() as dsn:
        size = asyncio.run(_with_pool(dsn, work))
    console.print(f"wrote {output} ({size:,} bytes)")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain: exits 1 naming every edited or deleted row."""
    with inference_log_dsn() as dsn:
        report = verify_chain(dsn)
    if report.ok:
        console.print(f"[green]chain intact[/green]: {report.rows_checked:,} rows verified")
        return
    console.print(f"[red]chain broken[/red] after checking {report.rows_checked:,} rows:")
    for problem in report.problems:
        console.print(f"  - {problem}")
    raise typer.Exit(1)


def serve(
    datasets: Annotated[list[str] | None, typer.Argument(help="Datasets to serve (default: every champion).")] = None,
    port: Annotated[int | None, typer.Option(help="Gateway port (default: RIVERBED_GATEWAY_PORT or 8000).")] = None,
) -> None:
    """Serve the current champions: inference-log database, MLServer and the gateway; Ctrl-C stops them."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")  # e.g. a stale stack
    settings = get_settings()
    stack = ServingStack(settings, datasets or [], gateway_port=port)
    try:
        with sigterm_interrupts(), console.status("starting the inference log, MLServer and the gateway..."):
            stack.start()  # SIGTERM meanwhile stops what already runs, as Ctrl-C does
    except StackError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    try:
        console.print(f"gateway   {stack.gateway_url}   (OpenAPI: {stack.gateway_url}/docs)")
        console.print(f"MLServer  {stack.mlserver_url}")
        console.print(f"database  {stack.public_dsn}")
        console.print(f"serving   {', '.join(stack.datasets)}   (stack file: {settings.stack_file})")
        console.print("create a key with: riverbed apikey create --roles predict,audit   Ctrl-C stops everything")
        wait_for_signal()
    finally:
        with console.status("stopping..."):
            stack.stop()
    console.print("stopped")


def rollback(
    dataset: Annotated[str, typer.Argument(help="Dataset whose champion to re-point.")],
    to: Annotated[
        int | None, typer.Option("--to", help=f"Version to serve (default: the '{PREVIOUS_ALIAS}' alias).")
    ] = None,
) -> None:
    """Re-point the champion alias to an earlier version and hot-swap it into MLServer."""
    # Dagster + pandas (platform_assets.deployment, ~2 s to import): only this command needs them
    from platform_assets.deployment import DeploymentError, rollback_deployment

    try:
        deployed = rollback_deployment(dataset, to, settings=get_settings())
    except DeploymentError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"{deployed.dataset}: now serving {deployed.registered_model_name} v{deployed.version} "
        f"as {deployed.served_model_name} (previous: {deployed.previous_version})"
    )


def models(
    dataset: Annotated[str | None, typer.Argument(help="Only this dataset (default: every spec).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Registered model versions: aliases (champion, previous), key metrics, why trained, gate verdict."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"mlflow(\..*)?")
    # Dagster (~1.2 s to import; MLflow loads when used): only this command; imported after the quieting above
    from platform_assets.model_registry import list_model_versions

    settings = get_settings()
    specs = load_specs(settings.specs_dirs)
    if dataset is not None and dataset not in specs:
        console.print(f"[red]unknown dataset {dataset!r}; known: {', '.join(sorted(specs))}[/red]")
        raise typer.Exit(2)
    versions = list_model_versions(settings, [dataset] if dataset else sorted(specs))
    if as_json:
        typer.echo(json.dumps([v.model_dump() for v in versions], indent=2))
        return
    table = Table("dataset", "version", "aliases", "reason", "gate", "roc_auc", "accuracy", "f1")
    for v in versions:
        table.add_row(
            v.dataset, str(v.version), ", ".join(v.aliases) or "-", v.reason, v.gate,
            *(f"{v.metrics[m]:.4f}" if m in v.metrics else "-" for m in ("roc_auc", "accuracy", "f1")),
        )  # fmt: skip
    console.print(table)


def register(app: typer.Typer) -> None:
    """Attach the serving commands to the main CLI."""
    app.command()(models)
    app.command()(serve)
    app.command()(rollback)
    app.add_typer(apikey_app, name="apikey")
    app.add_typer(audit_app, name="audit")
