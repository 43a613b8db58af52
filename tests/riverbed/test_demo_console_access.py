"""The end of ``riverbed demo``: the oversight console's URL (where ``riverbed serve`` puts it) and a review key."""

import datetime as dt
import io
from pathlib import Path

import psycopg
import pytest
from rich.console import Console

from riverbed.cli import main
from riverbed.cli.demo_serving import serve_console_url
from riverbed.settings import RiverbedSettings
from serving.api_keys import hash_key


def test_the_demo_ends_with_the_console_url_and_a_review_key(
    migrated_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = RiverbedSettings(
        home=tmp_path, inference_log_dsn=migrated_dsn, gateway_host="127.0.0.3", gateway_port=18_123
    )
    screen = io.StringIO()
    monkeypatch.setattr(main, "console", Console(file=screen, width=100, color_system=None))

    main._print_console_access(settings)

    lines = [line for line in screen.getvalue().splitlines() if line.strip()]
    url_line = next(line for line in lines if line.startswith("oversight console:"))
    assert "http://127.0.0.3:18123/console " in url_line and "`riverbed serve`" in url_line
    assert serve_console_url(settings) == "http://127.0.0.3:18123/console"
    key = lines[-1]
    assert key.startswith("rb_") and " " not in key
    with psycopg.connect(migrated_dsn) as conn:
        stored = conn.execute(
            "select key_id, roles, expires_at, revoked_at from api_keys where key_hash = %s", (hash_key(key),)
        ).fetchall()
    ((key_id, roles, expires_at, revoked_at),) = stored
    assert sorted(roles) == ["audit", "review"] and revoked_at is None
    assert f"review key {key_id} (roles audit, review" in lines[-2]
    lifetime = expires_at - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29, hours=23) < lifetime <= dt.timedelta(days=30)
