-- The inference log: one row per gateway request, hash-chained in seq order (EU AI Act Art. 12 record keeping).
create table if not exists inference_log (
    request_id text primary key,
    seq bigint not null unique,
    received_at timestamptz not null,
    dataset text,
    route text not null,
    status text not null check (status in ('ok', 'rejected', 'failed')),
    http_status integer not null,
    client_key_id text,
    model_name text,
    model_version text,
    mlflow_run_id text,
    training_set_commit_id text,
    data_commit_ids jsonb not null default '{}'::jsonb,
    dagster_run_id text,
    inputs jsonb not null default '[]'::jsonb,
    outputs jsonb not null default '[]'::jsonb,
    labels text[] not null default '{}',
    error text,
    timings_ms jsonb not null default '{}'::jsonb,
    -- When the row was committed (later than received_at for replayed spool records); not covered by the hash.
    logged_at timestamptz not null default now(),
    prev_hash text not null check (prev_hash ~ '^[0-9a-f]{64}$'),
    row_hash text not null check (row_hash ~ '^[0-9a-f]{64}$')
);

-- Keyset pagination, newest first, with and without a dataset filter.
create index if not exists inference_log_dataset_keyset on inference_log (dataset, received_at desc, request_id desc);
create index if not exists inference_log_keyset on inference_log (received_at desc, request_id desc);
create index if not exists inference_log_model_version on inference_log (model_version, received_at desc);
create index if not exists inference_log_status on inference_log (status, received_at desc);
create index if not exists inference_log_labels on inference_log using gin (labels);

-- The chain head: one row, locked FOR UPDATE by every write transaction so writers in several processes share a chain.
create table if not exists inference_log_chain_head (
    id boolean primary key default true check (id),
    seq bigint not null,
    row_hash text not null
);
insert into inference_log_chain_head (id, seq, row_hash)
values (true, 0, repeat('0', 64))
on conflict (id) do nothing;
