"""``riverbed pipeline-exporter``: the pipeline's metrics Dagster does not export, served for Prometheus.

``GET /metrics`` reads the Dagster instance and Kafka at each scrape (bounded: see
:mod:`platform_assets.pipeline_metrics` for the metrics and the time limit); ``GET /healthz`` answers 200 while the
process serves, with the state of the last read of each source. The instance is ``--dagster-home`` (else
``DAGSTER_HOME``, else ``<RIVERBED_HOME>/dagster``, the one ``riverbed dev`` uses); its ``dagster.yaml`` picks the
storage (PostgreSQL under ``riverbed up`` and in production). Kafka and the datasets come from settings.
SIGTERM or Ctrl-C stops it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from riverbed.kafka_config import client_config
from riverbed.settings import RiverbedSettings, get_settings
from riverbed.specs import load_specs

if TYPE_CHECKING:
    from platform_assets.pipeline_metrics import PipelineMetrics

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 3.0


def dagster_home(option: Path | None, settings: RiverbedSettings) -> Path:
    """``--dagster-home``, else ``DAGSTER_HOME``, else the local instance of ``riverbed dev``."""
    if option is not None:
        return option.expanduser().resolve()
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"]).expanduser().resolve()
    return settings.dagster_home


def build_metrics(settings: RiverbedSettings, home: Path, timeout_seconds: float) -> PipelineMetrics:
    """The collector over the instance in ``home``, Kafka from ``settings`` and every dataset spec."""
    from dagster import DagsterInstance  # ~2 s: not on `riverbed --help`

    from platform_assets.pipeline_metrics import PipelineMetrics

    return PipelineMetrics(
        sorted(load_specs(settings.specs_dirs)),
        lambda: DagsterInstance.from_config(str(home)),
        lambda: client_config(settings),
        topic_prefix=settings.kafka_topic_prefix,
        timeout_seconds=timeout_seconds,
    )


def make_server(host: str, port: int, metrics: PipelineMetrics) -> ThreadingHTTPServer:
    """An HTTP server answering ``/metrics`` and ``/healthz`` (anything else is 404)."""
    registry = CollectorRegistry()
    registry.register(metrics)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/healthz":
                sources = {name: source.failing or "ok" for name, source in metrics.sources.items()}
                body = json.dumps({"status": "ok", "sources": sources}).encode()
                self._send(200, "application/json", body)
            else:
                self._send(404, "application/json", json.dumps({"detail": f"no route {path[:200]!r}"}).encode())

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # http.server's signature
            logger.debug("%s " + format, self.address_string(), *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def pipeline_exporter(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    dagster_home_dir: Annotated[
        Path | None,
        typer.Option("--dagster-home", help="Dagster instance directory (default: DAGSTER_HOME, else <home>/dagster)."),
    ] = None,
    timeout_seconds: Annotated[
        float, typer.Option(min=0.1, max=60, help="Longest a scrape waits for Dagster and Kafka.")
    ] = DEFAULT_TIMEOUT_SECONDS,
) -> None:
    """Serve Dagster runs and ticks, Kafka ingestion lag and dead letters on /metrics for Prometheus."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "true")
    settings = get_settings()
    home = dagster_home(dagster_home_dir, settings)
    if not home.is_dir():
        typer.echo(f"no Dagster instance at {home}: pass --dagster-home or set DAGSTER_HOME", err=True)
        raise typer.Exit(2)
    metrics = build_metrics(settings, home, timeout_seconds)
    # One read before serving: opening the instance (and checking its schema) and the Kafka client is done here, not
    # in Prometheus' first scrape. A source that is down is counted and logged like at any scrape; serving starts.
    list(metrics.collect())
    try:
        server = make_server(host, port, metrics)
    except OSError as error:
        typer.echo(f"cannot listen on {host}:{port}: {error}", err=True)
        raise typer.Exit(1) from None

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown() waits for serve_forever

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    typer.echo(f"pipeline exporter on http://{host}:{server.server_address[1]}/metrics (Dagster instance {home})")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register(app: typer.Typer) -> None:
    """Add ``pipeline-exporter`` to the ``riverbed`` command."""
    app.command("pipeline-exporter")(pipeline_exporter)
