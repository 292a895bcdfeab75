"""The `shoal` command: one subcommand per pipeline stage.

Each stage owns a ``cli`` module with a ``register(app)`` function; this file only
collects them, so adding a stage never grows this file. Heavy imports (torch)
happen inside commands, keeping ``shoal --help`` instant.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console

from shoal.errors import ShoalError

app = typer.Typer(
    name="shoal",
    help="Many models per device: build -> trace -> pack -> deploy -> test.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

STAGE_MODULES = (
    "shoal.build_cli",
    "shoal.trace.cli",
    "shoal.store.cli",
    "shoal.pack.cli",
    "shoal.deploy.cli",
    "shoal.server.cli",
    "shoal.loadtest.cli",
    "shoal.jobs.cli",
    "shoal.capacity_cli",
)


def _register_stages() -> None:
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(app)


_register_stages()


def main() -> None:
    """Console entry point: user errors become one red line and a non-zero exit."""
    try:
        app()
    except ShoalError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
