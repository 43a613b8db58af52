-- Human oversight actions (serving/oversight.py): flag, override, suspend, resume, approve, reject.
--
-- An action IS a row of inference_log (route = the action's /v1 route, status 'ok', client_key_id = the reviewer,
-- inputs = [{"oversight": {action, target_kind, target_id, note, outcome}}]), so it is in the keyed hash chain
-- with every request. oversight_actions indexes those rows by target for the history and the audit filters
-- flagged / overridden. It is filled only by the trigger below, as the log row is inserted (SECURITY DEFINER, owned
-- by riverbed_owner): the gateway's role cannot insert here, so no index row exists without its chained log row,
-- and an action replayed from the spool is indexed as it commits. Text is copied as the log stores it (escaped,
-- see serving/inference_log/records.py); readers unescape.
--
-- Suspend and resume rows also NOTIFY riverbed_oversight with the dataset, delivered at commit: every gateway
-- LISTENs and re-reads that dataset's suspension.
create table if not exists oversight_actions (
    action_id text primary key,      -- inference_log.request_id of the action's own row
    seq bigint not null unique,      -- its chain position
    action text not null check (action in ('flag', 'override', 'suspend', 'resume', 'approve', 'reject')),
    target_kind text not null check (target_kind in ('prediction', 'dataset', 'model_version')),
    target_id text not null,
    dataset text,
    actor_key_id text,
    note text not null,
    outcome text,
    recorded_at timestamptz not null
);
-- History of one target (oldest first), and the audit filters flagged / overridden: a semi-join from the acted-on
-- requests, or an anti-join probe per row of the log's keyset scan.
create index if not exists oversight_actions_target on oversight_actions (target_kind, target_id, seq);
create index if not exists oversight_actions_acted_on on oversight_actions (action, target_kind, target_id);
create index if not exists oversight_actions_dataset on oversight_actions (dataset, seq);
-- The latest suspend/resume of each dataset (read at gateway start and on each notification).
create index if not exists oversight_actions_suspensions on oversight_actions (dataset, seq desc)
    where action in ('suspend', 'resume');

create or replace function riverbed_index_oversight_action() returns trigger
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
    payload jsonb := new.inputs -> 0 -> 'oversight';
begin
    if payload is null or jsonb_typeof(payload) <> 'object' then
        raise exception 'oversight action row % has no "oversight" input', new.request_id
            using errcode = 'check_violation';
    end if;
    insert into oversight_actions
        (action_id, seq, action, target_kind, target_id, dataset, actor_key_id, note, outcome, recorded_at)
    values (
        new.request_id, new.seq, payload ->> 'action', payload ->> 'target_kind', payload ->> 'target_id',
        new.dataset, new.client_key_id, payload ->> 'note', payload ->> 'outcome', new.received_at
    );
    if payload ->> 'action' in ('suspend', 'resume') then
        perform pg_notify('riverbed_oversight', coalesce(new.dataset, ''));
    end if;
    return null;
end
$$;

drop trigger if exists inference_log_oversight_index on inference_log;
create trigger inference_log_oversight_index after insert on inference_log
    for each row
    when (new.status = 'ok' and new.route in (
        '/v1/predictions/{request_id}/flag',
        '/v1/predictions/{request_id}/override',
        '/v1/datasets/{dataset}/suspend',
        '/v1/datasets/{dataset}/resume',
        '/v1/models/{dataset}/versions/{version}/approve',
        '/v1/models/{dataset}/versions/{version}/reject'
    ))
    execute function riverbed_index_oversight_action();

-- Append-only like the log itself (owner maintenance only, as in 0004 / 0006).
create or replace function riverbed_oversight_append_only() returns trigger
language plpgsql as $$
declare
    owner_role oid := (select relowner from pg_class where oid = tg_relid);
begin
    if coalesce(current_setting('riverbed.maintenance', true), '') = 'on'
        and pg_has_role(current_user, owner_role, 'MEMBER')
    then
        if tg_level = 'ROW' and tg_op = 'DELETE' then
            return old;
        end if;
        return new;
    end if;
    raise exception 'oversight_actions is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end
$$;
drop trigger if exists oversight_actions_no_change on oversight_actions;
create trigger oversight_actions_no_change
    before update or delete on oversight_actions
    for each row execute function riverbed_oversight_append_only();
drop trigger if exists oversight_actions_no_truncate on oversight_actions;
create trigger oversight_actions_no_truncate
    before truncate on oversight_actions
    for each statement execute function riverbed_oversight_append_only();

do $grants$
begin
    if not exists (select 1 from pg_roles where rolname = 'riverbed_owner') then
        return;
    end if;
    begin
        alter table oversight_actions owner to riverbed_owner;
        alter function riverbed_index_oversight_action() owner to riverbed_owner;
    exception when insufficient_privilege then
        raise notice 'oversight_actions stays owned by % (%)', current_user, sqlerrm;
    end;
    grant select on oversight_actions to riverbed_gateway, riverbed_pipeline, riverbed_auditor;
    -- 0006's default privileges give the gateway INSERT on every later table; only the trigger writes here.
    revoke insert, update, delete, truncate on oversight_actions from riverbed_gateway;
end
$grants$;
