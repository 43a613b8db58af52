"""Static checks of the production stack in ``deploy/``.

No Docker engine runs where the tests run, so the compose file, the Dockerfiles, the Dagster instance and
workspace, the Prometheus, Alertmanager and Grafana configuration and the dashboards are checked as files: they
parse, they agree with each other and with the code (settings, ``dg.EnvVar`` names, dependency groups, the metric
names the code exports), and no credential has a default. Where the Compose plugin is installed, ``docker compose
config`` checks the compose file too, and where promtool is, it parses every dashboard query.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from riverbed.settings import Environment, RiverbedSettings
from tests.deploy.system_tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
DAGSTER_YAML = DEPLOY / "dagster.yaml"
WORKSPACE_YAML = DEPLOY / "workspace.yaml"
PROMETHEUS_YAML = DEPLOY / "prometheus" / "prometheus.yml"
RULES_DIR = DEPLOY / "prometheus" / "rules"
ALERTMANAGER_YAML = DEPLOY / "alertmanager" / "alertmanager.yml"
GRAFANA = DEPLOY / "grafana"
GRAFANA_DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "riverbed.yml"
DASHBOARD_BUILDER = GRAFANA / "dashboards.py"
DASHBOARD_DIR = GRAFANA / "dashboards"
# The packages whose prometheus_client metrics a dashboard or an alert rule may use.
METRIC_SOURCES = ("riverbed", "serving", "sensors", "monitoring", "platform_assets", "resources")
INIT_SQL = DEPLOY / "postgres" / "init.sql"
ROLES_SCRIPT = DEPLOY / "postgres" / "20-riverbed-roles.sh"
MIGRATION_0006 = ROOT / "riverbed" / "inference_log_schema" / "0006_api_key_expiry_and_roles.sql"
ENVIRONMENTS_PY = ROOT / "platform_assets" / "environments.py"
DOCKERFILES = sorted(p for p in DEPLOY.glob("Dockerfile.*") if p.suffix != ".dockerignore")

EXPECTED_SERVICES = {
    "postgres",
    "inference-log-migrate",
    "minio",
    "minio-init",
    "lakefs",
    "mlflow",
    "code-location",
    "dagster-webserver",
    "dagster-daemon",
    "kafka",
    "mlserver",
    "gateway",
    "prometheus",
    "alertmanager",
    "grafana",
    "pipeline-exporter",
}
STATEFUL_SERVICES = {"postgres", "minio", "lakefs", "mlflow", "kafka"}
DAGSTER_SERVICES = ("code-location", "dagster-webserver", "dagster-daemon")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY")
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

# What each image must and must not contain, by the dependency groups its Dockerfile syncs.
IMAGE_CONTENTS = {
    "Dockerfile.platform": (
        {
            "dagster",
            "dagster-webserver",
            "mlflow",
            "lakefs",
            "boto3",
            "nannyml",
            "confluent-kafka",
            # the `deploy` group: DockerRunLauncher, PostgreSQL instance storage and its driver
            "dagster-docker",
            "dagster-postgres",
            "psycopg2-binary",
        },
        {"mlserver", "pytest", "ruff", "grafana-foundation-sdk"},
    ),
    "Dockerfile.serving": (
        {"mlserver", "fastapi", "uvicorn", "psycopg", "xgboost", "confluent-kafka"},
        {"dagster", "dagster-webserver", "mlflow", "nannyml", "pytest", "ruff", "dagster-docker", "psycopg2-binary"},
    ),
}


# --- helpers ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interpolation:
    """One ``$VAR`` / ``${VAR<op><arg>}`` in a compose string; ``operator`` is "" for a bare reference."""

    name: str
    operator: str
    argument: str


_BRACED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", re.DOTALL)
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolations(text: str) -> list[Interpolation]:
    """Compose's variable references in ``text`` (``$$`` is an escaped dollar, not a reference)."""
    found: list[Interpolation] = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            i += 1
            continue
        following = text[i + 1 : i + 2]
        if following == "$":
            i += 2
        elif following == "{":
            end = text.find("}", i)
            assert end != -1, f"unterminated interpolation in {text!r}"
            body = text[i + 2 : end]
            match = _BRACED.fullmatch(body)
            assert match is not None and "${" not in (match[3] or ""), f"unparseable interpolation ${{{body}}}"
            found.append(Interpolation(match[1], match[2] or "", match[3] or ""))
            i = end + 1
        elif bare := _BARE.match(text, i + 1):
            found.append(Interpolation(bare[0], "", ""))
            i = bare.end()
        else:
            i += 1
    return found


def walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(key)
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def command_flag(command: list[str], flag: str) -> str:
    """The value of ``--flag=value`` (or ``--flag value``) in an exec-form command."""
    for index, token in enumerate(command):
        if token.startswith(f"{flag}="):
            return token.split("=", 1)[1]
        if token == flag:
            return command[index + 1]
    raise AssertionError(f"{flag} not in {command}")


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, arguments = line.strip().partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(arguments))
    return env


def uv_commands(path: Path, subcommand: str) -> list[list[str]]:
    """Every ``uv <subcommand> ...`` inside the Dockerfile's RUN instructions, as argument lists."""
    commands = []
    for keyword, arguments in dockerfile_instructions(path):
        if keyword != "RUN":
            continue
        for part in re.split(r"&&|;", arguments):
            tokens = [token for token in shlex.split(part) if not token.startswith("--mount=")]
            if tokens[:2] == ["uv", subcommand]:
                commands.append(tokens)
    return commands


def group_flags(tokens: list[str]) -> list[str]:
    return [tokens[i + 1] for i, token in enumerate(tokens[:-1]) if token == "--group"]


def image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def env_var_names_in_environments_py() -> set[str]:
    """The string names passed to ``dg.EnvVar(...)`` / ``EnvVar(...)`` in platform_assets/environments.py."""
    names = set()
    for node in ast.walk(ast.parse(ENVIRONMENTS_PY.read_text())):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called == "EnvVar" and node.args and isinstance(node.args[0], ast.Constant):
            names.add(node.args[0].value)
    return names


