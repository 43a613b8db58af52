"""The console's pure parts: the safe Markdown renderer, session tokens and CSRF tokens, the chart inputs."""

from __future__ import annotations

import time

import pytest

from serving.console import charts
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
