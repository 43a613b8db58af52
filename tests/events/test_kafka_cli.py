"""`riverbed kafka dev-broker` as a process (a real broker other processes reach) and `riverbed kafka schemas`."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer
from typer.testing import CliRunner

from riverbed.cli import app
from riverbed.settings import PROJECT_ROOT


def test_dev_broker_serves_other_processes_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "RIVERBED_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "riverbed.cli", "kafka", "dev-broker"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address = process.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), address
        recorded = json.loads((tmp_path / "kafka.json").read_text())
        assert recorded["bootstrap_servers"] == address and recorded["pid"] == process.pid

        topic = f"t{uuid.uuid4().hex[:8]}"
        producer = Producer({"bootstrap.servers": address})
        producer.produce(topic, key=b"k", value=b"hello")
        assert producer.flush(10) == 0
        consumer = Consumer({"bootstrap.servers": address, "group.id": "g", "auto.offset.reset": "earliest"})
        consumer.subscribe([topic])
        deadline, value = time.monotonic() + 15, None
        while value is None and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                value = message.value()
        consumer.close()
        assert value == b"hello"
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
    assert code == 0, process.stderr.read()[-2000:]
    assert not (tmp_path / "kafka.json").exists()


def test_schemas_check_reports_the_committed_files_in_sync() -> None:
    result = CliRunner().invoke(app, ["kafka", "schemas", "--check"])
    assert result.exit_code == 0, result.output
