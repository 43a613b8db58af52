-- The keyed chain and the quarantine (serving/inference_log/chain.py, quarantine.py).
--
-- Rows written from now on are linked with HMAC-SHA256 under a key kept outside the database
-- (hash_alg 'hmac-sha256'); rows written before keep hash_alg 'sha256' and still verify with plain SHA-256.
-- The chain continues across the switch; an unkeyed row after a keyed one is reported as a downgrade.
alter table inference_log
    add column if not exists hash_alg text not null default 'sha256'
        check (hash_alg in ('sha256', 'hmac-sha256'));

-- Names this chain in signed checkpoints kept outside PostgreSQL: a log recreated after a wipe gets a new id.
alter table inference_log_chain_head
    add column if not exists chain_id uuid not null default gen_random_uuid();

-- Rows PostgreSQL refused (data or integrity error, a statement that timed out on that row alone, a row over the
-- writer's size limit): kept verbatim outside the chain, so that no row can block the log.
create table if not exists inference_log_quarantine (
    id bigserial primary key,
    request_id text,
    received_at timestamptz,
    reason text not null,
    -- The row's canonical JSON (escaped as in the log), cut at a character boundary when larger than the limit.
    content text not null,
    content_bytes bigint not null check (content_bytes >= 0),
    content_sha256 text not null check (content_sha256 ~ '^[0-9a-f]{64}$'),
    truncated boolean not null default false,
    quarantined_at timestamptz not null default now()
);
create index if not exists inference_log_quarantine_recent on inference_log_quarantine (quarantined_at desc, id desc);
create index if not exists inference_log_quarantine_request on inference_log_quarantine (request_id);
