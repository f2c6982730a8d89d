"""Command-line commands of the training package: `nba training-set` (later `train`, `evaluate`)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from features.cli import ConfigOption, DataOption, _open_current_store, console


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
    from features.batch import BatchEngine
    from features.config import load_data_config, load_section
    from features.definitions import FeatureConfig, FeatureSet
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
    console.print(
        f"[green]wrote[/green] {target}: {report.rows:,} rows from {report.first_as_of} to "
        f"{report.last_as_of}; {report.dropped_censored:,} dropped (label window past the data end "
        f"{report.data_end})"
    )
