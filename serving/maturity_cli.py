"""`nba maturity`: the omnichannel maturity report on the current data and the champion bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features import cli as features_cli


def maturity(
    data: features_cli.DataOption,
    config: features_cli.ConfigOption = None,
    alias: Annotated[str, typer.Option(help="Registry alias of the model bundle.")] = "champion",
    out: Annotated[
        Path | None,
        typer.Option(help="The HTML report; default DATA/maturity/report.html."),
    ] = None,
    mlflow_log: Annotated[
        bool,
        typer.Option("--mlflow/--no-mlflow", help="Also log the report as an MLflow run."),
    ] = True,
) -> None:
    """What recognising customers and holding their consents is worth, in money, per channel:
    recognition, consent coverage, the value of a consent and of recognition, the data each
    decision used, and the next three steps ranked by money (one offline HTML page, logged to
    the MLflow experiment `nba-maturity`)."""
    from features.config import load_data_config, load_section
    from features.ingest.contract import DataDir
    from features.store.batch import BatchEngine
    from features.store.definitions import FeatureConfig, FeatureSet
    from serving.config import load_maturity_config, load_policy_config
    from serving.maturity import MaturityInputs, build
    from serving.maturity_report import write_report
    from serving.policy import load_policy
    from training.datasets import data_end

    console = features_cli.console
    data_cfg = load_data_config(config)
    features_cfg = load_section(config, "features", FeatureConfig)
    con = features_cli._open_current_store(data, config)
    engine = BatchEngine(FeatureSet(data_cfg, features_cfg), con, customers="customers")
    policy = load_policy(
        data,
        load_policy_config(config),
        data_cfg,
        alias=alias,
        warn=lambda m: console.print(f"[yellow]{m}[/yellow]", highlight=False),
    )
    inputs = MaturityInputs(
        DataDir(data),
        con,
        engine,
        policy,
        data_cfg,
        features_cfg,
        load_maturity_config(config),
        data_end(con),
    )
    with console.status("valuing consents and recognition with the champion policy"):
        report = build(inputs)
    target = write_report(report, out or data / "maturity" / "report.html", data, mlflow_log)
    r = report.recognition
    console.print(
        f"recognition: {r.identifiers:,} identifiers -> {r.customers:,} customers; "
        f"{r.shares['revenue']:.1%} of revenue on identifiers linked to no other"
    )
    for _, row in report.consent.table.iterrows():
        console.print(
            f"a {row['channel']} consent is worth {row['value_mean']:,.2f} a year on average; "
            f"the top decile {row['value_top_decile']:,.2f}; losing one costs "
            f"{row['loss_mean']:,.2f}"
        )
    if report.consent.note:
        console.print(report.consent.note)
    rv = report.recognition_value
    console.print(
        f"recognition is worth {rv.estimate:,.2f} a year (estimate)"
        + (f"; {rv.truth.value_per_year:,.2f} from the truth" if rv.truth is not None else "")
    )
    for i, step in enumerate(report.steps, 1):
        console.print(f"next step {i}: {step.text}: {step.value_per_year:,.0f} a year")
    console.print(f"[green]wrote[/green] {target}")
