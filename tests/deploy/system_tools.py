"""System programs some tests need (Prometheus, promtool, Alertmanager, amtool, HAProxy, Chromium and its driver):
Debian packages, not Python ones.

``make system-packages`` (as root) or ``.ci/run`` installs them. A test that needs one calls :func:`require_tool`:
under ``CI=true`` a missing program FAILS the test (CI must have installed it); elsewhere the test is SKIPPED with a
WARNING naming the program, its package and the command that installs it.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

logger = logging.getLogger(__name__)

# program -> the Debian package that installs it
PACKAGE_OF = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
    "haproxy": "haproxy",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``, as CI services and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_tool(program: str) -> Path:
    """The path of ``program``; fails the test under CI, and skips it loudly elsewhere, when it is not installed."""
    found = shutil.which(program)
    if found is not None:
        return Path(found)
    package = PACKAGE_OF.get(program, program)
    reason = (
        f"{program} is not installed (Debian package {package}): run `make system-packages` as root, or "
        f"`apt-get install {package}`"
    )
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so it must be installed (.ci/run installs it)", pytrace=False)
    logger.warning("SKIPPED: %s", reason)
    pytest.skip(f"NOT RUN: {reason}")
