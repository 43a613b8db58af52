"""The inference log: every gateway request as one row of a keyed hash chain in PostgreSQL.

* :mod:`~serving.inference_log.records`: the record, its canonical form and the reversible escaping of text
  PostgreSQL cannot store (:func:`escape_text` / :func:`unescape`).
* :mod:`~serving.inference_log.writer`: :class:`InferenceLogWriter` (group commit, per-row failure classification,
  quarantine, fsynced spool replayed in the background, signed checkpoints).
* :mod:`~serving.inference_log.chain`: the keyed chain, its key (:func:`load_chain_key`), checkpoints and sinks.
* :mod:`~serving.inference_log.quarantine`: rows kept outside the chain (:func:`list_quarantine`).
* :mod:`~serving.inference_log.verify`: :func:`verify_chain` in one consistent snapshot.
"""

from serving.inference_log.chain import (
    CHECKPOINT_FILE,
    HASH_HMAC,
    HASH_SHA256,
    ChainKeyError,
    Checkpoint,
    CheckpointSink,
    FileCheckpointSink,
    chain_hash,
    create_key_file,
    key_id,
    keyed_chain_hash,
    load_chain_key,
    parse_chain_key,
)
from serving.inference_log.quarantine import LOCAL_QUARANTINE_FILE, QuarantineEntry, list_quarantine
from serving.inference_log.records import (
    CONTENT_FIELDS,
    ESCAPE_MARKER,
    GENESIS_HASH,
    AuditTimeoutError,
    AuditWriteError,
    Durability,
    InferenceRecord,
    RequestStatus,
    canonical_json,
    escape_text,
    format_time,
    parse_time,
    unescape,
    unescape_text,
)
from serving.inference_log.spool import SPOOL_PREFIX, SPOOL_SUFFIX
from serving.inference_log.verify import ChainReport, verify_chain, verify_chain_from_settings
from serving.inference_log.writer import InferenceLogWriter

__all__ = [
    "CHECKPOINT_FILE",
    "CONTENT_FIELDS",
    "ESCAPE_MARKER",
    "GENESIS_HASH",
    "HASH_HMAC",
    "HASH_SHA256",
    "LOCAL_QUARANTINE_FILE",
    "SPOOL_PREFIX",
    "SPOOL_SUFFIX",
    "AuditTimeoutError",
    "AuditWriteError",
    "ChainKeyError",
    "ChainReport",
    "Checkpoint",
    "CheckpointSink",
    "Durability",
    "FileCheckpointSink",
    "InferenceLogWriter",
    "InferenceRecord",
    "QuarantineEntry",
    "RequestStatus",
    "canonical_json",
    "chain_hash",
    "create_key_file",
    "escape_text",
    "format_time",
    "key_id",
    "keyed_chain_hash",
    "list_quarantine",
    "load_chain_key",
    "parse_chain_key",
    "parse_time",
    "unescape",
    "unescape_text",
    "verify_chain",
    "verify_chain_from_settings",
]
