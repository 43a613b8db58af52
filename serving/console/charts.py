"""SHAP charts for the console, drawn with the ``shap`` package's own plotting from *logged* numbers.

:func:`waterfall_svg` builds a :class:`shap.Explanation` from one logged record's base value and contributions
(and the logged input values) and draws ``shap.plots.waterfall``; :func:`mean_abs_bar_svg` draws
``shap.plots.bar`` of a matrix of logged contributions (the bar lengths are mean |SHAP| per feature). Both return
SVG text (matplotlib's Agg-free SVG backend, text kept as ``<text>`` so the figures' numbers can be read back).

``shap`` and ``matplotlib`` cost seconds to import (5 s or more on a busy machine: numba, fonts): they are imported
on first use, never on the gateway's import path or at start-up; a console login starts importing them in a
background thread (:func:`warm_up`), so the first chart a reviewer opens rarely waits for them. A lock serialises
drawing (pyplot's state is global). Call the drawing functions from a worker thread.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

MAX_DISPLAY = 12
MAX_VALUE_CHARS = 22  # an input value shown in the waterfall's labels
_LOCK = threading.Lock()
_WARMING = threading.Lock()
_warm_thread: threading.Thread | None = None
logger = logging.getLogger(__name__)


def warm_up() -> None:
    """Import ``shap`` and ``matplotlib`` in a background (daemon) thread, once per process."""
    global _warm_thread
    with _WARMING:
        if _warm_thread is not None:
            return
        _warm_thread = threading.Thread(target=_import_plotting, name="console-chart-imports", daemon=True)
        _warm_thread.start()


def _import_plotting() -> None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot
        import shap  # noqa: F401
    except Exception:  # the first chart will import them again and show its own error
        logger.exception("could not import shap / matplotlib for the console's charts")


class ChartError(ValueError):
    """The logged numbers cannot be drawn (missing or not finite)."""


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ChartError(f"{what} is not a finite number")
    return float(value)


def _render(draw: Any, *, left: float) -> str:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with _LOCK, matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "riverbed"}):
        plt.close("all")
        try:
            draw()
            figure = plt.gcf()
            width, height = figure.get_size_inches()
            # Fixed margins instead of bbox_inches="tight": tight draws the figure twice (3x the time).
            figure.set_size_inches(max(width, 10.0), height)
            figure.subplots_adjust(left=left, right=0.96, top=0.93, bottom=0.08)
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg")
        finally:
            plt.close("all")
    return buffer.getvalue()


def _display_value(value: Any) -> Any:
    if value is None:
        return "missing"
    if isinstance(value, bool | int | float):
        return value
    text = str(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "\u2026"


def waterfall_svg(
    base_value: Any, contributions: Mapping[str, Any], inputs: Mapping[str, Any], *, max_display: int = MAX_DISPLAY
) -> str:
    """``shap.plots.waterfall`` of one logged explanation, as SVG text."""
    if not contributions:
        raise ChartError("the record has no logged contributions")
    names = list(contributions)
    values = [_finite(contributions[name], f"contribution of {name!r}") for name in names]
    base = _finite(base_value, "base value")
    data = [_display_value(inputs.get(name)) for name in names]

    def draw() -> None:
        import numpy as np
        import shap

        explanation = shap.Explanation(
            values=np.array(values, dtype=float),
            base_values=base,
            data=np.array(data, dtype=object),
            feature_names=names,
        )
        shap.plots.waterfall(explanation, max_display=max_display, show=False)

    return _render(draw, left=0.42)


def mean_abs_bar_svg(feature_names: Sequence[str], rows: Sequence[Sequence[float]], *, max_display: int = 15) -> str:
    """``shap.plots.bar`` (mean |SHAP| per feature) of logged contribution rows, as SVG text."""
    if not rows or not feature_names:
        raise ChartError("no logged contributions in this window")
    matrix = [[_finite(v, "a contribution") for v in row] for row in rows]
    if any(len(row) != len(feature_names) for row in matrix):
        raise ChartError("logged contributions do not all name the same features")

    def draw() -> None:
        import numpy as np
        import shap

        explanation = shap.Explanation(values=np.array(matrix, dtype=float), feature_names=list(feature_names))
        shap.plots.bar(explanation, max_display=max_display, show=False)

    return _render(draw, left=0.3)
