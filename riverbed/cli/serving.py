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
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from psycopg_pool import AsyncConnectionPool
from rich.console import Console
from rich.table import Table

from riverbed.cli.stack import ServingStack, StackError, sigterm_interrupts, wait_for_signal
from riverbed.cli.stack_state import with_running_mlflow
from riverbed.inference_log_schema import apply_migrations
from riverbed.names import PREVIOUS_ALIAS
from riverbed.settings import RiverbedSettings, get_settings
from riverbed.specs import load_specs
from serving.api_keys import UnknownKeyError, create_api_key, list_api_keys, parse_expiry, revoke_api_key
from serving.audit_access import list_audit_access, record_audit_access
from serving.audit_queries import (
    MAX_EXPORT_ROWS,
    AuditFilter,
    cursor_key_for,
    export_csv_file,
    export_parquet_file,
    fetch_predictions,
    get_prediction,
    iter_export_rows,
)
from serving.embedded_postgres import EmbeddedRole, resolve_inference_log_dsn
from serving.gateway.lineage import lineage_of
from serving.inference_log import RequestStatus, list_quarantine, load_chain_key, verify_chain_from_settings
from serving.oversight import InvalidActionError, fetch_actions

console = Console()
apikey_app = typer.Typer(help="API keys for the gateway (stored hashed in the inference-log database).")
audit_app = typer.Typer(help="The inference log: show, query, export and verify recorded requests.")


@contextlib.contextmanager
def inference_log_dsn(settings: RiverbedSettings | None = None, *, role: EmbeddedRole = "auditor") -> Iterator[str]:
    """The inference log's DSN: configured, the running stack's, or an embedded server started for this command.

    On the embedded server each command connects as the least-privileged role it needs: ``owner`` to manage keys,
    ``auditor`` (read-only) to read the log.
    """
    dsn, embedded = resolve_inference_log_dsn(settings or get_settings(), role=role)
    try:
        yield dsn
    finally:
        if embedded is not None:
            embedded.stop()


# ---------------------------------------------------------------------------------------------------- apikey
@apikey_app.command("create")
def apikey_create(
    roles: Annotated[str, typer.Option(help="Comma-separated roles: predict, audit, review.")] = "predict",
    name: Annotated[str, typer.Option(help="A label for the key (who or what uses it).")] = "",
    expires: Annotated[
        str | None, typer.Option(help="Expiry: a duration from now (90d, 12h, 30m, 2w) or an ISO 8601 time.")
    ] = None,
) -> None:
    """Create an API key; prints the key alone on the last line (it is shown only once)."""
    wanted = [role.strip() for role in roles.split(",") if role.strip()]
    try:
        expires_at = parse_expiry(expires) if expires else None
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--expires") from None
    with inference_log_dsn(role="owner") as dsn:
        apply_migrations(dsn)
        try:
            created = create_api_key(dsn, wanted, name, expires_at=expires_at)
        except ValueError as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(2) from None
    until = f", expires {created.expires_at.isoformat(timespec='seconds')}" if created.expires_at else ""
    console.print(f"API key {created.key_id} with roles {', '.join(sorted(created.roles))}{until} (shown only once):")
    typer.echo(created.key)


