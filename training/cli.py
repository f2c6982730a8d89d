"""Command-line commands of the training package: `nba training-set` (later `train`, `evaluate`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from features.cli import ConfigOption, DataOption, _open_current_store, console
from features.errors import UserError


class SetKind(StrEnum):
    contacts = "contacts"
    snapshots = "snapshots"


def training_set(
    data: DataOption,
    kind: Annotated[
        SetKind,
        typer.Option(
            help="contacts: one row per outbound contact; snapshots: per customer per time."
        ),
    ] = SetKind.contacts,
    out: Annotated[
        Path | None, typer.Option(help="Parquet file; default DATA/training_<kind>.parquet.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Build a point-in-time training set: features before each time, labels after it."""
    from features.config import load_data_config, load_section
    from features.store.batch import BatchEngine
    from features.store.definitions import FeatureConfig, FeatureSet
    from training.config import load_training_config
    from training.datasets import contact_training_set, snapshot_training_set

    data_cfg = load_data_config(config)
    fs = FeatureSet(data_cfg, load_section(config, "features", FeatureConfig))
    labels = load_training_config(config).labels
    con = _open_current_store(data, config)
    engine = BatchEngine(fs, con, customers="customers")
    target = out or data / f"training_{kind.value}.parquet"
    if kind is SetKind.contacts:
        with console.status("building the contacts training set"):
            table, report = contact_training_set(con, engine, data_cfg, labels)
        table.to_parquet(target, index=False)
    else:
        _, report = snapshot_training_set(con, engine, data_cfg, labels, out=target, progress=True)
        if report.rows == 0:
            from training.datasets import horizon_problem

            raise UserError(horizon_problem(con, labels, 0))
    console.print(
        f"[green]wrote[/green] {target}: {report.rows:,} rows from {report.first_as_of} to "
        f"{report.last_as_of}; {report.dropped_censored:,} dropped (label window past the data end "
        f"{report.data_end})"
    )


def _metric(name: str, value: float) -> str:
    """A metric as printed: counts as integers, the rest to four decimals."""
    if name.endswith("rows") and value == value:
        return f"{int(value):,}"
    return f"{value:.4f}"


def _print_reports(reports) -> None:
    """Each family's metrics by scorer: a table, or where the terminal is too narrow for one,
    a line per metric (a squeezed table would wrap or crop the numbers away)."""
    from rich.table import Table

    for family, report in reports.items():
        scorers = list(report.metrics)
        keys = list(dict.fromkeys(k for s in scorers for k in report.metrics[s]))
        key_width = len(max(keys, key=len, default="metric"))
        widths = [max(len(s), 10) for s in scorers]
        if console.width < key_width + sum(widths) + 3 * (len(scorers) + 1) + 1:
            console.print(f"{family}: test window", style="italic")
            for k in keys:
                values = (
                    f"{s} {_metric(k, report.metrics[s].get(k, float('nan')))}" for s in scorers
                )
                console.print(f"  {k}: {', '.join(values)}", highlight=False)
            continue
        table = Table(title=f"{family}: test window")
        table.add_column("metric", no_wrap=True, min_width=key_width)
        for s, width in zip(scorers, widths, strict=True):
            table.add_column(s, justify="right", no_wrap=True, min_width=width)
        for k in keys:
            table.add_row(k, *(_metric(k, report.metrics[s].get(k, float("nan"))) for s in scorers))
        console.print(table)
    from training.evaluation import losses_to_heuristic

    for loss in losses_to_heuristic(reports):
        console.print(f"[bold red]warning[/bold red]: {loss}", highlight=False)


def _load_all(data: Path, config: Path | None):
    from features.config import load_data_config, load_section
    from features.store.definitions import FeatureConfig
    from training.config import load_training_config

    return (
        load_data_config(config),
        load_section(config, "features", FeatureConfig),
        load_training_config(config),
    )


def train(data: DataOption, config: ConfigOption = None) -> None:
    """Train, evaluate and register the model bundle; promote it if it passes the gate."""
    from features.config import load_online_store_config
    from features.ingest.contract import DataDir
    from training.train import train as run_train

    data_cfg, feature_cfg, cfg = _load_all(data, config)
    online = load_online_store_config(config)
    con = _open_current_store(data, config)
    with console.status("training") as status:
        result = run_train(
            DataDir(data),
            data_cfg,
            feature_cfg,
            cfg,
            con,
            say=lambda m: status.update(m),
            online=online,
        )
    _print_reports(result.reports)
    for family, reason in result.bundle.skipped.items():
        console.print(f"[yellow]skipped {family}[/yellow]: {reason}")
    for family, run_id in result.run_ids.items():
        console.print(f"MLflow run {family}: {run_id}")
    gate = result.gate
    console.print(
        f"registered nba-bundle version {result.version}: "
        f"{'[green]champion[/green]' if gate.promoted else '[yellow]challenger[/yellow]'} "
        f"({gate.reason})"
    )


def evaluate(
    data: DataOption,
    alias: Annotated[
        str, typer.Option(help="Registry alias of the bundle to evaluate.")
    ] = "champion",
    config: ConfigOption = None,
) -> None:
    """Evaluate a registered bundle on the data's test window against heuristics and oracle."""
    import mlflow

    from features.ingest.contract import DataDir
    from features.store.batch import BatchEngine
    from features.store.definitions import FeatureSet
    from training import registry
    from training.oracle import load_truth
    from training.train import build_training_data, evaluate_bundle

    data_cfg, feature_cfg, cfg = _load_all(data, config)
    registry.configure_tracking(data)
    if registry.alias_version(alias) is None:
        raise UserError(f"no bundle has the alias '{alias}': run `nba train` first")
    bundle = mlflow.pyfunc.load_model(registry.model_uri(alias)).unwrap_python_model().bundle
    con = _open_current_store(data, config)
    engine = BatchEngine(FeatureSet(data_cfg, feature_cfg), con, customers="customers")
    with console.status("building the evaluation sets"):
        td = build_training_data(con, engine, data_cfg, cfg, say=lambda m: None)
    truth = load_truth(DataDir(data), con)
    reports = evaluate_bundle(bundle, td, truth, cfg.labels.purchase_horizon_days, False)
    console.print(
        f"bundle {registry.BUNDLE_MODEL_NAME}@{alias} (version {registry.alias_version(alias)})"
    )
    if not reports:
        raise UserError("nothing to evaluate on this data: " + "; ".join(td.notes.values()))
    _print_reports(reports)
    for part, note in td.notes.items():  # what this data could not evaluate, and why
        console.print(f"[yellow]not evaluated ({part})[/yellow]: {note}", highlight=False)