def env_refs(node: Any) -> set[str]:
    """Names read through Dagster's ``{env: NAME}`` config form."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(env_refs(item) for item in node))
    return set()


# --- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def compose_interpolations(compose: dict[str, Any]) -> list[Interpolation]:
    return [found for text in walk_strings(compose) for found in interpolations(text)]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(ENV_EXAMPLE.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S+", line), f".env.example line {number} is not NAME=value: {raw!r}"
        name, value = line.split("=", 1)
        assert name not in values, f"{name} is listed twice in .env.example"
        values[name] = value
    return values


@pytest.fixture(scope="module")
def dagster_instance() -> dict[str, Any]:
    return load_yaml(DAGSTER_YAML)


@pytest.fixture(scope="module")
def launcher_env_vars(dagster_instance: dict[str, Any]) -> list[str]:
    return dagster_instance["run_launcher"]["config"]["env_vars"]


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- YAML and compose structure ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses_to_a_mapping(path: Path) -> None:
    assert isinstance(load_yaml(path), dict), f"{path} does not parse to a mapping"


def test_yaml_files_exist() -> None:
    for path in (COMPOSE_FILE, DAGSTER_YAML, WORKSPACE_YAML, PROMETHEUS_YAML, INIT_SQL, ENV_EXAMPLE):
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"
    assert {p.name for p in DOCKERFILES} == set(IMAGE_CONTENTS)


def test_compose_has_the_expected_services(services: dict[str, Any]) -> None:
    missing = EXPECTED_SERVICES - set(services)
    assert not missing, f"services missing from docker-compose.yml: {sorted(missing)}"


def test_every_image_is_pinned(services: dict[str, Any], env_example: dict[str, str]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name} has no image name"
        resolved = re.sub(r"\$\{([A-Z0-9_]+)[^}]*\}", lambda m: env_example.get(m[1], ""), image)
        tag = image_tag(resolved)
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned to a tag"
        if "build" not in service:
            assert "$" not in image, f"{name}: third-party image {image!r} must be pinned in the file"


def test_dockerfile_base_images_are_pinned() -> None:
    for dockerfile in DOCKERFILES:
        for keyword, arguments in dockerfile_instructions(dockerfile):
            images = []
            if keyword == "FROM":
                images.append(next(t for t in arguments.split() if not t.startswith("--")))
            elif keyword == "COPY" and "--from=" in arguments:
                images.append(re.search(r"--from=(\S+)", arguments)[1])
            for image in images:
                tag = image_tag(image)
                assert tag and tag != "latest", f"{dockerfile.name}: {image!r} is not pinned"


def test_published_ports_bind_to_loopback(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port!r} on every interface"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith(("/", ".", "~")):
                continue
            assert source in declared, f"{name} mounts undeclared volume {source!r}"


def test_bind_mounted_files_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"


# --- variables and secrets ----------------------------------------------------------------------------------


def test_env_example_lists_exactly_the_compose_variables(
    compose_interpolations: list[Interpolation], env_example: dict[str, str]
) -> None:
    used = {found.name for found in compose_interpolations}
    assert used - set(env_example) == set(), f"used in compose, missing from .env.example: {used - set(env_example)}"
    assert set(env_example) - used == set(), f"in .env.example, unused by compose: {set(env_example) - used}"


def test_every_variable_is_braced(compose_interpolations: list[Interpolation]) -> None:
    bare = sorted({found.name for found in compose_interpolations if found.operator == ""})
    assert not bare, f"use ${{VAR:?...}} (or $$ for the container's shell), not bare/unchecked: {bare}"


def test_secret_variables_are_required_not_defaulted(compose_interpolations: list[Interpolation]) -> None:
    secrets = [found for found in compose_interpolations if SECRET_NAME.search(found.name)]
    assert secrets, "no secret variables found: the pattern or the parser is broken"
    for found in secrets:
        assert found.operator == ":?", f"{found.name} must use ${{{found.name}:?message}}, not {found.operator!r}"
        assert "deploy/.env" in found.argument, f"{found.name}'s error should say to set it in deploy/.env"


def test_env_example_secrets_are_placeholders(env_example: dict[str, str]) -> None:
    for name, value in env_example.items():
        if SECRET_NAME.search(name):
            assert value == "change-me", f"{name} in .env.example must be the placeholder change-me, not {value!r}"


def url_credentials(value: str) -> list[tuple[str, str]]:
    """(user, password) of every URL in ``value``, each compose variable replaced by ``$VAR`` first (their error
    messages contain slashes, which would otherwise hide the userinfo from the pattern)."""
    flattened = re.sub(r"\$\{([A-Z0-9_]+)[^}]*\}", r"$\1", value)
    return [(m[1], m[2]) for m in re.finditer(r"://([^/@:\s]*):([^/@\s]*)@", flattened)]


def test_credentials_in_compose_come_only_from_variables(services: dict[str, Any]) -> None:
    urls = 0
    for name, service in services.items():
        for key, value in service_env(service).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", value), f"{name}.{key} is not a required variable"
            for user, password in url_credentials(value):
                urls += 1
                assert re.fullmatch(r"\$[A-Z0-9_]+", password), f"{name}.{key} embeds a literal password in {value!r}"
                assert SECRET_NAME.search(password), f"{name}.{key}: the password variable {password} looks public"
                # A user is a variable or one of the role names the init scripts create (not a secret).
                assert re.fullmatch(r"\$[A-Z0-9_]+|riverbed_[a-z_]+", user), f"{name}.{key}: odd user {user!r}"
    assert urls >= 5, "no database URLs found: the pattern or the compose file is broken"


# --- database roles ------------------------------------------------------------------------------------------


def database_logins(services: dict[str, Any]) -> dict[str, set[tuple[str, str, str]]]:
    """Per service, the (user, password variable, database) of every PostgreSQL login it is given."""
    logins: dict[str, set[tuple[str, str, str]]] = {}
    for name, service in services.items():
        env = service_env(service)
        found = set()
        for value in env.values():
            flattened = re.sub(r"\$\{([A-Z0-9_]+)[^}]*\}", r"$\1", value)
            for m in re.finditer(r"://([^/@:\s]+):\$([A-Z0-9_]+)@postgres:5432/(\w+)", flattened):
                found.add((m[1], m[2], m[3]))
        if "DAGSTER_POSTGRES_USER" in env:
            password = re.fullmatch(r"\$\{([A-Z0-9_]+):\?[^}]*\}", env["DAGSTER_POSTGRES_PASSWORD"])
            assert password, "DAGSTER_POSTGRES_PASSWORD must be a required variable"
            found.add((env["DAGSTER_POSTGRES_USER"], password[1], env["DAGSTER_POSTGRES_DB"]))
        if found:
            logins[name] = found
    return logins


def test_no_service_but_postgres_knows_the_superuser(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name == "postgres":
            continue
        used = {found.name for text in walk_strings(service) for found in interpolations(text)}
        assert not used & {"POSTGRES_USER", "POSTGRES_PASSWORD"}, f"{name} receives PostgreSQL's superuser"


def test_each_service_logs_in_as_its_own_role(services: dict[str, Any]) -> None:
    from serving.database_roles import LOGIN_ROLES

    logins = database_logins(services)
    expected = {
        "gateway": {("riverbed_gateway_login", "inference_log")},
        "inference-log-migrate": {("riverbed_owner_login", "inference_log")},
        "mlflow": {("riverbed_mlflow", "mlflow")},
        "lakefs": {("riverbed_lakefs", "lakefs")},
    }
    for name in DAGSTER_SERVICES:  # storage in `dagster`, and the inference log as the pipeline
        expected[name] = {("riverbed_dagster", "dagster"), ("riverbed_pipeline_login", "inference_log")}
    expected["pipeline-exporter"] = {("riverbed_dagster", "dagster")}  # reads runs, ticks and cursors only
    assert {name: {(user, db) for user, _, db in found} for name, found in logins.items()} == expected
    assert LOGIN_ROLES["gateway"] == "riverbed_gateway_login" and LOGIN_ROLES["pipeline"] == "riverbed_pipeline_login"
    assert LOGIN_ROLES["owner"] == "riverbed_owner_login"
    # One password variable per role, never shared between two roles.
    by_user = {user: password for found in logins.values() for user, password, _ in found}
    assert len(set(by_user.values())) == len(by_user), by_user


def test_roles_script_creates_every_login_with_its_password_from_the_environment(services: dict[str, Any]) -> None:
    script = ROLES_SCRIPT.read_text()
    getenv = dict(re.findall(r"^\\getenv (\w+) ([A-Z0-9_]+)$", script, re.MULTILINE))
    passwords = dict(re.findall(r"^alter role (\w+) with login[^;]* password :'(\w+)';$", script, re.MULTILINE))
    assert not re.search(r"password\s+'", script, re.IGNORECASE), "a literal password in the roles script"
    postgres_env = service_env(services["postgres"])
    for found in database_logins(services).values():
        for user, variable, _ in found:
            assert user in passwords, f"{ROLES_SCRIPT.name} never creates {user}"
            assert getenv[passwords[user]] == variable, f"{user}: compose uses ${variable}, the script another"
            assert postgres_env.get(variable) == f"${{{variable}:?set {variable} in deploy/.env}}", (
                f"the postgres service must pass {variable} to the roles script"
            )
            assert variable in script.split("\npsql ", 1)[0], f"the script must refuse to run without {variable}"
    mounts = services["postgres"]["volumes"]
    assert "./postgres/20-riverbed-roles.sh:/docker-entrypoint-initdb.d/20-riverbed-roles.sh:ro" in mounts
    assert os.access(ROLES_SCRIPT, os.X_OK), "the entrypoint runs an executable script in a subshell"


def test_roles_script_groups_match_the_migration_and_the_code() -> None:
    from serving.database_roles import GROUP_ROLES, LOGIN_ROLES

    script = ROLES_SCRIPT.read_text()
    migration = MIGRATION_0006.read_text()
    for role, group in GROUP_ROLES.items():
        assert f"'{group}'" in migration, f"migration 0006 does not create {group}"
        assert f"'{group}'" in script and f"grant {group} to {LOGIN_ROLES[role]};" in script
    assert "alter role riverbed_owner_login set role = 'riverbed_owner';" in script
    owners = dict(re.findall(r"^alter database (\w+) owner to (\w+);$", script, re.MULTILINE))
    assert owners == {
        "inference_log": "riverbed_owner",
        "dagster": "riverbed_dagster",
        "mlflow": "riverbed_mlflow",
        "lakefs": "riverbed_lakefs",
    }
    assert set(owners) == set(re.findall(r"CREATE DATABASE (\w+);", INIT_SQL.read_text()))


def test_schema_is_migrated_as_the_owner_before_anyone_uses_it(services: dict[str, Any]) -> None:
    import importlib

    migrate = services["inference-log-migrate"]
    assert migrate["restart"] == "no" and migrate["image"] == services["gateway"]["image"]
    module = migrate["command"][migrate["command"].index("-m") + 1]
    assert callable(importlib.import_module(module).main)
    assert migrate["command"][-1] == "migrate"
    for name in ("gateway", "code-location"):
        condition = services[name]["depends_on"]["inference-log-migrate"]["condition"]
        assert condition == "service_completed_successfully", f"{name} must wait for the migrations"


# --- Dagster wiring ---------------------------------------------------------------------------------------------


def test_environments_py_env_var_names_are_found() -> None:
    names = env_var_names_in_environments_py()
    assert "RIVERBED_LAKEFS_SECRET_ACCESS_KEY" in names, names
    assert all(name.startswith("RIVERBED_") for name in names), names


def test_code_location_gets_every_env_var_the_resources_read(services: dict[str, Any]) -> None:
    env = service_env(services["code-location"])
    for name in env_var_names_in_environments_py():
        assert env.get(name), f"code-location does not set {name} (read by platform_assets/environments.py)"
    assert Environment(env["RIVERBED_ENV"]).uses_real_services


def test_run_launcher_forwards_every_env_var_the_resources_read(launcher_env_vars: list[str]) -> None:
    missing = (env_var_names_in_environments_py() | {"RIVERBED_ENV"}) - set(launcher_env_vars)
    assert not missing, f"deploy/dagster.yaml's run launcher does not forward {sorted(missing)}"


def test_run_workers_see_what_the_code_location_sees(services: dict[str, Any], launcher_env_vars: list[str]) -> None:
    code_location = set(service_env(services["code-location"])) - {"DAGSTER_CURRENT_IMAGE"}
    assert set(launcher_env_vars) == code_location


def test_launching_processes_have_every_forwarded_variable(
    services: dict[str, Any], launcher_env_vars: list[str]
) -> None:
    for service in ("dagster-daemon", "dagster-webserver"):
        env = service_env(services[service])
        for name in launcher_env_vars:
            assert "=" in name or env.get(name), f"{service} lacks {name}, which the run launcher forwards"


def test_riverbed_variables_are_settings_fields(services: dict[str, Any]) -> None:
    known = {f"RIVERBED_{field.upper()}" for field in RiverbedSettings.model_fields}
    for name, service in services.items():
        for key in service_env(service):
            if key.startswith("RIVERBED_"):
                assert key in known, f"{name}.{key} is not a RiverbedSettings field (typo?)"


def test_dagster_storage_env_refs_are_provided(
    dagster_instance: dict[str, Any], services: dict[str, Any], launcher_env_vars: list[str]
) -> None:
    refs = env_refs(dagster_instance)
    assert {"DAGSTER_POSTGRES_PASSWORD", "DAGSTER_POSTGRES_USER"} <= refs
    for name in refs:
        assert name in launcher_env_vars, f"run containers need {name} for the instance but it is not forwarded"
        for service in DAGSTER_SERVICES:
            assert service_env(services[service]).get(name), f"{service} does not set {name}"


def test_dagster_instance_config_is_valid() -> None:
    from dagster._config import validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.run_coordinator import QueuedRunCoordinator

    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert "postgres" in config["storage"]
    assert config["telemetry"] == {"enabled": False}
    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    checked = validate_config(QueuedRunCoordinator.config_type(), coordinator["config"])
    assert checked.success, checked.errors
    assert coordinator["config"]["max_concurrent_runs"] > 0


def test_run_launcher_matches_the_compose_network_and_volume(
    dagster_instance: dict[str, Any], compose: dict[str, Any], services: dict[str, Any]
) -> None:
    launcher = dagster_instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    assert launcher["config"]["network"] == compose["networks"]["default"]["name"]

    volumes_by_name = {spec.get("name", key): key for key, spec in compose["volumes"].items() if spec}
    mounts = {}
    for mount in launcher["config"]["container_kwargs"]["volumes"]:
        volume_name, target = mount.split(":")[:2]
        assert volume_name in volumes_by_name, f"run containers mount {volume_name}, not a named compose volume"
        mounts[target] = volumes_by_name[volume_name]
    # Compute logs: the webserver reads what run containers write.
    logs = dagster_instance["compute_logs"]["config"]["base_dir"]
    assert logs in mounts, "run containers must mount the compute-log directory"
    assert f"{mounts[logs]}:{logs}" in services["dagster-webserver"]["volumes"], "webserver must see the same volume"
    # Models: the deployment asset (in a run container) writes where MLServer reads.
    repository = service_env(services["code-location"])["RIVERBED_MODEL_REPOSITORY"]
    assert repository in mounts, "run containers must mount the model repository the deployment asset writes"
    mlserver_mounts = [v.split(" ")[0] for v in services["mlserver"]["volumes"]]
    assert f"{mounts[repository]}:{repository}:ro" in mlserver_mounts, "MLServer must see the same volume, read-only"


def test_gateway_and_mlserver_share_the_model_repository(services: dict[str, Any]) -> None:
    gateway, mlserver = services["gateway"], services["mlserver"]
    env = service_env(gateway)
    repository = env["RIVERBED_MODEL_REPOSITORY"]
    assert repository == service_env(services["code-location"])["RIVERBED_MODEL_REPOSITORY"]
    mlserver_volume = next(m.split(":")[0] for m in mlserver["volumes"] if m.split(":")[1] == "/models")
    assert mlserver["image"] == gateway["image"], "the gateway runs on the serving image"
    assert any(m.split(":")[:2] == [mlserver_volume, repository] for m in gateway["volumes"])
    assert env["RIVERBED_MLSERVER_URL"] == service_env(services["code-location"])["RIVERBED_MLSERVER_URL"]
    assert env["RIVERBED_MLSERVER_URL"].startswith("http://mlserver:")
    assert env["RIVERBED_INFERENCE_LOG_DSN"].endswith("@postgres:5432/inference_log")
    spool = env["RIVERBED_AUDIT_SPOOL_DIR"]
    assert any(spool.startswith(m.split(":")[1] + "/") for m in gateway["volumes"]), "the spool must be on a volume"


def test_gateway_command_names_the_app_factory(services: dict[str, Any]) -> None:
    import importlib

    command = services["gateway"]["command"]
    assert command[0] == "uvicorn" and "--factory" in command
    module_name, attribute = command[1].split(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    assert callable(factory)
    port = command_flag(command, "--port")
    assert any(p.endswith(f":{port}") for p in services["gateway"]["ports"])
    config = load_yaml(PROMETHEUS_YAML)
    targets = {t for job in config["scrape_configs"] for st in job["static_configs"] for t in st["targets"]}
    assert f"gateway:{port}" in targets, "prometheus must scrape the gateway's /metrics"


_BLOCK_PLATFORM_PACKAGES = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"dagster", "mlflow", "optuna", "nannyml", "lakefs", "lakefs_sdk"}:
            raise ImportError(f"{name} is not in the serving image")
sys.meta_path.insert(0, Block())
import serving.gateway.main, serving.runtime
from typer.testing import CliRunner
from riverbed.cli import app
result = CliRunner().invoke(app, ["apikey", "create", "--help"])
assert result.exit_code == 0, result.output
"""


