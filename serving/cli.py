"""The `nba` command line: every command of every package, registered on one application.

It lives in `serving` because serving is the one package allowed to import the other two.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features import cli as features_cli
from training import cli as training_cli

app = typer.Typer(
    name="nba",
    help="Omnichannel next-best-action: synthetic data, validation, features, training, decisions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

app.command("synth")(features_cli.synth)
app.command("validate")(features_cli.validate)
app.command("ingest")(features_cli.ingest)
app.command("features")(features_cli.features)
app.command("training-set")(training_cli.training_set)
app.command("train")(training_cli.train)
app.command("evaluate")(training_cli.evaluate)


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Working directory of the demo.")] = Path("data/demo"),
    customers: Annotated[
        int, typer.Option(min=100, help="People in the synthetic world.")
    ] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic world.")] = 0,
) -> None:
    """Run the whole loop on the embedded defaults: world, store, features, models."""
    console = features_cli.console
    console.rule("1. synthetic world with ground truth")
    features_cli.synth(out=out, customers=customers, seed=seed)
    console.rule("2. validation, identity resolution, event store")
    features_cli.ingest(data=out)
    console.rule("3. point-in-time features and the online store")
    features_cli.features(data=out, materialize=True)
    console.rule("4. training, evaluation against heuristics and the oracle, MLflow registry")
    training_cli.train(data=out)


if __name__ == "__main__":
    app()
