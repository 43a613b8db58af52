"""Composition roots: the ``riverbed`` commands, the serving-stack supervisor and the demos.

The only package allowed to import every other layer (checked by import-linter in ``make lint``).
"""

from riverbed.cli.main import app

__all__ = ["app"]
