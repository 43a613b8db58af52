"""The Serving section of ``RESULTS.md``: ``serving_benchmark.render`` over ``benchmarks/results/serving.json``.

Kept apart from ``serving_benchmark.py`` so the renderer registry (``benchmarks/report.py``) calls the serving
benchmark's own rendering unchanged; a smoke-scale file (written by ``run_all --quick``) gets the same warning
as every other section, after the machine line.
"""

from typing import Any

from benchmarks.report import scale_note
from benchmarks.serving_benchmark import render

COMMAND = "make bench-serving"


def render_results(results: dict[str, Any]) -> str:
    result = results["serving.json"]
    text = render(result)
    note = scale_note(result, COMMAND)
    if not note:
        return text
    title, _, rest = text.partition("\n\n")
    machine_line, _, body = rest.partition("\n\n")
    return "\n\n".join([title, machine_line, note[0], body])
