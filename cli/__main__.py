"""``python -m cli``: the ``postroom`` command, for a process started by ``postroom dev``."""

from cli import cli

cli()
