"""Event contracts shared by the producer, the ingestion sensor, the gateway and monitoring.

Topics per dataset (named in :mod:`riverbed.names`): ``<prefix>.<dataset>.raw`` (records as the data
provider sends them), ``.labels``
(true labels arriving later), ``.predictions`` (one event per predicted record, from the gateway) and
``.dlq`` (messages that broke their schema, with the reason). Message values are UTF-8 JSON; keys are the
record's sample id (so one sample's events stay in one partition, in order).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

SAMPLE_ID_FIELD = "sample_id"  # every raw record carries one (the dataset's record id value)
MAX_ID_LENGTH = 200  # sample, request and label event ids; the gateway takes sample ids of this length too
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters (NUL, line breaks, ...)
MAX_RECORD_INDEX = 2**31 - 1  # stored as a PostgreSQL integer

EventId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]


class LabelEvent(BaseModel):
    """A true label for an earlier prediction, matched by sample id or by request id (+ index in a batch).

    A label's identity is (dataset, sample id, request id, record index, ``label_event_id``): the same label
    event published twice (a producer retry, a replay) is stored once, whatever its offsets. Producers set
    ``label_event_id`` (a UUID, or an id derived from what the label is about); without one, consumers take a
    digest of the message's bytes, which a retry repeats exactly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: EventId
    sample_id: EventId | None = None
    request_id: EventId | None = None
    record_index: int = Field(
        default=0, ge=0, le=MAX_RECORD_INDEX, description="Position in the request's batch (with request_id)."
    )
    label: EventId
    labelled_at: dt.datetime = Field(description="When the label was decided, ISO 8601; without an offset, UTC.")
    label_event_id: EventId | None = Field(
        default=None, description="The producer's id of this label event; the same id again is the same label."
    )

    @field_validator("labelled_at", mode="before")
    @classmethod
    def _a_date_time(cls, value: Any) -> Any:
        if not isinstance(value, str | dt.datetime):
            raise ValueError("an ISO 8601 date-time string is required")  # numbers are not taken as epochs
        return value

    @field_validator("labelled_at")
    @classmethod
    def _in_utc(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        try:
            return value.astimezone(dt.UTC)
        except OverflowError:
            raise ValueError(f"{value.isoformat()} is outside the years 1 to 9999 in UTC") from None


class PredictionEvent(BaseModel):
    """One predicted record, published by the gateway after its audit row is committed."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    dataset: str
    request_id: str
    record_index: int
    sample_id: str | None
    event_time: dt.datetime
    model_name: str
    model_version: int
    label: str
    probability: float = Field(description="Probability of the spec's positive class.")


class DeadLetter(BaseModel):
    """What the DLQ holds: the original message and why it was refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str
    partition: int
    offset: int
    key: str | None
    value: str = Field(description="The original value (UTF-8, replacement characters where it was not).")
    reason: str
    refused_at: dt.datetime
