"""A small synthetic world with a trained, registered bundle, shared by the serving tests."""

from dataclasses import dataclass

import duckdb
import pandas as pd
import pytest

from features.config import DataConfig
from features.ingest.contract import DataDir
from features.ingest.event_store import ingest, open_store
from features.store.batch import BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from features.synthetic.world import generate_world
from training.config import TrainingConfig
from training.datasets import data_end
from training.train import TrainResult, train


@dataclass
class TrainedWorld:
    data_dir: DataDir
    con: duckdb.DuckDBPyConnection
    engine: BatchEngine
    result: TrainResult
    end: pd.Timestamp
    features: pd.DataFrame  # every customer's features just after the last event


@pytest.fixture(scope="session")
def trained_world(tmp_path_factory) -> TrainedWorld:
    root = tmp_path_factory.mktemp("serving") / "world"
    generate_world(root, customers=3000, days=365, seed=5, progress=False)
    data_dir = DataDir(root)
    ingest(data_dir, DataConfig())
    con = open_store(data_dir)
    cfg = TrainingConfig.model_validate({"models": {"max_contact_rows": 60_000}})
    result = train(data_dir, DataConfig(), FeatureConfig(), cfg, con, say=lambda m: None)
    engine = BatchEngine(FeatureSet(DataConfig(), FeatureConfig()), con, customers="customers")
    end = data_end(con)
    return TrainedWorld(data_dir, con, engine, result, end, engine.snapshot(end))


@pytest.fixture(scope="session")
def online_world(trained_world) -> TrainedWorld:
    """The trained world with its online store materialised as of the end of its history."""
    from features.store.online_store import OnlineStore

    fs = FeatureSet(DataConfig(), FeatureConfig())
    with OnlineStore(trained_world.data_dir.online_store, fs) as store:
        store.materialize(trained_world.con, as_of=trained_world.end)
    return trained_world


@pytest.fixture(scope="session")
def served_world(online_world):
    """`nba serve` running on the online world (tests share it: each uses its own customers)."""
    from service_process import start_service

    # the customers' local time is set to midday now: quiet hours would otherwise silence SMS
    # and push in the evening, and whether a test finds an SMS to cap would depend on the clock
    offset = (12 - pd.Timestamp.now(tz="UTC").hour + 12) % 24 - 12
    config = online_world.data_dir.root / "service-test-config.yaml"
    config.write_text(
        f"policy:\n  contact_policy:\n    quiet_hours:\n      utc_offset_hours: {offset}\n"
    )
    service = start_service(online_world.data_dir.root, config=config)
    yield service
    service.stop()
