from tests.serving.conftest import migrated_dsn, postgres_dsn, unreachable_dsn  # noqa: F401 - machine PostgreSQL
