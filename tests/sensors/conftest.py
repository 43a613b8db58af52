from tests.serving.conftest import postgres_dsn  # noqa: F401 - a fresh database on the machine PostgreSQL
