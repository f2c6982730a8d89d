"""`nba forget`: the right to erasure on the command line (serving/erasure.py does the work)."""

from __future__ import annotations

from typing import Annotated

import typer

from features import cli as features_cli


def forget(
    identifier: Annotated[
        str,
        typer.Argument(
            help="Any identifier of the person (`type:value`, an e-mail or phone in clear or "
            "hashed) or their customer_id."
        ),
    ],
    data: features_cli.DataOption,
    config: features_cli.ConfigOption = None,
) -> None:
    """Erase a person and every identifier linked to them from the input files, the event
    store, the quarantine, the online store, the decision logs and the MLflow input examples;
    record the erasure (salted hashes and a time) in DATA/erasure/log.jsonl. Later events of
    theirs are quarantined as `erased` until a new consent comes with them. Stop the service
    first, or call its POST /forget instead."""
    from features.config import load_data_config, load_online_store_config, load_section
    from features.ingest.contract import DataDir
    from features.store.definitions import FeatureConfig, FeatureSet
    from features.store.online_store import online_store_exists, open_online_store
    from serving.erasure import forget as erase

    dd = DataDir(data)
    if not data.is_dir():
        raise FileNotFoundError(f"data directory {data} does not exist")
    cfg = load_data_config(config)
    online = load_online_store_config(config)
    store = None
    if online_store_exists(dd, online):
        fs = FeatureSet(cfg, load_section(config, "features", FeatureConfig))
        store = open_online_store(dd, fs, online)
    try:
        report = erase(dd, identifier, cfg, store, online)
    finally:
        if store is not None:
            store.close()
    rows = sum(report.rows_removed.values())
    if report.again:
        features_cli.console.print(f"{identifier} was already erased; every place cleaned again")
    features_cli.console.print(
        f"erased {report.identifiers} identifier(s) of {report.customers} customer(s) at "
        f"{report.at}: {rows:,} rows from {len(report.rows_removed)} file(s), "
        f"{report.online_events:,} online events, {report.input_examples} MLflow input "
        f"example(s) emptied; event store {'rebuilt' if report.store_rebuilt else 'not present'}"
    )
