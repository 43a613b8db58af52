"""The serving half of ``riverbed demo``: start the stack, predict with explanations, audit, verify, stop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from riverbed.cli.stack import ServingStack
from riverbed.names import CONSOLE_PATH
from riverbed.settings import RiverbedSettings
from riverbed.sources import load_source_records
from riverbed.specs import DatasetSpec
from serving.api_keys import CreatedKey, create_api_key, parse_expiry
from serving.inference_log import verify_chain_from_settings


def gateway_records(spec: DatasetSpec, frame: Any, sample_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Rows of ``frame`` as the gateway's JSON records: None for missing values, numbers as int or float,
    categories as text, and ``sample_id`` when given."""
    records = []
    for index, row in enumerate(frame[spec.feature_names].to_dict("records")):
        record: dict[str, Any] = {} if sample_ids is None else {"sample_id": str(sample_ids[index])}
        for name, value in row.items():
            missing = value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("", "<NA>")
            if missing:
                record[name] = None
            elif name in spec.numeric_features:
                number = float(value)
                record[name] = int(number) if number.is_integer() else number
            else:
                record[name] = str(value)
        records.append(record)
    return records


def sample_records(spec: DatasetSpec, count: int) -> list[dict[str, Any]]:
    """``count`` records from the dataset's own source, as the gateway's JSON, with ids ``demo-<n>``."""
    frame = load_source_records(spec).tail(count)
    return gateway_records(spec, frame, [f"demo-{index}" for index in range(len(frame))])


def exercise_serving(settings: RiverbedSettings, spec: DatasetSpec, console: Console) -> dict[str, Any]:
    """Serve the champion, send single and batch predictions, query and verify the audit log, then stop."""
    summary: dict[str, Any] = {}
    with console.status("starting the inference log, MLServer and the gateway..."):
        stack = ServingStack(settings, [spec.name], ephemeral_ports=True).start()
    try:
        console.print(f"gateway {stack.gateway_url}  MLServer {stack.mlserver_url}  database {stack.public_dsn}")
        assert stack.dsn is not None
        key = create_api_key(stack.dsn, ["predict", "audit"], "demo").key
        headers = {"Authorization": f"Bearer {key}"}
        records = sample_records(spec, 200)
        with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=60) as client:
            single = client.post(f"/v1/{spec.name}/predict", json={**records[0], "top_k": 4})
            single.raise_for_status()
            batch = client.post(f"/v1/{spec.name}/predict", json={"records": records[1:], "top_k": 3})
            batch.raise_for_status()
            body = batch.json()
            _print_explanations(console, spec, [single.json()["predictions"][0], *body["predictions"][:3]])
            summary["model"] = f"{body['model']['name']} v{body['model']['version']}"
            labels = [p["label"] for p in body["predictions"]]
            console.print(
                f"batch of {len(labels)}: "
                + ", ".join(f"{label} x{labels.count(label)}" for label in sorted(set(labels)))
                + f"  (request {body['request_id']})"
            )
            rejected = client.post(f"/v1/{spec.name}/predict", json={**records[0], spec.feature_names[0]: -5})
            console.print(f"an invalid record gets {rejected.status_code}: {rejected.json()['problems'][0]}")
            audit = client.get(f"/v1/audit/predictions/{single.json()['request_id']}").json()
            lineage = audit["lineage"]
            console.print(
                f"audit of {single.json()['request_id']}: model {lineage['model']['name']} "
                f"v{lineage['model']['version']} -> MLflow run {lineage['mlflow_run_id']} -> "
                f"{len(lineage['data_commit_ids'])} data commits -> Dagster run {lineage['dagster_run_id']}"
            )
            listed = client.get("/v1/audit/predictions", params={"dataset": spec.name, "limit": 10}).json()
            table = Table("received", "request id", "status", "records", title="Inference log (latest)")
            for row in listed["predictions"][:5]:
                table.add_row(
                    str(row["received_at"])[:23], row["request_id"], f"{row['status']} {row['http_status']}",
                    str(len(row.get("inputs") or [])),
                )  # fmt: skip
            console.print(table)
        report = verify_chain_from_settings(stack.dsn, settings)
        summary.update(chain_ok=report.ok, rows=report.rows_checked)
        status = "[green]intact[/green]" if report.ok else f"[red]broken: {report.problems[:3]}[/red]"
        console.print(
            f"audit chain {status}: {report.rows_checked} rows (keyed HMAC) and "
            f"{report.checkpoints_checked} signed checkpoints verified"
        )
    finally:
        with console.status("stopping the gateway, MLServer and the database..."):
            stack.stop()
    console.print("serving stack stopped cleanly")
    return summary


REVIEW_KEY_ROLES = ["audit", "review"]
REVIEW_KEY_LIFETIME = "30d"  # a demo key should not outlive the demo by much


def serve_console_url(settings: RiverbedSettings) -> str:
    """Where ``riverbed serve`` puts the oversight console: its gateway's host and port (settings), then
    :data:`~riverbed.names.CONSOLE_PATH`."""
    return f"http://{settings.gateway_host}:{settings.gateway_port}{CONSOLE_PATH}"


def print_console_access(settings: RiverbedSettings, dsn: str, console: Console) -> CreatedKey:
    """Create a key with the audit and review roles in the inference log at ``dsn`` and print, last, the console's
    URL and the key (alone on the final line, shown only once)."""
    created = create_api_key(dsn, REVIEW_KEY_ROLES, "demo reviewer", expires_at=parse_expiry(REVIEW_KEY_LIFETIME))
    until = created.expires_at.isoformat(timespec="seconds") if created.expires_at else "never"
    console.print(
        f"oversight console: {serve_console_url(settings)}   (answers while `riverbed serve` runs: start it, "
        "then log in with the key below)",
        soft_wrap=True,
        highlight=False,
    )
    console.print(
        f"review key {created.key_id} (roles {', '.join(REVIEW_KEY_ROLES)}, expires {until}; shown only once):",
        soft_wrap=True,
        highlight=False,
    )
    console.print(created.key, soft_wrap=True, highlight=False, markup=False)
    return created


def _print_explanations(console: Console, spec: DatasetSpec, predictions: list[dict[str, Any]]) -> None:
    table = Table("sample", "label", f"P({spec.target.positive_class})", "top features (SHAP, log-odds)",
                  title="Predictions with exact SHAP explanations")  # fmt: skip
    for prediction in predictions:
        top = prediction["explanation"]["top_features"]
        table.add_row(
            str(prediction.get("sample_id")),
            prediction["label"],
            f"{prediction['probabilities'][spec.target.positive_class]:.3f}",
            "; ".join(f"{t['feature']}={t['value']} ({t['contribution']:+.2f})" for t in top),
        )
    console.print(table)
