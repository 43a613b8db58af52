"""The console's pure parts: the safe Markdown renderer, session tokens and CSRF tokens, the chart inputs."""

from __future__ import annotations

import time

import pytest

from riverbed.settings import RiverbedSettings
from serving.console import charts, lineage
from serving.console.login_refusals import key_id_of
from serving.console.markdown import render_markdown
from serving.console.sessions import (
    SessionRefused,
    csrf_matches,
    csrf_token,
    issue_login_nonce,
    issue_session,
    read_login_nonce,
    read_session,
    session_key_for,
)

KEY = session_key_for(b"k" * 32)


def test_markdown_renders_structure_and_never_passes_html_through() -> None:
    source = "\n".join(
        [
            "# Card <b>x</b>",
            "",
            "Some **bold**, *italic* and `co<de>` text with [a link](javascript:alert(1)).",
            "",
            "- one",
            "- <script>alert(2)</script>",
            "",
            "| metric | value |",
            "|---|---:|",
            "| roc_auc | 0.91 |",
            "| <i>f1</i> | 0.7 |",
            "",
            "```",
            "<img src=x onerror=alert(3)>",
            "```",
        ]
    )
    html = str(render_markdown(source))
    assert "<h3>Card &lt;b&gt;x&lt;/b&gt;</h3>" in html
    assert "<strong>bold</strong>" in html and "<em>italic</em>" in html and "<code>co&lt;de&gt;</code>" in html
    assert "a link (javascript:alert(1))" in html and "<a " not in html
    assert "<ul><li>one</li><li>&lt;script&gt;alert(2)&lt;/script&gt;</li></ul>" in html
    assert '<th scope="col">metric</th>' in html and "<td>roc_auc</td><td>0.91</td>" in html
    assert "<td>&lt;i&gt;f1&lt;/i&gt;</td>" in html
    assert "<pre><code>&lt;img src=x onerror=alert(3)&gt;</code></pre>" in html
    for raw in ("<b>", "<script", "<i>", "<img"):
        assert raw not in html


def test_session_tokens_round_trip_and_refuse_tampering_expiry_and_other_keys() -> None:
    token = issue_session(KEY, "abc123", 3600, None)
    session = read_session(KEY, token)
    assert session.key_id == "abc123" and session.expires_at - session.issued_at == 3600
    payload, tag = token.split(".")
    with pytest.raises(SessionRefused, match="not issued by this console"):
        read_session(KEY, f"{payload}.{tag[:-1]}{'A' if tag[-1] != 'A' else 'B'}")
    with pytest.raises(SessionRefused, match="not issued by this console"):
        read_session(session_key_for(b"j" * 32), token)
    with pytest.raises(SessionRefused, match="expired"):
        read_session(KEY, token, now=time.time() + 3601)
    with pytest.raises(SessionRefused, match="malformed"):
        read_session(KEY, "not a token")
    with pytest.raises(SessionRefused, match="not logged in"):
        read_session(KEY, None)


def test_a_session_never_outlives_its_key() -> None:
    import datetime as dt

    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    session = read_session(KEY, issue_session(KEY, "k", 3600, soon))
    assert session.expires_at <= int(soon.timestamp())


def test_csrf_tokens_are_bound_to_their_nonce() -> None:
    token = csrf_token(KEY, "nonce-1")
    assert csrf_matches(KEY, "nonce-1", token)
    assert not csrf_matches(KEY, "nonce-2", token)
    assert not csrf_matches(KEY, "nonce-1", None) and not csrf_matches(KEY, "nonce-1", "")
    cookie = issue_login_nonce(KEY)
    nonce = read_login_nonce(KEY, cookie)
    assert nonce is not None and read_login_nonce(session_key_for(b"j" * 32), cookie) is None
    assert read_login_nonce(KEY, cookie + "x") is None


def test_charts_refuse_numbers_that_are_not_finite() -> None:
    with pytest.raises(charts.ChartError, match="base value"):
        charts.waterfall_svg(float("nan"), {"a": 1.0}, {})
    with pytest.raises(charts.ChartError, match="contribution of 'a'"):
        charts.waterfall_svg(0.0, {"a": "1"}, {})
    with pytest.raises(charts.ChartError, match="no logged contributions"):
        charts.waterfall_svg(0.0, {}, {})
    with pytest.raises(charts.ChartError, match="same features"):
        charts.mean_abs_bar_svg(["a", "b"], [[1.0]])


