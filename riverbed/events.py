"""Event contracts shared by the producer, the ingestion sensor, the gateway and monitoring.

Topics per dataset (named in :mod:`riverbed.names`): ``<prefix>.<dataset>.raw`` (records as the data
provider sends them), ``.labels``
(true labels arriving later), ``.predictions`` (one event per predicted record, from the gateway) and
``.dlq`` (messages that broke their schema, with the reason). Message values are UTF-8 JSON; keys are the
record's sample id (so one sample's events stay in one partition, in order).
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field

SAMPLE_ID_FIELD = "sample_id"  # every raw record carries one (the dataset's record id value)


class LabelEvent(BaseModel):
    """A true label for an earlier prediction, matched by sample id or by request id (+ index in a batch)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    sample_id: str | None = None
    request_id: str | None = None
    record_index: int = Field(default=0, ge=0, description="Position in the request's batch (with request_id).")
    label: str
    labelled_at: dt.datetime


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
