"""Shared by the benchmarks: the machine's description and rewriting one ``## Section`` of ``RESULTS.md``."""

import datetime as dt
import json
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """CPU, memory, kernel, Python and the date: what every results section states."""
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    uname = subprocess.run(["uname", "-a"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "uname": uname,
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": round(memory_gb),
        "python": platform.python_version(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def replace_section(results_md: Path, section: str, text: str) -> None:
    current = results_md.read_text() if results_md.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    results_md.write_text(updated)


def publish(result: dict[str, Any], text: str, results_json: Path, results_md: Path, section: str) -> None:
    """Print the section, keep the raw figures as JSON and rewrite the section in RESULTS.md."""
    print(text)
    results_json.parent.mkdir(parents=True, exist_ok=True)
    results_json.write_text(json.dumps(result, indent=2))
    replace_section(results_md, section, text)
