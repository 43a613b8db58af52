-- Auditing the auditors: one row per audit read (one request, a listing page, an export) served by the gateway.
-- Append-only: rows are inserted, never updated or deleted (triggers refuse UPDATE, DELETE and TRUNCATE).
-- The gateway's role gets INSERT on it in 0006 (least-privilege roles).
create table if not exists audit_access_log (
    id bigserial primary key,
    received_at timestamptz not null,
    key_id text not null,
    route text not null,
    filters jsonb not null default '{}'::jsonb,
    row_count bigint not null check (row_count >= 0),
    request_id text not null
);
create index if not exists audit_access_log_received on audit_access_log (received_at desc, id desc);
create index if not exists audit_access_log_key on audit_access_log (key_id, received_at desc);

-- As for inference_log (0006): only a member of the table's owner who has run "set riverbed.maintenance = on"
-- (e.g. for retention) may change or remove rows.
create or replace function audit_access_log_append_only() returns trigger language plpgsql as $$
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
    raise exception 'audit_access_log is append-only: % refused', tg_op
        using errcode = 'insufficient_privilege';
end;
$$;
create or replace trigger audit_access_log_no_change
    before update or delete on audit_access_log
    for each row execute function audit_access_log_append_only();
create or replace trigger audit_access_log_no_truncate
    before truncate on audit_access_log
    for each statement execute function audit_access_log_append_only();
