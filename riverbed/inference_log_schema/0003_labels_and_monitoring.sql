-- Labels from the labels topic, kept whether or not their prediction is logged yet (they match at query time),
-- and the monitoring results the retraining sensor reads.
create table if not exists prediction_labels (
    topic text not null,
    partition integer not null,
    "offset" bigint not null,
    dataset text not null,
    sample_id text,
    request_id text,
    record_index integer not null default 0,
    label text not null,
    labelled_at timestamptz not null,
    ingested_at timestamptz not null default now(),
    -- One row per Kafka message: a redelivered message is a no-op.
    primary key (topic, partition, "offset"),
    check (sample_id is not null or request_id is not null)
);
create index if not exists prediction_labels_sample on prediction_labels (dataset, sample_id, labelled_at desc);
create index if not exists prediction_labels_request on prediction_labels (request_id, record_index, labelled_at desc);

-- Monitoring windows: one daily window of predictions, cut into chunks of a fixed number of records.
create table if not exists monitoring_results (
    dataset text not null,
    day date not null,
    chunk integer not null default 0,
    chunk_start timestamptz,
    chunk_end timestamptz,
    rows integer,
    kind text not null check (kind in ('univariate_drift', 'multivariate_drift', 'cbpe', 'realised')),
    name text not null,
    value double precision,
    lower_threshold double precision,
    upper_threshold double precision,
    alert boolean not null default false,
    model_version text,
    computed_at timestamptz not null default now(),
    primary key (dataset, day, chunk, kind, name)
);
create index if not exists monitoring_results_recent on monitoring_results (dataset, day desc, chunk desc);
