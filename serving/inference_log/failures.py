"""How the writer classifies a failed write: whose fault it is decides between quarantine, retry and spool.

Internal to :mod:`serving.inference_log`.
"""

from __future__ import annotations

import enum

import psycopg

from serving.inference_log.records import AuditWriteError, Durability

# Constraints that fail for every row when the chain head was tampered with: not the rows' fault.
CHAIN_CONSTRAINTS = frozenset(
    {"inference_log_seq_key", "inference_log_prev_hash_check", "inference_log_row_hash_check"}
)
TIMEOUT_STATES = frozenset({"57014", "55P03", "40001", "40P01"})


class Kind(enum.Enum):
    REFUSED = "refused by PostgreSQL"
    TIMEOUT = "timed out alone"
    BUSY = "busy"
    UNAVAILABLE = "unavailable"


class Failure(Exception):
    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class ChainBroken(Exception):
    """The chain head is missing or unusable by this writer (no key for a keyed chain): nothing is written."""


class Unavailable(Exception):
    """A replay cannot go on now (PostgreSQL unavailable, or a refused row could not be quarantined anywhere)."""


Outcome = Durability | AuditWriteError


class Halted(Exception):
    """Writing stopped at ``rows[index]``: ``outcomes`` are those of ``rows[:index]``; the rest is not written."""

    def __init__(self, index: int, failure: Failure, outcomes: list[Outcome]) -> None:
        super().__init__(failure.message)
        self.index = index
        self.failure = failure
        self.outcomes = outcomes


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip().rstrip(":")


def classify(error: BaseException, phase: str) -> Kind:
    """What a failure of the write transaction in ``phase`` (connect/head/existing/insert/commit) means."""
    if isinstance(error, ChainBroken):
        return Kind.UNAVAILABLE
    if isinstance(error, TimeoutError):  # the writer's own deadline: the connection is closed, nothing committed...
        if phase == "head":
            return Kind.BUSY
        if phase in ("connect", "commit"):  # ...unless COMMIT was sent: its outcome is unknown (the spool is safe)
            return Kind.UNAVAILABLE
        return Kind.TIMEOUT
    if not isinstance(error, psycopg.Error) or not error.sqlstate or phase == "connect":
        return Kind.UNAVAILABLE  # connection refused / lost, OSError
    state = error.sqlstate
    if state in TIMEOUT_STATES:
        return Kind.BUSY if phase == "head" else Kind.TIMEOUT
    if phase == "head":
        return Kind.UNAVAILABLE
    if state.startswith("23"):
        return Kind.UNAVAILABLE if error.diag.constraint_name in CHAIN_CONSTRAINTS else Kind.REFUSED
    if state[:2] in ("22", "54") or state in ("XX000", "53200"):  # data exception, program limit, alloc failures
        return Kind.REFUSED
    return Kind.UNAVAILABLE  # shutdown (57P), connection (08), disk full (53100), undefined table (42P01), ...
