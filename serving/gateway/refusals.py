"""Unauthenticated floods: how many unauthenticated refusals become inference-log rows.

Every predict request is recorded, but a client without a valid key could otherwise make the gateway write
(and hash-chain) one row per request as fast as it can send them. So the rows of unauthenticated refusals (the
401s of the predict and oversight routes, and refused console logins, which are answered by a redirect to the
login form or an error page) pass a token bucket, one per gateway process, refilled at the setting
``unauthenticated_log_per_second`` (its burst is one second's worth, at least one row; ``0`` logs no such row at
all). A refusal beyond the bucket is still answered as it would be, but it is not recorded as a row: it is counted
in the Prometheus counter ``riverbed_gateway_unlogged_refusals_total{reason}`` (``reason`` is ``missing_key``,
``invalid_key`` or ``expired_key``, or ``console_<code>`` for a login) and reported by a WARNING at most once per
second, which says how many refusals went unlogged since the previous one, per reason and per answer given (the
route and the status, e.g. ``answered 401 on POST /v1/<dataset>/predict`` or ``answered 303 to /console/login?reason=...
on POST /console/login``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable

from prometheus_client import Counter

logger = logging.getLogger(__name__)

WARNING_INTERVAL_SECONDS = 1.0
# The answer of a refusal whose caller names none: the predict routes' 401 (serving/gateway/routes/predict.py).
PREDICT_ANSWER = "401 on POST /v1/<dataset>/predict"


class RefusalLogLimiter:
    """Token bucket deciding whether an unauthenticated refusal is logged as a row (see the module docstring)."""

    def __init__(self, per_second: float, unlogged: Counter, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = max(0.0, per_second)
        self.capacity = max(1.0, self.rate) if self.rate > 0 else 0.0
        self._tokens = self.capacity
        self._clock = clock
        self._updated = clock()
        self._unlogged = unlogged
        self._pending: Tally[tuple[str, str]] = Tally()
        self._warned = float("-inf")

    def admit(self, reason: str, *, answered: str = PREDICT_ANSWER) -> bool:
        """True if this refusal may be logged as a row; False (counted, warned about) if the bucket is empty.

        ``answered`` names the answer the refusal gets (status and route), for the WARNING."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self._unlogged.labels(reason).inc()
        self._pending[(reason, answered)] += 1
        if now - self._warned >= WARNING_INTERVAL_SECONDS:
            counts = ", ".join(
                f"{count} {name} (answered {answer})" for (name, answer), count in sorted(self._pending.items())
            )
            logger.warning(
                "unauthenticated requests beyond %.4g per second: refusals not logged as rows: %s",
                self.rate,
                counts,
            )
            self._pending.clear()
            self._warned = now
        return False