@apikey_app.command("list")
def apikey_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List API keys (ids, names, roles, status, expiry; never the keys)."""
    with inference_log_dsn(role="owner") as dsn:
        apply_migrations(dsn)
        keys = list_api_keys(dsn)
    if as_json:
        listed = [{**key.__dict__, "roles": sorted(key.roles), "status": str(key.status())} for key in keys]
        typer.echo(json.dumps(listed, indent=2, default=str))
        return
    table = Table("key id", "name", "roles", "status", "created", "expires", "revoked")
    for key in keys:
        table.add_row(
            key.key_id,
            key.name or "",
            ", ".join(sorted(key.roles)),
            str(key.status()),
            str(key.created_at or ""),
            str(key.expires_at or ""),
            str(key.revoked_at or ""),
        )
    console.print(table)


@apikey_app.command("revoke")
def apikey_revoke(key_id: Annotated[str, typer.Argument(help="The key id to revoke.")]) -> None:
    """Revoke an API key; every gateway refuses it within a second. Exits 1 for an unknown key id."""
    with inference_log_dsn(role="owner") as dsn:
        try:
            revocation = revoke_api_key(dsn, key_id)
        except UnknownKeyError:
            console.print(f"[red]no API key {key_id!r}: nothing revoked[/red]")
            raise typer.Exit(1) from None
    if revocation.already_revoked:
        console.print(f"{key_id} was already revoked at {revocation.revoked_at.isoformat(timespec='seconds')}")
        return
    console.print(f"revoked {key_id}")


# ---------------------------------------------------------------------------------------------------- audit
def _filter(
    dataset: str | None,
    since: str | None,
    until: str | None,
    model_version: str | None,
    label: str | None,
    status: str | None,
    flagged: bool | None = None,
    overridden: bool | None = None,
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
        flagged=flagged,
        overridden=overridden,
    )


def _cli_identity() -> str:
    """Who reads the log from the CLI, as recorded in audit_access_log (the OS user; no API key is involved)."""
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER") or str(os.getuid())
    return f"cli:{user}"


async def _recorded(pool: Any, route: str, filters: dict[str, Any], row_count: int) -> None:
    """Record one CLI audit read before its result is shown (an unrecorded read is not shown)."""
    await record_audit_access(
        pool,
        key_id=_cli_identity(),
        route=route,
        filters={name: value for name, value in filters.items() if value is not None},
        row_count=row_count,
        request_id=str(uuid.uuid4()),
        received_at=dt.datetime.now(dt.UTC),
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
FlaggedOpt = Annotated[
    bool | None, typer.Option("--flagged/--not-flagged", help="Only requests a reviewer flagged (or did not).")
]
OverriddenOpt = Annotated[
    bool | None,
    typer.Option("--overridden/--not-overridden", help="Only requests a reviewer overrode (or did not)."),
]


@audit_app.command("show")
def audit_show(request_id: Annotated[str, typer.Argument(help="The X-Request-ID of a request.")]) -> None:
    """Show one request with its lineage (model version -> MLflow run -> data commits -> Dagster run)."""

    async def work(pool: Any) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        found = await get_prediction(pool, request_id)
        await _recorded(pool, "cli audit show", {"request_id": request_id}, 0 if found is None else 1)
        if found is None:
            return None, []
        # The reviewers' actions on this request (serving.oversight), oldest first.
        try:
            history = await fetch_actions(pool, "prediction", request_id)
        except InvalidActionError:  # not shaped like a gateway request id: no action can name it
            history = []
        return found, [action.model_dump(mode="json") for action in history]

    with inference_log_dsn() as dsn:
        row, oversight = asyncio.run(_with_pool(dsn, work))
    if row is None:
        console.print(f"[red]no request {request_id!r} in the inference log[/red]")
        raise typer.Exit(1)
    typer.echo(json.dumps({"request": row, "lineage": lineage_of(row), "oversight": oversight}, indent=2, default=str))


@audit_app.command("query")
def audit_query(
    dataset: DatasetOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    model_version: VersionOpt = None,
    label: LabelOpt = None,
    status: StatusOpt = None,
    flagged: FlaggedOpt = None,
    overridden: OverriddenOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Rows per page.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="next_cursor of a previous page.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List recorded requests, newest first, with the same filters as the API."""
    selection = _filter(dataset, since, until, model_version, label, status, flagged, overridden)
    filters: dict[str, Any] = {"dataset": dataset, "since": since, "until": until, "model_version": model_version}
    filters |= {"label": label, "status": status, "limit": limit, "cursor": cursor}
    filters |= {"flagged": flagged, "overridden": overridden}

    chain_key = load_chain_key(get_settings(), create=False)
    cursor_key = cursor_key_for(chain_key) if chain_key is not None else None  # the gateway's cursors work here too

    async def work(pool: Any) -> tuple[list[dict[str, Any]], str | None]:
        page, following = await fetch_predictions(pool, selection, limit=limit, cursor=cursor, cursor_key=cursor_key)
        await _recorded(pool, "cli audit query", filters, len(page))
        return page, following

    with inference_log_dsn() as dsn:
        try:
            rows, next_cursor = asyncio.run(_with_pool(dsn, work))
        except ValueError as error:  # a malformed or foreign cursor
            raise typer.BadParameter(str(error), param_hint="--cursor") from None
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
    flagged: FlaggedOpt = None,
    overridden: OverriddenOpt = None,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_EXPORT_ROWS, help="Most rows to export (the newest first).")
    ] = MAX_EXPORT_ROWS,
) -> None:
    """Export the selected requests to CSV or Parquet."""
    if format not in ("csv", "parquet"):
        raise typer.BadParameter(f"{format!r}: use csv or parquet", param_hint="--format")
    selection = _filter(dataset, since, until, model_version, label, status, flagged, overridden)
    filters: dict[str, Any] = {"dataset": dataset, "since": since, "until": until, "model_version": model_version}
    filters |= {"label": label, "status": status, "format": format, "limit": limit}
    filters |= {"flagged": flagged, "overridden": overridden}

    async def work(pool: Any) -> int:
        # Written to a temporary file beside the output, recorded, then moved into place: an export that could
        # not be recorded is not left behind.
        partial = output.with_name(f".{output.name}.partial")
        rows = iter_export_rows(pool, selection, max_rows=limit)
        try:
            if format == "parquet":
                count = await export_parquet_file(rows, partial)
            else:
                count = await export_csv_file(rows, partial)
            await _recorded(pool, "cli audit export", filters, count)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(output)
        return count

    with inference_log_dsn() as dsn:
        count = asyncio.run(_with_pool(dsn, work))
    console.print(f"wrote {output} ({count:,} rows, {output.stat().st_size:,} bytes)")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the keyed hash chain, its head and the signed checkpoints in one snapshot: exits 1 naming every
    edited, deleted or recomputed row, a deleted tail or a wiped log."""
    settings = get_settings()
    with inference_log_dsn(settings) as dsn:
        report = verify_chain_from_settings(dsn, settings)
    quarantined = f"; {report.quarantined:,} rows quarantined outside the chain (riverbed audit quarantine)"
    summary = f"{report.rows_checked:,} rows and {report.checkpoints_checked:,} checkpoints verified"
    if report.ok:
        console.print(f"[green]chain intact[/green]: {summary}{quarantined if report.quarantined else ''}")
        return
    console.print(f"[red]chain broken[/red] ({summary}{quarantined if report.quarantined else ''}):")
    for problem in report.problems:
        console.print(f"  - {problem}")
    raise typer.Exit(1)


@audit_app.command("quarantine")
def audit_quarantine(
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Most entries to list, newest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with the kept content).")] = False,
) -> None:
    """Rows PostgreSQL refused or that timed out on their own: kept verbatim outside the chain."""
    settings = get_settings()
    with inference_log_dsn(settings) as dsn:
        entries = list_quarantine(dsn, limit=limit, local_file=settings.audit_spool_path / "quarantine.jsonl")
    if as_json:
        typer.echo(json.dumps([entry.__dict__ for entry in entries], indent=2, default=str))
        return
    table = Table("quarantined", "request id", "reason", "bytes", "sha256", "where")
    for entry in entries:
        table.add_row(
            str(entry.quarantined_at)[:23],
            entry.request_id or "-",
            entry.reason[:60],
            f"{entry.content_bytes:,}",
            entry.content_sha256[:16],
            entry.source,
        )
    console.print(table)
    console.print(f"{len(entries)} quarantined rows")


@audit_app.command("access")
def audit_access(
    key_id: Annotated[
        str | None, typer.Option("--key-id", help="Only reads by this key id (cli:<user> for the CLI).")
    ] = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="Most entries, newest first.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Who read or exported the log: every audit read with its key id, filters and row count."""
    selection = _filter(None, since, until, None, None, None)
    with inference_log_dsn() as dsn:
        entries = list_audit_access(dsn, key_id=key_id, since=selection.since, until=selection.until, limit=limit)
    if as_json:
        typer.echo(json.dumps([entry.__dict__ for entry in entries], indent=2, default=str))
        return
    table = Table("received", "key id", "route", "filters", "rows")
    for entry in entries:
        table.add_row(
            str(entry.received_at)[:23],
            entry.key_id,
            entry.route,
            json.dumps(entry.filters)[:60],
            f"{entry.row_count:,}",
        )
    console.print(table)


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
        console.print(f"console   {stack.console_url}   (log in with a key that has the audit or review role)")
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
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Serve a version the promotion gate did not pass (needs --reason; recorded on the version)."
        ),
    ] = False,
    reason: Annotated[str | None, typer.Option("--reason", help="Why the rollback is forced (recorded).")] = None,
) -> None:
    """Re-point the champion alias to an earlier version the gate passed and hot-swap it into MLServer.

    Exits 1 for an unknown dataset or version, a version the gate did not pass (without --force), files that do
    not match the digests recorded at training, or an MLServer that does not answer; nothing changes then.
    """
    if force and not (reason or "").strip():
        raise typer.BadParameter(
            "--force needs --reason: why this version is served past the gate", param_hint="--reason"
        )
    # Dagster + pandas (platform_assets.deployment, ~2 s to import): only this command needs them
    from platform_assets.deployment import DeploymentError, rollback_deployment
    from riverbed.errors import ModelIntegrityError

    try:
        deployed = rollback_deployment(
            dataset,
            to,
            settings=with_running_mlflow(get_settings()),
            force=force,
            reason=reason,
            actor=_cli_identity(),
        )
    except (DeploymentError, ModelIntegrityError) as error:
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

    settings = with_running_mlflow(get_settings())
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
    app.command()(serve)  # `models` is a group: riverbed.cli.models (list, pending, approve, reject)
    app.command()(rollback)
    app.add_typer(apikey_app, name="apikey")
    app.add_typer(audit_app, name="audit")
