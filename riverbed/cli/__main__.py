"""``python -m riverbed.cli``: the same commands as the ``riverbed`` script."""

from riverbed.cli.main import app

app()
