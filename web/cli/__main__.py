"""``python -m web.cli``: the ``postroom`` command, for a process started by ``postroom dev``."""

from web.cli import cli

cli()