def test_serving_image_code_imports_without_the_platform_packages() -> None:
    """The serving image has no Dagster or MLflow: the gateway, the runtime and `riverbed apikey` must not need them."""
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_PLATFORM_PACKAGES], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_run_image_is_the_code_location_image(services: dict[str, Any]) -> None:
    code_location = services["code-location"]
    assert service_env(code_location)["DAGSTER_CURRENT_IMAGE"] == code_location["image"]


def test_launching_services_can_reach_the_docker_socket(services: dict[str, Any]) -> None:
    for name in ("dagster-daemon", "dagster-webserver"):
        assert "/var/run/docker.sock:/var/run/docker.sock" in services[name]["volumes"], name
        assert services[name].get("group_add"), f"{name} runs as non-root and needs the socket's group"


def test_workspace_points_at_the_code_location_server(services: dict[str, Any]) -> None:
    (entry,) = load_yaml(WORKSPACE_YAML)["load_from"]
    server = entry["grpc_server"]
    command = services["code-location"]["command"]
    assert server["host"] == "code-location" and server["host"] in services
    assert str(server["port"]) == command_flag(command, "--port")
    assert server["location_name"] == command_flag(command, "--location-name")
    assert command_flag(command, "--module-name") == "platform_assets.definitions"
    assert command_flag(command, "--attribute") == "defs"


