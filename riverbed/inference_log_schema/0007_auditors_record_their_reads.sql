-- Auditing the auditors from the CLI: `riverbed audit show|query|export` connect as the read-only auditor role
-- and record each read in audit_access_log, so that role may append there (and only there).
do $grants$
begin
    if to_regclass('public.audit_access_log') is null
        or not exists (select 1 from pg_roles where rolname = 'riverbed_auditor')
    then
        return;
    end if;
    grant insert on audit_access_log to riverbed_auditor;
    grant usage, select on sequence audit_access_log_id_seq to riverbed_auditor;
end
$grants$;
