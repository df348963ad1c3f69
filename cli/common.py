"""What every command shares: the console, the settings of this invocation, one-line errors.

Commands import the stack they need when they run, so that ``loyalty-ml --help`` stays fast.
"""

from __future__ import annotations

import typer
from rich.console import Console

from kernel.settings import Settings

console = Console()


def fail(err: Exception | str) -> None:
    """A user error: one line naming what is wrong, exit 2, no traceback."""
    console.print(f"[red]error:[/red] {err}")
    raise typer.Exit(code=2)


def settings_of(ctx: typer.Context) -> Settings:
    return ctx.find_root().obj