def test_dagster_processes_use_the_baked_in_workspace_and_home(services: dict[str, Any]) -> None:
    dagster_home = dockerfile_env(DEPLOY / "Dockerfile.platform")["DAGSTER_HOME"]
    copies = [
        arguments for keyword, arguments in dockerfile_instructions(DEPLOY / "Dockerfile.platform") if keyword == "COPY"
    ]
    assert any("deploy/dagster.yaml" in c and "deploy/workspace.yaml" in c and dagster_home in c for c in copies)
    for name in ("dagster-webserver", "dagster-daemon"):
        assert command_flag(services[name]["command"], "--workspace") == f"{dagster_home}/workspace.yaml"


# --- dependencies between services ---------------------------------------------------------------------------


def test_stateful_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name in STATEFUL_SERVICES:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no healthcheck"


def test_depends_on_references_are_sound(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: use the long depends_on form with a condition"
        for target, spec in depends_on.items():
            assert target in services, f"{name} depends on unknown service {target!r}"
            condition = spec.get("condition")
            assert condition in DEPENDS_ON_CONDITIONS, f"{name} -> {target}: bad condition {condition!r}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy; it has no check"
            if condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is one-shot; it must not restart"


def test_services_wait_for_the_stateful_services_they_use(services: dict[str, Any]) -> None:
    def waits_for(name: str, target: str) -> bool:
        return services[name].get("depends_on", {}).get(target, {}).get("condition") == "service_healthy"

    for name in ("lakefs", "mlflow", "code-location", "dagster-webserver", "dagster-daemon"):
        assert waits_for(name, "postgres"), f"{name} must wait for postgres to be healthy"
    for name in ("lakefs", "mlflow"):
        assert waits_for("code-location", name), f"code-location must wait for {name}"


def test_minio_init_creates_every_bucket_in_use(services: dict[str, Any]) -> None:
    script = "\n".join(services["minio-init"]["command"])
    (make_buckets,) = [line for line in script.splitlines() if line.strip().startswith("mc mb")]
    created = {token.split("/", 1)[1] for token in shlex.split(make_buckets) if "/" in token}

    env = service_env(services["code-location"])
    needed = {
        env["RIVERBED_S3_BUCKET"],
        re.match(r"s3://([^/]+)", env["RIVERBED_LAKEFS_STORAGE_NAMESPACE"])[1],
        re.match(r"s3://([^/]+)", command_flag(services["mlflow"]["command"], "--artifacts-destination"))[1],
    }
    assert needed <= created, f"buckets used but not created by minio-init: {needed - created}"


def test_every_database_in_use_is_created_by_init_sql(services: dict[str, Any]) -> None:
    created = set(re.findall(r"CREATE DATABASE (\w+);", INIT_SQL.read_text()))
    used = set()
    for service in services.values():
        env = service_env(service)
        used.update(db for value in env.values() for db in re.findall(r"@postgres:5432/(\w+)", value))
        used.update({env["DAGSTER_POSTGRES_DB"]} if "DAGSTER_POSTGRES_DB" in env else set())
    assert {"dagster", "mlflow", "lakefs"} <= used, used
    used.add("inference_log")  # the gateway's audit log (serving issue)
    assert used <= created, f"databases used but not created in init.sql: {used - created}"
    mounts = services["postgres"]["volumes"]
    assert "./postgres/init.sql:/docker-entrypoint-initdb.d/10-riverbed-databases.sql:ro" in mounts


def test_prometheus_scrapes_compose_services(services: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_YAML)
    targets = {
        job["job_name"]: target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    for job, target in targets.items():
        host = target.rsplit(":", 1)[0]
        assert host == "localhost" or host in services, f"prometheus job {job} scrapes unknown host {host}"
    assert targets["mlserver"] == f"mlserver:{dockerfile_env(DEPLOY / 'Dockerfile.serving')['MLSERVER_METRICS_PORT']}"


# --- Dockerfiles -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copy_sources_exist_and_reach_the_build_context(dockerfile: Path) -> None:
    ignore_file = dockerfile.with_name(f"{dockerfile.name}.dockerignore")
    ignore_lines = [line for line in ignore_file.read_text().splitlines() if line and not line.startswith("#")]
    assert ignore_lines[0] == "**", "the ignore file is an allowlist: everything excluded, then re-included"
    allowed = {line[1:].rstrip("/") for line in ignore_lines if line.startswith("!")}

    copied = 0
    for keyword, arguments in dockerfile_instructions(dockerfile):
        if keyword != "COPY" or "--from=" in arguments:
            continue
        tokens = [token for token in shlex.split(arguments) if not token.startswith("--")]
        for source in tokens[:-1]:
            source = source.rstrip("/")
            assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repository"
            assert source in allowed, f"{source} is excluded from the build context by {ignore_file.name}"
            copied += 1
    assert copied, f"no COPY found in {dockerfile.name}"


def test_compose_builds_use_existing_dockerfiles(services: dict[str, Any]) -> None:
    built = set()
    for name, service in services.items():
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == ROOT, f"{name} must build from the repository root"
            dockerfile = context / service["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name} builds from missing {dockerfile}"
            built.add(dockerfile.name)
    assert built == set(IMAGE_CONTENTS)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_dependency_groups_exist_and_defaults_are_off(dockerfile: Path, pyproject: dict[str, Any]) -> None:
    groups = set(pyproject["dependency-groups"])
    syncs = uv_commands(dockerfile, "sync") + uv_commands(dockerfile, "export")
    assert syncs, f"{dockerfile.name} never runs uv sync"
    assert len({tuple(sorted(group_flags(tokens))) for tokens in syncs}) == 1, "every uv step must name the same groups"
    for tokens in syncs:
        assert "--frozen" in tokens, f"{dockerfile.name}: {' '.join(tokens)} must not re-resolve the lock"
        named = group_flags(tokens)
        assert named and set(named) <= groups, f"{dockerfile.name}: unknown groups {set(named) - groups}"
        if pyproject["tool"]["uv"].get("default-groups"):
            assert "--no-default-groups" in tokens, f"{dockerfile.name}: default groups would add {tokens}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_contents_follow_the_lock(dockerfile: Path) -> None:
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not on PATH")
    (sync,) = [tokens for tokens in uv_commands(dockerfile, "sync") if "--no-install-project" in tokens]
    groups = [arg for group in group_flags(sync) for arg in ("--group", group)]
    exported = subprocess.run(
        [uv, "export", "--frozen", "--no-default-groups", *groups, "--no-hashes", "--no-emit-project"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    packages = {m[1].lower() for m in re.finditer(r"^([A-Za-z0-9_.-]+)==", exported, re.MULTILINE)}
    must, must_not = IMAGE_CONTENTS[dockerfile.name]
    assert must <= packages, f"{dockerfile.name} lacks {must - packages}"
    assert not must_not & packages, f"{dockerfile.name} would contain {must_not & packages}"


def locked_packages() -> dict[str, dict[str, Any]]:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {package["name"]: package for package in lock["package"]}


def test_deploy_only_libraries_are_a_locked_dependency_group(
    pyproject: dict[str, Any], dagster_instance: dict[str, Any]
) -> None:
    deploy = pyproject["dependency-groups"]["deploy"]
    named = {re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower() for requirement in deploy}
    launcher = dagster_instance["run_launcher"]["module"].replace("_", "-")
    assert {"dagster-docker", "psycopg2-binary", launcher} <= named, named
    assert "deploy" not in pyproject["tool"]["uv"]["default-groups"], "production-only: never in a local sync"
    # dagster-postgres also backs `riverbed up` locally, so it is in the (default) platform group, which the
    # platform image installs as well.
    platform = pyproject["dependency-groups"]["platform"]
    assert "dagster-postgres" in {re.match(r"[A-Za-z0-9_.-]+", r)[0].lower() for r in platform}
    assert "platform" in pyproject["tool"]["uv"]["default-groups"]
    locked = locked_packages()
    assert {"dagster-docker", "dagster-postgres", "psycopg2-binary"} <= set(locked)
    # The Dagster libraries are released in step with dagster: 1.13.N pairs with 0.29.N.
    core = locked["dagster"]["version"].split(".")
    for library in ("dagster-docker", "dagster-postgres"):
        version = locked[library]["version"].split(".")
        assert version[0] == "0" and int(version[1]) == int(core[1]) + 16 and version[2] == core[2], (
            f"{library} {locked[library]['version']} was not built for dagster {locked['dagster']['version']}"
        )


def test_platform_image_installs_the_deploy_group_from_the_lock() -> None:
    for tokens in uv_commands(DEPLOY / "Dockerfile.platform", "sync"):
        assert "deploy" in group_flags(tokens), f"{' '.join(tokens)} leaves out the deploy group"


_INSTALLERS = (["pip"], ["pip3"], ["uv", "pip"], ["uv", "add"], ["uv", "tool"], ["uvx"], ["pipx"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_nothing_outside_the_lock(dockerfile: Path) -> None:
    """Python packages come only from ``uv sync --frozen`` (exactly the lock); no pip, no unpinned installs."""
    runs = [arguments for keyword, arguments in dockerfile_instructions(dockerfile) if keyword == "RUN"]
    assert runs, f"{dockerfile.name} has no RUN"
    for arguments in runs:
        for part in re.split(r"&&|\|\||;|\|", arguments):
            tokens = [token for token in shlex.split(part) if not token.startswith("--mount=")]
            if tokens[:2] == ["python", "-m"] or tokens[:2] == ["python3", "-m"]:
                tokens = tokens[2:]
            for installer in _INSTALLERS:
                assert tokens[: len(installer)] != installer, f"{dockerfile.name} installs outside the lock: {part}"
            if tokens[:2] == ["uv", "sync"]:
                assert "--frozen" in tokens, f"{dockerfile.name}: {part} may re-resolve"
            assert not re.search(r"\b(apt-get|apk)\b.*\binstall\b.*\bpython3?-", part), f"distro Python package: {part}"


def test_postgres_urls_name_the_driver_the_platform_image_installs(
    dagster_instance: dict[str, Any], services: dict[str, Any], pyproject: dict[str, Any]
) -> None:
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the platform image has psycopg2 (the deploy group).
    assert any(requirement.startswith("psycopg2-binary") for requirement in pyproject["dependency-groups"]["deploy"])
    assert dagster_instance["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert service_env(services["mlflow"])["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_non_root_with_telemetry_off(dockerfile: Path) -> None:
    instructions = dockerfile_instructions(dockerfile)
    users = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, f"{dockerfile.name} must end as a non-root user"
    env = dockerfile_env(dockerfile)
    assert env.get("MLFLOW_DISABLE_TELEMETRY") == "true"
    assert env.get("NML_DISABLE_USAGE_LOGGING") == "1"
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11-slim")


def test_platform_image_sets_dagster_home() -> None:
    env = dockerfile_env(DEPLOY / "Dockerfile.platform")
    assert env["DAGSTER_HOME"] == "/opt/dagster/home"
    assert env["DAGSTER_DISABLE_TELEMETRY"] == "true"


# --- docker compose itself, where it exists ------------------------------------------------------------------


def _compose_plugin() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return docker if version.returncode == 0 else None


@pytest.mark.skipif(_compose_plugin() is None, reason="the docker CLI's compose plugin is not installed")
def test_docker_compose_config_accepts_the_file(tmp_path: Path, env_example: dict[str, str]) -> None:
    docker = _compose_plugin()
    assert docker is not None
    filled = tmp_path / "filled.env"
    values = {name: ("1000" if name == "DOCKER_GID" else f"test-{name.lower()}") for name in env_example}
    filled.write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    accepted = subprocess.run(
        [docker, "compose", "--env-file", str(filled), "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert accepted.returncode == 0, accepted.stderr

    missing = dict(values)
    missing.pop("POSTGRES_PASSWORD")
    partial = tmp_path / "partial.env"
    partial.write_text("".join(f"{name}={value}\n" for name, value in missing.items()))
    refused = subprocess.run(
        [docker, "compose", "--env-file", str(partial), "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        env={name: value for name, value in os.environ.items() if name not in env_example},
    )
    assert refused.returncode != 0 and "POSTGRES_PASSWORD" in refused.stderr


# --- health and resources ----------------------------------------------------------------------------------------


def test_gateway_healthcheck_is_readiness(services: dict[str, Any]) -> None:
    """Healthy means serving: /readyz (MLServer live, the inference log answering), not /healthz (process up)."""
    from serving.gateway.routes.health import router

    gateway = services["gateway"]
    port = command_flag(gateway["command"], "--port")
    test = " ".join(gateway["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/readyz" in test, test
    assert "/readyz" in {getattr(route, "path", None) for route in router.routes}, "the gateway has no /readyz route"


_MEMORY = re.compile(r"(\d+(?:\.\d+)?)([mg])")


def test_every_service_has_cpu_and_memory_limits(services: dict[str, Any]) -> None:
    total_memory_gb = 0.0
    for name, service in services.items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert set(limits) >= {"cpus", "memory"}, f"{name} has no deploy.resources.limits cpus and memory"
        cpus = float(limits["cpus"])
        assert 0.1 <= cpus <= 4, f"{name}: cpus {cpus} is not a sensible limit for one service"
        memory = _MEMORY.fullmatch(str(limits["memory"]))
        assert memory, f"{name}: memory {limits['memory']!r} is not <number>m or <number>g"
        gigabytes = float(memory[1]) / (1024 if memory[2] == "m" else 1)
        assert 0.0625 <= gigabytes <= 8, f"{name}: memory limit {limits['memory']} is not sensible for one service"
        total_memory_gb += gigabytes
    # The header of docker-compose.yml states the sum (with the run containers) for a 32 GB host.
    assert 16 <= total_memory_gb <= 18, f"the services' memory limits add up to {total_memory_gb:.1f} GB"


def test_run_containers_have_limits_too(dagster_instance: dict[str, Any]) -> None:
    kwargs = dagster_instance["run_launcher"]["config"]["container_kwargs"]
    assert _MEMORY.fullmatch(str(kwargs["mem_limit"])), kwargs
    assert isinstance(kwargs["nano_cpus"], int) and 10**8 <= kwargs["nano_cpus"] <= 4 * 10**9, kwargs


# --- Prometheus, Alertmanager and Grafana against compose ----------------------------------------------------------


def listening_ports(service: dict[str, Any]) -> set[int]:
    """Container ports a service listens on, as far as its compose entry says: published container ports,
    ``--port`` / ``--*listen-address`` flags, ``*_PORT`` and ``*LISTEN_ADDRESS`` variables."""
    ports = {int(str(spec).rsplit(":", 1)[1].split("/")[0]) for spec in service.get("ports", [])}
    command = service.get("command") or []
    words = shlex.split(command) if isinstance(command, str) else [w for part in command for w in shlex.split(part)]
    for word in words:
        if match := re.fullmatch(r"--(?:port|[a-z.]*listen-address)=(?:\S*:)?(\d+)", word):
            ports.add(int(match[1]))
    for key, value in service_env(service).items():
        if key.endswith("_PORT") and value.isdigit():
            ports.add(int(value))
        elif key.endswith("LISTEN_ADDRESS") and (match := re.search(r":(\d+)$", value)):
            ports.add(int(match[1]))
    return ports


def test_listening_ports_are_found(services: dict[str, Any]) -> None:
    assert listening_ports(services["gateway"]) == {8000}
    assert listening_ports(services["lakefs"]) >= {8000}
    assert 9093 in listening_ports(services["alertmanager"])


def prometheus_targets(section: list[dict[str, Any]]) -> list[str]:
    return [target for entry in section for static in entry["static_configs"] for target in static["targets"]]


def test_every_scrape_target_is_a_port_a_compose_service_listens_on(services: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_YAML)
    extra_ports = {"mlserver": {int(dockerfile_env(DEPLOY / "Dockerfile.serving")["MLSERVER_METRICS_PORT"])}}
    scraped = set()
    for job in config["scrape_configs"]:
        for target in prometheus_targets([job]):
            host, port = target.rsplit(":", 1)
            if host == "localhost":  # Prometheus itself
                assert int(port) in listening_ports(services["prometheus"]) | {9090}, target
                continue
            assert host in services, f"job {job['job_name']} scrapes {host}, which is not a compose service"
            known = listening_ports(services[host]) | extra_ports.get(host, set())
            assert int(port) in known, f"job {job['job_name']} scrapes {target}; {host} listens on {sorted(known)}"
            scraped.add(host)
    assert {"gateway", "mlserver", "lakefs", "pipeline-exporter"} <= scraped, f"services not scraped: {scraped}"


def test_the_pipeline_exporter_is_served_scraped_and_checked_on_one_port(services: dict[str, Any]) -> None:
    """The compose service runs the real command on the platform image, Prometheus scrapes it under the job the
    alert rules name, its healthcheck asks the route the command serves, and it reads the Dagster instance and the
    Kafka the pipeline uses."""
    from typer.main import get_command

    from riverbed.cli import app

    exporter = services["pipeline-exporter"]
    assert exporter["image"] == services["code-location"]["image"], "the exporter needs Dagster: the platform image"
    command = exporter["command"]
    assert command[:2] == ["riverbed", "pipeline-exporter"]
    cli = get_command(app)
    assert "pipeline-exporter" in cli.commands  # type: ignore[attr-defined]
    options = {option for param in cli.commands["pipeline-exporter"].params for option in param.opts}  # type: ignore[attr-defined]
    assert {word.split("=", 1)[0] for word in command[2:]} <= options, command
    port = int(command_flag(command, "--port"))
    assert command_flag(command, "--host") == "0.0.0.0"
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(exporter["healthcheck"]["test"])
    (job,) = [job for job in load_yaml(PROMETHEUS_YAML)["scrape_configs"] if job["job_name"] == "exporter"]
    assert prometheus_targets([job]) == [f"pipeline-exporter:{port}"]
    assert 'up{job="exporter"}' in (RULES_DIR / "riverbed.rules.yml").read_text(), "the down alert names the job"
    env, platform = service_env(exporter), service_env(services["code-location"])
    for name in ("DAGSTER_POSTGRES_HOST", "DAGSTER_POSTGRES_DB", "DAGSTER_POSTGRES_USER", "DAGSTER_POSTGRES_PASSWORD"):
        assert env[name] == platform[name], f"the exporter must read the instance the Dagster services write ({name})"
    assert env["RIVERBED_KAFKA_BOOTSTRAP_SERVERS"] == platform["RIVERBED_KAFKA_BOOTSTRAP_SERVERS"]
    for target in ("postgres", "kafka"):
        assert exporter["depends_on"][target]["condition"] == "service_healthy"


def test_prometheus_sends_alerts_to_the_alertmanager_service(services: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_YAML)
    targets = prometheus_targets(config["alerting"]["alertmanagers"])
    assert targets, "prometheus.yml sends alerts nowhere"
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host == "alertmanager" and int(port) in listening_ports(services["alertmanager"]), target
    assert services["prometheus"]["depends_on"]["alertmanager"]["condition"] == "service_healthy"


def test_prometheus_loads_the_mounted_rules(services: dict[str, Any]) -> None:
    mounts = services["prometheus"]["volumes"]
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in mounts
    config_mount = next(m for m in mounts if m.startswith("./prometheus/prometheus.yml:"))
    config_dir = Path(config_mount.split(":")[1]).parent
    rule_files = load_yaml(PROMETHEUS_YAML)["rule_files"]
    assert rule_files, "prometheus.yml loads no rules"
    matched = set()
    for pattern in rule_files:
        in_container = config_dir / pattern if not pattern.startswith("/") else Path(pattern)
        relative = in_container.relative_to("/etc/prometheus/rules")  # raises when outside the mounted directory
        matched |= set(RULES_DIR.glob(str(relative)))
    assert matched, f"rule_files {rule_files} match no file in {RULES_DIR.relative_to(ROOT)}"


def test_alertmanager_reads_the_mounted_configuration(services: dict[str, Any]) -> None:
    service = services["alertmanager"]
    assert "./alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in service["volumes"]
    script = service["command"][0]
    assert "/etc/alertmanager/alertmanager.yml" in script and "--config.file=" in script
    # The placeholder the entrypoint replaces is the one the configuration names.
    placeholder = re.search(r"s\|([^|]+)\|", script)[1]
    assert placeholder in ALERTMANAGER_YAML.read_text(), f"{placeholder} is not in {ALERTMANAGER_YAML.name}"


def test_alertmanager_entrypoint_substitutes_the_webhook_url(tmp_path: Path, services: dict[str, Any]) -> None:
    """The entrypoint's shell script, run here on the real file: the URL arrives intact, even with sed's
    special characters, and amtool accepts the result where it is installed."""
    script = services["alertmanager"]["command"][0].replace("$$", "$")
    rendered = tmp_path / "alertmanager.yml"
    script = script.replace(" /etc/alertmanager/alertmanager.yml ", f" {ALERTMANAGER_YAML} ")
    script = script.replace("> /alertmanager/alertmanager.yml", f"> {rendered}")
    script = script.replace("exec /bin/alertmanager", "exit 0; exec /bin/alertmanager")
    url = "https://hooks.example.com/services/T0|B1?token=a&b=\\1"
    subprocess.run(["sh", "-c", script], env={"ALERT_WEBHOOK_URL": url, "PATH": os.environ["PATH"]}, check=True)
    receivers = load_yaml(rendered)["receivers"]
    urls = [hook["url"] for receiver in receivers for hook in receiver.get("webhook_configs", [])]
    assert urls and set(urls) == {url}, urls
    if shutil.which("amtool"):
        checked = subprocess.run(["amtool", "check-config", str(rendered)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_grafana_is_provisioned_from_deploy(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in grafana["volumes"]}
    assert mounts["./grafana/provisioning/datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts["./grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    assert all(m.endswith(":ro") for m in grafana["volumes"] if m.startswith("./")), "provisioning is read-only"
    (provider,) = load_yaml(GRAFANA_PROVIDERS)["providers"]
    assert provider["options"]["path"] == mounts["./grafana/dashboards"], "the provider reads the mounted dashboards"
    assert provider["allowUiUpdates"] is False
    env = service_env(grafana)
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD in deploy/.env}"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_grafana_datasource_is_the_prometheus_service(services: dict[str, Any]) -> None:
    (source,) = load_yaml(GRAFANA_DATASOURCES)["datasources"]
    host, port = re.fullmatch(r"http://([a-z-]+):(\d+)", source["url"]).groups()
    assert host == "prometheus" and int(port) in listening_ports(services["prometheus"]) | {9090}
    assert source["type"] == "prometheus" and source["uid"] == builder().DATASOURCE.uid
    scrape_interval = load_yaml(PROMETHEUS_YAML)["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape_interval


# --- dashboards and metric names ---------------------------------------------------------------------------------


@functools.cache
def builder() -> ModuleType:
    """deploy/grafana/dashboards.py, loaded by path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("riverbed_deploy_dashboards", DASHBOARD_BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def dashboard_queries(dashboards: dict[str, dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(file, panel title, PromQL) of every target of every panel."""
    return [
        (name, panel["title"], target["expr"])
        for name, dashboard in dashboards.items()
        for panel in panels(dashboard)
        for target in panel["targets"]
    ]


def test_committed_dashboards_are_what_the_builder_generates(dashboards: dict[str, dict[str, Any]]) -> None:
    rendered = builder().render()
    assert set(rendered) == set(dashboards), "deploy/grafana/dashboards/ differs from the builder's list"
    for name, text in rendered.items():
        assert (DASHBOARD_DIR / name).read_text() == text, f"{name} is stale: run `make dashboards`"


def test_dashboards_are_well_formed(dashboards: dict[str, dict[str, Any]]) -> None:
    assert set(dashboards) == {"serving.json", "model-quality.json", "pipeline.json"}
    uids = [dashboard["uid"] for dashboard in dashboards.values()]
    assert len(set(uids)) == len(uids) and all(uid.startswith("riverbed-") for uid in uids)
    datasource = builder().DATASOURCE.uid
    for name, dashboard in dashboards.items():
        assert panels(dashboard), f"{name} has no panel"
        for panel in panels(dashboard):
            assert panel["title"] and panel.get("description"), f"{name}: a panel lacks a title or description"
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in [panel, *panel["targets"]]:
                assert target["datasource"] == {"type": "prometheus", "uid": datasource}, f"{name}: {panel['title']}"
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids), f"{name}: {panel['title']} repeats a refId"


def series_names(expr: str) -> set[str]:
    """The ``riverbed_*`` series an expression reads (quoted strings, i.e. label values, removed first)."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    return set(re.findall(r"\briverbed_[a-zA-Z0-9_]*", unquoted))


def test_series_names_are_found() -> None:
    assert series_names('sum(rate(riverbed_a_total{route="riverbed_not_a_metric"}[5m])) / riverbed_b') == {
        "riverbed_a_total",
        "riverbed_b",
    }


_SERIES_OF_TYPE = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}
_CONSTRUCTOR_TYPES = {
    "Counter": "counter",
    "CounterMetricFamily": "counter",
    "Gauge": "gauge",
    "GaugeMetricFamily": "gauge",
    "Histogram": "histogram",
    "HistogramMetricFamily": "histogram",
    "Summary": "summary",
    "SummaryMetricFamily": "summary",
    "Info": "info",
    "InfoMetricFamily": "info",
}


def _metric_definitions_in_source() -> dict[str, str]:
    """Metric name -> type of every prometheus_client metric created with a literal name in the project's
    packages (``Counter("riverbed_x", ...)``, ``CounterMetricFamily("riverbed_x", ...)``)."""
    found: dict[str, str] = {}
    for package in METRIC_SOURCES:
        for path in (ROOT / package).rglob("*.py"):
            source = path.read_text()
            if "prometheus_client" not in source:
                continue
            for node in ast.walk(ast.parse(source)):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                first = node.args[0]
                if called in _CONSTRUCTOR_TYPES and isinstance(first, ast.Constant) and isinstance(first.value, str):
                    name = first.value
                    kind = _CONSTRUCTOR_TYPES[called]
                    found[name.removesuffix("_total") if kind == "counter" else name] = kind
    return found


def _gateway_registry_definitions() -> dict[str, str]:
    """Metric name -> type of everything the gateway's registry holds (names built in loops included)."""
    from types import SimpleNamespace

    from serving.gateway.metrics import GatewayMetrics

    audit = SimpleNamespace(
        spool_depth=0,
        degraded=False,
        unavailable=False,
        replaying=False,
        stalled=False,
        quarantined=0,
        checkpoint_error=None,
    )
    metrics = GatewayMetrics(audit, key_listener=lambda: True)
    return {family.name: family.type for family in metrics.registry.collect()}


@pytest.fixture(scope="module")
def exported_series() -> set[str]:
    definitions = _metric_definitions_in_source() | _gateway_registry_definitions()
    assert {"riverbed_gateway_requests", "riverbed_audit_degraded", "riverbed_pipeline_failures"} <= set(definitions)
    return {name + suffix for name, kind in definitions.items() for suffix in _SERIES_OF_TYPE[kind]}


def alert_rule_queries() -> list[tuple[str, str, str]]:
    """(file, alert or record name, PromQL) of every rule under deploy/prometheus/rules/ (unit tests excluded)."""
    found = []
    for path in sorted(RULES_DIR.glob("*.yml")):
        document = load_yaml(path)
        for group in document.get("groups", []):  # the promtool unit tests (*.test.yml) have none
            for rule in group["rules"]:
                found.append((path.name, rule.get("alert") or rule.get("record"), str(rule["expr"])))
    return found


def test_dashboards_read_only_exported_metrics(
    dashboards: dict[str, dict[str, Any]], exported_series: set[str]
) -> None:
    queries = dashboard_queries(dashboards)
    assert len(queries) >= 20, queries
    for name, title, expr in queries:
        used = series_names(expr)
        assert used, f"{name}: {title} reads no riverbed_* metric: {expr}"
        assert used <= exported_series, f"{name}: {title} reads {sorted(used - exported_series)}, exported nowhere"


def test_alert_rules_read_only_exported_metrics(exported_series: set[str]) -> None:
    rules = alert_rule_queries()
    assert rules, f"no alert rule found under {RULES_DIR.relative_to(ROOT)}"
    for name, alert, expr in rules:
        used = series_names(expr)
        assert used <= exported_series, f"{name}: {alert} reads {sorted(used - exported_series)}, exported nowhere"


def test_dashboards_cover_what_people_look_at(dashboards: dict[str, dict[str, Any]]) -> None:
    read: dict[str, set[str]] = {}
    for name, _, expr in dashboard_queries(dashboards):
        read.setdefault(name, set()).update(series_names(expr))
    assert read["serving.json"] >= {
        "riverbed_gateway_requests_total",
        "riverbed_gateway_request_seconds_bucket",
        "riverbed_audit_degraded",
        "riverbed_audit_unavailable",
        "riverbed_audit_spool_depth",
        "riverbed_audit_quarantined",
    }
    assert read["model-quality.json"] >= {
        "riverbed_monitoring_drift",
        "riverbed_monitoring_estimated_performance",
        "riverbed_monitoring_realised_performance",
        "riverbed_predictions_total",
    }
    assert read["pipeline.json"] >= {
        "riverbed_pipeline_failures_total",
        "riverbed_ingestion_lag_records",
        "riverbed_kafka_dead_letters_total",
        "riverbed_dagster_runs_total",
        "riverbed_dagster_ticks_last_hour",
        "riverbed_dagster_tick_failures_consecutive",
        "riverbed_pipeline_exporter_collect_errors_total",
    }
    exprs = [expr for _, _, expr in dashboard_queries(dashboards)]
    assert any("histogram_quantile(0.99" in e for e in exprs) and any("histogram_quantile(0.5" in e for e in exprs)
    assert any('status=~"5.."' in e for e in exprs)


def test_dashboard_queries_parse(tmp_path: Path, dashboards: dict[str, dict[str, Any]]) -> None:
    """promtool parses each query (as a recording rule); a typo in PromQL fails here, not in front of people."""
    promtool = require_tool("promtool")
    rules = [
        {"record": f"riverbed_dashboard_check:{index}", "expr": expr}
        for index, (_, _, expr) in enumerate(dashboard_queries(dashboards))
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    checked = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(rules)} rules found" in checked.stdout, checked.stdout
