"""report_failure: the WARNING line, the count per (component, reason) in PostgreSQL, its bounds (labels,
message size, NUL, timeouts) and the grants of migration 0008 (the pipeline role counts, the gateway reads)."""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest
from psycopg import errors

from riverbed.pipeline_failures import MAX_MESSAGE_CHARS, READ_FAILURES, read_failures, report_failure
from serving.database_roles import provision_login_roles

pytestmark = pytest.mark.timeout(60)

KEY = ("retrain_tiny", "monitoring_query")


def stored(dsn: str) -> list[tuple[str, str, int, str, bool]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "select component, reason, failures, last_message, last_at >= first_at from pipeline_failures "
            "order by component, reason"
        ).fetchall()


def test_each_report_logs_a_warning_and_counts_per_component_and_reason(
    migrated_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    own = logging.getLogger("riverbed.sensors.test")
    assert report_failure(*KEY, "first", dsn=migrated_dsn, log=own) is True
    assert report_failure(*KEY, "second", dsn=migrated_dsn, log=own) is True
    assert report_failure("serving_startup", "registry_unreadable", "other", dsn=migrated_dsn) is True
    assert stored(migrated_dsn) == [
        ("retrain_tiny", "monitoring_query", 2, "second", True),  # the latest message is kept
        ("serving_startup", "registry_unreadable", 1, "other", True),
    ]
    assert read_failures(migrated_dsn) == {KEY: 2, ("serving_startup", "registry_unreadable"): 1}
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("riverbed.sensors.test", logging.WARNING, "retrain_tiny: monitoring_query: first"),
        ("riverbed.sensors.test", logging.WARNING, "retrain_tiny: monitoring_query: second"),
        ("riverbed.pipeline_failures", logging.WARNING, "serving_startup: registry_unreadable: other"),
    ]


def test_concurrent_reports_are_all_counted(migrated_dsn: str) -> None:
    results: list[bool] = []

    def report() -> None:
        for _ in range(5):
            results.append(report_failure(*KEY, "racing", dsn=migrated_dsn))

    threads = [threading.Thread(target=report) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 40
    assert read_failures(migrated_dsn) == {KEY: 40}


def test_nul_is_escaped_and_long_messages_are_cut(migrated_dsn: str) -> None:
    assert report_failure(*KEY, "bad\x00byte", dsn=migrated_dsn)
    assert stored(migrated_dsn)[0][3] == "bad\\u0000byte"
    long = "\x00" * 1500 + "x" * 5000  # escaping makes it longer still: the cut comes after
    assert report_failure(*KEY, long, dsn=migrated_dsn)
    message = stored(migrated_dsn)[0][3]
    assert len(message) == MAX_MESSAGE_CHARS and message.startswith("\\u0000") and "\x00" not in message


@pytest.mark.parametrize(
    ("component", "reason", "field"),
    [
        ("Retrain", "r", "component"),
        ("has space", "r", "component"),
        ("", "r", "component"),
        ("x" * 201, "r", "component"),
        ("c", "grüße", "reason"),
        ("c", "a/b", "reason"),
        ("c", 'x"}', "reason"),
    ],
)
def test_labels_are_validated_naming_the_field(
    component: str, reason: str, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match=rf"^{field} .* is not a metric label: 1-200 characters of a-z, 0-9"):
        report_failure(component, reason, "m", dsn=None)
    assert caplog.records == []  # refused before anything is logged


def test_without_a_database_only_the_warning_remains(unreachable_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    assert report_failure(*KEY, "no dsn configured", dsn=None) is False
    started = time.monotonic()
    assert report_failure(*KEY, "database down", dsn=unreachable_dsn) is False
    assert time.monotonic() - started < 3
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages[:2] == [
        (logging.WARNING, "retrain_tiny: monitoring_query: no dsn configured"),
        (logging.WARNING, "retrain_tiny: monitoring_query: database down"),
    ]
    assert len(messages) == 3 and messages[2][0] == logging.WARNING
    assert messages[2][1].startswith("retrain_tiny: monitoring_query: the failure could not be counted in")
    assert "Connection refused" in messages[2][1]


def test_a_database_without_the_table_does_not_raise(postgres_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    assert report_failure(*KEY, "unmigrated", dsn=postgres_dsn) is False  # pipeline_failures does not exist
    assert 'relation "pipeline_failures" does not exist' in caplog.records[-1].getMessage()


def test_a_locked_row_does_not_hang_the_reporter(migrated_dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    assert report_failure(*KEY, "first", dsn=migrated_dsn)
    with psycopg.connect(migrated_dsn) as holder:  # another session holds the row
        holder.execute("select * from pipeline_failures for update").fetchall()
        started = time.monotonic()
        assert report_failure(*KEY, "blocked", dsn=migrated_dsn, timeout_seconds=1.0) is False
        waited = time.monotonic() - started
    assert 0.9 < waited < 3, waited  # gave up at the lock timeout
    last = caplog.records[-1].getMessage()
    assert "canceling statement due to" in last and 'while locking tuple (0,1) in relation "pipeline_failures"' in last
    assert read_failures(migrated_dsn) == {KEY: 1}


def test_dsn_options_are_kept(migrated_dsn: str) -> None:
    with_options = f"{migrated_dsn} options='-c application_name=riverbed-sensor'"
    assert report_failure(*KEY, "m", dsn=with_options)
    assert read_failures(with_options) == {KEY: 1}


def test_migration_0008_lets_the_pipeline_count_and_the_gateway_and_auditor_read(migrated_dsn: str) -> None:
    roles = provision_login_roles(migrated_dsn, None, roles=["pipeline", "gateway", "auditor"])
    with psycopg.connect(migrated_dsn) as conn:
        owner = conn.execute(
            "select pg_get_userbyid(relowner) from pg_class where relname = 'pipeline_failures'"
        ).fetchone()
    assert owner == ("riverbed_owner",)
    assert report_failure(*KEY, "as the pipeline", dsn=roles["pipeline"]) is True
    assert report_failure(*KEY, "as the pipeline again", dsn=roles["pipeline"]) is True  # the upsert's update
    assert read_failures(migrated_dsn) == {KEY: 2}
    for role in ("gateway", "auditor"):
        with psycopg.connect(roles[role], autocommit=True) as conn:
            assert conn.execute(READ_FAILURES).fetchall() == [("retrain_tiny", "monitoring_query", 2)]
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("insert into pipeline_failures (component, reason) values ('x', 'y')")
        assert report_failure(*KEY, f"as the {role}", dsn=roles[role]) is False  # may read, never count
    with psycopg.connect(roles["pipeline"], autocommit=True) as conn:
        for statement in ("delete from pipeline_failures", "truncate pipeline_failures"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
    assert read_failures(migrated_dsn) == {KEY: 2}
