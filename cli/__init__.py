"""The ``postroom`` command. Each sub-command group lives in its own module."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="postroom")
def cli() -> None:
    """Postroom: an asynchronous mail service."""


from cli.dev import dev  # noqa: E402

cli.add_command(dev)

from cli.campaign import campaign  # noqa: E402

cli.add_command(campaign)

from cli.bounces import bounces  # noqa: E402

cli.add_command(bounces)

from cli.submission import submission  # noqa: E402

cli.add_command(submission)
