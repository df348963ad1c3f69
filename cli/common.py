"""What every command shares: the console, the settings of this invocation, one-line errors.

Commands import the stack they need when they run, so that ``loyalty-ml --help`` stays fast.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from kernel.settings import Settings

# off a terminal (logs, CI) Rich assumes 80 columns and would wrap tables mid-row; it never
# colours there, so the width is the only thing to set
console = Console(width=None if sys.stdout.isatty() else 160)


def fail(err: Exception | str) -> None:
    """A user error: one line naming what is wrong, exit 2, no traceback."""
    console.print(f"[red]error:[/red] {escape(str(err))}", soft_wrap=True)  # one line, brackets kept
    raise typer.Exit(code=2)


def settings_of(ctx: typer.Context) -> Settings:
    return ctx.find_root().obj


def require_dataset(settings: Settings) -> Settings:
    """Commands that read a dataset refuse an unknown one (exit 2) before creating anything."""
    if not (settings.dataset_dir / "meta.json").exists():
        known = sorted(p.parent.name for p in settings.data_dir.glob("*/meta.json"))
        fail(
            f"dataset {settings.dataset!r} not found in {settings.data_dir} (known: {', '.join(known) or 'none'});"
            " create it with `loyalty-ml data simulate` or `loyalty-ml --dataset NAME data load`"
        )
    return settings
