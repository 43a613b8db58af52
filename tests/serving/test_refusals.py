"""The unauthenticated-refusal row limiter (serving/gateway/refusals.py): its bucket, its counter, and a WARNING
that names the answer each unlogged refusal got (predict 401s and console logins share the bucket)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, Counter

from serving.gateway.refusals import PREDICT_ANSWER, RefusalLogLimiter


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_refusals_beyond_the_bucket_are_counted_and_the_warning_names_route_and_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    unlogged = Counter("unlogged_refusals", "test", ["reason"], registry=registry)
    clock = _Clock()
    limiter = RefusalLogLimiter(1, unlogged, clock=clock)
    login = "303 to /console/login?reason=invalid_key on POST /console/login"
    with caplog.at_level(logging.WARNING, logger="serving.gateway.refusals"):
        assert limiter.admit("missing_key") is True  # the burst: one row
        assert limiter.admit("missing_key") is False
        clock.now += 0.5  # within the warning interval: counted, warned about later
        assert limiter.admit("console_invalid_key", answered=login) is False
        assert limiter.admit("console_invalid_key", answered=login) is False
        clock.now += 0.4  # 0.9 tokens: still empty
        assert limiter.admit("missing_key") is False
        clock.now += 0.6  # a token again, and the warning interval has passed
        assert limiter.admit("missing_key") is True
        clock.now += 0.5
        assert limiter.admit("console_invalid_key", answered=login) is False
    assert registry.get_sample_value("unlogged_refusals_total", {"reason": "missing_key"}) == 2.0
    assert registry.get_sample_value("unlogged_refusals_total", {"reason": "console_invalid_key"}) == 3.0
    warnings = [record.getMessage() for record in caplog.records]
    assert warnings == [
        "unauthenticated requests beyond 1 per second: refusals not logged as rows: "
        f"1 missing_key (answered {PREDICT_ANSWER})",
        "unauthenticated requests beyond 1 per second: refusals not logged as rows: "
        f"3 console_invalid_key (answered {login}), 1 missing_key (answered 401 on POST /v1/<dataset>/predict)",
    ]
    assert all("answered 401 but" not in message for message in warnings)


def test_a_zero_rate_logs_no_refusal_row() -> None:
    registry = CollectorRegistry()
    limiter = RefusalLogLimiter(0, Counter("unlogged", "test", ["reason"], registry=registry), clock=_Clock())
    assert [limiter.admit("invalid_key") for _ in range(3)] == [False, False, False]
    assert registry.get_sample_value("unlogged_total", {"reason": "invalid_key"}) == 3.0
