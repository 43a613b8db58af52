-- Pipeline failures that must not pass silently (a sensor's trigger that could not be evaluated, a serving
-- start-up that could not read the registry, a deployment refused before it moved an alias, ...). One row per
-- (component, reason) with a running count: the gateway exports it as riverbed_pipeline_failures_total, so a
-- failure that only ever reached a log line is still visible to Prometheus.
create table if not exists pipeline_failures (
    component text not null check (length(component) between 1 and 200),
    reason text not null check (length(reason) between 1 and 200),
    failures bigint not null default 1 check (failures > 0),
    first_at timestamptz not null default now(),
    last_at timestamptz not null default now(),
    last_message text not null default '' check (length(last_message) <= 2000),
    primary key (component, reason)
);

do $grants$
begin
    if not exists (select 1 from pg_roles where rolname = 'riverbed_pipeline') then
        return;
    end if;
    begin
        alter table pipeline_failures owner to riverbed_owner;
    exception when insufficient_privilege then
        raise notice 'pipeline_failures stays owned by % (%)', current_user, sqlerrm;
    end;
    grant insert, update, select on pipeline_failures to riverbed_pipeline;
    grant select on pipeline_failures to riverbed_gateway, riverbed_auditor;
    -- 0006's default privileges give the gateway INSERT on every later table (for its own logs); it only exports
    -- these counts, so it must not be able to add one.
    revoke insert on pipeline_failures from riverbed_gateway;
end
$grants$;
