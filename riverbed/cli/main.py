"""The ``riverbed`` command line: demo, dataset specs, the Dagster UI.

Heavy imports (Dagster, MLflow, pandas) happen inside the commands that need them, so ``riverbed --help``
stays fast (``python -X importtime -c "import riverbed.cli"`` shows none of them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from riverbed.cli import kafka, models, pipeline_exporter, review, serving, up
from riverbed.records import TrainingReason
from riverbed.settings import PROJECT_ROOT, RiverbedSettings, get_settings
from riverbed.specs import SpecError, load_spec_file, load_specs

if TYPE_CHECKING:
    from platform_assets.runner import PipelineRun  # Dagster + pandas (~2 s): imported by the commands that run it

app = typer.Typer(help="Riverbed: an ML data platform on a Dagster asset graph.", no_args_is_help=True)
specs_app = typer.Typer(help="Dataset specs.", no_args_is_help=True)
app.add_typer(specs_app, name="specs")
serving.register(app)
kafka.register(app)
up.register(app)
pipeline_exporter.register(app)
review.register(app)
models.register(app)  # models [list] / pending / approve / reject
console = Console()

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "NML_DISABLE_USAGE_LOGGING": "1",
    "DAGSTER_DISABLE_TELEMETRY": "true",
    "OMP_NUM_THREADS": "1",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
}


def _quiet_environment() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\..*)?")
    warnings.filterwarnings("ignore", message=r".*is currently in beta.*")  # Dagster's beta parameters
    logging.getLogger("nannyml").setLevel(logging.ERROR)  # threshold clipping notes on every chunk


@specs_app.command("list")
def specs_list() -> None:
    """List the dataset specs Riverbed finds, with their features and target."""
    specs = load_specs(get_settings().specs_dirs)
    table = Table("dataset", "features", "target (positive)", "protected", "source")
    for spec in specs.values():
        table.add_row(
            spec.name,
            str(len(spec.features)),
            f"{spec.target.name} ({spec.target.positive_class})",
            ", ".join(spec.protected_attributes) or "-",
            spec.source.kind,
        )
    console.print(table)


@specs_app.command("check")
def specs_check(paths: Annotated[list[Path], typer.Argument(help="Spec files to validate.")]) -> None:
    """Validate spec files; exits 1 naming the file, field and rule of every mistake."""
    failed = False
    for path in paths:
        try:
            spec = load_spec_file(path)
        except SpecError as error:
            failed = True
            console.print(f"[red]{error}[/red]")
        else:
            console.print(f"[green]ok[/green] {path} ({spec.name}, {len(spec.features)} features)")
    raise typer.Exit(1 if failed else 0)


@app.command()
def demo(
    dataset: Annotated[str, typer.Option(help="Dataset to run.")] = "salary_band",
    days: Annotated[int, typer.Option(min=1, max=366, help="Daily partitions to ingest.")] = 30,
    trials: Annotated[int | None, typer.Option(min=1, help="Optuna trials (default: the spec's).")] = None,
    serve: Annotated[bool, typer.Option(help="Then serve the champion, predict, audit and verify.")] = True,
    drift: Annotated[
        bool, typer.Option(help="Then the drift scenario: Kafka, drift found, automatic retraining, v2 served.")
    ] = True,
) -> None:
    """Run the main job headless (ingest, featurise, train, gate, deploy), then serve and audit predictions."""
    _quiet_environment()
    from platform_assets.runner import JobFailedError, demo_partitions, run_pipeline  # Dagster + pandas (~2 s)

    settings = get_settings()
    specs = load_specs(settings.specs_dirs)
    if dataset not in specs:
        console.print(f"[red]unknown dataset {dataset!r}; known: {', '.join(sorted(specs))}[/red]")
        raise typer.Exit(2)
    spec = specs[dataset]
    partitions = demo_partitions(spec, days)
    console.rule(f"Riverbed demo: {dataset}")
    console.print(f"state: {settings.home}   partitions: {partitions[0]} .. {partitions[-1]} ({len(partitions)})")
    try:
        with console.status("ingesting, featurising, training (Optuna) and registering..."):
            run = run_pipeline(
                settings,
                dataset,
                partitions,
                reason=TrainingReason.MANUAL,
                train_config={"optuna_trials": trials} if trials else None,
            )
    except JobFailedError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    _print_summary(run, settings)
    if serve:
        from riverbed.cli.demo_serving import exercise_serving  # pandas (riverbed.sources, ~1.1 s): keeps --help light

        console.rule(f"Serving {dataset}: predictions with explanations, audit log")
        try:
            summary = exercise_serving(settings, spec, console)
        except Exception as error:  # a clear line here; the traceback goes to a file under <home>/logs
            trace = _write_traceback(settings, "demo-serving", error)
            console.print(f"[red]serving failed: {error}[/red] (traceback: {trace}; logs: {settings.home / 'logs'})")
            raise typer.Exit(1) from None
        if not summary.get("chain_ok"):
            raise typer.Exit(1)
    if drift:
        from riverbed.cli.drift_demo import run_drift_demo  # Dagster, the code location (~2 s): only with --drift

        console.rule("Drift scenario: machine_failure over Kafka, monitoring, automatic retraining")
        try:
            run_drift_demo(settings, console)
        except Exception as error:  # a clear line here; the traceback goes to a file under <home>/logs
            trace = _write_traceback(settings, "demo-drift", error)
            console.print(
                f"[red]drift scenario failed: {error}[/red] (traceback: {trace}; state: {settings.home / 'drift-demo'})"
            )
            raise typer.Exit(1) from None
    console.print("[green]demo finished[/green]")
    _print_console_access(settings)


def _print_console_access(settings: RiverbedSettings) -> None:
    """The demo's last lines: the oversight console's URL and a fresh review key for it."""
    from riverbed.cli.demo_serving import print_console_access  # pandas (riverbed.sources): keeps --help light
    from riverbed.inference_log_schema import apply_migrations

    console.rule("Oversight console")
    with serving.inference_log_dsn(settings, role="owner") as dsn:  # the database `riverbed serve` will use
        apply_migrations(dsn)
        # The demo trained before this database ran: the console's Models page reads the catalog, so fill it in.
        from platform_assets.catalog_records import catalogue_registry  # Dagster, MLflow: loaded by the demo already

        catalogue_registry(settings, dsn, sorted(load_specs(settings.specs_dirs)))
        print_console_access(settings, dsn, console)


def _write_traceback(settings: RiverbedSettings, name: str, error: BaseException) -> Path:
    """The error's traceback in ``<home>/logs/<name>-error.log`` (owner-only), for the one-line message to point at."""
    import traceback

    folder = settings.home / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-error.log"
    path.write_text("".join(traceback.format_exception(error)), encoding="utf-8")
    path.chmod(0o600)
    return path


