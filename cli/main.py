"""``loyalty-ml``: one CLI for data, features, training, the model registry and the service."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cli import serve as serve_cmds
from cli.common import console, fail, settings_of
from cli.daily import daily
from cli.data import (
    data_app,
    data_load,
    data_simulate,
    data_validate,
    features_app,
    features_apply,
    features_build,
    features_materialize,
    features_show,
)
from cli.train import _train, evaluate_app, models_app, models_list, show_campaign_evaluation, train_app
from kernel.constants import JOB_NAMES
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


@app.command("demo")
def demo(
    ctx: typer.Context,
    members: int = typer.Option(10_000, min=100),
    port: int = typer.Option(3000, help="port of the demo service"),
) -> None:
    """Run the main job end to end on the active profile (simulated data unless --dataset)."""
    timings = {}
    started = time.perf_counter()
    simulated = settings_of(ctx).dataset == "simulated"
    asked: list[str] = []  # the member the demo asked the service about
    steps = [
        ("data", lambda: data_simulate(ctx, members, None, None) if simulated else data_load(ctx)),
        ("validate", lambda: data_validate(ctx)),
        ("features build", lambda: features_build(ctx)),
        ("features apply", lambda: features_apply(ctx)),
        ("materialize", lambda: features_materialize(ctx)),
        ("online read", lambda: features_show(ctx, 3, None)),
        ("train", lambda: _train(settings_of(ctx), list(JOB_NAMES))),
        ("models", lambda: models_list(ctx)),
        ("campaigns", lambda: _demo_campaigns(ctx)),
        ("serve + query", lambda: asked.append(serve_cmds.serve_and_query(settings_of(ctx), port))),
    ]
    for name, step in steps:
        console.rule(name)
        t = time.perf_counter()
        step()
        timings[name] = round(time.perf_counter() - t, 1)
    console.rule("done")
    console.print({"seconds": timings, "total": round(time.perf_counter() - started, 1)})
    console.rule("next steps")
    console.print(serve_cmds.next_steps(settings_of(ctx), asked[0], port), soft_wrap=True, highlight=False)


if __name__ == "__main__":
    app()