# ------------------------------------------------------------------------------------------------ lineage links
LOGGED = {
    "dataset": "salary band",
    "model_name": "riverbed-salary_band",
    "model_version": "12",
    "mlflow_run_id": "run/1",
    "training_set_commit_id": "t0",
    "data_commit_ids": {"b": "javascript:alert(1)", "a": 'x"><script>'},
    "dagster_run_id": "d 1",
}


def test_lineage_without_ui_urls_is_text_whose_title_names_the_setting() -> None:
    settings = RiverbedSettings(  # a file: tracking URI is no MLflow UI
        mlflow_tracking_uri="file:///tmp/mlruns",
        console_mlflow_url=None,
        console_dagster_url=None,
        console_lakefs_url=None,
    )
    links = lineage.lineage_links(settings, LOGGED)
    assert links["model"] == lineage.Link(
        "riverbed-salary_band version 12",
        "/console/models?dataset=salary+band#version-salary_band-12",
        "this version on the Models page",
    )
    assert links["mlflow_run"] == lineage.Link("run/1", None, lineage.NO_MLFLOW_UI)
    assert links["dagster_run"] == lineage.Link("d 1", None, lineage.NO_DAGSTER_UI)
    assert links["training_set_commit"] == lineage.Link("t0", None, lineage.NO_LAKEFS_UI)
    assert links["data_commits"] == [
        ("a", lineage.Link('x"><script>', None, lineage.NO_LAKEFS_UI)),
        ("b", lineage.Link("javascript:alert(1)", None, lineage.NO_LAKEFS_UI)),
    ]
    assert "RIVERBED_CONSOLE_LAKEFS_URL" in lineage.NO_LAKEFS_UI


def test_lineage_links_quote_every_id_as_one_path_segment() -> None:
    settings = RiverbedSettings(
        mlflow_tracking_uri="http://mlflow:5000/",  # used when no console MLflow URL is set
        console_dagster_url="https://dagster.example/",
        console_lakefs_url="https://lakefs.example/ui",
        data_repository="repo one",
    )
    links = lineage.lineage_links(settings, LOGGED)
    assert links["mlflow_run"].url == "http://mlflow:5000/#/runs/run%2F1"
    assert links["dagster_run"].url == "https://dagster.example/runs/d%201"
    assert [(partition, link.url) for partition, link in links["data_commits"]] == [
        ("a", "https://lakefs.example/ui/repositories/repo%20one/commits/x%22%3E%3Cscript%3E"),
        ("b", "https://lakefs.example/ui/repositories/repo%20one/commits/javascript%3Aalert%281%29"),
    ]
    assert links["training_set_commit"].url == "https://lakefs.example/ui/repositories/repo%20one/commits/t0"
    preferred = RiverbedSettings(mlflow_tracking_uri="http://mlflow:5000", console_mlflow_url="https://ui.example")
    assert lineage.lineage_links(preferred, LOGGED)["mlflow_run"].url == "https://ui.example/#/runs/run%2F1"


@pytest.mark.parametrize("base", ["javascript:alert(1)//", "data:text/html,x", "//evil.example", "ftp://x", ""])
def test_only_http_base_urls_make_links(base: str) -> None:
    settings = RiverbedSettings(console_dagster_url=base, console_lakefs_url=base, console_mlflow_url=base)
    links = lineage.lineage_links(settings, LOGGED)
    assert links["dagster_run"].url is None and links["mlflow_run"].url is None
    assert all(link.url is None for _, link in links["data_commits"])


def test_a_logged_version_that_is_no_catalog_number_is_not_linked() -> None:
    settings = RiverbedSettings()
    for row in ({**LOGGED, "model_version": '7" onclick="x'}, {**LOGGED, "dataset": None}):
        model = lineage.lineage_links(settings, row)["model"]
        assert model is not None and model.url is None and model.title == lineage.NO_CATALOG_VERSION
    empty = lineage.lineage_links(settings, {"dataset": "d"})
    assert empty["model"] is None and empty["mlflow_run"] is None and empty["data_commits"] == []


def test_only_a_well_formed_keys_id_is_kept_from_a_refused_login() -> None:
    assert key_id_of("rb_0123456789abcdef_secret") == "0123456789abcdef"
    assert key_id_of("  rb_0123456789abcdef_s_e_c  ") == "0123456789abcdef"
    for refused in ("rb_0123456789abcdef_", "rb_<script>_secret", "xx_0123456789abcdef_s", "secret", "rb_ABC_s", ""):
        assert key_id_of(refused) is None, refused
