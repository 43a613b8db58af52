#!/usr/bin/env bash
# Login roles of Riverbed's production stack, one per service, with passwords from the environment (deploy/.env,
# passed to the postgres service by compose). Run by the postgres image's entrypoint after 10-riverbed-databases.sql
# on an empty data volume, as POSTGRES_USER over the local socket. Idempotent: re-run it to rotate passwords or to
# upgrade a volume created before these roles existed (deploy/README.md, "Database roles"):
#   docker compose --env-file deploy/.env -f deploy/docker-compose.yml exec postgres \
#     bash /docker-entrypoint-initdb.d/20-riverbed-roles.sh
#
#   riverbed_dagster, riverbed_mlflow, riverbed_lakefs   own their service's database, nothing else
#   riverbed_owner_login     -> riverbed_owner     inference_log: owns the tables, runs migrations, manages API keys
#   riverbed_gateway_login   -> riverbed_gateway   inference_log: appends rows, advances the chain, reads keys
#   riverbed_pipeline_login  -> riverbed_pipeline  inference_log: reads; writes labels and monitoring results
#   riverbed_auditor_login   -> riverbed_auditor   inference_log: reads only (people, reports)
# The groups' table privileges come from migration 0006 (riverbed/inference_log_schema/), which the one-shot
# inference-log-migrate service applies as riverbed_owner_login. Passwords are read by psql itself (\getenv):
# they never appear in a command line, and are sent hashed (SCRAM) by the server's password_encryption.
set -euo pipefail

for name in INFERENCE_LOG_OWNER_PASSWORD INFERENCE_LOG_GATEWAY_PASSWORD INFERENCE_LOG_PIPELINE_PASSWORD \
    INFERENCE_LOG_AUDITOR_PASSWORD DAGSTER_DB_PASSWORD MLFLOW_DB_PASSWORD LAKEFS_DB_PASSWORD; do
    if [ -z "${!name:-}" ]; then
        echo "20-riverbed-roles.sh: $name is not set (deploy/.env)" >&2
        exit 1
    fi
done

psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}" --dbname postgres <<'SQL'
\getenv owner_password INFERENCE_LOG_OWNER_PASSWORD
\getenv gateway_password INFERENCE_LOG_GATEWAY_PASSWORD
\getenv pipeline_password INFERENCE_LOG_PIPELINE_PASSWORD
\getenv auditor_password INFERENCE_LOG_AUDITOR_PASSWORD
\getenv dagster_password DAGSTER_DB_PASSWORD
\getenv mlflow_password MLFLOW_DB_PASSWORD
\getenv lakefs_password LAKEFS_DB_PASSWORD
-- Statements carrying passwords are never written to the server log.
set log_statement = 'none';
set log_min_error_statement = 'panic';

-- Group roles of the inference log (the same names migration 0006 creates where it may).
select format('create role %I nologin', name)
from unnest(array['riverbed_owner', 'riverbed_gateway', 'riverbed_pipeline', 'riverbed_auditor']) as name
where not exists (select 1 from pg_roles where rolname = name)
\gexec

-- Login roles.
select format('create role %I login', name)
from unnest(array['riverbed_owner_login', 'riverbed_gateway_login', 'riverbed_pipeline_login',
                  'riverbed_auditor_login', 'riverbed_dagster', 'riverbed_mlflow', 'riverbed_lakefs']) as name
where not exists (select 1 from pg_roles where rolname = name)
\gexec

alter role riverbed_owner_login with login inherit nosuperuser nocreatedb nocreaterole password :'owner_password';
alter role riverbed_gateway_login with login inherit nosuperuser nocreatedb nocreaterole password :'gateway_password';
alter role riverbed_pipeline_login with login inherit nosuperuser nocreatedb nocreaterole password :'pipeline_password';
alter role riverbed_auditor_login with login inherit nosuperuser nocreatedb nocreaterole password :'auditor_password';
alter role riverbed_dagster with login nosuperuser nocreatedb nocreaterole password :'dagster_password';
alter role riverbed_mlflow with login nosuperuser nocreatedb nocreaterole password :'mlflow_password';
alter role riverbed_lakefs with login nosuperuser nocreatedb nocreaterole password :'lakefs_password';

grant riverbed_owner to riverbed_owner_login;
grant riverbed_gateway to riverbed_gateway_login;
grant riverbed_pipeline to riverbed_pipeline_login;
grant riverbed_auditor to riverbed_auditor_login;
-- Migrations create their tables as the group, not the login.
alter role riverbed_owner_login set role = 'riverbed_owner';

-- Each database belongs to the role that uses it (since PostgreSQL 15 the owner also owns schema public).
alter database inference_log owner to riverbed_owner;
alter database dagster owner to riverbed_dagster;
alter database mlflow owner to riverbed_mlflow;
alter database lakefs owner to riverbed_lakefs;
-- Nobody else connects to them.
revoke connect on database inference_log, dagster, mlflow, lakefs from public;
grant connect on database inference_log
    to riverbed_owner, riverbed_gateway, riverbed_pipeline, riverbed_auditor;
grant connect on database dagster to riverbed_dagster;
grant connect on database mlflow to riverbed_mlflow;
grant connect on database lakefs to riverbed_lakefs;
SQL

# Objects created before these roles existed (a volume from an earlier version) belong to POSTGRES_USER: hand
# those in schema public to the database's owner. On a new volume the databases are empty and nothing changes.
for pair in inference_log:riverbed_owner dagster:riverbed_dagster mlflow:riverbed_mlflow lakefs:riverbed_lakefs; do
    database="${pair%%:*}" owner="${pair#*:}"
    psql -v ON_ERROR_STOP=1 --no-psqlrc --quiet --username "${POSTGRES_USER:-postgres}" --dbname "$database" \
        -v owner="$owner" <<'SQL'
select set_config('riverbed.new_owner', :'owner', false) \g /dev/null
do $$
declare
    new_owner text := current_setting('riverbed.new_owner');
    object record;
begin
    for object in
        select format('alter %s %s owner to %I',
                      case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
                                     when 'S' then 'sequence' when 'f' then 'foreign table' else 'table' end,
                      c.oid::regclass, new_owner) as statement
        from pg_class c
        where c.relnamespace = 'public'::regnamespace
            and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
            and pg_get_userbyid(c.relowner) <> new_owner
            -- sequences of serial/identity columns follow their table; extension members stay as they are
            and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass and d.objid = c.oid
                            and (d.deptype = 'e' or (c.relkind = 'S' and d.deptype in ('a', 'i'))))
        union all
        select format('alter routine %s owner to %I', p.oid::regprocedure, new_owner)
        from pg_proc p
        where p.pronamespace = 'public'::regnamespace and pg_get_userbyid(p.proowner) <> new_owner
            and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                            and d.deptype = 'e')
        union all
        select format('alter type %s owner to %I', t.oid::regtype, new_owner)
        from pg_type t
        where t.typnamespace = 'public'::regnamespace and t.typtype in ('e', 'd', 'r')
            and pg_get_userbyid(t.typowner) <> new_owner
            and not exists (select 1 from pg_depend d where d.classid = 'pg_type'::regclass and d.objid = t.oid
                            and d.deptype = 'e')
    loop
        execute object.statement;
    end loop;
end
$$;
SQL
done
echo "20-riverbed-roles.sh: Riverbed database roles ready"
