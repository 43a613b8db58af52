-- The model catalog (riverbed/model_catalog.py): one row per registered model version with why it was trained, its
-- promotion-gate decision, aliases, status and model card, written by the platform; and the reviewers' decisions on
-- candidates of manual-approval datasets, appended by the gateway (the oversight action that records each decision
-- is a chained inference-log row; its id is kept here as action_id).
create table if not exists model_versions (
    dataset text not null check (length(dataset) between 1 and 200),
    version integer not null check (version > 0),
    registered_model text not null check (length(registered_model) between 1 and 200),
    aliases text[] not null default '{}',
    -- Stored statuses; 'approved' and 'rejected_by_reviewer' are read from model_version_reviews.
    status text not null check (status in ('trained', 'rejected', 'pending_approval', 'deployed', 'retired')),
    trained_reason text not null check (length(trained_reason) between 1 and 200),
    mlflow_run_id text check (length(mlflow_run_id) <= 200),
    dagster_run_id text check (length(dagster_run_id) <= 200),
    data_commit_ids jsonb not null default '{}' check (jsonb_typeof(data_commit_ids) = 'object'),
    metrics jsonb not null default '{}' check (jsonb_typeof(metrics) = 'object'),
    gate_passed boolean,
    gate_reasons jsonb not null default '[]' check (jsonb_typeof(gate_reasons) = 'array'),
    fairness jsonb not null default '{}' check (jsonb_typeof(fairness) = 'object'),
    model_card_markdown text not null default '' check (length(model_card_markdown) <= 200000),
    manual_approval boolean not null default false,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    primary key (dataset, version)
);

-- The catalog's listing, newest first (all datasets); one dataset's page uses the primary key.
create index if not exists model_versions_created on model_versions (created_at desc, dataset, version desc);

-- Append-only: one decision per version and MLflow run (a version number reused by a fresh registry is another
-- model). review_id orders the decisions for the approvals sensor's cursor.
create table if not exists model_version_reviews (
    review_id bigint generated always as identity primary key,
    dataset text not null check (length(dataset) between 1 and 200),
    version integer not null check (version > 0),
    mlflow_run_id text not null check (length(mlflow_run_id) <= 200),
    decision text not null check (decision in ('approve', 'reject')),
    action_id text not null check (length(action_id) between 1 and 200),
    key_id text not null check (length(key_id) between 1 and 200),
    reason text not null check (length(reason) between 1 and 4000),
    decided_at timestamptz not null default now(),
    unique (dataset, version, mlflow_run_id)
);

create or replace function riverbed_model_reviews_append_only() returns trigger
language plpgsql as $$
begin
    raise exception 'model_version_reviews is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;

drop trigger if exists model_version_reviews_append_only on model_version_reviews;
create trigger model_version_reviews_append_only before update or delete on model_version_reviews
    for each row execute function riverbed_model_reviews_append_only();
drop trigger if exists model_version_reviews_no_truncate on model_version_reviews;
create trigger model_version_reviews_no_truncate before truncate on model_version_reviews
    for each statement execute function riverbed_model_reviews_append_only();

do $grants$
begin
    if not exists (select 1 from pg_roles where rolname = 'riverbed_pipeline') then
        return;
    end if;
    begin
        alter table model_versions owner to riverbed_owner;
        alter table model_version_reviews owner to riverbed_owner;
        alter function riverbed_model_reviews_append_only() owner to riverbed_owner;
    exception when insufficient_privilege then
        raise notice 'the model catalog stays owned by % (%)', current_user, sqlerrm;
    end;
    -- The platform (code location, rollback CLI) writes the catalog and reads the reviews.
    grant select, insert, update on model_versions to riverbed_pipeline;
    grant select on model_version_reviews to riverbed_pipeline;
    -- The gateway reads the catalog and appends reviewers' decisions; 0006's default privileges would let it
    -- insert catalog rows, which only the platform writes.
    grant select on model_versions to riverbed_gateway;
    revoke insert, update, delete, truncate on model_versions from riverbed_gateway;
    grant select, insert on model_version_reviews to riverbed_gateway;
    revoke update, delete, truncate on model_version_reviews from riverbed_gateway;
    -- Auditors read both.
    grant select on model_versions, model_version_reviews to riverbed_auditor;
end
$grants$;
