"""The oversight console: server-rendered pages under ``/console`` on the gateway, for auditors and reviewers.

Pages (Jinja2 templates, autoescaped; one CSS file; no script): the inference log with the audit filters and
keyset paging, one request with its SHAP waterfall (drawn with ``shap`` from the *logged* contributions), models
(:mod:`riverbed.model_catalog`), monitoring (drift, estimated vs realised performance, prediction mix, live
fairness, mean |SHAP|), datasets (suspend / resume). Login with an API key (:mod:`serving.console.sessions`);
``audit`` or ``review`` keys read, ``review`` keys act through :mod:`serving.oversight`.

``shap`` and ``matplotlib`` are imported on first chart (:mod:`serving.console.charts`), never at start-up.
"""

from __future__ import annotations

from fastapi import FastAPI

from serving.console.pages import router


def install_console(app: FastAPI) -> None:
    """Serve the console under ``/console`` on ``app`` (the gateway)."""
    app.include_router(router)
