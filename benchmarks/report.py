"""Shared by the benchmarks: rewrite one ``## Section`` of ``RESULTS.md`` and leave the others as they are."""

import re
from pathlib import Path


def replace_section(results_md: Path, section: str, text: str) -> None:
    current = results_md.read_text() if results_md.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    results_md.write_text(updated)
