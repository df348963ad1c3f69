"""``loyalty-ml``: one CLI for data, features, training, the model registry and the service."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import typer

from cli import serve as serve_cmds
from cli.common import console, fail, settings_of
from cli.daily import daily
from cli.data import (
    data_app,
    features_app,
    features_show,
)
from cli.train import evaluate_app, models_app, models_list, show_campaign_evaluation, train_app
from kernel.settings import Profile, Settings, settings_error

app = typer.Typer(help="Loyalty decision service: data, features, training, serving.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(features_app, name="features")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
app.add_typer(evaluate_app, name="evaluate")
serve_cmds.register(app)
app.command("daily")(daily)


@app.callback()
def main(
    ctx: typer.Context,
    dataset: str | None = typer.Option(None, help="simulated | online_retail | complete_journey"),
    profile: Profile | None = typer.Option(None, help="embedded (default) or production"),
    data_dir: Path | None = typer.Option(None, help="where datasets, stores and runs live"),
) -> None:
    """Settings: the LOYALTY_* environment, these flags on top. Passed down explicitly, never global."""
    flags = {"dataset": dataset, "profile": profile, "data_dir": data_dir}
    try:
        ctx.obj = Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValueError as err:  # invalid values, unsafe production secrets, unreadable secret files
        fail(settings_error(err))


def _demo_campaigns(ctx: typer.Context) -> None:
    """Each offer's ROI decision, where the data has randomised campaigns."""
    import pyarrow.parquet as pq

    path = settings_of(ctx).curated_dir / "exposures.parquet"
    if not path.exists() or pq.ParquetFile(path).metadata.num_rows == 0:
        console.print("skipped: the dataset has no campaign exposures to evaluate")
        return
    show_campaign_evaluation(ctx, None, ("tier",), ("offer",))


def _own_process(settings: Settings, *args: str) -> None:
    """``loyalty-ml ARGS`` as a child process with these settings, stopping the demo where it fails.

    Why a process per heavy step: at a million members each step peaks at up to 10 GB, and what
    the allocators keep after one step (Arrow, DuckDB, glibc arenas) would add to the next in one
    process; a child gives all of it back, so the demo's peak is its largest step's."""
    env = os.environ | settings.to_env()
    rc = subprocess.call([sys.executable, "-m", "cli", *args], env=env)
    if rc:
        console.print(f"[red]stopped:[/red] `loyalty-ml {' '.join(args)}` exited {rc}")
        raise typer.Exit(code=rc)


@app.command("demo")
def demo(
    ctx: typer.Context,
    members: int = typer.Option(10_000, min=100),
    port: int = typer.Option(3000, help="port of the demo service"),
) -> None:
    """Run the main job end to end on the active profile (simulated data unless --dataset).

    The data, feature and training steps run as the ``loyalty-ml`` commands they are, each in
    its own process; the light steps after them run here."""
    timings = {}
    started = time.perf_counter()
    settings = settings_of(ctx)
    if settings.dataset == "simulated":
        data = ("data", "simulate", "--members", str(members))
    else:
        data = ("data", "load")
    asked: list[str] = []  # the member the demo asked the service about
    steps = [
        ("data", lambda: _own_process(settings, *data)),
        ("validate", lambda: _own_process(settings, "data", "validate")),
        ("features build", lambda: _own_process(settings, "features", "build")),
        ("features apply", lambda: _own_process(settings, "features", "apply")),
        ("materialize", lambda: _own_process(settings, "features", "materialize")),
        ("online read", lambda: features_show(ctx, 3, None)),
        ("train", lambda: _own_process(settings, "train", "all")),
        ("models", lambda: models_list(ctx)),
        ("campaigns", lambda: _demo_campaigns(ctx)),
        ("serve + query", lambda: asked.append(serve_cmds.serve_and_query(settings, port))),
    ]
    for name, step in steps:
        console.rule(name)
        t = time.perf_counter()
        step()
        timings[name] = round(time.perf_counter() - t, 1)
    console.rule("done")
    console.print({"seconds": timings, "total": round(time.perf_counter() - started, 1)})
    console.rule("next steps")
    console.print(serve_cmds.next_steps(settings, asked[0], port), soft_wrap=True, highlight=False)


if __name__ == "__main__":
    app()
