"""The Prometheus alert rules and the Alertmanager routing in ``deploy/``, checked by the tools that run them.

``promtool test rules`` runs the unit tests beside the rules (every rule has a firing and a not-firing case, which
this module enforces), ``promtool check`` validates the rules and the production scrape configuration, ``amtool
check-config`` the Alertmanager configuration. The programs come from Debian packages (:mod:`tests.deploy.
system_tools`: a failure under CI when missing, a loud skip elsewhere).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from riverbed.specs import DatasetSpec
from serving.gateway.metrics import GatewayMetrics
from tests.deploy import system_tools
from tests.deploy.system_tools import require_tool
from tests.serving.gateway_fixtures import salary_band_spec

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_YAML = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "riverbed.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "rules" / "riverbed.rules.test.yml"
ALERTMANAGER_YAML = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"

pytestmark = pytest.mark.timeout(120)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=60)


# --- the rules as files ------------------------------------------------------------------------------------------


def test_every_rule_names_its_severity_and_explains_itself() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    assert set(names) == {
        "RiverbedFeatureDriftPersisting",
        "RiverbedEstimatedPerformanceBelowThreshold",
        "RiverbedRealisedPerformanceBelowThreshold",
        "RiverbedGatewayDown",
        "RiverbedGateway5xxRatioHigh",
        "RiverbedGatewayP99LatencyHigh",
        "RiverbedAuditLogDegraded",
        "RiverbedAuditLogStalled",
        "RiverbedAuditSpoolGrowing",
        "RiverbedAuditQuarantineGrowing",
        "RiverbedPipelineFailuresIncreasing",
        "RiverbedGatewayMetricsStale",
        "RiverbedDeadLettersIncreasing",
        "RiverbedIngestionLagHigh",
        "RiverbedDagsterRunsFailed",
        "RiverbedSensorTicksFailing",
        "RiverbedPipelineExporterDown",
        "RiverbedPipelineExporterFailing",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
    by_name = {rule["alert"]: rule for rule in rules}
    drift = by_name["RiverbedFeatureDriftPersisting"]
    for text in drift["annotations"].values():  # the alert says which dataset and feature drift
        assert "{{ $labels.dataset }}" in text and "{{ $labels.feature }}" in text


def test_every_rule_has_a_firing_and_a_not_firing_unit_test() -> None:
    cases: dict[str, dict[str, int]] = {}
    for group in load(RULE_TESTS)["tests"]:
        for case in group["alert_rule_test"]:
            kind = "firing" if case.get("exp_alerts") else "not_firing"
            counts = cases.setdefault(case["alertname"], {"firing": 0, "not_firing": 0})
            counts[kind] += 1
    names = {rule["alert"] for rule in alert_rules()}
    assert set(cases) == names, f"rules without unit tests: {sorted(names - set(cases))}"
    for name, counts in cases.items():
        assert counts["firing"] >= 1 and counts["not_firing"] >= 1, f"{name}: {counts}"


def test_prometheus_loads_the_rules_and_sends_to_alertmanager() -> None:
    config = load(PROMETHEUS_YAML)
    patterns = config["rule_files"]
    assert [p for p in patterns if RULES in (PROMETHEUS_DIR).glob(p)] == patterns
    assert RULE_TESTS not in {path for p in patterns for path in PROMETHEUS_DIR.glob(p)}  # not loaded as rules
    targets = [t for am in config["alerting"]["alertmanagers"] for s in am["static_configs"] for t in s["targets"]]
    assert targets == ["alertmanager:9093"]


def test_alertmanager_groups_by_alert_and_dataset_and_sends_to_the_webhook() -> None:
    config = load(ALERTMANAGER_YAML)
    assert config["route"]["group_by"] == ["alertname", "dataset"]
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    assert set(receivers) == {config["route"]["receiver"]}
    [webhook] = receivers[config["route"]["receiver"]]["webhook_configs"]
    # a compose service name (replaced from RIVERBED_ALERT_WEBHOOK_URL at start), never a machine's address
    assert webhook["url"] == "http://alert-webhook:8080/riverbed"


# --- the tools ---------------------------------------------------------------------------------------------------


def test_promtool_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_catch_a_changed_rule(tmp_path: Path) -> None:
    """The unit tests pin the rules: the drift rule waiting 40 minutes instead of 30 fails them."""
    promtool = require_tool("promtool")
    text = RULES.read_text()
    assert text.count("for: 30m") == 1
    (tmp_path / RULES.name).write_text(text.replace("for: 30m", "for: 40m"))
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = run(promtool, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    report = result.stdout + result.stderr  # promtool reports the failed cases on stderr
    assert "alertname: RiverbedFeatureDriftPersisting, time: 35m" in report
    assert report.count("alertname: ") == 1, report  # only the changed rule's firing case fails


def test_promtool_checks_rules_and_config() -> None:
    promtool = require_tool("promtool")
    rules = run(promtool, "check", "rules", RULES, cwd=PROMETHEUS_DIR)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in rules.stdout
    config = run(promtool, "check", "config", PROMETHEUS_YAML.name, cwd=PROMETHEUS_DIR)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout


def test_amtool_checks_the_alertmanager_config() -> None:
    amtool = require_tool("amtool")
    result = run(amtool, "check-config", ALERTMANAGER_YAML, cwd=ALERTMANAGER_YAML.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and " - 1 receivers" in result.stdout


# --- what the performance rules compare with ---------------------------------------------------------------------


class _IdleAudit:
    spool_depth = 0
    degraded = unavailable = replaying = stalled = False
    quarantined = 0
    checkpoint_error = None


def test_the_gateway_exports_each_specs_performance_threshold() -> None:
    base = salary_band_spec()
    guarded = base.model_copy(
        update={"retraining": base.retraining.model_copy(update={"min_performance": 0.8, "performance_metric": "f1"})}
    )
    unguarded = base.model_copy(update={"name": "other_band"})
    assert unguarded.retraining.min_performance is None
    specs: dict[str, DatasetSpec] = {"salary_band": guarded, "other_band": unguarded}
    registry: CollectorRegistry = GatewayMetrics(_IdleAudit(), specs=specs).registry
    name = "riverbed_monitoring_performance_threshold"
    assert registry.get_sample_value(name, {"dataset": "salary_band", "metric": "f1"}) == 0.8
    assert [s for m in registry.collect() if m.name == name for s in m.samples] == [
        s for m in registry.collect() if m.name == name for s in m.samples if s.labels["dataset"] == "salary_band"
    ]  # a spec without min_performance exports no threshold
    assert len([s for m in registry.collect() if m.name == name for s in m.samples]) == 1


# --- what a missing program does -----------------------------------------------------------------------------------


def test_a_missing_program_fails_under_ci_and_skips_loudly_elsewhere(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shutil, "which", lambda program: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"promtool is not installed \(Debian package prometheus\)"):
        require_tool("promtool")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=r"NOT RUN: amtool is not installed .*make system-packages"):
        require_tool("amtool")
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == system_tools.__name__] == [
        (
            "WARNING",
            "SKIPPED: amtool is not installed (Debian package prometheus-alertmanager): run `make system-packages` "
            "as root, or `apt-get install prometheus-alertmanager`",
        )
    ]
