-- API-key expiry and revocation push; least-privilege database roles; an append-only inference_log.
--
-- Roles (NOLOGIN groups; login roles join them, see serving/database_roles.py and deploy/postgres/):
--   riverbed_owner     owns every table here; migrations run as it (or a superuser). Creates and revokes API keys.
--   riverbed_gateway   reads what the gateway reads; INSERT on inference_log (and inference_log_quarantine /
--                      audit_access_log where they exist); UPDATE of inference_log_chain_head (seq, row_hash) to
--                      advance the chain; SELECT on api_keys. Never UPDATE, DELETE or TRUNCATE on inference_log.
--   riverbed_pipeline  the code location and monitoring: reads everything, INSERT on prediction_labels,
--                      INSERT/UPDATE/DELETE on monitoring_results (a window's results are replaced).
--   riverbed_auditor   SELECT only.
-- Roles are created only when the migrating user may (superuser or CREATEROLE); roles are cluster-wide, so a
-- concurrent migration of another database may create them first. Without the roles the grants are skipped
-- (NOTICE) and everything else still applies.
--
-- Tables created by later migrations: ALTER DEFAULT PRIVILEGES gives the gateway SELECT and INSERT (append
-- only), the pipeline and the auditor SELECT. A later migration whose table the gateway must not write revokes
-- INSERT on it explicitly.
--
-- Maintenance: a trigger refuses UPDATE, DELETE and TRUNCATE on inference_log for everyone, superusers
-- included, unless the session is a member of the table's owner (riverbed_owner) and has run
--   set riverbed.maintenance = on;
-- (any session can set the variable; only an owner's setting counts).

-- --------------------------------------------------------------------------------------------- API keys
alter table api_keys add column if not exists expires_at timestamptz;

-- Every change of a key (created, revoked, expiry changed, deleted) is announced on channel riverbed_api_keys
-- with the key id as payload, in the changing transaction (delivered at commit, by whatever tool made it).
-- TRUNCATE announces '*' (forget every key). Gateways LISTEN and drop their cached rows.
create or replace function riverbed_api_keys_notify() returns trigger
language plpgsql as $$
begin
    if tg_level = 'STATEMENT' then
        perform pg_notify('riverbed_api_keys', '*');
        return null;
    end if;
    if tg_op = 'UPDATE'
        and (new.key_id, new.name, new.roles, new.key_hash, new.revoked_at, new.expires_at)
            is not distinct from (old.key_id, old.name, old.roles, old.key_hash, old.revoked_at, old.expires_at)
    then
        return null;  -- e.g. a bookkeeping column: nothing a gateway caches changed
    end if;
    if tg_op <> 'INSERT' then
        perform pg_notify('riverbed_api_keys', old.key_id);
    end if;
    if tg_op = 'INSERT' or (tg_op = 'UPDATE' and new.key_id <> old.key_id) then
        perform pg_notify('riverbed_api_keys', new.key_id);
    end if;
    return null;
end
$$;

drop trigger if exists api_keys_notify on api_keys;
create trigger api_keys_notify after insert or update or delete on api_keys
    for each row execute function riverbed_api_keys_notify();
drop trigger if exists api_keys_notify_truncate on api_keys;
create trigger api_keys_notify_truncate after truncate on api_keys
    for each statement execute function riverbed_api_keys_notify();

-- ------------------------------------------------------------------------------- append-only inference_log
create or replace function riverbed_inference_log_append_only() returns trigger
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
        return new;  -- NULL for the statement-level TRUNCATE trigger, where it is ignored
    end if;
    raise exception 'inference_log is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege',
              hint = 'Rows are never changed or removed. Owner maintenance only: as a member of '
                     || pg_get_userbyid(owner_role) || ', run "set riverbed.maintenance = on" first.';
end
$$;

drop trigger if exists inference_log_append_only on inference_log;
create trigger inference_log_append_only before update or delete on inference_log
    for each row execute function riverbed_inference_log_append_only();
drop trigger if exists inference_log_no_truncate on inference_log;
create trigger inference_log_no_truncate before truncate on inference_log
    for each statement execute function riverbed_inference_log_append_only();

-- ------------------------------------------------------------------------------------------------ roles
do $roles$
declare
    may_create boolean := (select rolsuper or rolcreaterole from pg_roles where rolname = current_user);
    role_name text;
begin
    foreach role_name in array array['riverbed_owner', 'riverbed_gateway', 'riverbed_pipeline', 'riverbed_auditor']
    loop
        continue when exists (select 1 from pg_roles where rolname = role_name);
        if not may_create then
            raise notice 'role % does not exist and % may not create it: least-privilege grants skipped',
                role_name, current_user;
            continue;
        end if;
        begin
            execute format('create role %I nologin', role_name);
        exception when duplicate_object or unique_violation then
            null;  -- created meanwhile by a migration of another database on the same server
        end;
    end loop;
    -- A CREATEROLE migrator (not superuser) joins riverbed_owner so it can hand the tables over and run later
    -- migrations as the owner.
    if may_create and exists (select 1 from pg_roles where rolname = 'riverbed_owner')
        and not pg_has_role(current_user, 'riverbed_owner', 'MEMBER')
    then
        execute format('grant riverbed_owner to %I', current_user);
    end if;
end
$roles$;

do $grants$
declare
    relation record;
    grantor text;
begin
    if (select count(*) from pg_roles
        where rolname in ('riverbed_owner', 'riverbed_gateway', 'riverbed_pipeline', 'riverbed_auditor')) < 4
    then
        raise notice 'riverbed roles missing: least-privilege grants skipped';
        return;
    end if;

    -- The owner creates the tables of later migrations (public is owned by the database owner since PG 15).
    begin
        grant usage, create on schema public to riverbed_owner;
    exception when insufficient_privilege then
        raise notice 'cannot grant CREATE on schema public to riverbed_owner (%): grant it as the schema owner',
            sqlerrm;
    end;
    grant usage on schema public to riverbed_gateway, riverbed_pipeline, riverbed_auditor;

    -- Every table and view here moves to riverbed_owner (sequences of serial columns follow their table).
    for relation in
        select c.oid::regclass as name, c.relkind
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname = 'public' and c.relkind in ('r', 'p', 'v', 'm')
            and c.relowner <> (select oid from pg_roles where rolname = 'riverbed_owner')
    loop
        execute format(
            'alter %s %s owner to riverbed_owner',
            case relation.relkind when 'v' then 'view' when 'm' then 'materialized view' else 'table' end,
            relation.name
        );
    end loop;

    -- Reading: everyone reads every table (the gateway: api_keys, the log and its head, monitoring_results).
    grant select on all tables in schema public to riverbed_gateway, riverbed_pipeline, riverbed_auditor;
    grant usage, select on all sequences in schema public to riverbed_gateway, riverbed_pipeline;

    -- The gateway appends to the log and advances its head; nothing else.
    grant insert on inference_log to riverbed_gateway;
    grant update (seq, row_hash) on inference_log_chain_head to riverbed_gateway;
    if to_regclass('public.inference_log_quarantine') is not null then
        grant insert on inference_log_quarantine to riverbed_gateway;
    end if;
    if to_regclass('public.audit_access_log') is not null then
        grant insert on audit_access_log to riverbed_gateway;
    end if;

    -- The pipeline: labels from Kafka, monitoring windows (replaced whole).
    grant insert on prediction_labels to riverbed_pipeline;
    grant insert, update, delete on monitoring_results to riverbed_pipeline;

    -- Tables of later migrations, whether they run as riverbed_owner or as the current (super)user.
    foreach grantor in array array['riverbed_owner', current_user::text] loop
        execute format('alter default privileges for role %I in schema public '
                       'grant select on tables to riverbed_gateway, riverbed_pipeline, riverbed_auditor', grantor);
        execute format('alter default privileges for role %I in schema public '
                       'grant insert on tables to riverbed_gateway', grantor);
        execute format('alter default privileges for role %I in schema public '
                       'grant usage, select on sequences to riverbed_gateway, riverbed_pipeline', grantor);
    end loop;
end
$grants$;