def _print_summary(run: PipelineRun, settings: RiverbedSettings) -> None:
    from platform_assets.environments import build_resources  # Dagster (~2 s): loaded by `demo` already, not --help

    store = build_resources(settings)["data_store"].get_store()
    commits = store.log(store.main_branch, limit=10_000)
    model = run.model

    table = Table("asset", "commit", "rows", "versioning s", title="Versioned writes (pinned commits)")
    for asset, meta in run.materializations.items():
        table.add_row(
            asset,
            str(meta.get("commit_id", ""))[:12],
            str(meta.get("rows", "")),
            str(meta.get("versioning_seconds", "")),
        )
    console.print(table)
    console.print(f"data store: {len(commits)} commits on {store.repository}/{store.main_branch}")

    metrics = Table("metric", "value", title=f"{model.registered_model_name} v{model.version}")
    for key, value in sorted(model.metrics.items()):
        metrics.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(metrics)

    fairness = Table("protected attribute", "demographic parity diff", "equalized odds diff", title="Fairness")
    for attribute, values in model.fairness.items():
        fairness.add_row(
            attribute,
            f"{values.get('demographic_parity_difference', float('nan')):.4f}",
            f"{values.get('equalized_odds_difference', float('nan')):.4f}",
        )
    console.print(fairness)
    console.print(
        f"MLflow run: {model.mlflow_run_id}   model: {model.model_uri}   "
        f"tracking: {settings.resolved_mlflow_tracking_uri}"
    )
    console.print(f"training set: {model.training_set_uri}")
    console.print(f"ingest {run.ingest_seconds:.1f} s, train {run.train_seconds:.1f} s")
    if run.gate_passed is not None:
        verdict = "[green]passed[/green]" if run.gate_passed else "[yellow]kept the champion[/yellow]"
        console.print(f"promotion gate {verdict}: {run.gate_reason}")
    if run.deployment is not None:
        deployed = run.deployment
        previous = f" (previous champion: v{deployed.previous_version})" if deployed.previous_version else ""
        console.print(
            f"champion: {deployed.registered_model_name} v{deployed.version} as {deployed.served_model_name}{previous}"
        )


@app.command()
def dev(port: Annotated[int, typer.Option(help="Dagster UI port.")] = 3000) -> None:
    """Start the Dagster UI (``dagster dev``) over the local state; Ctrl-C stops it."""
    _quiet_environment()
    from platform_assets.runner import prepare_dagster_home  # Dagster + pandas (~2 s): not for `riverbed --help`

    prepare_dagster_home(get_settings())
    command = [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), "-p", str(port)]
    with contextlib.suppress(KeyboardInterrupt):
        subprocess.run(command, check=False, cwd=PROJECT_ROOT)
