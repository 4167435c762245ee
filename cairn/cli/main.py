"""`cairn`: run the stack, track and inspect experiments from a terminal."""

from __future__ import annotations

import sys

import click

from cairn import __version__
from cairn.errors import CairnError


class CairnGroup(click.Group):
    """Turns Cairn errors into one clear line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except CairnError as error:
            reason = f" [{error.reason}]" if error.reason else ""
            click.echo(f"error{reason}: {error.message}", err=True)
            sys.exit(1)


@click.group(cls=CairnGroup)
@click.version_option(__version__, prog_name="cairn")
def cli() -> None:
    """Cairn: an ML experiment platform.

    Start the embedded stack with `cairn up`, then track runs from Python (cairn.Tracker) or
    from here. The tracker address comes from CAIRN_TRACKING_URI (default 127.0.0.1:50051).
    """


def _register() -> None:
    from cairn.cli import analytics, bundle, demo, scheduling, stack, tracking, trainer

    for module in (stack, demo, tracking, bundle, analytics, trainer, scheduling):
        for command in module.COMMANDS:
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="cairn")
