-- Databases of Riverbed's production stack, created once on an empty data volume by the postgres image's
-- entrypoint (as POSTGRES_USER). One server, one database per service:
--   dagster        run, event log and schedule storage (deploy/dagster.yaml)
--   mlflow         MLflow's tracking and model-registry store
--   lakefs         lakeFS's metadata (the objects live in MinIO)
--   inference_log  the gateway's audit log of every prediction (schema owned by the serving migrations)
-- 20-riverbed-roles.sh (next) creates each service's login role and hands it its database. The compose
-- healthcheck connects over TCP, which the image only opens after its init scripts have run, so nothing that
-- depends on postgres starts before these exist.

CREATE DATABASE dagster;
CREATE DATABASE mlflow;
CREATE DATABASE lakefs;
CREATE DATABASE inference_log;
