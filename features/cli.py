"""Command-line commands of the features package: `nba synth`, `nba validate`, `nba ingest`.

They are registered on the root `nba` application in `serving/cli.py`.
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from features.config import load_data_config, load_online_store_config
from features.ingest.contract import DataDir

console = Console()

DataOption = Annotated[
    Path,
    typer.Option(
        "--data",
        help="Data directory holding events (and optionally customers) as parquet or CSV.",
        exists=True,
        file_okay=False,
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="YAML configuration file; documented defaults if omitted."),
]
NowOption = Annotated[
    datetime | None,
    typer.Option("--now", help="Treat this UTC time as now (future-timestamp check)."),
]


def synth(
    out: Annotated[Path, typer.Option(help="Directory to write the world into.")],
    customers: Annotated[int, typer.Option(min=1, help="Number of people.")] = 20_000,
    days: Annotated[int, typer.Option(min=14, help="Days of history.")] = 365,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same world.")] = 0,
    start: Annotated[
        datetime, typer.Option(formats=["%Y-%m-%d"], help="First day of the history.")
    ] = datetime(2025, 1, 1),
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
    dirty_rate: Annotated[
        float,
        typer.Option(min=0.0, max=0.1, help="Share of duplicated and malformed rows to inject."),
    ] = 0.0005,
) -> None:
    """Generate a synthetic omnichannel world with ground truth (events, customers, truth)."""
    from features.synthetic.world import generate_world

    summary = generate_world(
        out,
        customers=customers,
        days=days,
        seed=seed,
        start=date(start.year, start.month, start.day),
        workers=workers,
        dirty_rate=dirty_rate,
    )
    console.print(
        f"[green]wrote[/green] {out}: {summary.customers:,} customers, "
        f"{summary.events:,} events, {summary.contacts:,} outbound contacts "
        f"in {summary.seconds:.1f} s"
    )


def _print_validation(title: str, report) -> None:
    table = Table(title=title)
    table.add_column("")
    table.add_column("rows", justify="right")
    table.add_row("received", f"{report.received:,}")
    table.add_row("accepted", f"{report.accepted:,}")
    table.add_row("rejected", f"{report.rejected:,}")
    for reason, n in sorted(report.by_reason.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {reason}", f"{n:,}")
    console.print(table)


def _print_hints(hints: list[str]) -> None:
    """The configuration changes that would accept rejected rows, one a line."""
    for hint in hints:
        console.print(f"[yellow]fix[/yellow]: {hint}", highlight=False)


def validate(data: DataOption, config: ConfigOption = None, now: NowOption = None) -> None:
    """Validate the events (and customers) of a data directory; quarantine rejected rows."""
    import duckdb

    from features.ingest.tombstones import Tombstones
    from features.ingest.validation import (
        rejection_hints,
        validate_customers,
        validate_events,
        write_quarantine,
    )

    cfg = load_data_config(config)
    data_dir = DataDir(data)
    con = duckdb.connect()
    events = validate_events(
        data_dir.events(), cfg, con, now=now, tombstones=Tombstones.load(data_dir)
    )
    customers = validate_customers(data_dir.customers(), cfg, con) if data_dir.customers() else None
    paths = write_quarantine(data_dir, con, events, customers)
    _print_validation("events", events.report)
    if customers is not None:
        _print_validation("customers", customers.report)
    hints = rejection_hints(con, events, cfg)
    _print_hints(hints + (rejection_hints(con, customers, cfg) if customers else []))
    console.print(f"rejected rows with their reasons: {', '.join(str(p) for p in paths)}")


def ingest(data: DataOption, config: ConfigOption = None, now: NowOption = None) -> None:
    """Validate, resolve identities and write the event store (DATA/store).

    Stops with exit code 2, writing no store, when no event (or less than
    data.validation.min_accepted_share of them) is accepted."""
    from features.ingest.event_store import IngestRefused
    from features.ingest.event_store import ingest as run_ingest

    cfg = load_data_config(config)
    try:
        report = run_ingest(DataDir(data), cfg, now=now, online=load_online_store_config(config))
    except IngestRefused as refused:
        _print_validation("events", refused.events)
        if refused.customers is not None:
            _print_validation("customers", refused.customers)
        _print_hints(refused.hints)
        raise
    _print_validation("events", report.events)
    if report.customers is not None:
        _print_validation("customers", report.customers)
    _print_hints(report.hints)
    console.print(report.identity_summary_text())


def _open_current_store(data: Path, config: Path | None):
    """A DuckDB connection on the event store, ingesting first if it is missing or stale."""
    from features.ingest.event_store import ingest as run_ingest
    from features.ingest.event_store import open_store, store_is_current

    data_dir = DataDir(data)
    if not store_is_current(data_dir):
        console.print("[yellow]event store missing or stale: ingesting first[/yellow]")
        run_ingest(data_dir, load_data_config(config), online=load_online_store_config(config))
    return open_store(data_dir)


def features(
    data: DataOption,
    as_of: Annotated[
        list[datetime] | None,
        typer.Option(
            "--as-of",
            help="Snapshot time (UTC), repeatable; default: just after the last event.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Parquet file of the feature table; default DATA/features.parquet."),
    ] = None,
    materialize: Annotated[
        bool,
        typer.Option(
            "--materialize",
            help="Also load the latest snapshot into the online store (DATA/store/online.sqlite, "
            "or the Redis of the configuration's online_store section).",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Compute point-in-time customer features (events strictly before each as-of time)."""
    import pandas as pd
    from tqdm import tqdm

    from features.config import load_section
    from features.store.batch import BatchEngine
    from features.store.definitions import FeatureConfig, FeatureSet

    fs = FeatureSet(load_data_config(config), load_section(config, "features", FeatureConfig))
    con = _open_current_store(data, config)
    engine = BatchEngine(fs, con, customers="customers")
    times = [
        pd.Timestamp(t, tz="UTC") if t.tzinfo is None else pd.Timestamp(t) for t in as_of or []
    ]
    if not times:
        last = con.execute("SELECT epoch_us(max(ts)) FROM events").fetchall()[0][0]
        times = [pd.Timestamp(last, unit="us", tz="UTC") + pd.Timedelta(microseconds=1)]
    frames = [engine.snapshot(t) for t in tqdm(times, desc="feature snapshots", unit="snapshot")]
    table = pd.concat(frames, ignore_index=True)
    target = out or data / "features.parquet"
    table.to_parquet(target, index=False)
    console.print(
        f"[green]wrote[/green] {target}: {len(table):,} rows x {len(fs.names)} features "
        f"at {len(times)} as-of time(s)"
    )
    if materialize:
        from features.store.online_store import open_online_store

        with open_online_store(DataDir(data), fs, load_online_store_config(config)) as store:
            n = store.materialize(con, as_of=max(times))
        console.print(f"[green]materialised[/green] {n:,} customers into {store.location}")
